//! A real registry for the registry tests: Debian's `docker-registry` (CNCF
//! distribution 2.8) on 127.0.0.1, in three flavours — no auth, htpasswd
//! basic auth, and the token flow behind a token server of our own — each
//! started once per test process, with its storage in a temporary directory.
//!
//! The registry must die with the test process, however that ends: it is
//! spawned from a thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG` set to `SIGKILL` (the kernel kills it when that thread
//! goes, i.e. when the process goes), and an `atexit` handler kills it and
//! removes its storage on an ordinary exit.
//!
//! The tools are not optional: a missing one fails the test with a message
//! pointing at `scripts/test.sh`.

pub mod client;
pub mod proxy;
pub mod token;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::support::{have, run};

/// The user the authenticated registries accept.
pub const USER: &str = "kiln-user";
/// That user's password. Distinctive, so a test can assert it is never echoed.
pub const PASSWORD: &str = "Hunter2-kiln-0b5e7d";

/// Panics (never skips) when `tool` is not installed.
pub fn need(tool: &str) {
    assert!(
        have(tool),
        "`{tool}` is not installed; run scripts/test.sh (as root), which installs \
         docker-registry, apache2-utils (htpasswd), openssl and skopeo before running the tests"
    );
}

/// A command for an external tool that must be installed.
pub fn tool(name: &str) -> Command {
    need(name);
    Command::new(name)
}

/// Which authentication a registry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// No authentication.
    Plain,
    /// HTTP basic auth against an htpasswd file.
    Basic,
    /// Bearer tokens from [`token::TokenServer`], which takes basic auth.
    Token,
    /// The token flow with the token server behind a [`proxy::Proxy`] that
    /// fails the first token request (and the first of each other kind).
    FlakyToken,
}

/// A running `docker-registry`.
pub struct Registry {
    pub flavour: Flavour,
    /// `127.0.0.1:PORT`, as it goes in an image reference.
    pub host: String,
    /// The storage driver's `rootdirectory`.
    pub storage: PathBuf,
    log: Arc<Mutex<String>>,
    /// The proxy in front of the token server ([`Flavour::FlakyToken`]).
    pub token_proxy: Option<proxy::Proxy>,
}

/// The registry of `flavour`, started on first use.
pub fn registry(flavour: Flavour) -> &'static Registry {
    static PLAIN: OnceLock<Registry> = OnceLock::new();
    static BASIC: OnceLock<Registry> = OnceLock::new();
    static TOKEN: OnceLock<Registry> = OnceLock::new();
    static FLAKY_TOKEN: OnceLock<Registry> = OnceLock::new();
    let cell = match flavour {
        Flavour::Plain => &PLAIN,
        Flavour::Basic => &BASIC,
        Flavour::Token => &TOKEN,
        Flavour::FlakyToken => &FLAKY_TOKEN,
    };
    cell.get_or_init(|| Registry::start(flavour))
}

