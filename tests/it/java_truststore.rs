//! Java's trust store: with `ca-certificates-java` in a packages layer, kiln
//! writes `/etc/ssl/certs/java/cacerts` itself (a PKCS#12 file, as the
//! package's trigger would have made by running Java), from the certificates
//! of the CA bundle. The certificates are real ones made by `openssl req
//! -x509` for the test; the store is read back from the image (`umoci
//! unpack`) by outside oracles: `keytool` (Java's own KeyStore code) must
//! list every alias as a `trustedCertEntry` with the SHA-256 fingerprint
//! `openssl x509` computes, `openssl pkcs12` must verify the MAC with
//! `changeit`, and both must refuse a wrong password.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::apt::{kiln_at, Pkg, Repo};
use crate::support::{self, Work};

const SUITE: &str = "kiln-cacerts";

/// The certificate files of the test's `ca-certificates` (path, CN), in
/// path order, and the alias Debian's tool gives each.
const CERTS: &[(&str, &str, &str)] = &[
    (
        "/usr/share/ca-certificates/local/Kiln_Local_CA.crt",
        "Kiln Local CA",
        "debian:kiln_local_ca.pem",
    ),
    (
        "/usr/share/ca-certificates/mozilla/Kiln Root (B), test.crt",
        "Kiln Root B",
        "debian:kiln_root_=b=__test.pem",
    ),
    (
        "/usr/share/ca-certificates/mozilla/kiln_root_a.crt",
        "Kiln Root A",
        "debian:kiln_root_a.pem",
    ),
];

/// Self-signed CA certificates, made once per test process, and beside
/// them (in [`keys`]) `ca-0.key`, the key of the first, `leaf.pem`, a server
/// certificate it signed, and `stranger.pem`, one no CA signed.
fn pems() -> &'static Vec<String> {
    &made().1
}

fn keys() -> &'static Path {
    made().0.path()
}

fn made() -> &'static (tempfile::TempDir, Vec<String>) {
    static MADE: OnceLock<(tempfile::TempDir, Vec<String>)> = OnceLock::new();
    MADE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let self_signed = |cn: &str, key: &str, out: &str, ca: bool| {
            let mut c = Command::new("openssl");
            c.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "3650"])
                .args(["-subj", &format!("/CN={cn}"), "-keyout", key, "-out", out]);
            if ca {
                c.args(["-addext", "basicConstraints=critical,CA:TRUE"]);
            }
            support::run(&mut c);
        };
        let pems = CERTS
            .iter()
            .enumerate()
            .map(|(i, (_, cn, _))| {
                let out = at(&format!("ca-{i}.pem"));
                self_signed(cn, &at(&format!("ca-{i}.key")), &out, true);
                support::read(Path::new(&out))
            })
            .collect();
        support::run(Command::new("openssl").args([
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=leaf.test", "-keyout", &at("leaf.key"), "-out", &at("leaf.csr"),
        ]));
        fs::write(
            at("leaf.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:leaf.test\n",
        )
        .unwrap();
        support::run(Command::new("openssl").args([
            "x509", "-req", "-in", &at("leaf.csr"), "-CA", &at("ca-0.pem"), "-CAkey",
            &at("ca-0.key"), "-set_serial", "2", "-days", "365", "-extfile", &at("leaf.ext"),
            "-out", &at("leaf.pem"),
        ]));
        self_signed("stranger.test", &at("stranger.key"), &at("stranger.pem"), false);
        (dir, pems)
    })
}

/// A Java program: the store at `args[0]` loaded as PKCS12 and as JKS (the
/// type older code asks for), a `TrustManagerFactory` initialised from it,
/// and the server certificates `args[1]` (must be trusted) and `args[2]`
/// (must not be) checked by its trust manager.
const CHECK_JAVA: &str = r#"
import java.io.FileInputStream;
import java.io.InputStream;
import java.security.KeyStore;
import java.security.cert.CertificateException;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;

