//! Dependency resolution: requested package names → the full set to
//! install, one version per package, deterministically.
//!
//! `Pre-Depends` and `Depends` are followed, with version constraints,
//! alternatives (`a | b`: the first that can be satisfied, unless another is
//! already chosen) and virtual packages (`Provides`; a real package of the
//! name beats a provider). Packages already installed (by an earlier layer)
//! count as present, and `Essential: yes` packages are not pulled in unless
//! asked for. An impossible request names the chain of dependencies.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::control::{relations, relations_for, Relation};
use super::version::{compare, satisfies};
use super::Package;

/// The packages of one architecture, indexed for resolution.
pub struct Universe<'a> {
    arch: String,
    by_name: BTreeMap<&'a str, Vec<&'a Package>>,
    providers: BTreeMap<String, Vec<(&'a Package, Option<String>)>>,
    /// Name → (version, its `Conflicts` and `Breaks` on this architecture), for packages that have any.
    negative: BTreeMap<&'a str, Vec<(&'a str, Vec<Relation>)>>,
}

/// Why a request cannot be met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsatisfiable {
    /// A requested name is neither a package nor provided by one.
    Unknown(String),
    /// A dependency cannot be met; the chain from the request to it.
    Chain(Vec<String>),
}

/// `Multi-Arch` of a package (`no` when absent).
fn multi_arch(p: &Package) -> &str {
    p.stanza.get("Multi-Arch").unwrap_or("no")
}

