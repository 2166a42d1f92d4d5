//! `[accounts] from-packages`: the system users and groups that packages'
//! maintainer scripts create with `adduser --system`, `addgroup --system`,
//! `useradd -r` (read as data, never run), with the ids the real tools pick.
//! The oracle is the real `adduser`/`useradd` of the host, run in a private
//! mount namespace over copies of the same starting account files (a copy
//! of `/etc` bind-mounted over `/etc`, tmpfs over `/var/lib` and `/home`:
//! the host's files are never touched); their `/etc/passwd` and `/etc/group`
//! must equal the image's, and the home they create must have the owner and
//! mode the image's has. Packages come from a local signed Debian repository
//! on 127.0.0.1; the image is read back by `umoci unpack`.

use std::fs;
use std::process::Command;
use std::sync::OnceLock;

use crate::support::apt::{Pkg, Repo};
use crate::support::{self, mode, owner, read, Work};

const SUITE: &str = "kiln-sysusers";

use crate::accounts::{GROUP_MASTER, PASSWD_MASTER};

/// The account calls of the crafted packages, in package-name order, as
/// real Debian packages make them.
const POSTGRES: &str = "adduser --system --quiet --home /var/lib/postgresql --no-create-home \\\n    --shell /bin/bash --group --gecos \"PostgreSQL administrator\" postgres";
const REDIS: &str = "adduser --system --home /var/lib/redis --quiet --group redis";
const SSL_CERT: &str = "addgroup --quiet --system ssl-cert";
const SVCD: &str = "useradd -r -d /var/lib/svcd -s /usr/sbin/nologin -c 'svc daemon' svcd";

const SYSUSERS_CONF: &str = "# sysu's accounts\ng sysgrp -\nu sysu - \"Sys user\" /var/lib/sysu\nm sysu sysgrp\nu sysb 300\ng sysd 310\n";

fn script(body: &str) -> String {
    format!("#!/bin/sh\nset -e\n\ncase \"$1\" in\n    configure)\n        {body}\n        ;;\nesac\n\n#DEBHELPER#\nexit 0\n")
}

fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| {
        Repo::start(
            SUITE,
            &["main"],
            &[
                Pkg::new("base-passwd", "3.6.1", "amd64")
                    .file("/usr/share/base-passwd/passwd.master", PASSWD_MASTER, 0o644)
                    .file("/usr/share/base-passwd/group.master", GROUP_MASTER, 0o644),
                Pkg::new("postgresql-common", "248", "all")
                    .depends("ssl-cert")
                    .file(
                        "/DEBIAN/postinst",
                        // As the real one: `$quiet` is `--quiet` or nothing.
                        script(&format!(
                            "[ \"$DPKG_MAINTSCRIPT_PACKAGE\" ] && quiet=\"--quiet\"\n        \
                             if ! getent passwd postgres > /dev/null; then\n            {}\n        fi\n        \
                             if getent group ssl-cert >/dev/null; then\n            adduser $quiet postgres ssl-cert\n        fi",
                            POSTGRES.replace("--quiet", "$quiet")
                        )),
                        0o755,
                    )
                    .file("/usr/share/postgresql-common/README", "pg\n", 0o644),
                Pkg::new("redis-server", "7.0.15", "amd64")
                    .file(
                        "/DEBIAN/postinst",
                        script(&format!(
                            "if ! getent passwd redis >/dev/null; then\n            {REDIS}\n        fi"
                        )),
                        0o755,
                    )
                    .file("/usr/bin/redis-server", "redis\n", 0o755),
                Pkg::new("ssl-cert", "1.1.2", "all").file(
                    "/DEBIAN/postinst",
                    script(SSL_CERT),
                    0o755,
                ),
                Pkg::new("svc-daemon", "1", "all")
                    .file(
                        "/DEBIAN/preinst",
                        format!("#!/bin/sh\nset -e\ngetent passwd svcd >/dev/null || {SVCD}\n"),
                        0o755,
                    ),
                Pkg::new("sysu", "1", "all").file(
                    "/usr/lib/sysusers.d/sysu.conf",
                    SYSUSERS_CONF,
                    0o644,
                ),
                Pkg::new("weird", "1", "all").file(
                    "/DEBIAN/postinst",
                    "#!/bin/sh\nset -e\n[ -r /etc/default/weird ] && . /etc/default/weird\n\nadduser --system --quiet \\\n  --home \"$HOMEDIR\" weird\n",
                    0o755,
                ),
            ],
        )
    })
}

fn ok(w: &Work, args: &[&str]) -> String {
    support::apt::kiln_ok_at(w, &repo().url, args)
}