public class Check {
    static X509Certificate read(String path) throws Exception {
        try (InputStream in = new FileInputStream(path)) {
            return (X509Certificate) CertificateFactory.getInstance("X.509").generateCertificate(in);
        }
    }

    public static void main(String[] args) throws Exception {
        for (String type : new String[] {"PKCS12", "JKS"}) {
            KeyStore ks = KeyStore.getInstance(type);
            try (InputStream in = new FileInputStream(args[0])) {
                ks.load(in, "changeit".toCharArray());
            }
            TrustManagerFactory tmf =
                TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            tmf.init(ks);
            X509TrustManager tm = (X509TrustManager) tmf.getTrustManagers()[0];
            System.out.println(type + " issuers " + tm.getAcceptedIssuers().length);
            tm.checkServerTrusted(new X509Certificate[] {read(args[1])}, "ECDHE_ECDSA");
            System.out.println(type + " leaf trusted");
            try {
                tm.checkServerTrusted(new X509Certificate[] {read(args[2])}, "ECDHE_ECDSA");
                System.out.println(type + " stranger trusted");
            } catch (CertificateException e) {
                System.out.println(type + " stranger refused");
            }
        }
    }
}
"#;

/// A `ca-certificates` holding `files`, `ca-certificates-java` and a JRE
/// whose `lib/security/cacerts` links to the store, as openjdk's does.
fn packages(files: &[(&str, String)]) -> Vec<Pkg> {
    let mut ca = Pkg::new("ca-certificates", "20230311", "all").file(
        "/usr/share/ca-certificates/mozilla/README",
        "not a certificate\n",
        0o644,
    );
    for (path, pem) in files {
        ca = ca.file(path, pem, 0o644);
    }
    vec![
        ca,
        Pkg::new("ca-certificates-java", "20230710", "all")
            .depends("ca-certificates")
            .file("/etc/default/cacerts", "cacerts_updates=yes\n", 0o644),
        Pkg::new("fake-jre", "17", "amd64")
            .depends("ca-certificates-java")
            .file("/usr/lib/jvm/java-17-fake/bin/java", "java\n", 0o755)
            .symlink(
                "/usr/lib/jvm/java-17-fake/lib/security/cacerts",
                "/etc/ssl/certs/java/cacerts",
            ),
    ]
}

fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| {
        let files: Vec<(&str, String)> = CERTS
            .iter()
            .zip(pems())
            .map(|((path, _, _), pem)| (*path, pem.clone()))
            .collect();
        Repo::start(SUITE, &["main"], &packages(&files))
    })
}

/// A workspace with `packages` in one layer, locked against `repo`.
fn workspace(repo: &Repo, suite: &str, packages: &str) -> Work {
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo.keyring).unwrap());
    w.write(
        "recipe.toml",
        format!(
            "name = \"j\"\nplatforms = [\"linux/amd64\"]\n\n[repositories.test]\nsuite = \"{suite}\"\nkeyring = \"keys/test.gpg\"\n\n[[layers]]\npackages = {packages}\n"
        ),
    );
    ok(&w, &repo.url, &["lock", "recipe.toml"]);
    w
}

fn ok(w: &Work, url: &str, args: &[&str]) -> String {
    support::apt::kiln_ok_at(w, url, args)
}

/// The built image's root file system.
fn unpack(w: &Work, layout: &str) -> PathBuf {
    support::need_root("umoci keeps owners only as root");
    support::umoci_unpack(
        Command::new("umoci"),
        w.path(),
        &format!("{layout}:latest"),
        &format!("{layout}-bundle"),
    )
    .join("rootfs")
}

