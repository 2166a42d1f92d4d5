//! The fuzzing harness: a seeded RNG, a bounded number of cases per target,
//! and structure-aware mutation of valid seed inputs.
//!
//! `KILN_FUZZ_CASES` overrides each target's case count, `KILN_FUZZ_SEED`
//! the base seed (CI uses a fixed one, `scripts/fuzz.sh` fresh ones), and
//! `KILN_FUZZ_REPLAY=SEED` runs exactly the one case a failure printed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

pub use fastrand::Rng;

/// The base seed when `KILN_FUZZ_SEED` is not set: CI runs are repeatable.
const DEFAULT_SEED: u64 = 0x6b69_6c6e_6675_7a7a;

/// A case slower than this is reported as a failure (a hang in the making).
const SLOW: Duration = Duration::from_secs(20);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// The seed of case `i` of `target` under `base`.
fn case_seed(base: u64, target: &str, i: u64) -> u64 {
    let mut h = base ^ 0x9e37_79b9_7f4a_7c15;
    for b in target.bytes().chain(i.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (h >> 29)
}

/// Runs `case` for `default_cases` seeds (or `KILN_FUZZ_CASES`); panics at the
/// end if any case panicked or was too slow, naming the seeds to replay.
pub fn run(target: &str, default_cases: u64, mut case: impl FnMut(&mut Rng)) {
    let seeds: Vec<u64> = match env_u64("KILN_FUZZ_REPLAY") {
        Some(s) => vec![s],
        None => {
            let base = env_u64("KILN_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
            let n = env_u64("KILN_FUZZ_CASES").unwrap_or(default_cases);
            (0..n).map(|i| case_seed(base, target, i)).collect()
        }
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    for &seed in &seeds {
        let t = Instant::now();
        let mut rng = Rng::with_seed(seed);
        let outcome = catch_unwind(AssertUnwindSafe(|| case(&mut rng)));
        if outcome.is_err() {
            failed.push(format!("{seed:#x} (panicked)"));
        } else if t.elapsed() > SLOW {
            failed.push(format!("{seed:#x} (took {:?})", t.elapsed()));
        }
    }
    // One line per target, read by scripts/fuzz.sh.
    eprintln!(
        "fuzz-result target={target} cases={} failures={} secs={:.1}",
        seeds.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{target}: {} failing case(s); replay with KILN_FUZZ_REPLAY=SEED cargo test --test it {target}: {}",
        failed.len(),
        failed.join(", ")
    );
}

/// Bytes worth trying in any format: boundaries, separators, digits.
const INTERESTING: &[u8] = b"\0\xff\x7f\x80 \t\n\r0179/.:-~+=\"'[]{}()<>,|\\#";

/// A random byte string of up to `max` bytes.
pub fn bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = rng.usize(0..=max);
    (0..n).map(|_| rng.u8(..)).collect()
}

/// One of `items`.
pub fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.usize(..items.len())]
}

/// `seed` changed by one to eight random edits: bit flips, interesting
/// bytes, `tokens` of the format, insertions, deletions, duplications,
/// truncation and splices of `others`.
pub fn mutate(rng: &mut Rng, seed: &[u8], tokens: &[&[u8]], others: &[&[u8]]) -> Vec<u8> {
    let mut out = seed.to_vec();
    // Mostly one edit, sometimes a burst: one edit keeps more inputs valid
    // enough to reach the parser's later stages.
    let edits = if rng.bool() { 1 } else { rng.usize(1..=8) };
    for _ in 0..edits {
        let len = out.len();
        let at = rng.usize(0..=len);
        match rng.u8(0..10) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                out[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                out[i] = pick(rng, INTERESTING);
            }
            2 if !tokens.is_empty() => {
                let t = pick(rng, tokens);
                out.splice(at..at, t.iter().copied());
            }
            3 => {
                let b = bytes(rng, 16);
                out.splice(at..at, b);
            }
            4 if len > 0 => {
                let end = (at + rng.usize(1..=64)).min(len);
                out.drain(at.min(end)..end);
            }
            5 if len > 0 => {
                let from = rng.usize(..len);
                let end = (from + rng.usize(1..=256)).min(len);
                let piece = out[from..end].to_vec();
                out.splice(at..at, piece);
            }
            6 => out.truncate(at),
            7 if !others.is_empty() => {
                let o = pick(rng, others);
                if !o.is_empty() {
                    let from = rng.usize(..o.len());
                    let end = (from + rng.usize(1..=512)).min(o.len());
                    out.splice(at..at, o[from..end].iter().copied());
                }
            }
            8 if len > 0 => {
                // Overwrite a run with a number-ish field (sizes, modes, counts).
                let n = pick(
                    rng,
                    &[
                        "0",
                        "1",
                        "-1",
                        "4294967296",
                        "99999999999",
                        "777",
                        "18446744073709551616",
                    ],
                )
                .as_bytes();
                let end = (at + n.len()).min(len);
                out.splice(at..end, n.iter().copied());
            }
            _ => {
                if len > 0 {
                    let i = rng.usize(..len);
                    out[i] = rng.u8(..);
                }
            }
        }
    }
    out
}

/// Either a mutation of one of `seeds` (mostly) or random bytes.
pub fn input(rng: &mut Rng, seeds: &[&[u8]], tokens: &[&[u8]]) -> Vec<u8> {
    match rng.u8(0..20) {
        0 => bytes(rng, 512),
        1 => pick(rng, seeds).to_vec(),
        _ => {
            let s = pick(rng, seeds);
            mutate(rng, s, tokens, seeds)
        }
    }
}
