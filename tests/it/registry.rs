//! `kiln build --push`, `push`, `pull`, `copy` and `login` against a real
//! registry: Debian's `docker-registry` (CNCF distribution 2.8) on 127.0.0.1,
//! without auth, with htpasswd basic auth and behind the token flow, started
//! once per test process by `support::registry`. What kiln pushes is read
//! back by `skopeo` (and run with `runc`); what it pulls is compared byte for
//! byte with what it built. Registry-side faults come from a proxy in the
//! test and from corrupting the registry's storage.
//!
//! Every test pushes content of its own (a marker with the test's name), so
//! no two tests share a blob in the shared registries.

use crate::support::registry::client::*;
use crate::support::registry::proxy::{Faults, Proxy};
use crate::support::registry::{layout_blobs, registry, tool, Flavour, PASSWORD, USER};
use crate::support::*;
use serde_json::Value;
use std::fs;
use std::io::Write;

#[test]
fn build_push_is_what_skopeo_sees() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    unique_recipe(&w, "pushed", "", "", "");
    let (a, b) = (r.repo("kiln/pushed:v1"), r.repo("kiln/pushed:stable"));
    let (stdout, _) = kiln_ok(
        &w,
        &[
            "build",
            "recipe.toml",
            "--out",
            "img",
            "--push",
            &a,
            "--push",
            &b,
            "--digest-file",
            "digest.txt",
        ],
        None,
    );
    let digest = last_digest(&stdout);
    assert_eq!(
        fs::read_to_string(w.path().join("digest.txt"))
            .unwrap()
            .trim(),
        digest
    );
    assert_eq!(remote_digest(r, &a), digest);
    assert_eq!(remote_digest(r, &b), digest);
    let (manifest, raw) = remote_raw(r, &r.repo(&format!("kiln/pushed@{digest}")));
    assert_eq!(
        raw, digest,
        "the registry serves the manifest byte for byte"
    );
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);
    // The same image, as a layout and as an archive, pushed by `kiln push`.
    let (stdout, _) = kiln_ok(&w, &["push", "img", &r.repo("kiln/pushed-layout:v2")], None);
    assert_eq!(last_digest(&stdout), digest);
    assert_eq!(remote_digest(r, &r.repo("kiln/pushed-layout:v2")), digest);
    w.ok(&[
        "build",
        "recipe.toml",
        "--format",
        "oci-archive",
        "--out",
        "img.tar",
    ]);
    let (stdout, _) = kiln_ok(
        &w,
        &["push", "img.tar", &r.repo("kiln/pushed-archive:v3")],
        None,
    );
    assert_eq!(last_digest(&stdout), digest);
    assert_eq!(remote_digest(r, &r.repo("kiln/pushed-archive:v3")), digest);
}

#[test]
fn skopeo_copies_the_pushed_image_and_runc_runs_it() {
    need_root("umoci and runc need root; run scripts/test.sh as root");
    let r = registry(Flavour::Plain);
    let w = Work::new();
    fs::copy(probe(), w.path().join("probe")).unwrap();
    let marker = unique_recipe(
        &w,
        "runnable",
        "",
        "entrypoint = [\"/probe\"]",
        "[[layers]]\nname = \"probe\"\nfiles = [ { src = \"probe\", dest = \"/probe\", mode = 0o755 } ]",
    );
    let reference = r.repo("kiln/runnable:v1");
    let digest = build_and_push(&w, r, std::slice::from_ref(&reference));
    let layout = format!("oci:{}:v1", w.path().join("copied").display());
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-no-creds",
        &format!("docker://{reference}"),
        &layout,
    ]);
    let info: Value = serde_json::from_str(&skopeo(&["inspect", &layout])).unwrap();
    assert_eq!(
        info["Digest"],
        digest.as_str(),
        "skopeo copied it unchanged"
    );
    let bundle = umoci_unpack(tool("umoci"), w.path(), "copied:v1", "bundle");
    let out = runc_run(
        tool("runc"),
        &w.path().join("runc-root"),
        &bundle,
        &format!("kiln-registry-{}", std::process::id()),
        None,
    );
    assert_eq!(out, format!("KILN-REGISTRY-PROBE marker={marker}\n"));
}

