//! Image names as docker, podman and containerd read them: `app:dev`,
//! `registry.example/team/app:1.4`, normalised as docker normalises them
//! (`app:dev` is `docker.io/library/app:dev`).
//!
//! A recipe's `tags` and `kiln build --tag` hold either a bare tag (`v1`: no
//! `:` and no `/`), which names the image after the recipe
//! (`NAME:v1`), or a full name. Stage-neutral: uses nothing else of kiln.

use std::fmt;

/// The registry docker assumes when a name has none.
pub const DEFAULT_DOMAIN: &str = "docker.io";

/// One image name: registry, repository path and tag, normalised.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageName {
    domain: String,
    path: String,
    tag: String,
}

impl ImageName {
    /// Parses a full name (`[REGISTRY/]PATH[:TAG]`, tag `latest` when none),
    /// or says in a sentence why it is not one.
    pub fn parse(text: &str) -> Result<ImageName, String> {
        if text.contains('@') {
            return Err(format!(
                "`{text}` names a digest; an image is named by a tag, e.g. `app:1.4`"
            ));
        }
        let last_slash = text.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match text[last_slash..].rfind(':') {
            Some(i) => (&text[..last_slash + i], &text[last_slash + i + 1..]),
            None => (text, "latest"),
        };
        check_tag(tag).map_err(|why| format!("`{text}`: {why}"))?;
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first, rest.to_string())
            }
            _ => (DEFAULT_DOMAIN, name.to_string()),
        };
        check_domain(domain).map_err(|why| format!("`{text}`: {why}"))?;
        let domain = if domain == "index.docker.io" {
            DEFAULT_DOMAIN
        } else {
            domain
        };
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        for component in path.split('/') {
            check_component(component).map_err(|why| format!("`{text}`: {why}"))?;
        }
        if domain.len() + 1 + path.len() > 255 {
            return Err(format!("`{text}`: the name is longer than 255 characters"));
        }
        Ok(ImageName {
            domain: domain.to_string(),
            path,
            tag: tag.to_string(),
        })
    }

    /// What a recipe's `tags` entry (or a `--tag`) names: a bare tag (no `:`
    /// and no `/`) is a tag of the image named after the recipe, `NAME:TAG`;
    /// anything else is a full name.
    pub fn of_entry(recipe_name: &str, entry: &str) -> Result<ImageName, String> {
        if entry.contains([':', '/']) {
            return ImageName::parse(entry);
        }
        check_tag(entry).map_err(|why| format!("`{entry}`: {why}"))?;
        check_component(recipe_name).map_err(|_| {
            format!(
                "the tag `{entry}` names the image after the recipe, `{recipe_name}`, \
                 which is not a valid image name (lower-case letters and digits, \
                 separated by `.`, `_`, `__` or `-`)"
            )
        })?;
        ImageName::parse(&format!("{recipe_name}:{entry}"))
    }

    /// The full name with its tag, as containerd keeps it:
    /// `docker.io/library/app:dev`.
    pub fn full(&self) -> String {
        format!("{}:{}", self.repository(), self.tag)
    }

    /// `REGISTRY/PATH`, without the tag.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository as docker shows it: `app` for
    /// `docker.io/library/app`, `user/app` for `docker.io/user/app`.
    pub fn familiar_repository(&self) -> String {
        if self.domain != DEFAULT_DOMAIN {
            return self.repository();
        }
        match self.path.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.path.clone(),
        }
    }

    /// The name with its tag as docker shows it: `app:dev`.
    pub fn familiar(&self) -> String {
        format!("{}:{}", self.familiar_repository(), self.tag)
    }

    /// The tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full())
    }
}

/// A tag: a letter, digit or `_`, then up to 127 of those, `.` or `-`.
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && word(tag.as_bytes()[0])
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{tag}` is not a valid tag (up to 128 letters, digits, `_`, `.` or `-`, \
             not starting with `.` or `-`)"
        ))
    }
}

/// A repository path component: lower-case letters and digits, separated
/// by one `.`, one or two `_`, or any number of `-`.
fn check_component(c: &str) -> Result<(), String> {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut ok = !bytes.is_empty() && alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]);
    let mut i = 0;
    while ok && i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{c}` is not a valid repository name component (lower-case letters and \
             digits, separated by `.`, `_`, `__` or `-`)"
        ))
    }
}

/// A registry: `host[:port]`, the host's labels letters, digits and `-`.
fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    let host_ok = host.split('.').all(|l| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!("`{domain}` is not a valid registry host[:port]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_as_docker_does() {
        let cases = [
            ("app:dev", "docker.io/library/app:dev", "app:dev"),
            ("app", "docker.io/library/app:latest", "app:latest"),
            ("user/app:1", "docker.io/user/app:1", "user/app:1"),
            ("docker.io/app:1", "docker.io/library/app:1", "app:1"),
            (
                "index.docker.io/library/app:1",
                "docker.io/library/app:1",
                "app:1",
            ),
            (
                "registry.example/app:1.4",
                "registry.example/app:1.4",
                "registry.example/app:1.4",
            ),
            (
                "127.0.0.1:5000/a/b",
                "127.0.0.1:5000/a/b:latest",
                "127.0.0.1:5000/a/b:latest",
            ),
            ("localhost/app:x", "localhost/app:x", "localhost/app:x"),
            (
                "a__b/c-d.e:T_1",
                "docker.io/a__b/c-d.e:T_1",
                "a__b/c-d.e:T_1",
            ),
        ];
        for (text, full, familiar) in cases {
            let n = ImageName::parse(text).unwrap();
            assert_eq!(
                (n.full().as_str(), n.familiar().as_str()),
                (full, familiar),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_what_docker_refuses() {
        for bad in [
            "App:1",
            "app:",
            "app:.x",
            "app@sha256:00",
            "/app",
            "app/",
            "a//b",
            "a..b:1",
            "reg.example:x/app",
            "a___b",
            "-a",
            "reg.example/",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bare_tags_name_the_recipe() {
        let n = ImageName::of_entry("hello", "v1").unwrap();
        assert_eq!(n.full(), "docker.io/library/hello:v1");
        assert_eq!(
            ImageName::of_entry("hello", "reg.example/x:2")
                .unwrap()
                .full(),
            "reg.example/x:2"
        );
        assert!(ImageName::of_entry("Hello", "v1")
            .unwrap_err()
            .contains("`Hello`"));
        assert!(ImageName::of_entry("hello", "-v1").is_err());
    }
}
