//! Debian version numbers (`[epoch:]upstream[-revision]`) and their ordering,
//! as dpkg compares them (`~` sorts before everything, even the end).

use std::cmp::Ordering;

/// Compares two Debian versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // Non-digit prefixes, character by character.
        loop {
            let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
            let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            let (oa, ob) = (order(ca), order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            a = &a[1..];
            b = &b[1..];
        }
        // Then the numbers.
        let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let na = std::str::from_utf8(&a[..da])
            .unwrap_or("0")
            .trim_start_matches('0');
        let nb = std::str::from_utf8(&b[..db])
            .unwrap_or("0")
            .trim_start_matches('0');
        let c = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if c != Ordering::Equal {
            return c;
        }
        a = &a[da..];
        b = &b[db..];
    }
    Ordering::Equal
}

/// Whether `version` satisfies `op constraint` (`<<`, `<=`, `=`, `>=`, `>>`).
pub fn satisfies(version: &str, op: &str, constraint: &str) -> bool {
    let c = compare(version, constraint);
    match op {
        "<<" | "<" => c == Ordering::Less,
        "<=" => c != Ordering::Greater,
        "=" => c == Ordering::Equal,
        ">=" => c != Ordering::Less,
        ">>" | ">" => c == Ordering::Greater,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_like_dpkg() {
        let ascending = [
            "1.0~rc1",
            "1.0",
            "1.0-1",
            "1.0-1+deb12u1",
            "1.0a",
            "1.1",
            "1.10",
            "2:0.1",
        ];
        for pair in ascending.windows(2) {
            assert_eq!(
                compare(pair[0], pair[1]),
                Ordering::Less,
                "{} < {}",
                pair[0],
                pair[1]
            );
            assert_eq!(compare(pair[1], pair[0]), Ordering::Greater);
        }
        assert_eq!(compare("1.01", "1.1"), Ordering::Equal);
        assert!(satisfies("2.36-9+deb12u4", ">=", "2.36"));
        assert!(!satisfies("2.35", ">=", "2.36"));
        assert!(satisfies("1.0~beta", "<<", "1.0"));
    }
}