/// Push, then pull by digest into an empty store: the pulled layout has
/// the built layout's blobs, byte for byte.
fn pull_by_digest_gives_back_the_built_blobs(flavour: Flavour) {
    let r = registry(flavour);
    let w = Work::new();
    let name = format!("pulled-{flavour:?}").to_lowercase();
    unique_recipe(&w, &name, "", "", "");
    let digest = build_and_push(&w, r, &[r.repo(&format!("kiln/{name}:v1"))]);
    assert_eq!(
        remote_digest(r, &r.repo(&format!("kiln/{name}:v1"))),
        digest
    );

    let by_digest = r.repo(&format!("kiln/{name}@{digest}"));
    let mut args = vec!["pull", &by_digest, "--out", "pulled"];
    args.extend(creds_args(r));
    let out = run_with_stdin(kiln_fresh_store(&w), &args, password_for(r));
    assert_success(&out, &format!("kiln {args:?} ({flavour:?})"));
    assert_eq!(last_digest(&String::from_utf8(out.stdout).unwrap()), digest);
    assert_same_blobs(&w.path().join("img"), &w.path().join("pulled"));
    let index: Value =
        serde_json::from_slice(&fs::read(w.path().join("pulled/index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
}

test_cases! { pull_by_digest_gives_back_the_built_blobs {
    plain: (Flavour::Plain),
    basic: (Flavour::Basic),
    token: (Flavour::Token),
} }

#[test]
fn pushing_the_same_image_twice_sends_no_blob_the_second_time() {
    let r = registry(Flavour::Plain);
    let proxy = Proxy::start(&r.host, Faults::None);
    let w = Work::new();
    unique_recipe(&w, "twice", "", "", "");
    let reference = format!("{}/kiln/twice:v1", proxy.host);
    let digest = build_and_push(&w, r, std::slice::from_ref(&reference));
    let uploads = |proxy: &Proxy| -> Vec<String> {
        proxy
            .requests()
            .iter()
            .filter(|q| q.is_blob_upload())
            .map(|q| format!("{} {}", q.method, q.target))
            .collect()
    };
    // Two layers and a config, each POST, PATCH and PUT.
    assert!(
        uploads(&proxy).len() >= 3,
        "first push: {:?}",
        proxy.requests()
    );

    // Again, by build --push (every layer cached) and by push of the layout.
    proxy.clear();
    assert_eq!(
        build_and_push(&w, r, std::slice::from_ref(&reference)),
        digest
    );
    let mut c = kiln(&w);
    c.env("KILN_NO_PROGRESS", "0");
    let out = run_with_stdin(c, &["push", "img", &reference], None);
    assert_success(&out, "kiln push img (again)");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("0 blobs sent, 3 already there"), "{stderr}");
    assert_eq!(
        uploads(&proxy),
        Vec::<String>::new(),
        "second and third push"
    );
    // The tag already names the same digest (a HEAD says so): no manifest
    // is put again (issue 12).
    assert!(
        !proxy
            .requests()
            .iter()
            .any(|q| q.method == "PUT" && q.target.contains("/manifests/")),
        "the manifest was put again: {:?}",
        proxy.requests()
    );
    assert!(
        proxy
            .requests()
            .iter()
            .any(|q| q.method == "HEAD" && q.target.ends_with("/manifests/v1")),
        "the tag was looked up: {:?}",
        proxy.requests()
    );
}

#[test]
fn corrupt_blob_in_the_registry_fails_the_pull_with_exit_4() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    unique_recipe(&w, "corrupt", "", "", "");
    let digest = build_and_push(&w, r, &[r.repo("kiln/corrupt:v1")]);
    let manifest_file = w
        .path()
        .join("img/blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    let manifest: Value = serde_json::from_slice(&fs::read(manifest_file).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let data = r.blob_data(&layer);
    fs::OpenOptions::new()
        .append(true)
        .open(&data)
        .unwrap_or_else(|e| panic!("{}: {e}", data.display()))
        .write_all(b"corrupted by the test")
        .unwrap();

    let by_digest = r.repo(&format!("kiln/corrupt@{digest}"));
    let out = run_with_stdin(
        kiln_fresh_store(&w),
        &["pull", &by_digest, "--out", "pulled"],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "exit code; stderr:\n{stderr}");
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    assert!(stderr.contains(&layer), "names the blob: {stderr}");
    assert!(out.stdout.is_empty(), "no digest printed");
    assert!(
        !w.path().join("pulled").exists(),
        "nothing written at --out"
    );
    let stored = w
        .path()
        .join("pull-cache/blobs/sha256")
        .join(layer.strip_prefix("sha256:").unwrap());
    assert!(!stored.exists(), "the bad blob is not in the store");
}

/// A push through a proxy that fails requests (503 or a dropped connection)
/// still ends with the whole image in the registry.
fn push_through_a_flaky_proxy_completes(faults: Faults, name: &str) {
    let r = registry(Flavour::Plain);
    let proxy = Proxy::start(&r.host, faults);
    let w = Work::new();
    let more: String = (0..3)
        .map(|i| {
            format!(
                "[[layers]]\nname = \"extra{i}\"\ncontents = [ {{ dest = \"/extra{i}\", text = \"{i}\" }} ]\n"
            )
        })
        .collect();
    unique_recipe(&w, name, "", "", &more);
    let reference = format!("{}/kiln/{name}:v1", proxy.host);
    let out = kiln_run(
        &w,
        &["build", "recipe.toml", "--out", "img", "--push", &reference],
        None,
    );
    let log: Vec<String> = proxy
        .requests()
        .iter()
        .map(|q| {
            let failed = if q.failed { "FAILED " } else { "" };
            format!(
                "{failed}{} {}",
                q.method,
                q.target.split('?').next().unwrap()
            )
        })
        .collect();
    assert_success(
        &out,
        &format!(
            "push through a proxy failing {faults:?} (requests: {})",
            log.join("\n  ")
        ),
    );
    let digest = last_digest(&String::from_utf8(out.stdout).unwrap());
    assert!(proxy.failed() > 0, "the proxy failed no request");

    // Read straight from the registry: every blob there, whole.
    let direct = r.repo(&format!("kiln/{name}:v1"));
    assert_eq!(remote_digest(r, &direct), digest);
    let copied = w.path().join("copied");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-no-creds",
        &format!("docker://{direct}"),
        &format!("oci:{}:v1", copied.display()),
    ]);
    assert_same_blobs(&w.path().join("img"), &copied);
}

