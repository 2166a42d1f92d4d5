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

/// Some fields of a stanza, held compactly for the tens of thousands of
/// packages an index lists: one allocation, `name\0value\0…` (a value never
/// holds a NUL: the text is read as UTF-8 with replacement, and NULs are
/// dropped). Empty, it allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(Box<str>);

impl Fields {
    /// The value of field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        let mut parts = self.0.split('\0');
        while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            if k == name {
                return Some(v);
            }
        }
        None
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(fields: I) -> Self {
        let mut text = String::new();
        for (k, v) in fields {
            if !text.is_empty() {
                text.push('\0');
            }
            text.extend(k.as_ref().chars().filter(|c| *c != '\0'));
            text.push('\0');
            text.extend(v.as_ref().chars().filter(|c| *c != '\0'));
        }
        Fields(text.into_boxed_str())
    }
}

/// Stanzas written to it in pieces (a decompressor's output), handed one at
/// a time to a callback with only the fields in `keep`, so that a large
/// `Packages` index is never held whole, nor its unused fields.
pub struct StanzaSink<'k, F: FnMut(Stanza)> {
    buf: Vec<u8>,
    keep: &'k [&'k str],
    each: F,
}

impl<'k, F: FnMut(Stanza)> StanzaSink<'k, F> {
    /// A sink that calls `each` with every stanza, keeping the fields `keep`.
    pub fn new(keep: &'k [&'k str], each: F) -> Self {
        StanzaSink {
            buf: Vec::new(),
            keep,
            each,
        }
    }

    /// Hands over the last stanza (text without a blank line after it).
    pub fn finish(mut self) {
        let rest = std::mem::take(&mut self.buf);
        self.parse(&rest);
    }

    fn parse(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let mut cur = Stanza::new();
        // The field that continuation lines extend, if it is kept.
        let mut last: Option<&str> = None;
        for line in text.lines() {
            if line.trim().is_empty() {
                if !cur.is_empty() {
                    (self.each)(std::mem::take(&mut cur));
                }
                last = None;
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(k) = last {
                    let v = cur.entry(k.to_string()).or_default();
                    v.push('\n');
                    v.push_str(line.trim_start());
                }
                continue;
            }
            last = None;
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim();
                if let Some(kept) = self.keep.iter().find(|f| **f == k) {
                    cur.insert(k.to_string(), v.trim().to_string());
                    last = Some(kept);
                }
            }
        }
        if !cur.is_empty() {
            (self.each)(cur);
        }
    }
}

impl<F: FnMut(Stanza)> std::io::Write for StanzaSink<'_, F> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let from = self.buf.len().saturating_sub(1);
        self.buf.extend_from_slice(data);
        // Everything up to the last blank line is whole stanzas.
        if let Some(at) = self.buf[from..].windows(2).rposition(|w| w == b"\n\n") {
            let end = from + at + 2;
            let whole: Vec<u8> = self.buf.drain(..end).collect();
            self.parse(&whole);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One alternative of a dependency, as dpkg reads it:
/// `name[:archqual] [(op version)] [[arch …]] [<profile …> …]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The package (or virtual package) name.
    pub name: String,
    /// The architecture qualifier after `:` (`any`, `native`, `amd64`), if any.
    pub arch_qualifier: Option<String>,
    /// The version constraint, if any: an operator (`<<`, `<=`, `=`, `>=`,
    /// `>>`; the obsolete `<` and `>` are read as `<=` and `>=`) and a version.
    pub constraint: Option<(String, String)>,
    /// The architecture restriction `[amd64 !arm64]`, as written (empty: none).
    pub arches: Vec<String>,
    /// Whether a build-profile restriction `<…>` is attached (binary relations ignore such alternatives).
    pub profiled: bool,
}

impl Relation {
    /// An unqualified, unconstrained relation on `name`.
    pub fn named(name: &str) -> Relation {
        Relation {
            name: name.to_string(),
            arch_qualifier: None,
            constraint: None,
            arches: Vec::new(),
            profiled: false,
        }
    }

    /// Whether the architecture restriction admits `arch` (no restriction admits all).
    pub fn applies_to(&self, arch: &str) -> bool {
        if self.arches.is_empty() {
            return true;
        }
        let negated = self.arches.iter().all(|a| a.starts_with('!'));
        if negated {
            !self.arches.iter().any(|a| arch_matches(&a[1..], arch))
        } else {
            self.arches.iter().any(|a| arch_matches(a, arch))
        }
    }
}

/// Whether the architecture (or wildcard such as `any`, `linux-any`, `any-amd64`) `pattern` matches `arch`.
pub fn arch_matches(pattern: &str, arch: &str) -> bool {
    pattern == arch
        || pattern == "any"
        || pattern == "linux-any"
        || pattern == format!("any-{arch}")
        || pattern == format!("linux-{arch}")
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(q) = &self.arch_qualifier {
            write!(f, ":{q}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({op} {v})")?;
        }
        Ok(())
    }
}

