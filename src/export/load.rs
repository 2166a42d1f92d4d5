//! `kiln build --load`: the image into a local docker or podman, by
//! streaming the OCI archive (with its `manifest.json`, see
//! [`super::archive::write_to`]) into `docker load` or `podman load` on
//! their stdin. Each reads its own settings from the environment as it
//! always does (`DOCKER_HOST`, `DOCKER_CONTEXT`, `CONTAINER_HOST`,
//! `CONTAINERS_STORAGE_CONF` …); nothing is written to disk on the way.

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::Serialize;

use super::Output;
use crate::error::{Error, Result};
use crate::store::Store;

/// Which container engine to load into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `docker load` (a docker daemon, local or at `DOCKER_HOST`).
    Docker,
    /// `podman load` (local storage, or the service at `CONTAINER_HOST`).
    Podman,
}

impl Runtime {
    /// The command's name.
    pub fn command(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }

    /// The Debian package that has the command.
    fn package(self) -> &'static str {
        match self {
            Runtime::Docker => "docker.io",
            Runtime::Podman => "podman",
        }
    }
}

/// What `--load` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Whichever is present ([`pick`]).
    Auto,
    /// This one.
    Into(Runtime),
}

impl Load {
    /// The runtime this means here.
    pub fn runtime(self) -> Result<Runtime> {
        match self {
            Load::Auto => pick(),
            Load::Into(r) => Ok(r),
        }
    }
}

/// What a load did.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    /// Where the image went.
    pub runtime: Runtime,
    /// The names the runtime reported (`Loaded image: …`).
    pub images: Vec<String>,
}

/// The runtime `--load` without a value means: docker when `DOCKER_HOST`
/// is set, podman when `CONTAINER_HOST` is; otherwise docker when its
/// command is on PATH and its daemon answers, else podman when its command
/// is on PATH, else docker (whose failure then says what is wrong).
pub fn pick() -> Result<Runtime> {
    let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
    if set("DOCKER_HOST") {
        return Ok(Runtime::Docker);
    }
    if set("CONTAINER_HOST") {
        return Ok(Runtime::Podman);
    }
    let docker = on_path("docker");
    let podman = on_path("podman");
    if docker.is_some() {
        let answers = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if answers || podman.is_none() {
            return Ok(Runtime::Docker);
        }
    }
    if podman.is_some() {
        return Ok(Runtime::Podman);
    }
    Err(Error::tool_failed(
        "docker",
        "`--load` found neither `docker` nor `podman` on PATH",
        "install docker (Debian's `docker.io`) or podman (Debian's `podman`), or write \
         the image with `--format oci-archive` and load it yourself",
    ))
}

/// Streams `output` as an OCI archive into `runtime`'s `load` and returns
/// what it loaded; its error output is in the error when it fails.
pub fn load(store: &Store, output: &Output<'_>, runtime: Runtime) -> Result<Loaded> {
    let tool = runtime.command();
    let mut child = Command::new(tool)
        .arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::tool_missing(tool, runtime.package(), e))?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let shown = PathBuf::from(format!("`{tool} load`'s input"));
    let (sent, status, stdout, errors) = std::thread::scope(|s| {
        let writer = s.spawn(|| -> Result<()> {
            let out = BufWriter::with_capacity(1 << 20, stdin);
            let mut out = super::archive::write_to(store, output, out, &shown)?;
            out.flush().map_err(|e| Error::io("write", &shown, e))
        });
        let errors = s.spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let sent = writer.join().expect("the archive writer does not panic");
        let status = child.wait();
        (sent, status, stdout, errors.join().unwrap_or_default())
    });
    let status = status.map_err(|e| Error::tool_missing(tool, runtime.package(), e))?;
    if !status.success() {
        let said = errors.trim();
        let said = if said.is_empty() { stdout.trim() } else { said };
        return Err(Error::tool_failed(
            tool,
            format!("`{tool} load` failed ({status}): {said}"),
            &match runtime {
                Runtime::Docker => "check that a docker daemon runs and that the docker command reaches it \
                     (`docker info`; DOCKER_HOST or DOCKER_CONTEXT choose which), or load into podman \
                     with `--load=podman`"
                    .to_string(),
                Runtime::Podman => "check that `podman info` works for this user (CONTAINER_HOST \
                     chooses a podman service), or load into docker with `--load=docker`"
                    .to_string(),
            },
        ));
    }
    sent?;
    let images = stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Loaded image: ")
                .or_else(|| l.strip_prefix("Loaded image(s): "))
        })
        .flat_map(|l| l.split(','))
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    Ok(Loaded { runtime, images })
}

/// The first executable file `name` in PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