test_cases! { push_through_a_flaky_proxy_completes {
    failing_every_third_request: (Faults::Every(3), "flaky-every-third"),
    failing_each_kind_of_request_once: (Faults::OncePerKind, "flaky-once-per-kind"),
} }

/// A wrong password: exit 3, an error that says it is about credentials,
/// and the password nowhere in the output.
fn a_wrong_password_is_refused_and_never_echoed(flavour: Flavour) {
    let wrong = "Wrong-Pa55-kiln-9c1f";
    let r = registry(flavour);
    let w = Work::new();
    let name = format!("wrongpw-{flavour:?}").to_lowercase();
    unique_recipe(&w, &name, "", "", "");
    let reference = r.repo(&format!("kiln/{name}:v1"));
    let check = |what: &str, (code, stdout, stderr): (i32, String, String)| {
        assert_eq!(
            code, 3,
            "{what} ({flavour:?}): exit code; stderr:\n{stderr}"
        );
        assert!(
            stderr.to_lowercase().contains("credentials"),
            "{what} ({flavour:?}) does not mention credentials:\n{stderr}"
        );
        for text in [&stdout, &stderr] {
            assert!(
                !text.contains(wrong),
                "{what} ({flavour:?}) shows the password:\n{text}"
            );
        }
    };
    let push = [
        "build",
        "recipe.toml",
        "--out",
        "img",
        "--push",
        &reference,
        "--username",
        USER,
        "--password-stdin",
    ];
    check("build --push", kiln_fails(&w, &push, Some(wrong)));

    // With the right password the image goes up; pulling it with the wrong one fails.
    kiln_ok(
        &w,
        &[
            "push",
            "img",
            &reference,
            "--username",
            USER,
            "--password-stdin",
        ],
        Some(PASSWORD),
    );
    let pull = [
        "pull",
        &reference,
        "--out",
        "pulled",
        "--username",
        USER,
        "--password-stdin",
    ];
    let out = run_with_stdin(kiln_fresh_store(&w), &pull, Some(wrong));
    check(
        "pull",
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        ),
    );
    assert!(!w.path().join("pulled").exists());
}

