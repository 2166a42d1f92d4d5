//! Platforms as recipes name them: `os/arch[/variant]`.

use std::fmt;

/// A target platform, e.g. `linux/amd64` or `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture in Go's naming (`amd64`, `arm64` …).
    pub arch: String,
    /// Architecture variant (`v7`, `v8`), if any.
    pub variant: Option<String>,
}

const OSES: &[&str] = &["linux", "windows", "freebsd", "darwin"];
const ARCHES: &[&str] = &[
    "amd64", "arm64", "arm", "386", "ppc64le", "ppc64", "s390x", "riscv64", "mips64le", "mips64",
    "mipsle", "mips", "loong64",
];
const VARIANTS: &[&str] = &["v5", "v6", "v7", "v8"];

impl Platform {
    /// Parses `os/arch[/variant]`; the error explains what is accepted.
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(format!(
                "`{s}` is not a platform: write `os/arch` or `os/arch/variant`, e.g. `linux/amd64`"
            ));
        }
        if !OSES.contains(&parts[0]) {
            return Err(format!(
                "unknown operating system `{}` in platform `{s}`: use one of {}",
                parts[0],
                OSES.join(", ")
            ));
        }
        if !ARCHES.contains(&parts[1]) {
            return Err(format!(
                "unknown architecture `{}` in platform `{s}`: use one of {}",
                parts[1],
                ARCHES.join(", ")
            ));
        }
        let variant = parts.get(2).map(|v| v.to_string());
        if let Some(v) = &variant {
            if !VARIANTS.contains(&v.as_str()) {
                return Err(format!(
                    "unknown variant `{v}` in platform `{s}`: use one of {}",
                    VARIANTS.join(", ")
                ));
            }
        }
        Ok(Platform {
            os: parts[0].to_string(),
            arch: parts[1].to_string(),
            variant,
        })
    }

    /// The platform kiln builds when a recipe names none.
    pub fn default_platform() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/x86_64")
            .unwrap_err()
            .contains("amd64"));
        assert!(Platform::parse("plan9/amd64").is_err());
        assert!(Platform::parse("linux/arm/v9").is_err());
    }
}
