//! The container runtimes the `load_*` tests load kiln's archives into, each
//! set up once per test process with all its state in a temporary directory
//! (nothing of the host's own docker, podman or containerd is touched):
//!
//! - **containerd** (Debian's `containerd`): started with a config of our
//!   own (root, state and a unix socket under the temporary directory; the
//!   CRI plugin off); `ctr --address SOCK --namespace kiln-test` talks to it.
//! - **dockerd** (Debian's `docker.io`): started on a unix socket under the
//!   temporary directory with the `vfs` storage driver, no bridge and no
//!   iptables (loopback only: no network at all), and the containerd above
//!   (`--containerd`), so that no second containerd is left behind;
//!   `docker` reaches it through `DOCKER_HOST`.
//! - **podman** (Debian's `podman`): no daemon; `CONTAINERS_STORAGE_CONF`
//!   and `CONTAINERS_CONF` point it at a `vfs` store and settings under the
//!   temporary directory (cgroupfs, file events, and `nofile`/`nproc` limits
//!   this sandbox may set: podman's default raises them past what an
//!   unprivileged container host allows, and runc then fails with
//!   `error setting rlimit type 7`).
//!
//! Daemons are tied to the test process as the registries are
//! ([`super::registry::spawn_tied_to_process`]): killed and their
//! directories removed when it exits, however it ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::registry::{clean_up_at_exit, spawn_tied_to_process};
use super::{have, run};

/// Panics (never skips) when `tool` is not installed.
pub fn need(tool: &str) {
    assert!(
        have(tool),
        "`{tool}` is not installed; run scripts/test.sh (as root), which installs \
         docker.io (dockerd, docker), podman and containerd (containerd, ctr)"
    );
}

/// The namespace of containerd the tests use.
pub const CTR_NAMESPACE: &str = "kiln-test";

/// A running containerd.
pub struct Containerd {
    /// Its gRPC socket.
    pub socket: PathBuf,
    dir: PathBuf,
}

/// A running dockerd.
pub struct Dockerd {
    /// `unix://…`, for `DOCKER_HOST`.
    pub host: String,
    dir: PathBuf,
}

/// podman's settings for the tests.
pub struct Podman {
    /// `CONTAINERS_STORAGE_CONF`.
    pub storage_conf: PathBuf,
    /// `CONTAINERS_CONF`.
    pub containers_conf: PathBuf,
}

/// `/tmp/kiln-WHAT-PID-…`: short, as socket paths must fit in 108 bytes;
/// the process id lets a later run sweep what a killed one left.
fn temp_dir(what: &str) -> PathBuf {
    sweep_stale_dirs();
    tempfile::Builder::new()
        .prefix(&format!("kiln-{what}-{}-", std::process::id()))
        .tempdir_in("/tmp")
        .unwrap()
        .keep()
}

/// Lazily unmounts everything mounted under `dir` (dockerd bind-mounts its
/// data root onto itself), deepest first, so that the directory can go.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["--lazy", p]).status();
    }
}

/// Removes the directories (and mounts) of runtimes whose test process is
/// gone without cleaning up (killed by a signal).
fn sweep_stale_dirs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        extern "C" fn unmount_at_exit() {
            for dir in MOUNTED.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                unmount_under(dir);
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        extern "C" {
            fn atexit(f: extern "C" fn()) -> std::os::raw::c_int;
        }
        // Whichever of this and the registries' handler (which kills the
        // daemons and removes their directories) runs first, the last one
        // finds the mounts gone and the directory removable.
        // SAFETY: registers a plain function with no arguments.
        assert_eq!(unsafe { atexit(unmount_at_exit) }, 0, "atexit failed");
        let Ok(entries) = std::fs::read_dir("/tmp") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = ["dockerd", "containerd", "podman"].iter().find_map(|what| {
                name.strip_prefix(&format!("kiln-{what}-"))
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|pid| pid.parse::<u32>().ok())
            });
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    unmount_under(&e.path());
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    });
}

/// Directories with mounts in them to unmount at exit.
static MOUNTED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Waits until `ready` says yes, for at most 60 s; else panics with `log`.
fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what} did not come up in 60 s; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The containerd of this test process, started on first use.
pub fn containerd() -> &'static Containerd {
    static CELL: OnceLock<Containerd> = OnceLock::new();
    CELL.get_or_init(|| {
        need("containerd");
        need("ctr");
        let dir = temp_dir("containerd");
        MOUNTED.lock().unwrap().push(dir.clone());
        let socket = dir.join("c.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
            ),
        )
        .unwrap();
        let log = dir.join("log");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = spawn_tied_to_process(cmd);
        clean_up_at_exit(child, dir.clone());
        let c = Containerd { socket, dir };
        wait_for("containerd", &log, || {
            c.socket.exists()
                && c.ctr()
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success())
        });
        c
    })
}

