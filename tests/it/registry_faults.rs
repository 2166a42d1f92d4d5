//! The registry client on a bad network and against a lying registry: a
//! seeded fault-injecting proxy (`support::registry::proxy`) on 127.0.0.1 in
//! front of Debian's `docker-registry`, failing a share of the requests with
//! 500, 503, 429 (Docker Hub's error body and `Retry-After`), connection
//! resets and truncated answers, or changing what the registry answers. A
//! push or pull must complete on its first run with the right digest, or, when
//! the registry lies, fail with exit 4 and keep nothing it did not verify.

use crate::support;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::registry::client::*;
use crate::support::registry::proxy::{Fault, Faults, Lie, Proxy};
use crate::support::registry::{layout_blobs, registry, Flavour};
use crate::support::*;

/// `kiln` with short backoff sleeps: 5 ms base, any sleep (a `Retry-After`
/// too) capped at 50 ms, so many faults cost little time.
fn kiln_fast(w: &Work) -> std::process::Command {
    let mut c = kiln(w);
    c.env("KILN_RETRY_BASE_MS", "5")
        .env("KILN_RETRY_MAX_DELAY_MS", "50");
    c
}

/// Writes `size` bytes that gzip cannot shrink (xorshift from `seed`).
fn noise(path: &Path, seed: u64, size: usize) {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    std::fs::write(path, data).unwrap();
}

/// Builds an image of two layers of `mb / 2` MiB of noise each, unique to
/// `name`, into `WORK/img`; returns its digest.
fn build_big_image(w: &Work, name: &str, mb: usize) -> String {
    let marker = unique_marker(name);
    let seed = marker
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ b as u64);
    noise(&w.path().join("a.bin"), seed, mb << 19);
    noise(&w.path().join("b.bin"), seed ^ 0xdead_beef, mb << 19);
    w.write(
        "recipe.toml",
        format!(
            r#"
name = "{name}"

[config]
env = {{ MARKER = "{marker}" }}

[[layers]]
name = "a"
files = [ {{ src = "a.bin", dest = "/a.bin" }} ]

[[layers]]
name = "b"
files = [ {{ src = "b.bin", dest = "/b.bin" }} ]
"#
        ),
    );
    last_digest(&w.ok(&["build", "recipe.toml", "--out", "img"]))
}

/// A small two-layer image unique to `name` in `WORK/img`; returns its digest.
fn build_small_image(w: &Work, name: &str) -> String {
    unique_recipe(w, name, "", "", "");
    last_digest(&w.ok(&["build", "recipe.toml", "--out", "img"]))
}

