//! Debian control files (deb822): `Packages` indexes, `Release` files and
//! package control stanzas, and dependency fields (`a (>= 1) | b, c`).

use std::collections::BTreeMap;

/// One stanza: field name → value (continuation lines joined with `\n`).
pub type Stanza = BTreeMap<String, String>;

/// Splits deb822 text into stanzas, keeping field order out (names are case-sensitive as written).
pub fn parse(text: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut cur = Stanza::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last {
                let v = cur.entry(k.clone()).or_default();
                v.push('\n');
                v.push_str(line.trim_start());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One alternative of a dependency: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The package (or virtual package) name.
    pub name: String,
    /// The version constraint, if any.
    pub constraint: Option<(String, String)>,
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.constraint {
            Some((op, v)) => write!(f, "{} ({op} {v})", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// Parses a `Depends`-style field into groups of alternatives.
pub fn relations(field: &str) -> Vec<Vec<Relation>> {
    field
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|group| {
            group
                .split('|')
                .map(|alt| {
                    // Drop architecture restrictions `[amd64]` and build profiles `<!nocheck>`.
                    let alt = alt.split(['[', '<']).next().unwrap_or(alt).trim();
                    let (name, constraint) = match alt.split_once('(') {
                        Some((n, c)) => {
                            let c = c.trim_end_matches(')').trim();
                            let op_len = c.chars().take_while(|ch| "<>=".contains(*ch)).count();
                            (
                                n.trim(),
                                Some((c[..op_len].to_string(), c[op_len..].trim().to_string())),
                            )
                        }
                        None => (alt, None),
                    };
                    let name = name.split(':').next().unwrap_or(name).to_string();
                    Relation { name, constraint }
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stanzas_and_relations() {
        let s = parse(
            "Package: a\nDepends: b (>= 1.2), c | d:any\nDescription: x\n more\n\nPackage: b\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0]["Description"], "x\nmore");
        let r = relations(&s[0]["Depends"]);
        assert_eq!(r[0][0].constraint, Some((">=".into(), "1.2".into())));
        assert_eq!(r[1][1].name, "d");
        assert_eq!(r.len(), 2);
    }
}