test_cases! { a_wrong_password_is_refused_and_never_echoed {
    basic: (Flavour::Basic),
    token: (Flavour::Token),
} }

/// No credentials at all for a registry that wants them: exit 3 and an
/// error that says so.
fn push_without_credentials_says_so(flavour: Flavour) {
    let r = registry(flavour);
    let w = Work::new();
    let name = format!("nocreds-{flavour:?}").to_lowercase();
    unique_recipe(&w, &name, "", "", "");
    let reference = r.repo(&format!("kiln/{name}:v1"));
    let (code, _, stderr) = kiln_fails(
        &w,
        &["build", "recipe.toml", "--out", "img", "--push", &reference],
        None,
    );
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("credentials"),
        "the error does not mention credentials:\n{stderr}"
    );
}

test_cases! { push_without_credentials_says_so {
    basic: (Flavour::Basic),
    token: (Flavour::Token),
} }

/// `kiln login` checks the password before it stores it.
fn login_refuses_a_wrong_password(flavour: Flavour) {
    let wrong = "Wrong-Pa55-kiln-4d2e";
    let r = registry(flavour);
    let w = Work::new();
    let out = kiln_run(
        &w,
        &["login", &r.host, "-u", USER, "--password-stdin"],
        Some(wrong),
    );
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "kiln login with a wrong password ({flavour:?}): exit code; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.to_lowercase().contains("credentials"), "{stderr}");
    assert!(!stdout.contains(wrong) && !stderr.contains(wrong));
    assert!(
        !w.path().join("docker/config.json").exists(),
        "refused credentials are not stored"
    );
}

test_cases! { login_refuses_a_wrong_password {
    basic: (Flavour::Basic),
    token: (Flavour::Token),
} }