impl Registry {
    fn start(flavour: Flavour) -> Registry {
        need("docker-registry");
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("kiln-registry-{}-", std::process::id()))
            .tempdir()
            .unwrap()
            .keep();
        let storage = dir.join("storage");
        let mut token_proxy = None;
        let auth = match flavour {
            Flavour::Plain => String::new(),
            Flavour::Basic => {
                let line = run(tool("htpasswd").args(["-Bbn", USER, PASSWORD]));
                let file = dir.join("htpasswd");
                std::fs::write(&file, line.trim()).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    file.display()
                )
            }
            Flavour::Token | Flavour::FlakyToken => {
                let server = token::TokenServer::start(&dir, USER, PASSWORD);
                let mut realm = server.realm.clone();
                if flavour == Flavour::FlakyToken {
                    let upstream = realm
                        .trim_start_matches("http://")
                        .trim_end_matches("/token")
                        .to_string();
                    let p = proxy::Proxy::start(&upstream, proxy::Faults::OncePerKind);
                    realm = format!("http://{}/token", p.host);
                    token_proxy = Some(p);
                }
                let auth = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    realm,
                    token::SERVICE,
                    token::ISSUER,
                    server.cert.display()
                );
                auth
            }
        };
        // Port 0: the registry picks a free port and logs it, so two test
        // processes never race for one.
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:0\n  secret: kiln-test-http-secret\n\
             {auth}",
            storage.display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();

        let mut cmd = Command::new("docker-registry");
        // REGISTRY_* variables override the config file; none may leak in.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_tied_to_process(cmd);
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        let addr = addr.split(['"', ' ']).next().unwrap_or_default();
                        let _ = tx.send(addr.to_string());
                    }
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let pid = child.id();
        CLEANUP
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((child, dir.clone()));
        let host = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| {
                panic!(
                    "docker-registry (pid {pid}) did not say where it listens; its log:\n{}",
                    log.lock().unwrap()
                )
            });
        assert!(host.starts_with("127.0.0.1:"), "registry listens on {host}");
        let registry = Registry {
            flavour,
            host,
            storage,
            log,
            token_proxy,
        };
        registry.wait_ready();
        registry
    }

    /// Waits until `/v2/` answers (200 or 401).
    fn wait_ready(&self) {
        use std::io::{Read, Write};
        for _ in 0..100 {
            if let Ok(mut s) = std::net::TcpStream::connect(&self.host) {
                let req = format!(
                    "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.host
                );
                let mut answer = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut answer).is_ok()
                    && (answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 401"))
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "registry on {} never answered /v2/:\n{}",
            self.host,
            self.log()
        );
    }

    /// `HOST/REPO` (append `:TAG` or `@DIGEST`).
    pub fn repo(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host)
    }

    /// Everything the registry logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The file the registry keeps blob `digest` (`sha256:…`) in.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// `--creds` for skopeo, or `--no-creds`.
    pub fn skopeo_creds(&self) -> Vec<String> {
        match self.flavour {
            Flavour::Plain => vec!["--no-creds".into()],
            _ => vec!["--creds".into(), format!("{USER}:{PASSWORD}")],
        }
    }
}

/// Kills `child` and removes `dir` when the test process exits (other
/// daemons the tests start: see `support::runtimes`).
pub(crate) fn clean_up_at_exit(child: Child, dir: PathBuf) {
    CLEANUP
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((child, dir));
}

/// Registries to kill, and their directories to remove, when the process exits.
static CLEANUP: Mutex<Vec<(Child, PathBuf)>> = Mutex::new(Vec::new());

mod sys {
    use std::os::raw::{c_int, c_ulong};
    extern "C" {
        pub fn prctl(option: c_int, ...) -> c_int;
        pub fn getppid() -> c_int;
        pub fn atexit(f: extern "C" fn()) -> c_int;
    }
    pub const PR_SET_PDEATHSIG: c_int = 1;
    pub const SIGKILL: c_ulong = 9;
}

extern "C" fn cleanup_at_exit() {
    let mut list = CLEANUP.lock().unwrap_or_else(|e| e.into_inner());
    for (child, dir) in list.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes the directories of registries whose test process is gone without
/// running its `atexit` handler (killed by a signal).
fn sweep_stale_dirs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("kiln-registry-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

/// Spawns `cmd` so that it dies with this process: the kernel sends it
/// `SIGKILL` when the spawning thread exits, and that thread never exits
/// before the process does.
pub(crate) fn spawn_tied_to_process(mut cmd: Command) -> Child {
    use std::os::unix::process::CommandExt;
    static AT_EXIT: OnceLock<()> = OnceLock::new();
    AT_EXIT.get_or_init(|| {
        // SAFETY: registers a plain function with no arguments.
        let rc = unsafe { sys::atexit(cleanup_at_exit) };
        assert_eq!(rc, 0, "atexit failed");
    });
    let parent = std::process::id() as i32;
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if sys::prctl(sys::PR_SET_PDEATHSIG, sys::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if sys::getppid() != parent {
                return Err(std::io::Error::other("the test process is gone"));
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("registry-parent".into())
        .spawn(move || {
            let _ = tx.send(cmd.spawn());
            // The death signal is tied to this thread: it must outlive the tests.
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}; run scripts/test.sh"))
}

/// Every blob under a layout's `blobs/sha256`, as (`sha256:<hex>`, path).
pub fn layout_blobs(layout: &Path) -> Vec<(String, PathBuf)> {
    let dir = layout.join("blobs/sha256");
    let mut blobs: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                format!("sha256:{}", e.file_name().to_string_lossy()),
                e.path(),
            )
        })
        .collect();
    blobs.sort();
    blobs
}