impl Containerd {
    /// `ctr --address SOCK --namespace kiln-test`.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", CTR_NAMESPACE]);
        c
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

/// The dockerd of this test process, started on first use.
pub fn dockerd() -> &'static Dockerd {
    static CELL: OnceLock<Dockerd> = OnceLock::new();
    CELL.get_or_init(|| {
        need("dockerd");
        need("docker");
        let containerd = containerd();
        let dir = temp_dir("dockerd");
        MOUNTED.lock().unwrap().push(dir.clone());
        let socket = dir.join("d.sock");
        std::fs::write(dir.join("daemon.json"), "{}").unwrap();
        let log = dir.join("log");
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(&containerd.socket)
            .args([
                "--containerd-namespace",
                "kiln-test-docker",
                "--containerd-plugins-namespace",
                "kiln-test-docker-plugins",
                "--storage-driver",
                "vfs",
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = spawn_tied_to_process(cmd);
        clean_up_at_exit(child, dir.clone());
        let d = Dockerd {
            host: format!("unix://{}", socket.display()),
            dir,
        };
        wait_for("dockerd", &log, || {
            socket.exists()
                && d.docker()
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success())
        });
        d
    })
}

impl Dockerd {
    /// `docker` with `DOCKER_HOST` set to this daemon.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", &self.host)
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", self.dir.join("client"));
        c
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

/// podman's settings for this test process, written on first use.
pub fn podman() -> &'static Podman {
    static CELL: OnceLock<Podman> = OnceLock::new();
    CELL.get_or_init(|| {
        need("podman");
        let dir = temp_dir("podman");
        let storage_conf = dir.join("storage.conf");
        std::fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("root").display(),
                dir.join("run").display()
            ),
        )
        .unwrap();
        let containers_conf = dir.join("containers.conf");
        std::fs::write(
            &containers_conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 netns = \"none\"\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{}\"\ntmp_dir = \"{}\"\n",
                dir.join("events.log").display(),
                dir.join("tmp").display()
            ),
        )
        .unwrap();
        // No daemon: only the directory to remove at exit, with a process
        // that is already done standing in for one.
        let done = spawn_tied_to_process({
            let mut c = Command::new("true");
            c.stdin(Stdio::null());
            c
        });
        clean_up_at_exit(done, dir);
        let p = Podman {
            storage_conf,
            containers_conf,
        };
        run(p.podman().arg("info"));
        p
    })
}

impl Podman {
    /// Sets podman's environment on `cmd` (kiln's own or podman's).
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .env("CONTAINERS_CONF", &self.containers_conf)
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION")
    }

    /// `podman` with this process's storage and settings.
    pub fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        self.env(&mut c);
        c
    }
}

/// Writes `NAME.toml` into the workspace: Debian's static busybox as the
/// only file, run as `busybox echo MARKER`, named `name`, with `tags`.
/// Returns the recipe's file name.
pub fn busybox_recipe(w: &super::Work, name: &str, tags: &[&str], marker: &str) -> String {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "no /bin/busybox: run scripts/test.sh (it installs busybox-static)"
    );
    let tags: Vec<String> = tags.iter().map(|t| format!("{t:?}")).collect();
    let file = format!("{name}.toml");
    w.write(
        &file,
        format!(
            "name = {name:?}\ntags = [{}]\n\
             [config]\nentrypoint = [\"/bin/busybox\", \"echo\"]\ncmd = [{marker:?}]\n\
             [[layers]]\nname = \"busybox\"\n\
             files = [ {{ src = \"/bin/busybox\", dest = \"/bin/busybox\", mode = 0o755 }} ]\n",
            tags.join(", ")
        ),
    );
    file
}

/// The digest of the config of the image built into the OCI archive
/// `archive` (its first manifest), as `sha256:<hex>`, read with `tar`.
pub fn archive_config_digest(archive: &Path) -> String {
    let read = |member: &str| run(Command::new("tar").arg("-xOf").arg(archive).arg(member));
    let index: serde_json::Value = serde_json::from_str(&read("index.json")).unwrap();
    let manifest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&read(&format!(
        "blobs/sha256/{}",
        manifest.trim_start_matches("sha256:")
    )))
    .unwrap();
    manifest["config"]["digest"].as_str().unwrap().to_string()
}