impl<'a> Universe<'a> {
    /// Indexes `packages` for architecture `arch` (and `all`).
    pub fn new(packages: impl IntoIterator<Item = &'a Package>, arch: &str) -> Universe<'a> {
        let mut by_name: BTreeMap<&str, Vec<&Package>> = BTreeMap::new();
        let mut providers: BTreeMap<String, Vec<(&Package, Option<String>)>> = BTreeMap::new();
        let mut negative: BTreeMap<&str, Vec<(&str, Vec<Relation>)>> = BTreeMap::new();
        for p in packages
            .into_iter()
            .filter(|p| p.arch == arch || p.arch == "all")
        {
            by_name.entry(p.name.as_str()).or_default().push(p);
            let rels: Vec<Relation> = ["Conflicts", "Breaks"]
                .iter()
                .filter_map(|f| p.stanza.get(f))
                .flat_map(|f| relations_for(f, arch))
                .flatten()
                .collect();
            if !rels.is_empty() {
                negative
                    .entry(p.name.as_str())
                    .or_default()
                    .push((p.version.as_str(), rels));
            }
            if let Some(field) = p.stanza.get("Provides") {
                for group in relations(field) {
                    for r in group {
                        let version = r.constraint.filter(|(op, _)| op == "=").map(|(_, v)| v);
                        providers.entry(r.name).or_default().push((p, version));
                    }
                }
            }
        }
        for list in by_name.values_mut() {
            // Highest version first; ties (the same version twice) by path, for determinism.
            list.sort_by(|a, b| compare(&b.version, &a.version).then_with(|| a.path.cmp(&b.path)));
        }
        // Among providers, prefer what apt would: higher priority, then name.
        let rank = |p: &Package| match p.stanza.get("Priority") {
            Some("required") => 0,
            Some("important") => 1,
            Some("standard") => 2,
            Some("optional") => 3,
            _ => 4,
        };
        for list in providers.values_mut() {
            list.sort_by(|a, b| {
                rank(a.0)
                    .cmp(&rank(b.0))
                    .then_with(|| a.0.name.cmp(&b.0.name))
                    .then_with(|| compare(&b.0.version, &a.0.version))
            });
        }
        Universe {
            arch: arch.to_string(),
            by_name,
            providers,
            negative,
        }
    }

    /// Whether package `p` (of this universe's architecture or `all`) may
    /// satisfy `r`'s architecture qualifier, by the `Multi-Arch` rules:
    /// `:any` needs `Multi-Arch: allowed`; `foreign` satisfies any
    /// architecture; otherwise the architecture must match (`all` counts as native).
    fn arch_ok(&self, r: &Relation, p: &Package) -> bool {
        match r.arch_qualifier.as_deref() {
            None | Some("native") => true,
            Some("any") => multi_arch(p) == "allowed",
            Some(a) => a == self.arch || multi_arch(p) == "foreign",
        }
    }

    /// Whether `p` itself (not a provider) satisfies `r`.
    fn real_satisfies(&self, r: &Relation, p: &Package) -> bool {
        p.name == r.name
            && self.arch_ok(r, p)
            && r.constraint
                .as_ref()
                .is_none_or(|(op, v)| satisfies(&p.version, op, v))
    }

    /// Whether `p` provides `r` (a versioned relation needs a versioned `Provides`).
    fn provides(&self, r: &Relation, p: &Package, provided: Option<&String>) -> bool {
        self.arch_ok(r, p)
            && match (&r.constraint, provided) {
                (None, _) => true,
                (Some((op, v)), Some(pv)) => satisfies(pv, op, v),
                (Some(_), None) => false,
            }
    }

    /// Whether `p` satisfies `r`, itself or by a `Provides`.
    fn matches(&self, r: &Relation, p: &Package) -> bool {
        self.real_satisfies(r, p)
            || self.providers.get(&r.name).is_some_and(|list| {
                list.iter().any(|(q, provided)| {
                    q.name == p.name
                        && q.version == p.version
                        && self.provides(r, q, provided.as_ref())
                })
            })
    }

    fn satisfied_by(&self, r: &Relation, chosen: &BTreeMap<String, &'a Package>) -> bool {
        if chosen
            .get(&r.name)
            .is_some_and(|p| self.real_satisfies(r, p))
        {
            return true;
        }
        self.providers.get(&r.name).is_some_and(|list| {
            list.iter().any(|(p, provided)| {
                chosen.get(&p.name).is_some_and(|c| c.version == p.version)
                    && self.provides(r, p, provided.as_ref())
            })
        })
    }

    /// Whether installing `p` next to the packages `chosen` breaks a
    /// `Conflicts` or `Breaks` of either side.
    fn conflicts(&self, p: &Package, chosen: &BTreeMap<String, &'a Package>) -> bool {
        let rels = |who: &Package| {
            self.negative
                .get(who.name.as_str())
                .and_then(|l| l.iter().find(|(v, _)| *v == who.version))
                .map_or(&[][..], |(_, r)| &r[..])
        };
        let against = |who: &Package, other: &Package| {
            rels(who)
                .iter()
                .any(|r| other.name != who.name && self.matches(r, other))
        };
        chosen
            .values()
            .filter(|c| c.name != p.name)
            .any(|c| against(p, c) || against(c, p))
    }

    /// The package that would satisfy `r` next to `chosen`: the newest real
    /// one that conflicts with nothing chosen, else such a provider.
    fn candidate(
        &self,
        r: &Relation,
        chosen: &BTreeMap<String, &'a Package>,
    ) -> Option<&'a Package> {
        let real = self.by_name.get(r.name.as_str()).and_then(|list| {
            list.iter()
                .find(|p| self.real_satisfies(r, p) && !self.conflicts(p, chosen))
                .copied()
        });
        real.or_else(|| {
            self.providers
                .get(&r.name)?
                .iter()
                .find_map(|(p, provided)| {
                    (self.provides(r, p, provided.as_ref()) && !self.conflicts(p, chosen))
                        .then_some(*p)
                })
        })
    }