/// The manifest digest of the only image in an OCI layout.
fn manifest_digest(w: &Work, layout: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_str(&support::read(&w.path().join(layout).join("index.json"))).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `openssl x509 -fingerprint -sha256` of a PEM certificate.
fn fingerprint(pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.pem");
    fs::write(&p, pem).unwrap();
    let out = support::run(Command::new("openssl").args([
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        p.to_str().unwrap(),
    ]));
    out.trim()
        .rsplit_once('=')
        .expect("`… Fingerprint=XX:…`")
        .1
        .to_string()
}

/// `keytool -list` of a PKCS#12 store: alias → (entry type, SHA-256 fingerprint).
fn keytool_list(store: &Path, password: &str) -> std::process::Output {
    Command::new("keytool")
        .args(["-list", "-keystore"])
        .arg(store)
        .args(["-storetype", "PKCS12", "-storepass", password])
        .env("LC_ALL", "C")
        .output()
        .expect("keytool (package default-jre-headless) must be installed")
}

fn keytool_entries(out: &str) -> BTreeMap<String, (String, String)> {
    let mut entries = BTreeMap::new();
    let lines: Vec<&str> = out.lines().collect();
    for pair in lines.windows(2) {
        // `ALIAS, DATE, TYPE, ` (the date has a comma of its own).
        let fields: Vec<&str> = pair[0]
            .split(", ")
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let Some(fp) = pair[1].strip_prefix("Certificate fingerprint (SHA-256): ") else {
            continue;
        };
        assert!(fields.len() >= 3, "unexpected keytool line {:?}", pair[0]);
        let kind = fields[fields.len() - 1].trim_end_matches(',');
        entries.insert(
            fields[0].to_string(),
            (kind.to_string(), fp.trim().to_string()),
        );
    }
    entries
}

/// `store` read by keytool and openssl: every certificate of [`CERTS`] a
/// trusted entry under its alias with its fingerprint, the MAC verified with
/// `changeit`, a wrong password refused by both.
fn check_store(store: &Path) {
    // Java's own KeyStore code: every certificate a trusted entry, by alias.
    let out = keytool_list(store, "changeit");
    support::assert_success(&out, "keytool -list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Keystore type: PKCS12"), "{text}");
    assert!(
        text.contains(&format!("Your keystore contains {} entries", CERTS.len())),
        "{text}"
    );
    let listed = keytool_entries(&text);
    let expected: BTreeMap<String, (String, String)> = CERTS
        .iter()
        .zip(pems())
        .map(|((_, _, alias), pem)| {
            (
                alias.to_string(),
                ("trustedCertEntry".to_string(), fingerprint(pem)),
            )
        })
        .collect();
    assert_eq!(listed, expected, "keytool said:\n{text}");
    let wrong = keytool_list(store, "not-the-password");
    assert!(!wrong.status.success(), "keytool accepted a wrong password");

    // OpenSSL verifies the MAC with `changeit` and finds each certificate.
    let openssl = |pass: &str| {
        Command::new("openssl")
            .args(["pkcs12", "-nokeys", "-in"])
            .arg(store)
            .args(["-passin", &format!("pass:{pass}")])
            .output()
            .unwrap()
    };
    let out = openssl("changeit");
    support::assert_success(&out, "openssl pkcs12 -passin pass:changeit");
    let text = String::from_utf8_lossy(&out.stdout);
    for ((_, _, alias), pem) in CERTS.iter().zip(pems()) {
        assert!(text.contains(&format!("friendlyName: {alias}")), "{text}");
        assert!(text.contains(pem.trim()), "{text}");
    }
    let wrong = openssl("wrong-password");
    assert!(!wrong.status.success(), "openssl accepted a wrong password");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("verify"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

#[test]
fn keytool_and_openssl_read_every_certificate_as_a_trusted_entry() {
    let repo = repo();
    let w = workspace(repo, SUITE, "[\"fake-jre\"]");
    ok(&w, &repo.url, &["build", "recipe.toml", "--out", "img"]);
    let root = unpack(&w, "img");
    let store = root.join("etc/ssl/certs/java/cacerts");
    assert_eq!(support::mode(&store), 0o644);

    check_store(&store);

    // Java's TrustManagerFactory trusts a server certificate one of the CAs
    // signed, and no other (`java Check.java`: the JRE runs source files).
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Check.java"), CHECK_JAVA).unwrap();
    let out = support::run(
        Command::new("java")
            .current_dir(dir.path())
            .arg("Check.java")
            .arg(&store)
            .arg(keys().join("leaf.pem"))
            .arg(keys().join("stranger.pem")),
    );
    let n = CERTS.len();
    assert_eq!(
        out,
        format!(
            "PKCS12 issuers {n}\nPKCS12 leaf trusted\nPKCS12 stranger refused\n\
             JKS issuers {n}\nJKS leaf trusted\nJKS stranger refused\n"
        )
    );

    // The JRE's own path resolves (inside the image) to the store.
    let link = root.join("usr/lib/jvm/java-17-fake/lib/security/cacerts");
    let target = fs::read_link(&link).unwrap();
    assert_eq!(target, Path::new("/etc/ssl/certs/java/cacerts"));
    assert!(root.join(target.strip_prefix("/").unwrap()).is_file());
    // The CA bundle holds the same certificates, in the same order.
    assert_eq!(
        support::read(&root.join("etc/ssl/certs/ca-certificates.crt")),
        pems().concat()
    );
}

#[test]
fn two_stores_and_two_paths_give_one_digest_and_no_java_package_no_store() {
    let repo = repo();
    let a = workspace(repo, SUITE, "[\"fake-jre\"]");
    let b = workspace(repo, SUITE, "[\"fake-jre\"]");
    ok(&a, &repo.url, &["build", "recipe.toml", "--out", "img"]);
    ok(&b, &repo.url, &["build", "recipe.toml", "--out", "img"]);
    assert_ne!(a.cache(), b.cache());
    assert_eq!(manifest_digest(&a, "img"), manifest_digest(&b, "img"));
    let (ra, rb) = (unpack(&a, "img"), unpack(&b, "img"));
    let store = "etc/ssl/certs/java/cacerts";
    assert_eq!(
        fs::read(ra.join(store)).unwrap(),
        fs::read(rb.join(store)).unwrap()
    );

    let plain = workspace(repo, SUITE, "[\"ca-certificates\"]");
    ok(&plain, &repo.url, &["build", "recipe.toml", "--out", "img"]);
    let root = unpack(&plain, "img");
    assert!(root.join("etc/ssl/certs/ca-certificates.crt").is_file());
    assert!(
        !root.join("etc/ssl/certs/java").exists(),
        "no ca-certificates-java, no Java trust store"
    );
}

#[test]
fn a_certificate_that_does_not_parse_is_an_error_naming_package_and_file() {
    let suite = "kiln-cacerts-bad";
    let bad = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    let repo = Repo::start(
        suite,
        &["main"],
        &packages(&[
            (
                "/usr/share/ca-certificates/mozilla/good.crt",
                pems()[0].clone(),
            ),
            (
                "/usr/share/ca-certificates/mozilla/broken.crt",
                bad.to_string(),
            ),
        ]),
    );
    let w = workspace(&repo, suite, "[\"fake-jre\"]");
    let out = kiln_at(&w, &repo.url, &["build", "recipe.toml", "--out", "img"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("package `ca-certificates` holds `/usr/share/ca-certificates/mozilla/broken.crt`, which is not a PEM certificate"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

/// The usual case: `ca-certificates` comes with the base (`debian-static`
/// has it) and a JRE in a layer of the recipe on top. The store is made
/// from the base's certificates, read back from its layers.
#[test]
fn a_jre_over_a_base_with_ca_certificates_gets_the_base_certificates() {
    let repo = repo();
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo.keyring).unwrap());
    let repos =
        format!("[repositories.test]\nsuite = \"{SUITE}\"\nkeyring = \"keys/test.gpg\"\n\n");
    w.write(
        "base.toml",
        format!("name = \"base\"\nplatforms = [\"linux/amd64\"]\n\n{repos}[[layers]]\npackages = [\"ca-certificates\"]\n"),
    );
    w.write(
        "recipe.toml",
        format!("name = \"app\"\nbase = \"base.toml\"\n\n{repos}[[layers]]\npackages = [\"fake-jre\"]\n"),
    );
    ok(&w, &repo.url, &["lock", "base.toml"]);
    ok(&w, &repo.url, &["lock", "recipe.toml"]);
    let lock = support::read(&w.path().join("recipe.lock"));
    assert!(
        !lock.contains("name = \"ca-certificates\"\n"),
        "the base's package is not installed again:\n{lock}"
    );
    ok(&w, &repo.url, &["build", "base.toml", "--out", "base"]);
    ok(&w, &repo.url, &["build", "recipe.toml", "--out", "img"]);
    let root = unpack(&w, "img");
    check_store(&root.join("etc/ssl/certs/java/cacerts"));
}

/// Debian's own tool as the oracle: a `ca-certificates` made of the host's
/// certificates (those `/etc/ca-certificates.conf` enables) gives a store
/// whose aliases and fingerprints are those of the host's
/// `/etc/ssl/certs/java/cacerts`, which `ca-certificates-java` wrote (less
/// the host's local certificates, from `/usr/local/share/ca-certificates`).
#[test]
fn the_store_matches_the_one_debian_made_on_this_host() {
    let host_store = Path::new("/etc/ssl/certs/java/cacerts");
    assert!(
        host_store.is_file(),
        "no {} on this host: install default-jre-headless (it brings ca-certificates-java)",
        host_store.display()
    );
    let conf = support::read(Path::new("/etc/ca-certificates.conf"));
    let enabled: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .collect();
    assert!(enabled.len() > 50, "{conf}");
    let mut ca = Pkg::new("ca-certificates", "1", "all");
    for name in &enabled {
        let path = format!("/usr/share/ca-certificates/{name}");
        ca = ca.file(&path, fs::read(&path).unwrap(), 0o644);
    }
    let suite = "kiln-cacerts-debian";
    let repo = Repo::start(
        suite,
        &["main"],
        &[
            ca,
            Pkg::new("ca-certificates-java", "1", "all").depends("ca-certificates"),
        ],
    );
    let w = workspace(&repo, suite, "[\"ca-certificates-java\"]");
    ok(&w, &repo.url, &["build", "recipe.toml", "--out", "img"]);
    let root = unpack(&w, "img");
    let ours = keytool_list(&root.join("etc/ssl/certs/java/cacerts"), "changeit");
    support::assert_success(&ours, "keytool -list (kiln's store)");
    let ours = keytool_entries(&String::from_utf8_lossy(&ours.stdout));
    let debian = Command::new("keytool")
        .args(["-list", "-keystore"])
        .arg(host_store)
        .args(["-storepass", "changeit"])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    support::assert_success(&debian, "keytool -list (the host's store)");
    let mut debian = keytool_entries(&String::from_utf8_lossy(&debian.stdout));
    let local: Vec<String> = fs::read_dir("/usr/local/share/ca-certificates")
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for name in local {
        let stem = name.strip_suffix(".crt").unwrap_or(&name);
        debian.remove(&format!("debian:{}.pem", stem.to_lowercase()));
    }
    // Entries added by hand (not by the Debian tool) have other aliases.
    debian.retain(|alias, _| alias.starts_with("debian:"));
    let differ: Vec<String> = ours
        .keys()
        .chain(debian.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|a| ours.get(*a) != debian.get(*a))
        .map(|a| format!("{a}: kiln {:?}, Debian {:?}", ours.get(a), debian.get(a)))
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    assert_eq!(ours.len(), enabled.len());
}