/// A locked base with base-passwd and an `/etc/shadow`, and `recipe.toml`
/// on it installing `packages`, with `accounts` as its `[accounts]` body
/// (none when `None`).
fn workspace(packages: &str, accounts: Option<&str>) -> Work {
    let w = Work::new();
    w.write("keys/test.gpg", fs::read(&repo().keyring).unwrap());
    let repos = format!("[repositories.test]\nsuite = \"{SUITE}\"\nkeyring = \"keys/test.gpg\"\n");
    w.write(
        "base.toml",
        format!(
            "name = \"base\"\nplatforms = [\"linux/amd64\"]\n\n{repos}\n[[layers]]\npackages = [\"base-passwd\"]\n\
             contents = [{{ dest = \"/etc/shadow\", text = \"root:*:19000:0:99999:7:::\\n\", mode = 0o640, gid = 42 }}]\n"
        ),
    );
    let accounts = accounts.map_or(String::new(), |a| format!("\n[accounts]\n{a}\n"));
    w.write(
        "recipe.toml",
        format!(
            "name = \"app\"\nbase = \"base.toml\"\nplatforms = [\"linux/amd64\"]\n\n\
             [[layers]]\npackages = [{packages}]\n{accounts}"
        ),
    );
    ok(&w, &["lock", "recipe.toml"]);
    w
}

/// The real tools' result: `commands` run by `sh` in a private mount
/// namespace whose `/etc` is a copy of the host's with `passwd`, `group`,
/// `shadow` and `gshadow` replaced by `start`; returns the four files and
/// the output of the commands (`stat` of homes).
fn real_tools(start: [&str; 4], commands: &str) -> ([String; 4], String) {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    support::apt::run(Command::new("cp").arg("-a").arg("/etc").arg(&etc));
    for (name, text) in ["passwd", "group", "shadow", "gshadow"].iter().zip(start) {
        fs::write(etc.join(name), text).unwrap();
    }
    let script = format!(
        "set -e\nmount --bind '{}' /etc\nmount -t tmpfs none /var/lib\nmount -t tmpfs none /home\n\
         mount -t tmpfs none /var/log\n{commands}\n",
        etc.display()
    );
    let out = support::apt::run(Command::new("unshare").args(["--mount", "sh", "-c", &script]));
    let files = ["passwd", "group", "shadow", "gshadow"].map(|n| read(&etc.join(n)));
    (files, String::from_utf8(out.stdout).unwrap())
}

#[test]
fn package_scripts_create_the_accounts_adduser_and_useradd_would() {
    support::need_root("umoci keeps owners only as root; unshare needs root");
    for (tool, package) in [
        ("adduser", "adduser"),
        ("useradd", "passwd"),
        ("unshare", "util-linux"),
    ] {
        assert!(
            support::apt::have(tool),
            "`{tool}` is not installed (Debian package `{package}`)"
        );
    }
    let w = workspace(
        "\"postgresql-common\", \"redis-server\", \"svc-daemon\"",
        Some("from-packages = true\nusers = [{ name = \"app\", uid = 1000, gid = 1000, home = \"/app\" }]\ngroups = [{ name = \"app\", gid = 1000 }]"),
    );
    ok(&w, &["build", "base.toml", "--out", "base"]);
    let out = w
        .kiln()
        .env("KILN_DEBIAN_MIRROR", &repo().url)
        .env("KILN_NO_PROGRESS", "0")
        .args(["build", "recipe.toml", "--out", "img"])
        .output()
        .unwrap();
    support::assert_success(&out, "kiln build");
    // The build says which package created which account.
    let stderr = String::from_utf8(out.stderr).unwrap();
    for line in [
        "account user postgres (uid 100) from package postgresql-common",
        "account user redis (uid 101) from package redis-server",
        "account group ssl-cert (gid 102) from package ssl-cert",
        "account user svcd (uid 999) from package svc-daemon",
    ] {
        assert!(stderr.lines().any(|l| l == line), "{line}:\n{stderr}");
    }
    let rootfs =
        support::umoci_unpack(Command::new("umoci"), w.path(), "img:latest", "b").join("rootfs");
    let passwd = read(&rootfs.join("etc/passwd"));
    let group = read(&rootfs.join("etc/group"));

    // The real tools over the same start (the base's files, then the
    // recipe's own users, which kiln adds first), in package-name order.
    let start_passwd = format!("{PASSWD_MASTER}app:x:1000:1000::/app:/usr/sbin/nologin\n");
    let start_group = format!("{GROUP_MASTER}app:x:1000:\n");
    let (real, stat) = real_tools(
        [&start_passwd, &start_group, "root:*:19000:0:99999:7:::\napp:*:::::::\n", ""],
        &format!(
            "{POSTGRES}\n{REDIS}\n{SSL_CERT}\n{SVCD}\nadduser --quiet postgres ssl-cert\n\
             stat -c '%u %g %a' /var/lib/redis\ntest ! -e /var/lib/postgresql\ntest ! -e /var/lib/svcd\n"
        ),
    );
    eprintln!("real passwd:\n{}\nreal group:\n{}", real[0], real[1]);
    assert_eq!(passwd, real[0]);
    assert_eq!(group, real[1]);
    // What that is, in adduser's and useradd's own rules: adduser from 100
    // up, useradd -r from 999 down, a comment as chfn writes it.
    assert!(
        passwd.ends_with(
            "postgres:x:100:100:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n\
         redis:x:101:101::/var/lib/redis:/usr/sbin/nologin\n\
         svcd:x:999:999:svc daemon:/var/lib/svcd:/usr/sbin/nologin\n"
        ),
        "{passwd}"
    );
    assert!(group.contains("ssl-cert:x:102:postgres\n"), "{group}");

    // The home adduser makes, as it makes it; none for --no-create-home or
    // useradd without -m.
    let home = rootfs.join("var/lib/redis");
    let (uid, gid) = owner(&home);
    assert_eq!(format!("{uid} {gid} {:o}", mode(&home)), stat.trim());
    assert!(!rootfs.join("var/lib/postgresql").exists());
    assert!(!rootfs.join("var/lib/svcd").exists());
    // shadow gets a locked entry for each new user.
    let shadow = read(&rootfs.join("etc/shadow"));
    for name in ["postgres", "redis", "svcd"] {
        assert!(shadow.contains(&format!("\n{name}:*:")), "{shadow}");
    }
}