/// `kiln login` stores the credentials in docker's config.json (in
/// `$DOCKER_CONFIG`, mode 0600); push and pull then need no `--username`.
fn login_then_push_and_pull_without_username(flavour: Flavour) {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let r = registry(flavour);
    let w = Work::new();
    let name = format!("login-{flavour:?}").to_lowercase();
    unique_recipe(&w, &name, "", "", "");
    let reference = r.repo(&format!("kiln/{name}:v1"));
    let (stdout, _) = kiln_ok(&w, &["build", "recipe.toml", "--out", "img"], None);
    let digest = last_digest(&stdout);

    let (code, _, stderr) = kiln_fails(&w, &["push", "img", &reference], None);
    assert_eq!(code, 3, "push before login ({flavour:?}): {stderr}");

    let (stdout, stderr) = kiln_ok(
        &w,
        &["login", &r.host, "-u", USER, "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    let config_file = w.path().join("docker/config.json");
    let config: Value = serde_json::from_slice(&fs::read(&config_file).unwrap()).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    assert_eq!(config["auths"][&r.host]["auth"], auth.as_str(), "{config}");
    let mode = fs::metadata(&config_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "config.json mode");

    let (stdout, _) = kiln_ok(&w, &["push", "img", &reference], None);
    assert_eq!(last_digest(&stdout), digest);
    assert_eq!(remote_digest(r, &reference), digest);
    let by_digest = r.repo(&format!("kiln/{name}@{digest}"));
    let out = run_with_stdin(
        kiln_fresh_store(&w),
        &["pull", &by_digest, "--out", "pulled"],
        None,
    );
    assert_success(&out, &format!("pull after login ({flavour:?})"));
    assert_same_blobs(&w.path().join("img"), &w.path().join("pulled"));
}

test_cases! { login_then_push_and_pull_without_username {
    basic: (Flavour::Basic),
    token: (Flavour::Token),
} }

/// With `REGISTRY_AUTH_FILE` set, login writes there and push reads it.
#[test]
fn login_uses_registry_auth_file_when_set() {
    let r = registry(Flavour::Basic);
    let w = Work::new();
    unique_recipe(&w, "authfile", "", "", "");
    let auth_file = w.path().join("containers-auth.json");
    let with_file = |args: &[&str], stdin: Option<&str>| {
        let mut c = kiln(&w);
        c.env("REGISTRY_AUTH_FILE", &auth_file);
        run_with_stdin(c, args, stdin)
    };
    let out = with_file(
        &["login", &r.host, "-u", USER, "--password-stdin"],
        Some(PASSWORD),
    );
    assert_success(&out, "login with REGISTRY_AUTH_FILE");
    assert!(auth_file.exists() && !w.path().join("docker/config.json").exists());
    let out = with_file(
        &[
            "build",
            "recipe.toml",
            "--push",
            &r.repo("kiln/authfile:v1"),
        ],
        None,
    );
    assert_success(&out, "build --push with REGISTRY_AUTH_FILE");
}

/// A `credHelpers` entry in docker's config runs `docker-credential-NAME get`
/// with the registry on stdin; the helper's secret reaches the registry and
/// appears in no output.
#[test]
fn push_takes_credentials_from_a_credential_helper() {
    let r = registry(Flavour::Basic);
    let w = Work::new();
    unique_recipe(&w, "credhelper", "", "", "");
    let bin = w.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let asked = w.path().join("helper-was-asked");
    let helper = bin.join("docker-credential-kilntest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" > {}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n",
            asked.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    w.write(
        "docker/config.json",
        format!("{{\"credHelpers\": {{\"{}\": \"kilntest\"}}}}", r.host),
    );
    let mut c = kiln(&w);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.env("PATH", path);
    let out = run_with_stdin(
        c,
        &[
            "build",
            "recipe.toml",
            "--push",
            &r.repo("kiln/credhelper:v1"),
        ],
        None,
    );
    assert_success(&out, "build --push with a credential helper");
    assert_eq!(std::fs::read_to_string(&asked).unwrap().trim(), r.host);
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains(PASSWORD),
            "the secret leaked"
        );
    }
}

#[test]
fn copy_between_repositories_mounts_every_blob() {
    let r = registry(Flavour::Plain);
    let proxy = Proxy::start(&r.host, Faults::None);
    let w = Work::new();
    unique_recipe(&w, "copied", "", "", "");
    let source = format!("{}/kiln/copy-source:v1", proxy.host);
    let digest = build_and_push(&w, r, std::slice::from_ref(&source));
    proxy.clear();

    let mut c = kiln(&w);
    c.env("KILN_NO_PROGRESS", "0");
    let from = format!("{}/kiln/copy-source@{digest}", proxy.host);
    let to = format!("{}/kiln/copy-target:v2", proxy.host);
    let out = run_with_stdin(c, &["copy", &from, &to], None);
    assert_success(&out, "kiln copy");
    assert_eq!(last_digest(&String::from_utf8(out.stdout).unwrap()), digest);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("3 mounted"),
        "two layers and a config: {stderr}"
    );
    let requests = proxy.requests();
    let mounts = requests
        .iter()
        .filter(|q| {
            q.method == "POST"
                && q.target.contains("mount=")
                && q.target.contains("from=kiln%2Fcopy-source")
        })
        .count();
    assert_eq!(mounts, 3, "{requests:?}");
    assert!(
        !requests
            .iter()
            .any(|q| q.method == "PATCH" || (q.method == "PUT" && q.target.contains("/blobs/"))),
        "no blob data sent: {requests:?}"
    );
    assert_eq!(remote_digest(r, &r.repo("kiln/copy-target:v2")), digest);
}