fn describe(proxy: &Proxy) -> String {
    proxy
        .requests()
        .iter()
        .map(|q| {
            let fault = q.fault.map(|f| format!("{f:?} ")).unwrap_or_default();
            format!(
                "{fault}{} {}",
                q.method,
                q.target.split('?').next().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The goal of issue 9: with a fifth of all requests failing (fixed seed),
/// 20 of 20 pushes to distinct repositories (so every blob is uploaded) and
/// 20 of 20 pulls into empty stores complete on their first run, each with
/// the right digest as skopeo reads it straight from the registry.
/// `KILN_FAULT_IMAGE_MB` sets the image size (default 24; the issue's figure
/// is 100, which `bench/fault-bench.sh` runs).
#[test]
fn twenty_pushes_and_pulls_through_a_proxy_failing_a_fifth_of_requests() {
    let mb: usize = std::env::var("KILN_FAULT_IMAGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let r = registry(Flavour::Plain);
    let proxy = Proxy::start(
        &r.host,
        Faults::Seeded {
            seed: 9,
            percent: 20,
            retry_after: Some(1),
        },
    );
    let w = Work::new();
    let digest = build_big_image(&w, "fault-goal", mb);
    let started = Instant::now();
    let mut pushed = 0;
    let mut failures = Vec::new();
    for i in 0..20 {
        let reference = format!("{}/kiln/fault-goal-{i}:v1", proxy.host);
        let out = run_with_stdin(kiln_fast(&w), &["push", "img", &reference], None);
        if out.status.success() && last_digest(&String::from_utf8_lossy(&out.stdout)) == digest {
            let direct = r.repo(&format!("kiln/fault-goal-{i}:v1"));
            assert_eq!(remote_digest(r, &direct), digest, "push {i}");
            pushed += 1;
        } else {
            failures.push(format!(
                "push {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let push_time = started.elapsed();
    let push_faults = proxy.faults();
    let requests = proxy.requests();
    let sessions = requests
        .iter()
        .filter(|q| q.method == "POST" && q.target.contains("/blobs/uploads/") && !q.failed)
        .count();
    let patched: usize = requests
        .iter()
        .filter(|q| q.method == "PATCH" && q.fault != Some(Fault::Reset))
        .map(|q| q.body_len)
        .sum();
    proxy.clear();
    let started = Instant::now();
    let mut pulled = 0;
    for i in 0..20 {
        let reference = format!("{}/kiln/fault-goal-{i}@{digest}", proxy.host);
        let out_dir = format!("pulled-{i}");
        let mut cmd = kiln_fast(&w);
        cmd.env("KILN_CACHE", w.path().join(format!("pull-cache-{i}")));
        let out = run_with_stdin(cmd, &["pull", &reference, "--out", &out_dir], None);
        if out.status.success() && last_digest(&String::from_utf8_lossy(&out.stdout)) == digest {
            assert_same_blobs(&w.path().join("img"), &w.path().join(&out_dir));
            std::fs::remove_dir_all(w.path().join(&out_dir)).unwrap();
            std::fs::remove_dir_all(w.path().join(format!("pull-cache-{i}"))).unwrap();
            pulled += 1;
        } else {
            failures.push(format!(
                "pull {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let pull_time = started.elapsed();
    let pull_faults = proxy.faults();
    let image: u64 = layout_blobs(&w.path().join("img"))
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    eprintln!(
        "{mb} MiB image: {pushed}/20 pushes in {push_time:?}, faults {push_faults:?}, \
         {sessions} upload sessions for 60 blobs, {:.2} x the blob bytes sent in PATCHes; \
         {pulled}/20 pulls in {pull_time:?}, faults {pull_faults:?}",
        patched as f64 / (20 * image) as f64
    );
    for kind in ["Status500", "Status503", "TooMany", "Reset", "Truncated"] {
        assert!(
            push_faults.contains_key(kind) && pull_faults.contains_key(kind),
            "every kind of fault was injected: {push_faults:?} {pull_faults:?}"
        );
    }
    assert_eq!(
        (pushed, pulled),
        (20, 20),
        "pushes and pulls that completed on their first run:\n{}",
        failures.join("\n")
    );
}

/// A chunk that fails (the connection reset before the registry saw it)
/// resumes from the offset the upload session reports: one session per blob,
/// and no byte sent twice.
#[test]
fn a_failed_chunk_resumes_from_the_registry_range() {
    let r = registry(Flavour::Plain);
    let proxy = Proxy::start(&r.host, Faults::ResetEverySecondPatch);
    let w = Work::new();
    let digest = build_big_image(&w, "fault-resume", 40);
    let reference = format!("{}/kiln/fault-resume:v1", proxy.host);
    let out = run_with_stdin(kiln_fast(&w), &["push", "img", &reference], None);
    assert_success(&out, &format!("push; requests:\n  {}", describe(&proxy)));
    assert_eq!(remote_digest(r, &r.repo("kiln/fault-resume:v1")), digest);
    let requests = proxy.requests();
    let resets = requests.iter().filter(|q| q.failed).count();
    assert!(resets >= 2, "PATCHes were reset: {}", describe(&proxy));
    let sessions = requests
        .iter()
        .filter(|q| q.method == "POST" && q.target.contains("/blobs/uploads/"))
        .count();
    // Two layers and the config.
    assert_eq!(sessions, 3, "no session restarted:\n  {}", describe(&proxy));
    let sent: usize = requests
        .iter()
        .filter(|q| !q.failed && q.method == "PATCH")
        .map(|q| q.body_len)
        .sum();
    let layers: usize = ["a.bin", "b.bin"]
        .iter()
        .map(|f| std::fs::metadata(w.path().join(f)).unwrap().len() as usize)
        .sum();
    assert!(
        sent < layers + (1 << 20),
        "{sent} bytes went through PATCH for {layers} bytes of layers: a chunk was sent twice"
    );
    assert!(
        requests
            .iter()
            .any(|q| q.method == "GET" && q.target.contains("/blobs/uploads/")),
        "the session's Range was asked for"
    );
}

/// Docker Hub's rate limit: a 429 with `TOOMANYREQUESTS` in the body and
/// `Retry-After: 1`, on the first request of every kind (`/v2/` included),
/// for a push and a pull. Each is retried, no sooner than the registry asked.
#[test]
fn a_429_with_an_error_body_on_every_kind_of_request_is_retried_after_retry_after() {
    let r = registry(Flavour::Plain);
    let proxy = Proxy::start(&r.host, Faults::TooManyOncePerKind { retry_after: 1 });
    let w = Work::new();
    let digest = build_small_image(&w, "fault-429");
    let reference = format!("{}/kiln/fault-429:v1", proxy.host);
    // One blob at a time, so the retry of a request is the next of its kind.
    let mut cmd = kiln(&w);
    cmd.env("KILN_RETRY_BASE_MS", "5");
    let out = run_with_stdin(
        cmd,
        &["push", "img", &reference, "--registry-jobs", "1"],
        None,
    );
    assert_success(&out, &format!("push; requests:\n  {}", describe(&proxy)));
    assert_eq!(remote_digest(r, &r.repo("kiln/fault-429:v1")), digest);
    let mut cmd = kiln_fresh_store(&w);
    cmd.env("KILN_RETRY_BASE_MS", "5");
    let by_digest = format!("{}/kiln/fault-429@{digest}", proxy.host);
    let out = run_with_stdin(
        cmd,
        &[
            "pull",
            &by_digest,
            "--out",
            "pulled",
            "--registry-jobs",
            "1",
        ],
        None,
    );
    assert_success(&out, &format!("pull; requests:\n  {}", describe(&proxy)));
    assert_same_blobs(&w.path().join("img"), &w.path().join("pulled"));

    let requests = proxy.requests();
    let kinds: Vec<String> = requests
        .iter()
        .filter(|q| q.fault == Some(Fault::TooMany))
        .map(|q| format!("{} {}", q.method, q.target.split('?').next().unwrap()))
        .collect();
    for needed in [
        "GET /v2/",
        "HEAD ",
        "POST ",
        "PATCH ",
        "PUT ",
        "GET /v2/kiln/fault-429/manifests/",
        "GET /v2/kiln/fault-429/blobs/sha256:",
    ] {
        assert!(
            kinds.iter().any(|k| k.starts_with(needed)),
            "no 429 on `{needed}`: {kinds:?}"
        );
    }
    let mut waits = BTreeMap::new();
    for (i, q) in requests.iter().enumerate() {
        if q.fault != Some(Fault::TooMany) {
            continue;
        }
        let same = |p: &support::registry::proxy::Request| {
            p.method == q.method
                && p.target.split("/uploads/").next() == q.target.split("/uploads/").next()
        };
        let next = requests[i + 1..]
            .iter()
            .find(|p| same(p))
            .unwrap_or_else(|| panic!("`{} {}` was never retried", q.method, q.target));
        waits.insert(format!("{} {}", q.method, q.target), next.at - q.at);
    }
    for (what, wait) in &waits {
        assert!(
            *wait >= Duration::from_millis(950),
            "`{what}` retried after {wait:?}, before its Retry-After of 1 s"
        );
    }
}

/// Pulls `kiln/NAME@DIGEST` through a proxy that tells `lie`; asserts exit
/// 4, a digest mismatch in the message, nothing at `--out`.
fn pull_from_a_liar_fails_with_exit_4(lie: Lie, name: &str, by_tag: bool) {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    unique_recipe(&w, name, "", "", "");
    let digest = build_and_push(&w, r, &[r.repo(&format!("kiln/{name}:v1"))]);
    let proxy = Proxy::start(&r.host, Faults::Lie(lie));
    let reference = if by_tag {
        format!("{}/kiln/{name}:v1", proxy.host)
    } else {
        format!("{}/kiln/{name}@{digest}", proxy.host)
    };
    let mut cmd = kiln_fresh_store(&w);
    cmd.env("KILN_RETRY_BASE_MS", "5");
    let out = run_with_stdin(cmd, &["pull", &reference, "--out", "pulled"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "exit code; stderr:\n{stderr}\nrequests:\n  {}",
        describe(&proxy)
    );
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    assert!(out.stdout.is_empty(), "no digest printed");
    assert!(!w.path().join("pulled").exists(), "nothing at --out");
}

test_cases! { pull_from_a_liar_fails_with_exit_4 {
    a_manifest_with_the_wrong_digest: (Lie::WrongManifest, "lie-manifest", false),
    a_manifest_by_tag_that_is_not_what_the_registry_names: (Lie::WrongManifest, "lie-manifest-tag", true),
    a_truncated_manifest: (Lie::TruncatedManifest, "lie-truncated", false),
    a_blob_that_does_not_match_its_digest: (Lie::CorruptBlob, "lie-blob", false),
} }

/// The first `GET /v2/` and the token exchange are retried like any other
/// request: with the token server behind a proxy that fails the first token
/// request, and the registry behind one that fails the first request of
/// each kind (the ping first of all), a push and a pull with the token flow
/// complete on their first run; the password appears in no output.
#[test]
fn the_first_ping_and_the_token_exchange_are_retried() {
    let r = registry(Flavour::FlakyToken);
    let proxy = Proxy::start(&r.host, Faults::OncePerKind);
    let w = Work::new();
    let digest = build_small_image(&w, "fault-token");
    let reference = format!("{}/kiln/fault-token:v1", proxy.host);
    let mut args = vec!["push", "img", reference.as_str()];
    args.extend(creds_args(r));
    let out = run_with_stdin(kiln_fast(&w), &args, password_for(r));
    assert_success(&out, &format!("push; requests:\n  {}", describe(&proxy)));
    let by_digest = format!("{}/kiln/fault-token@{digest}", proxy.host);
    let mut args = vec!["pull", by_digest.as_str(), "--out", "pulled"];
    args.extend(creds_args(r));
    let mut cmd = kiln_fresh_store(&w);
    cmd.env("KILN_RETRY_BASE_MS", "5");
    let pulled = run_with_stdin(cmd, &args, password_for(r));
    assert_success(&pulled, "pull");
    assert_same_blobs(&w.path().join("img"), &w.path().join("pulled"));
    assert_eq!(remote_digest(r, &r.repo("kiln/fault-token:v1")), digest);

    let first = &proxy.requests()[0];
    assert!(
        first.failed && first.method == "GET" && first.target == "/v2/",
        "the first request, the ping, failed: {first:?}"
    );
    let token_proxy = r.token_proxy.as_ref().unwrap();
    let token_requests = token_proxy.requests();
    assert!(
        token_requests[0].failed && token_requests.len() >= 2,
        "the first token request failed and was retried: {token_requests:?}"
    );
    for o in [&out, &pulled] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!text.contains(support::registry::PASSWORD), "{text}");
    }
}

/// Pushes a small image through a proxy that tells `lie`; asserts exit 4
/// and a digest mismatch in the message.
fn push_to_a_liar_fails_with_exit_4(lie: Lie, name: &str) {
    let r = registry(Flavour::Plain);
    let proxy = Proxy::start(&r.host, Faults::Lie(lie));
    let w = Work::new();
    build_small_image(&w, name);
    let reference = format!("{}/kiln/{name}:v1", proxy.host);
    let out = run_with_stdin(kiln_fast(&w), &["push", "img", &reference], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "exit code; stderr:\n{stderr}\nrequests:\n  {}",
        describe(&proxy)
    );
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    assert!(out.stdout.is_empty(), "no digest printed");
}

test_cases! { push_to_a_liar_fails_with_exit_4 {
    an_upload_the_registry_says_does_not_match: (Lie::CorruptUpload, "lie-upload"),
    a_manifest_the_registry_names_by_another_digest: (Lie::WrongPushedDigest, "lie-pushed-digest"),
} }

/// Many machines pushing images that share blobs into one repository at
/// once: docker-registry can refuse a manifest for a blob another client is
/// writing at that moment (seen with four builds publishing to one layer
/// cache, `remote_cache::machines_publishing_at_once_leave_one_good_entry_per_layer`).
/// The push looks its blobs up again and puts the manifest again.
#[test]
fn a_manifest_refused_for_an_unknown_blob_is_put_again() {
    let r = registry(Flavour::Plain);
    let proxy = Proxy::start(&r.host, Faults::BlobsUnknown { times: 2 });
    let w = Work::new();
    let digest = build_small_image(&w, "blobs-unknown-twice");
    let reference = format!("{}/kiln/blobs-unknown-twice:v1", proxy.host);
    let out = w.ok(&["push", "img", &reference]);
    assert!(out.contains(&digest), "{out}");
    let requests = proxy.requests();
    let puts: Vec<_> = requests
        .iter()
        .filter(|q| q.method == "PUT" && q.target.contains("/manifests/"))
        .collect();
    assert_eq!(
        puts.len(),
        3,
        "refused twice, then taken:\n  {}",
        describe(&proxy)
    );
    // Between the refusals and the next put, the blobs were looked up again.
    let first = requests.iter().position(|q| q.failed).unwrap();
    let heads_after = requests[first..]
        .iter()
        .filter(|q| q.method == "HEAD" && q.target.contains("/blobs/"))
        .count();
    assert!(heads_after >= 3, "{}", describe(&proxy));
    // What the registry holds is the image, as skopeo reads it.
    let (_, held) = remote_raw(r, &format!("{}/kiln/blobs-unknown-twice:v1", r.host));
    assert_eq!(held, digest);
}

/// A registry that never stops refusing the manifest fails the push, with
/// its reason, after a bounded number of tries.
#[test]
fn a_manifest_refused_every_time_fails_the_push_with_the_registrys_reason() {
    let r = registry(Flavour::Plain);
    let proxy = Proxy::start(&r.host, Faults::BlobsUnknown { times: usize::MAX });
    let w = Work::new();
    build_small_image(&w, "blobs-unknown-always");
    let reference = format!("{}/kiln/blobs-unknown-always:v1", proxy.host);
    let started = Instant::now();
    let out = run_with_stdin(kiln_fast(&w), &["push", "img", &reference], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("MANIFEST_BLOB_UNKNOWN"), "{stderr}");
    assert!(out.stdout.is_empty(), "no digest printed");
    let puts = proxy
        .requests()
        .iter()
        .filter(|q| q.method == "PUT" && q.target.contains("/manifests/"))
        .count();
    assert_eq!(puts, 5, "one put and four more:\n  {}", describe(&proxy));
    assert!(started.elapsed() < Duration::from_secs(30));
}