#[test]
fn an_unreadable_call_is_an_error_naming_the_package_and_line() {
    let w = workspace("\"weird\", \"redis-server\"", Some("from-packages = true"));
    let out = support::apt::kiln_at(&w, &repo().url, &["build", "recipe.toml", "--out", "img"]);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_output_snapshot!(&*stderr);
    assert!(!w.path().join("img").exists());

    // Declaring the account, or ignoring the package, lets it build.
    for fix in [
        "ignore-packages = [\"weird\"]",
        "users = [{ name = \"weird\", uid = 500, gid = 65534, home = \"/srv/weird\" }]",
    ] {
        let text = fs::read_to_string(w.path().join("recipe.toml")).unwrap();
        w.write(
            "r2.toml",
            text.replace(
                "from-packages = true",
                &format!("from-packages = true\n{fix}"),
            ),
        );
        fs::copy(w.path().join("recipe.lock"), w.path().join("r2.lock")).unwrap();
        ok(&w, &["build", "r2.toml", "--out", "img2"]);
    }
}

#[test]
fn without_from_packages_nothing_changes() {
    support::need_root("umoci keeps owners only as root");
    let w = workspace("\"redis-server\", \"svc-daemon\"", None);
    ok(&w, &["build", "recipe.toml", "--out", "img"]);
    let rootfs =
        support::umoci_unpack(Command::new("umoci"), w.path(), "img:latest", "b").join("rootfs");
    assert_eq!(read(&rootfs.join("etc/passwd")), PASSWD_MASTER);
    assert_eq!(read(&rootfs.join("etc/group")), GROUP_MASTER);
    assert!(!rootfs.join("var/lib/redis").exists());
    // `[accounts]` without the opt-in adds only what it lists.
    let w = workspace(
        "\"redis-server\"",
        Some("groups = [{ name = \"app\", gid = 1000 }]"),
    );
    ok(&w, &["build", "recipe.toml", "--out", "img"]);
    let rootfs =
        support::umoci_unpack(Command::new("umoci"), w.path(), "img:latest", "b").join("rootfs");
    assert_eq!(read(&rootfs.join("etc/passwd")), PASSWD_MASTER);
    assert_eq!(
        read(&rootfs.join("etc/group")),
        format!("{GROUP_MASTER}app:x:1000:\n")
    );
}

/// `sysusers.d` lines give what `systemd-sysusers --root` gives over the
/// same files.
#[test]
fn sysusers_d_files_give_what_systemd_sysusers_gives() {
    support::need_root("umoci keeps owners only as root");
    assert!(
        support::apt::have("systemd-sysusers"),
        "`systemd-sysusers` is not installed (Debian package `systemd`)"
    );
    let w = workspace("\"sysu\"", Some("from-packages = true"));
    ok(&w, &["build", "recipe.toml", "--out", "img"]);
    let rootfs =
        support::umoci_unpack(Command::new("umoci"), w.path(), "img:latest", "b").join("rootfs");
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("etc")).unwrap();
    fs::write(dir.path().join("etc/passwd"), PASSWD_MASTER).unwrap();
    fs::write(dir.path().join("etc/group"), GROUP_MASTER).unwrap();
    fs::write(dir.path().join("sysu.conf"), SYSUSERS_CONF).unwrap();
    support::apt::run(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", dir.path().display()))
            .arg(dir.path().join("sysu.conf")),
    );
    assert_eq!(
        read(&rootfs.join("etc/passwd")),
        read(&dir.path().join("etc/passwd"))
    );
    assert_eq!(
        read(&rootfs.join("etc/group")),
        read(&dir.path().join("etc/group"))
    );
}