#[test]
fn multi_platform_index_round_trips() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    unique_recipe(
        &w,
        "multi",
        "platforms = [\"linux/amd64\", \"linux/arm64\"]",
        "",
        "",
    );
    let reference = r.repo("kiln/multi:v1");
    let digest = build_and_push(&w, r, std::slice::from_ref(&reference));

    let (index, raw) = remote_raw(r, &reference);
    assert_eq!(raw, digest, "the index, byte for byte");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(platforms(manifests), ["linux/amd64", "linux/arm64"]);
    for arch in ["amd64", "arm64"] {
        let info: Value = serde_json::from_str(&skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--no-creds",
            "--override-arch",
            arch,
            &format!("docker://{reference}"),
        ]))
        .unwrap();
        assert_eq!(info["Architecture"], arch);
    }

    let by_digest = r.repo(&format!("kiln/multi@{digest}"));
    let out = run_with_stdin(
        kiln_fresh_store(&w),
        &["pull", &by_digest, "--out", "pulled"],
        None,
    );
    assert_success(&out, "kiln pull of the index");
    assert_eq!(last_digest(&String::from_utf8(out.stdout).unwrap()), digest);
    let pulled: Vec<String> = layout_blobs(&w.path().join("pulled"))
        .into_iter()
        .map(|b| b.0)
        .collect();
    for m in manifests {
        let d = m["digest"].as_str().unwrap();
        assert!(pulled.iter().any(|p| p == d), "manifest {d} not pulled");
    }
    assert_same_blobs(&w.path().join("img"), &w.path().join("pulled"));
}

/// A machine without system CA certificates (a minimal Debian or container
/// image) still pushes to and pulls from a plain-HTTP registry: the TLS
/// verifier, which cannot be built there, once failed every command with
/// `cannot set up the HTTP client: builder error`. rustls reads the system's
/// roots from `SSL_CERT_FILE`/`SSL_CERT_DIR`, pointed here at nothing.
#[test]
fn push_and_pull_work_without_system_ca_certificates() {
    let r = registry(Flavour::Plain);
    let w = Work::new();
    unique_recipe(&w, "nocerts", "", "", "");
    let no_certs = |mut c: std::process::Command| {
        c.env("SSL_CERT_FILE", w.path().join("no-such-bundle.pem"))
            .env("SSL_CERT_DIR", w.path().join("no-such-dir"));
        c
    };
    let reference = r.repo("kiln/nocerts:v1");
    let out = run_with_stdin(
        no_certs(kiln(&w)),
        &["build", "recipe.toml", "--out", "img", "--push", &reference],
        None,
    );
    assert_success(&out, "kiln build --push without CA certificates");
    let digest = last_digest(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(remote_digest(r, &reference), digest);
    let by_digest = r.repo(&format!("kiln/nocerts@{digest}"));
    let out = run_with_stdin(
        no_certs(kiln_fresh_store(&w)),
        &["pull", &by_digest, "--out", "pulled"],
        None,
    );
    assert_success(&out, "kiln pull without CA certificates");
    assert_same_blobs(&w.path().join("img"), &w.path().join("pulled"));
}
