//! Debian version comparison against `dpkg --compare-versions`, the oracle:
//! real versions from the host's Packages files, sampled pairs, and
//! generated tricky versions (`~`, `+`, epochs, revisions, leading zeros).

use std::cmp::Ordering;
use std::io::Write;
use std::process::{Command, Stdio};

use kiln::source::deb::version::{compare, satisfies};

use super::gen::{self, Rng};
use super::seeds;

/// A valid version (as dpkg accepts it) built from tricky pieces.
fn tricky(rng: &mut Rng, real: &[String]) -> String {
    if !real.is_empty() && rng.bool() {
        // A real version, edited in a way that stays valid.
        let mut v = real[rng.usize(..real.len())].clone();
        match rng.u8(0..6) {
            0 => v.push('~'),
            1 => v.push_str(gen::pick(rng, &["+b1", "~rc1", ".0", "+deb12u1", "a", "0"])),
            2 => v = format!("{}:{v}", rng.u8(0..3)),
            3 => v = v.replacen('.', gen::pick(rng, &["~", "+", ".0", "..", "~~"]), 1),
            4 => v = v.replace('0', "00"),
            _ => {}
        }
        if valid(&v) {
            return v;
        }
    }
    let piece = |rng: &mut Rng, revision: bool| {
        let mut s = String::new();
        if !revision {
            s.push(char::from(b'0' + rng.u8(0..10)));
        }
        for _ in 0..rng.usize(0..6) {
            let p: &str = gen::pick(
                rng,
                &[
                    "0",
                    "1",
                    "9",
                    "00",
                    "01",
                    "10",
                    "999999999999999999999",
                    ".",
                    "~",
                    "~~",
                    "+",
                    "a",
                    "Z",
                    "rc",
                    "~rc",
                    "+b",
                    "dfsg",
                ],
            );
            s.push_str(p);
        }
        if revision && s.is_empty() {
            s.push('0');
        }
        s
    };
    let mut v = String::new();
    if rng.u8(0..4) == 0 {
        v.push_str(gen::pick(rng, &["0:", "1:", "2:", "00:", "10:"]));
    }
    v.push_str(&piece(rng, false));
    if rng.bool() {
        // Hyphens inside the upstream part are allowed when there is a revision.
        if rng.u8(0..4) == 0 {
            v.push_str("-1");
        }
        v.push('-');
        v.push_str(&piece(rng, true));
    }
    v
}

/// Whether dpkg accepts `v` without complaint (so the oracle is meaningful).
fn valid(v: &str) -> bool {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) => (Some(e), r),
        None => (None, v),
    };
    if epoch.is_some_and(|e| e.is_empty() || !e.bytes().all(|c| c.is_ascii_digit()) || e.len() > 9)
    {
        return false;
    }
    let (up, rev) = match rest.rsplit_once('-') {
        Some((u, r)) => (u, Some(r)),
        None => (rest, None),
    };
    let ok = |c: u8, extra: &[u8]| {
        c.is_ascii_alphanumeric() || b".+~".contains(&c) || extra.contains(&c)
    };
    up.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && up
            .bytes()
            .all(|c| ok(c, if rev.is_some() { b"-" } else { b"" }))
        && rev.is_none_or(|r| !r.is_empty() && r.bytes().all(|c| ok(c, b"")))
}

/// Asks dpkg, in one shell, whether each pair orders as kiln says; returns
/// the pairs where dpkg disagrees, with dpkg's exit codes.
fn dpkg_disagreements(pairs: &[(String, String, Ordering)]) -> Vec<String> {
    let mut script = String::new();
    for (a, b, o) in pairs {
        let op = match o {
            Ordering::Less => "lt",
            Ordering::Equal => "eq",
            Ordering::Greater => "gt",
        };
        script.push_str(&format!(
            "dpkg --compare-versions '{a}' {op} '{b}' 2>/dev/null; echo $?\n"
        ));
    }
    let mut child = Command::new("sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the script");
    let out = child.wait_with_output().expect("sh finishes");
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(codes.len(), pairs.len(), "one dpkg answer per pair");
    pairs
        .iter()
        .zip(codes)
        .filter(|(_, c)| c != "0")
        .map(|((a, b, o), c)| format!("kiln says `{a}` {o:?} `{b}`, dpkg exits {c}"))
        .collect()
}