    /// Resolves `requested` on top of `installed`; returns the packages to add, by name.
    ///
    /// Each group of alternatives is satisfied, as apt does, by an alternative
    /// already present (installed, or chosen earlier in this resolution);
    /// otherwise by the first alternative that can be installed without
    /// conflicting with what is present.
    pub fn resolve(
        &self,
        requested: &[String],
        installed: &BTreeMap<String, &'a Package>,
    ) -> Result<Vec<&'a Package>, Unsatisfiable> {
        let mut chosen = installed.clone();
        let mut added: BTreeSet<String> = BTreeSet::new();
        let mut parent: BTreeMap<String, String> = BTreeMap::new();
        let mut queue: VecDeque<&Package> = VecDeque::new();
        for name in requested {
            let r = Relation::named(name);
            if self.satisfied_by(&r, &chosen) {
                continue;
            }
            let p = self
                .candidate(&r, &chosen)
                .ok_or_else(|| Unsatisfiable::Unknown(name.clone()))?;
            if chosen.insert(p.name.clone(), p).is_none() {
                added.insert(p.name.clone());
                queue.push_back(p);
            }
        }
        while let Some(p) = queue.pop_front() {
            let fields = ["Pre-Depends", "Depends"];
            for field in fields.iter().filter_map(|f| p.stanza.get(f)) {
                for group in relations_for(field, &self.arch) {
                    if group.iter().any(|r| self.satisfied_by(r, &chosen)) {
                        continue;
                    }
                    let pick = group.iter().find_map(|r| self.candidate(r, &chosen));
                    let Some(dep) = pick else {
                        let mut chain = vec![p.name.clone()];
                        let mut cur = p.name.clone();
                        while let Some(up) = parent.get(&cur) {
                            chain.push(up.clone());
                            cur = up.clone();
                        }
                        chain.reverse();
                        let alts: Vec<String> = group.iter().map(ToString::to_string).collect();
                        chain.push(alts.join(" | "));
                        return Err(Unsatisfiable::Chain(chain));
                    };
                    if dep.essential() && !requested.contains(&dep.name) {
                        continue;
                    }
                    if let Some(existing) = chosen.get(&dep.name) {
                        if existing.version != dep.version {
                            let mut chain = vec![p.name.clone()];
                            chain.push(format!(
                                "{} (needs a version other than the chosen {})",
                                group
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join(" | "),
                                existing.version
                            ));
                            return Err(Unsatisfiable::Chain(chain));
                        }
                        continue;
                    }
                    chosen.insert(dep.name.clone(), dep);
                    parent.insert(dep.name.clone(), p.name.clone());
                    added.insert(dep.name.clone());
                    queue.push_back(dep);
                }
            }
        }
        Ok(added.iter().map(|n| chosen[n]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn pkg(name: &str, version: &str, fields: &[(&str, &str)]) -> Package {
        let stanza = fields.iter().copied().collect();
        Package {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            path: format!("pool/{name}_{version}.deb"),
            sha256: Digest::of(name.as_bytes()),
            size: 1,
            stanza,
            repository: "r".into(),
        }
    }

    fn names(v: &[&Package]) -> Vec<String> {
        v.iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect()
    }

    #[test]
    fn follows_versions_alternatives_and_virtuals() {
        let all = vec![
            pkg(
                "app",
                "1",
                &[("Depends", "libc (>= 2), mta | postfix, awk")],
            ),
            pkg("libc", "1", &[]),
            pkg("libc", "3", &[]),
            pkg("postfix", "1", &[("Provides", "mta")]),
            pkg("mawk", "1", &[("Provides", "awk")]),
            pkg("awk", "9", &[]),
            pkg("base", "1", &[("Essential", "yes")]),
            pkg("uses-base", "1", &[("Depends", "base")]),
        ];
        let u = Universe::new(&all, "amd64");
        let got = u.resolve(&["app".into()], &BTreeMap::new()).unwrap();
        // A real `awk` beats the provider `mawk`; the newest `libc` is taken.
        assert_eq!(names(&got), ["app=1", "awk=9", "libc=3", "postfix=1"]);
        let got = u.resolve(&["uses-base".into()], &BTreeMap::new()).unwrap();
        assert_eq!(
            names(&got),
            ["uses-base=1"],
            "essential packages are not pulled in"
        );
        let installed: BTreeMap<String, &Package> =
            [("libc".to_string(), &all[2])].into_iter().collect();
        let got = u.resolve(&["app".into()], &installed).unwrap();
        assert!(
            !names(&got).contains(&"libc=3".to_string()),
            "installed packages count"
        );
    }

    #[test]
    fn names_the_chain_of_an_impossible_request() {
        let all = vec![
            pkg("a", "1", &[("Depends", "b")]),
            pkg("b", "1", &[("Depends", "c (>= 5)")]),
            pkg("c", "1", &[]),
        ];
        let u = Universe::new(&all, "amd64");
        assert_eq!(
            u.resolve(&["a".into()], &BTreeMap::new()).err(),
            Some(Unsatisfiable::Chain(vec![
                "a".into(),
                "b".into(),
                "c (>= 5)".into()
            ]))
        );
        assert_eq!(
            u.resolve(&["zzz".into()], &BTreeMap::new()).err(),
            Some(Unsatisfiable::Unknown("zzz".into()))
        );
    }

    #[test]
    fn honours_upper_bounds_qualifiers_and_provides_versions() {
        let all = vec![
            pkg(
                "nginx-light",
                "1.22.1-9",
                &[(
                    "Depends",
                    "nginx (<< 1.22.1-9.1~), nginx (>= 1.22.1-9), python3:any (>= 3.11~)",
                )],
            ),
            pkg("nginx", "1.22.1-9", &[]),
            pkg("nginx", "1.24.0-1", &[]),
            pkg("python3", "3.11.2-1", &[("Multi-Arch", "allowed")]),
            pkg("uses-any", "1", &[("Depends", "perl:any")]),
            pkg("perl", "5.36", &[]),
            pkg("uses-vp", "1", &[("Depends", "vp (>= 2)")]),
            pkg("vp-old", "1", &[("Provides", "vp")]),
            pkg("vp-new", "1", &[("Provides", "vp (= 2.1)")]),
            pkg(
                "arch-only",
                "1",
                &[("Depends", "x [arm64] | y [amd64], z <!nocheck>")],
            ),
            pkg("y", "1", &[]),
        ];
        let u = Universe::new(&all, "amd64");
        let got = u
            .resolve(&["nginx-light".into()], &BTreeMap::new())
            .unwrap();
        assert_eq!(
            names(&got),
            ["nginx=1.22.1-9", "nginx-light=1.22.1-9", "python3=3.11.2-1"]
        );
        // `perl` is not `Multi-Arch: allowed`, so `perl:any` cannot be met.
        assert!(u.resolve(&["uses-any".into()], &BTreeMap::new()).is_err());
        let got = u.resolve(&["uses-vp".into()], &BTreeMap::new()).unwrap();
        assert_eq!(
            names(&got),
            ["uses-vp=1", "vp-new=1"],
            "only a versioned Provides satisfies"
        );
        let got = u.resolve(&["arch-only".into()], &BTreeMap::new()).unwrap();
        assert_eq!(names(&got), ["arch-only=1", "y=1"]);
    }

    #[test]
    fn alternatives_prefer_what_is_present_and_avoid_conflicts() {
        let all = vec![
            pkg(
                "daemon",
                "1",
                &[("Depends", "systemd-sysv | lsb-base, mta")],
            ),
            pkg("systemd-sysv", "1", &[]),
            pkg("sysvinit-utils", "1", &[("Provides", "lsb-base (= 11.6)")]),
            pkg("exim", "1", &[("Provides", "mta"), ("Conflicts", "mta")]),
            pkg("postfix", "1", &[("Provides", "mta"), ("Conflicts", "mta")]),
            pkg("wants-postfix", "1", &[("Depends", "exim | postfix")]),
            pkg("blocker", "1", &[("Breaks", "exim (<< 2)")]),
        ];
        let u = Universe::new(&all, "amd64");
        let installed: BTreeMap<String, &Package> = [("sysvinit-utils".to_string(), &all[2])]
            .into_iter()
            .collect();
        let got = u.resolve(&["daemon".into()], &installed).unwrap();
        assert_eq!(
            names(&got),
            ["daemon=1", "exim=1"],
            "lsb-base is already provided"
        );
        let installed: BTreeMap<String, &Package> =
            [("blocker".to_string(), &all[6])].into_iter().collect();
        let got = u.resolve(&["wants-postfix".into()], &installed).unwrap();
        assert_eq!(
            names(&got),
            ["postfix=1", "wants-postfix=1"],
            "exim is broken by blocker"
        );
    }
}
