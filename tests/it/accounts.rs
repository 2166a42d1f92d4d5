//! Users and groups: `/etc/passwd` and `/etc/group` from base-passwd's master
//! files, and `[accounts]` merged into what the layers below have (a base
//! recipe built from a local signed Debian repository on 127.0.0.1), never
//! replacing it. Read back by `umoci unpack` (which resolves `config.user`
//! through the image's own `/etc/passwd`) and run with `runc`.

use std::fs;
use std::process::Command;
use std::sync::OnceLock;

use crate::support::apt::{Pkg, Repo};
use crate::support::{self, mode, owner, read, Work};

const SUITE: &str = "kiln-accounts";

/// base-passwd's master files, cut down (shared with `sysusers`).
pub(crate) const PASSWD_MASTER: &str = "root:*:0:0:root:/root:/bin/sh\n\
daemon:*:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
www-data:*:33:33:www-data:/var/www:/usr/sbin/nologin\n\
nobody:*:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

pub(crate) const GROUP_MASTER: &str =
    "root:*:0:\ndaemon:*:1:\nshadow:*:42:\nwww-data:*:33:\nnogroup:*:65534:\n";

fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| {
        Repo::start(
            SUITE,
            &["main"],
            &[Pkg::new("base-passwd", "3.6.1", "amd64")
                .file("/usr/share/base-passwd/passwd.master", PASSWD_MASTER, 0o644)
                .file("/usr/share/base-passwd/group.master", GROUP_MASTER, 0o644)],
        )
    })
}

fn kiln(w: &Work, args: &[&str]) -> std::process::Output {
    support::apt::kiln_at(w, &repo().url, args)
}

fn ok(w: &Work, args: &[&str]) -> String {
    support::apt::kiln_ok_at(w, &repo().url, args)
}

fn fails(w: &Work, args: &[&str]) -> String {
    let out = kiln(w, args);
    assert!(
        !out.status.success(),
        "kiln {} should have failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A workspace with a locked `base.toml` (base-passwd, and an `/etc/shadow`
/// owned by group shadow) and `recipe.toml` on it, made of `top`.
fn workspace(top: &str) -> Work {
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo().keyring).unwrap());
    w.write(
        "base.toml",
        format!(
            "name = \"base\"\n\n[repositories.test]\nsuite = \"{SUITE}\"\nkeyring = \"keys/test.gpg\"\n\n\
             [[layers]]\npackages = [\"base-passwd\"]\n\
             contents = [{{ dest = \"/etc/shadow\", text = \"root:*:19000:0:99999:7:::\\n\", mode = 0o640, gid = 42 }}]\n"
        ),
    );
    ok(&w, &["lock", "base.toml"]);
    w.write(
        "recipe.toml",
        format!("name = \"app\"\nbase = \"base.toml\"\n{top}"),
    );
    w
}

#[test]
fn base_passwd_gives_etc_passwd_and_accounts_merge_into_it() {
    support::need_root("umoci keeps owners only as root, and runc runs as root");
    let w = workspace(
        "[config]\nuser = \"app\"\nentrypoint = [\"/app/probe\"]\n\n\
         [[layers]]\nfiles = [{ src = \"bin/probe\", dest = \"/app/probe\" }]\n\n\
         [accounts]\n\
         users = [{ name = \"app\", uid = 1000, gid = 1000, home = \"/app\" }, { name = \"nginx\", uid = 101, gid = 101 }]\n\
         groups = [{ name = \"nginx\", gid = 101 }, { name = \"app\", gid = 1000 }, { name = \"www-data\", gid = 33, members = [\"app\"] }]\n",
    );
    crate::real_tools::put_probe(&w, "bin/probe");
    ok(&w, &["build", "base.toml", "--out", "base"]);
    ok(&w, &["build", "recipe.toml", "--out", "img"]);

    // The base: base-passwd's master files, as its postinst copies them.
    let base = support::umoci_unpack(Command::new("umoci"), w.path(), "base:latest", "b0");
    let rootfs = base.join("rootfs");
    assert_eq!(read(&rootfs.join("etc/passwd")), PASSWD_MASTER);
    assert_eq!(read(&rootfs.join("etc/group")), GROUP_MASTER);

    // The image: every line below kept in its order, new ones in id order.
    let bundle = support::umoci_unpack(Command::new("umoci"), w.path(), "img:latest", "b1");
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        read(&rootfs.join("etc/passwd")),
        format!(
            "{PASSWD_MASTER}nginx:x:101:101::/home/nginx:/usr/sbin/nologin\n\
             app:x:1000:1000::/app:/usr/sbin/nologin\n"
        )
    );
    assert_eq!(
        read(&rootfs.join("etc/group")),
        "root:*:0:\ndaemon:*:1:\nshadow:*:42:\nwww-data:*:33:app\nnogroup:*:65534:\n\
         nginx:x:101:\napp:x:1000:\n"
    );
    let shadow = rootfs.join("etc/shadow");
    assert_eq!(
        read(&shadow),
        "root:*:19000:0:99999:7:::\nnginx:*:::::::\napp:*:::::::\n"
    );
    assert_eq!((mode(&shadow), owner(&shadow)), (0o640, (0, 42)));
    assert!(!rootfs.join("etc/gshadow").exists());

    // umoci resolved `config.user` through the image's own files.
    let config: serde_json::Value =
        serde_json::from_str(&read(&bundle.join("config.json"))).unwrap();
    let user = &config["process"]["user"];
    assert_eq!(
        (user["uid"].as_u64(), user["gid"].as_u64()),
        (Some(1000), Some(1000))
    );
    let out = support::runc_run(
        Command::new("runc"),
        &w.path().join("runc-root"),
        &bundle,
        &format!("kiln-accounts-{}", std::process::id()),
        None,
    );
    assert!(out.lines().any(|l| l == "uid=1000 gid=1000"), "{out}");
}