/// Sampled pairs of real and tricky versions, 500 per case, checked by dpkg.
#[test]
fn version_vs_dpkg() {
    assert!(
        Command::new("dpkg")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "dpkg, the oracle, must be installed"
    );
    let real = seeds::real_versions();
    let mut checked = 0usize;
    let mut mismatches = Vec::new();
    // Cases are batches of pairs; one batch is one shell running dpkg.
    gen::run("version_vs_dpkg", 3, |rng| {
        let mut pairs = Vec::new();
        for _ in 0..500 {
            let a = tricky(rng, &real);
            let b = match rng.u8(0..4) {
                0 => tricky(rng, &real),
                1 => a.clone(),
                _ if !real.is_empty() => real[rng.usize(..real.len())].clone(),
                _ => tricky(rng, &[]),
            };
            if valid(&a) && valid(&b) {
                let o = compare(&a, &b);
                assert_eq!(
                    compare(&b, &a),
                    o.reverse(),
                    "antisymmetry of `{a}` and `{b}`"
                );
                pairs.push((a, b, o));
            }
        }
        checked += pairs.len();
        let bad = dpkg_disagreements(&pairs);
        mismatches.extend(bad.iter().cloned());
        assert!(
            bad.is_empty(),
            "kiln and dpkg disagree:\n{}",
            bad.join("\n")
        );
    });
    eprintln!(
        "fuzz-dpkg real_versions={} pairs={checked} mismatches={}",
        real.len(),
        mismatches.len()
    );
}

/// Any text at all: no panic, a total order (reflexive, antisymmetric,
/// transitive on triples), and `satisfies` consistent with `compare`.
/// All the host's real versions sorted by kiln; each case has dpkg check a
/// run of 500 neighbours (together, the runs cover the whole list).
#[test]
fn version_sorted_real_vs_dpkg() {
    let mut real = seeds::real_versions();
    real.retain(|v| valid(v));
    real.sort_by(|a, b| compare(a, b));
    if real.len() < 2 {
        return;
    }
    let mut checked = 0usize;
    gen::run("version_sorted_real_vs_dpkg", 2, |rng| {
        let start = rng.usize(..real.len() - 1);
        let pairs: Vec<_> = real[start..real.len().min(start + 501)]
            .windows(2)
            .map(|w| (w[0].clone(), w[1].clone(), compare(&w[0], &w[1])))
            .collect();
        checked += pairs.len();
        let bad = dpkg_disagreements(&pairs);
        assert!(
            bad.is_empty(),
            "kiln and dpkg disagree:\n{}",
            bad.join("\n")
        );
    });
    eprintln!(
        "fuzz-dpkg sorted_real_versions={} neighbour_pairs={checked}",
        real.len()
    );
}

#[test]
fn version_order_properties() {
    let real = seeds::real_versions();
    gen::run("version_order_properties", 3000, |rng| {
        let mut v = || -> String {
            match rng.u8(0..3) {
                0 => String::from_utf8_lossy(&gen::bytes(rng, 24)).into_owned(),
                1 => {
                    let t = tricky(rng, &real);
                    String::from_utf8_lossy(&gen::mutate(
                        rng,
                        t.as_bytes(),
                        &[b"~", b":", b"-"],
                        &[],
                    ))
                    .into_owned()
                }
                _ => tricky(rng, &real),
            }
        };
        let (a, b, c) = (v(), v(), v());
        assert_eq!(compare(&a, &a), Ordering::Equal, "`{a}` = itself");
        assert_eq!(compare(&a, &b), compare(&b, &a).reverse(), "`{a}` vs `{b}`");
        if compare(&a, &b) != Ordering::Greater && compare(&b, &c) != Ordering::Greater {
            assert_ne!(
                compare(&a, &c),
                Ordering::Greater,
                "`{a}` <= `{b}` <= `{c}`"
            );
        }
        assert_eq!(satisfies(&a, ">=", &b), compare(&a, &b) != Ordering::Less);
        assert_eq!(satisfies(&a, "<<", &b), compare(&a, &b) == Ordering::Less);
    });
}

/// Several thousand pairs drawn deterministically from the host's real
/// versions (sorted, distinct): evenly spaced neighbours across the whole
/// list, and pairs picked by a fixed-seed generator; dpkg checks each.
#[test]
fn version_real_pairs_vs_dpkg() {
    let mut real = seeds::real_versions();
    real.retain(|v| valid(v));
    real.sort_by(|a, b| compare(a, b).then_with(|| a.cmp(b)));
    real.dedup();
    if real.len() < 2 {
        eprintln!("SKIPPED version_real_pairs_vs_dpkg: the host has no apt lists");
        return;
    }
    let stride = (real.len() / 3000).max(1);
    let mut pairs: Vec<(String, String, Ordering)> = (0..real.len() - 1)
        .step_by(stride)
        .map(|i| (real[i].clone(), real[i + 1].clone()))
        .map(|(a, b)| {
            let o = compare(&a, &b);
            (a, b, o)
        })
        .collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % n
    };
    for _ in 0..2000 {
        let (a, b) = (
            real[next(real.len())].clone(),
            real[next(real.len())].clone(),
        );
        let o = compare(&a, &b);
        pairs.push((a, b, o));
    }
    let bad = dpkg_disagreements(&pairs);
    eprintln!(
        "version oracle: {} pairs of {} distinct real versions checked by dpkg --compare-versions, {} disagree",
        pairs.len(),
        real.len(),
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "kiln and dpkg disagree:\n{}",
        bad.join("\n")
    );
}