/// Parses one alternative; `None` when it is not a relation dpkg would accept.
fn relation(alt: &str) -> Option<Relation> {
    let alt = alt.trim();
    // The name (with its qualifier) runs to the first space, `(`, `[` or `<`.
    let end = alt
        .find(|c: char| c.is_whitespace() || "([<".contains(c))
        .unwrap_or(alt.len());
    let (head, mut rest) = alt.split_at(end);
    if head.is_empty() {
        return None;
    }
    let (name, arch_qualifier) = match head.split_once(':') {
        Some((n, q)) => (n, Some(q.to_string())),
        None => (head, None),
    };
    let mut r = Relation::named(name);
    r.arch_qualifier = arch_qualifier;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('(') {
            let close = after.find(')')?;
            let inner = after[..close].trim();
            let op_len = inner
                .find(|c: char| !"<>=".contains(c))
                .unwrap_or(inner.len());
            let op = match &inner[..op_len] {
                "<<" => "<<",
                "<=" | "<" => "<=",
                "=" => "=",
                ">=" | ">" => ">=",
                ">>" => ">>",
                _ => return None,
            };
            let version = inner[op_len..].trim();
            if version.is_empty() {
                return None;
            }
            r.constraint = Some((op.to_string(), version.to_string()));
            rest = &after[close + 1..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let close = after.find(']')?;
            r.arches = after[..close]
                .split_whitespace()
                .map(String::from)
                .collect();
            rest = &after[close + 1..];
        } else if let Some(after) = rest.strip_prefix('<') {
            let close = after.find('>')?;
            r.profiled = true;
            rest = &after[close + 1..];
        } else if rest.is_empty() {
            return Some(r);
        } else {
            return None;
        }
    }
}

/// Parses a `Depends`-style field into groups of alternatives (every
/// alternative, whatever its architecture restriction: see [`relations_for`]).
pub fn relations(field: &str) -> Vec<Vec<Relation>> {
    field
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|group| group.split('|').filter_map(relation).collect::<Vec<_>>())
        .filter(|g| !g.is_empty())
        .collect()
}

/// The groups of a binary package's relation field that apply on `arch`:
/// alternatives restricted to other architectures, or to build profiles, are
/// dropped, and so are groups left empty.
pub fn relations_for(field: &str, arch: &str) -> Vec<Vec<Relation>> {
    relations(field)
        .into_iter()
        .map(|g| {
            g.into_iter()
                .filter(|r| !r.profiled && r.applies_to(arch))
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
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

    /// From bookworm's Packages: `nginx-light` depends on `nginx (<< 1.22.1-9.1~)`,
    /// which the parser once cut at the `<`, leaving an empty constraint.
    #[test]
    fn keeps_less_than_constraints() {
        let r = relations("nginx (<< 1.22.1-9.1~), nginx (>= 1.22.1-9), libc6 (>= 2.34)");
        assert_eq!(
            r[0][0].constraint,
            Some(("<<".into(), "1.22.1-9.1~".into()))
        );
        assert_eq!(r[0][0].to_string(), "nginx (<< 1.22.1-9.1~)");
        assert_eq!(r[1][0].constraint, Some((">=".into(), "1.22.1-9".into())));
        let r = relations("a (<= 2), b (< 3), c (> 4), d(>>5), e (=1)");
        let ops: Vec<_> = r
            .iter()
            .map(|g| g[0].constraint.clone().unwrap().0)
            .collect();
        assert_eq!(ops, ["<=", "<=", ">=", ">>", "="]);
        assert_eq!(r[3][0].constraint, Some((">>".into(), "5".into())));
    }

    #[test]
    fn reads_qualifiers_restrictions_and_profiles() {
        let r = relations("python3:any (>= 3.11~), libfoo [amd64 arm64] <!nocheck> | bar [!amd64], baz:amd64 <stage1 cross> <!nocheck>");
        assert_eq!(r[0][0].name, "python3");
        assert_eq!(r[0][0].arch_qualifier.as_deref(), Some("any"));
        assert_eq!(r[0][0].constraint, Some((">=".into(), "3.11~".into())));
        assert!(r[1][0].applies_to("amd64") && !r[1][0].applies_to("armhf"));
        assert!(r[1][0].profiled);
        assert!(!r[1][1].applies_to("amd64") && r[1][1].applies_to("arm64"));
        assert_eq!(r[2][0].arch_qualifier.as_deref(), Some("amd64"));
        let bin = relations_for("libfoo [amd64] | bar [!amd64], t <!nocheck>, u", "amd64");
        assert_eq!(bin.len(), 2);
        assert_eq!(bin[0].len(), 1);
        assert_eq!(bin[0][0].name, "libfoo");
        assert_eq!(bin[1][0].name, "u");
        assert!(
            relations("a (<< )").is_empty(),
            "an empty version is not a relation"
        );
    }
}