#[test]
fn a_taken_uid_is_refused_at_the_recipe_line() {
    let w = workspace("\n[accounts]\nusers = [\n  { name = \"web\", uid = 33, gid = 33 },\n]\n");
    let err = fails(&w, &["build", "recipe.toml", "--out", "img"]);
    assert!(err.contains("recipe.toml:6:3"), "{err}");
    assert!(err.contains("www-data:*:33:33"), "{err}");
    assert!(!w.path().join("img").exists());
}

#[test]
fn config_user_must_name_a_user_the_image_has() {
    let w = workspace(
        "[config]\nuser = \"ghost\"\n\n[accounts]\ngroups = [{ name = \"app\", gid = 1000 }]\n",
    );
    let err = fails(&w, &["build", "recipe.toml", "--out", "img"]);
    assert!(err.contains("recipe.toml:4:8"), "{err}");
    assert!(err.contains("user `ghost`"), "{err}");
    // A name from base-passwd is there.
    w.write(
        "recipe.toml",
        "name = \"app\"\nbase = \"base.toml\"\n[config]\nuser = \"www-data:www-data\"\n\n[accounts]\ngroups = [{ name = \"app\", gid = 1000 }]\n",
    );
    ok(&w, &["build", "recipe.toml", "--out", "img"]);
}

#[test]
fn bad_accounts_are_refused_when_the_recipe_is_read() {
    let w = Work::new();
    w.write(
        "recipe.toml",
        "name = \"app\"\n[accounts]\nusers = [{ name = \"a:b\", uid = 1, gid = 1 }]\n",
    );
    let (code, err) = w.fails(&["build", "recipe.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("recipe.toml:3:10"), "{err}");
    w.write(
        "recipe.toml",
        "name = \"app\"\n[accounts]\nusers = [{ name = \"a\", uid = 1, gid = 1 }, { name = \"b\", uid = 1, gid = 1 }]\n",
    );
    let (_, err) = w.fails(&["build", "recipe.toml"]);
    assert!(err.contains("listed twice"), "{err}");
}

#[test]
fn base_passwd_over_a_lower_passwd_keeps_it() {
    support::need_root("umoci keeps owners only as root");
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo().keyring).unwrap());
    let lower =
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n";
    w.write(
        "base.toml",
        format!(
            "name = \"base\"\n[[layers]]\ncontents = [{{ dest = \"/etc/passwd\", text = {lower:?} }}]\n"
        ),
    );
    w.write(
        "recipe.toml",
        format!(
            "name = \"app\"\nbase = \"base.toml\"\n\n[repositories.test]\nsuite = \"{SUITE}\"\n\
             keyring = \"keys/test.gpg\"\n\n[[layers]]\npackages = [\"base-passwd\"]\n"
        ),
    );
    ok(&w, &["lock", "recipe.toml"]);
    ok(&w, &["build", "recipe.toml", "--out", "img"]);
    let rootfs =
        support::umoci_unpack(Command::new("umoci"), w.path(), "img:latest", "b").join("rootfs");
    assert_eq!(read(&rootfs.join("etc/passwd")), lower);
    // No group file below: base-passwd's postinst would have made it.
    assert_eq!(read(&rootfs.join("etc/group")), GROUP_MASTER);
    assert_eq!(
        read(&rootfs.join("usr/share/base-passwd/passwd.master")),
        PASSWD_MASTER
    );
}

/// A base image whose `/etc/passwd` is a tar hard link to a file that sorts
/// before it (`/aaa/passwd`, a path the merge does not read): `[accounts]`
/// must merge into that file's users rather than take the base for one
/// without `/etc/passwd` and drop root. umoci reads the image back.
#[test]
fn accounts_merge_a_base_etc_passwd_that_is_a_hard_link() {
    let w = Work::new();
    linked_passwd_tree(&w);
    w.write(
        "base.toml",
        "name = \"base\"\n\n[[layers]]\ntrees = [{ src = \"root\", dest = \"/\" }]\n",
    );
    w.write(
        "recipe.toml",
        "name = \"app\"\nbase = \"base.toml\"\n\n[accounts]\n\
         users = [{ name = \"app\", uid = 1000, gid = 1000 }]\n\
         groups = [{ name = \"app\", gid = 1000 }]\n",
    );
    w.ok(&["build", "recipe.toml", "--out", "img"]);
    assert_users(&w, "from the base", &["root:", "alice:", "app:"]);
}

/// `root/` in `w`: an `/etc/passwd` and `/etc/group` with root and alice,
/// the passwd file hard-linked at `/aaa/passwd` (which sorts before it, so
/// a layer holds `/etc/passwd` as a tar hard link).
pub fn linked_passwd_tree(w: &Work) {
    let passwd = w.write(
        "root/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nalice:x:500:500::/home/alice:/bin/sh\n",
    );
    w.write("root/etc/group", "root:x:0:\nalice:x:500:\n");
    fs::create_dir_all(w.path().join("root/aaa")).unwrap();
    fs::hard_link(&passwd, w.path().join("root/aaa/passwd")).unwrap();
}

/// The image `img` in `w`, unpacked by umoci, has each of `users` (a line
/// start such as `root:`) in its `/etc/passwd`.
pub fn assert_users(w: &Work, how: &str, users: &[&str]) {
    support::run(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image", "img:latest", "b"])
            .current_dir(w.path()),
    );
    let merged = read(&w.path().join("b/rootfs/etc/passwd"));
    for user in users {
        assert!(
            merged.lines().any(|l| l.starts_with(user)),
            "{how}: {user} missing from /etc/passwd:\n{merged}"
        );
    }
}
