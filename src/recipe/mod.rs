//! Stage 1, parse: recipe TOML text → a validated [`Recipe`].
//!
//! Recipes are strict: unknown keys are errors, and every value that can be
//! wrong keeps its span so that the error names `file:line:column`, quotes
//! the line and says how to fix it. Paths inside a recipe are relative to
//! the recipe's own file.

mod platform;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use platform::Platform;

use crate::error::{Error, Result, Source};

pub use validate::{expand_src, image_path, port_key};

/// A parsed, validated recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The file's path and text, for error messages.
    pub source: Source,
    /// The directory relative paths in the recipe are resolved against.
    pub dir: PathBuf,
    /// The image name (`name`).
    pub name: String,
    /// What the image starts from.
    pub base: Base,
    /// Platforms to build, in the order given (default `linux/amd64`).
    pub platforms: Vec<Platform>,
    /// Layer compression.
    pub compression: Compression,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// Tags as written: bare tags of the image named after the recipe, or full
    /// names (see [`crate::image_name::ImageName::of_entry`]), first first.
    pub tags: Vec<String>,
    /// The `[config]` table.
    pub config: ConfigSection,
    /// The `[[layers]]`, in order.
    pub layers: Vec<LayerSection>,
    /// `[repositories.NAME]`: Debian repositories that `packages` come from.
    pub repositories: BTreeMap<String, RepositorySection>,
    /// `[vm]`: build a bootable VM bundle from the image.
    pub vm: Option<VmSection>,
    /// `[accounts]`: users and groups merged into the image's account files.
    pub accounts: Option<AccountsSection>,
}

/// `[accounts]`: users and groups added to the `/etc/passwd` and `/etc/group`
/// (and `/etc/shadow`, `/etc/gshadow` where they exist) of the layers below,
/// in a layer of their own on top. Entries already there are kept as they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsSection {
    /// `users = [{ name, uid, gid, home?, shell? }]`
    #[serde(default)]
    pub users: Vec<Spanned<UserItem>>,
    /// `groups = [{ name, gid, members? }]`
    #[serde(default)]
    pub groups: Vec<Spanned<GroupItem>>,
    /// `from-packages = true`: the system users and groups that the
    /// `preinst`/`postinst` scripts (and `sysusers.d` files) of the
    /// packages this recipe installs create, read as data.
    #[serde(default, rename = "from-packages")]
    pub from_packages: bool,
    /// `ignore-packages = ["NAME"]`: packages whose scripts are not read
    /// for accounts (with `from-packages`).
    #[serde(default, rename = "ignore-packages")]
    pub ignore_packages: Vec<String>,
}

/// One user of `[accounts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserItem {
    /// The login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary group's gid.
    pub gid: u32,
    /// Its home directory (default `/home/NAME`).
    pub home: Option<String>,
    /// Its shell (default `/usr/sbin/nologin`).
    pub shell: Option<String>,
}

/// One group of `[accounts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupItem {
    /// The group's name.
    pub name: String,
    /// Its gid.
    pub gid: u32,
    /// Users who belong to it besides those whose primary group it is.
    #[serde(default)]
    pub members: Vec<String>,
}

/// `[vm]`: how the image becomes a bootable machine, parsed and checked
/// once (defaults filled in) when the recipe is read.
#[derive(Debug, Clone)]
pub struct VmSection {
    /// Where the kernel comes from.
    pub kernel: Kernel,
    /// Where `kernel` is written in the recipe, for errors.
    pub kernel_span: std::ops::Range<usize>,
    /// The program the kernel starts (default `/sbin/init`).
    pub init: String,
    /// The kernel command line (default `console=ttyS0`).
    pub cmdline: String,
    /// What to write, as listed (default `["initramfs"]`).
    pub outputs: Vec<VmOutput>,
    /// The disk's root filesystem (default erofs).
    pub root: RootFs,
    /// The disk's size in bytes: required room for ext4, zero padding for the others.
    pub size: Option<u64>,
}

impl VmSection {
    /// Whether `output` is one of the outputs.
    pub fn writes(&self, output: VmOutput) -> bool {
        self.outputs.contains(&output)
    }

    /// Whether a root disk is written (`raw` or `qcow2`), and so booted from.
    pub fn wants_disk(&self) -> bool {
        self.writes(VmOutput::Raw) || self.writes(VmOutput::Qcow2)
    }
}

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    /// `{ path = "…" }`: a host file, relative to the recipe.
    Path(PathBuf),
    /// `{ package = "linux-image-…" }`: the `/boot/vmlinuz-*` that package installs in the image.
    Package(String),
}

/// What a `[vm]` recipe writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum VmOutput {
    /// `initramfs`: the whole image root in memory.
    Initramfs,
    /// `raw`: a root disk.
    Raw,
    /// `qcow2`: the same disk for qemu.
    Qcow2,
}

impl VmOutput {
    /// Every output, as written in a recipe.
    pub const ALL: [(&'static str, VmOutput); 3] = [
        ("initramfs", VmOutput::Initramfs),
        ("raw", VmOutput::Raw),
        ("qcow2", VmOutput::Qcow2),
    ];

    /// The output written `name`.
    pub fn parse(name: &str) -> Option<VmOutput> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, o)| *o)
    }
}

/// The root filesystem of a VM disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFs {
    /// erofs, by `mkfs.erofs` (the default).
    Erofs,
    /// squashfs, by `mksquashfs`.
    Squashfs,
    /// ext4, by `mke2fs -d`.
    Ext4,
}

impl RootFs {
    /// Every root filesystem, as written in a recipe.
    pub const ALL: [RootFs; 3] = [RootFs::Erofs, RootFs::Squashfs, RootFs::Ext4];

    /// Its name: in a recipe, in `bundle.json`, and for `mount -t`.
    pub fn name(self) -> &'static str {
        match self {
            RootFs::Erofs => "erofs",
            RootFs::Squashfs => "squashfs",
            RootFs::Ext4 => "ext4",
        }
    }

    /// The filesystem named `name`.
    pub fn parse(name: &str) -> Option<RootFs> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// `[vm]` as written, before [`VmSection`] is made of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename = "VmSection")]
struct RawVm {
    kernel: Spanned<RawKernel>,
    init: Option<Spanned<String>>,
    cmdline: Option<String>,
    #[serde(default)]
    outputs: Vec<Spanned<String>>,
    root: Option<Spanned<String>>,
    size: Option<Spanned<String>>,
}

/// `kernel` as written: exactly one of the two is checked when [`Kernel`] is made of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename = "KernelSource")]
struct RawKernel {
    path: Option<String>,
    package: Option<String>,
}

/// An exclude glob of image paths: `*` and `?` stay within one path
/// component, `**` crosses them.
pub fn image_glob(text: &str) -> std::result::Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(text)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.kind().to_string())
}

/// Parses `512M`, `2G`, `1048576` (bytes); K, M, G, T are powers of 1024.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], t[i..].trim_end_matches(['B', 'b', 'i'])),
        None => (t, ""),
    };
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&b| b > 0)
}

/// The archive a repository comes from when it names none: Debian's main archive.
pub const MAIN_ARCHIVE: &str = "debian";

/// `[repositories.NAME]`: a Debian suite of an archive. The mirror is not
/// written here: the archive's mirror comes from an environment variable
/// (`KILN_MIRROR_<ARCHIVE>`) or the host's apt sources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySection {
    /// The suite (`bookworm`, `bookworm-updates`, `bookworm-security`).
    pub suite: String,
    /// Components (default `["main"]`).
    #[serde(default)]
    pub components: Vec<String>,
    /// The keyring `InRelease` must be signed by (default Debian's archive keyring).
    pub keyring: Option<String>,
    /// The archive the suite lives in (default `debian`, the main archive;
    /// `debian-security` for security updates; any other name).
    pub archive: Option<Spanned<String>>,
    /// Where the section is written, for errors (set when the recipe is read).
    #[serde(skip)]
    pub span: std::ops::Range<usize>,
}

impl RepositorySection {
    /// The archive's name: `archive`, else `debian`.
    pub fn archive(&self) -> &str {
        self.archive
            .as_ref()
            .map_or(MAIN_ARCHIVE, |a| a.get_ref().as_str())
    }
}

/// Where an image starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// An empty root.
    Scratch,
    /// Another recipe, built first (`base = "base-images/x.toml"`).
    Recipe {
        /// The base recipe's path, resolved against this recipe's directory.
        path: PathBuf,
        /// Where `base` is written, for errors.
        span: std::ops::Range<usize>,
    },
    /// An image in a registry (`REGISTRY/REPO@sha256:…`, or `:TAG` pinned by the lock).
    Registry {
        /// The reference as written.
        reference: String,
        /// Where `base` is written, for errors.
        span: std::ops::Range<usize>,
    },
    /// An OCI image layout on disk (`oci:PATH` or `oci:PATH@sha256:…`).
    Layout {
        /// The layout directory, resolved against this recipe's directory.
        path: PathBuf,
        /// The manifest or index to use; required when the layout holds several.
        digest: Option<crate::digest::Digest>,
        /// Where `base` is written, for errors.
        span: std::ops::Range<usize>,
    },
}

impl Base {
    /// How errors name the base (`oci:PATH`, the reference, the recipe's
    /// path) and where `base` is written; `None` for scratch.
    pub fn shown(&self) -> Option<(String, std::ops::Range<usize>)> {
        match self {
            Base::Scratch => None,
            Base::Recipe { path, span } => Some((path.display().to_string(), span.clone())),
            Base::Registry { reference, span } => Some((reference.clone(), span.clone())),
            Base::Layout { path, span, .. } => {
                Some((format!("oci:{}", path.display()), span.clone()))
            }
        }
    }
}

/// The layer compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (the default; what every runtime reads).
    Gzip,
    /// zstd (smaller and faster; needs a recent runtime).
    Zstd,
}

/// A file mode: an integer (`0o755`) or a string of octal digits (`"0755"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Int(i64),
            Str(String),
        }
        let value = match Repr::deserialize(d)? {
            Repr::Int(n) => n,
            Repr::Str(s) => i64::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{s}` is not an octal mode: write `0o755` or `\"0755\"`"
                ))
            })?,
        };
        if !(0..=0o7777).contains(&value) {
            return Err(serde::de::Error::custom(format!(
                "mode {value} is out of range: modes are octal, from `0o0` to `0o7777` (did you mean `0o{value}`?)"
            )));
        }
        Ok(Mode(value as u32))
    }
}

/// The `[config]` table: the runtime configuration of the image.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSection {
    /// `entrypoint`: the command run when the container starts.
    pub entrypoint: Option<Vec<String>>,
    /// `cmd`: default arguments to the entrypoint.
    pub cmd: Option<Vec<String>>,
    /// `env`: environment variables, merged over the base's (keys keep their
    /// span so that a bad name is reported where it is written).
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, String>,
    /// `user`: `uid[:gid]` or a name.
    pub user: Option<String>,
    /// `workdir`: the working directory (absolute).
    pub workdir: Option<Spanned<String>>,
    /// `labels`: config labels, merged over the base's.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `exposed_ports`: `"8080"`, `"8080/tcp"` or `"53/udp"`.
    #[serde(default)]
    pub exposed_ports: Vec<Spanned<String>>,
    /// `volumes`: absolute paths.
    #[serde(default)]
    pub volumes: Vec<Spanned<String>>,
    /// `stop_signal`: e.g. `"SIGTERM"`.
    pub stop_signal: Option<String>,
}

/// Which of the recipe's platforms an entry goes into (all, or those listed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformFilter(pub Option<Vec<Platform>>);

impl PlatformFilter {
    /// Whether the entry goes into `p`'s layer.
    pub fn applies(&self, p: &Platform) -> bool {
        self.0.as_ref().is_none_or(|list| list.contains(p))
    }
}

/// One `[[layers]]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSection {
    /// An optional name, shown in output and history.
    pub name: Option<String>,
    /// Single host files.
    #[serde(default)]
    pub files: Vec<Spanned<FileItem>>,
    /// Host directories, recursively.
    #[serde(default)]
    pub trees: Vec<Spanned<TreeItem>>,
    /// Small inline files.
    #[serde(default)]
    pub contents: Vec<Spanned<ContentItem>>,
    /// Directories.
    #[serde(default)]
    pub dirs: Vec<Spanned<DirItem>>,
    /// Symbolic links.
    #[serde(default)]
    pub symlinks: Vec<Spanned<SymlinkItem>>,
    /// Debian packages (with their dependencies), pinned by `kiln lock`.
    #[serde(default)]
    pub packages: Vec<Spanned<String>>,
    /// Absolute globs of package files to leave out (`/usr/share/doc/**`);
    /// `/usr/share/doc/*/copyright` is kept.
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
}

/// `files = [{ src, dest, mode?, uid?, gid? }]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileItem {
    /// Host path, relative to the recipe.
    pub src: Spanned<String>,
    /// Absolute path in the image; ending in `/` puts the file in that directory.
    pub dest: Spanned<String>,
    /// Mode; default 0755 if the host file is executable, else 0644.
    pub mode: Option<Mode>,
    /// Owner uid (default 0).
    pub uid: Option<u32>,
    /// Owner gid (default 0).
    pub gid: Option<u32>,
    /// Only for these platforms (default: all of the recipe's).
    pub platforms: Option<Vec<Spanned<String>>>,
    /// `dest` as a path in the image (no leading `/`; `/` itself is
    /// empty), checked when the recipe is parsed.
    #[serde(skip)]
    pub at: String,
    /// The recipe's platforms this entry goes into, parsed from `platforms`.
    #[serde(skip)]
    pub only: PlatformFilter,
}

/// `trees = [{ src, dest, exclude?, mode?, uid?, gid? }]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeItem {
    /// Host directory, relative to the recipe.
    pub src: Spanned<String>,
    /// Absolute directory in the image.
    pub dest: Spanned<String>,
    /// Globs of paths to leave out (relative to `src`; a glob without `/` matches a name at any depth).
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    /// Mode for every regular file in the tree (directories stay 0755).
    pub mode: Option<Mode>,
    /// Owner uid of every entry (default 0).
    pub uid: Option<u32>,
    /// Owner gid of every entry (default 0).
    pub gid: Option<u32>,
    /// Only for these platforms (default: all of the recipe's).
    pub platforms: Option<Vec<Spanned<String>>>,
    /// `dest` as a path in the image (no leading `/`; `/` itself is
    /// empty), checked when the recipe is parsed.
    #[serde(skip)]
    pub at: String,
    /// The recipe's platforms this entry goes into, parsed from `platforms`.
    #[serde(skip)]
    pub only: PlatformFilter,
}

/// `contents = [{ dest, text, mode? }]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentItem {
    /// Absolute path in the image.
    pub dest: Spanned<String>,
    /// The file's text, written as is.
    pub text: String,
    /// Mode (default 0644).
    pub mode: Option<Mode>,
    /// Owner uid (default 0).
    pub uid: Option<u32>,
    /// Owner gid (default 0).
    pub gid: Option<u32>,
    /// Only for these platforms (default: all of the recipe's).
    pub platforms: Option<Vec<Spanned<String>>>,
    /// `dest` as a path in the image (no leading `/`; `/` itself is
    /// empty), checked when the recipe is parsed.
    #[serde(skip)]
    pub at: String,
    /// The recipe's platforms this entry goes into, parsed from `platforms`.
    #[serde(skip)]
    pub only: PlatformFilter,
}

/// `dirs = [{ path, mode?, uid?, gid? }]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirItem {
    /// Absolute path in the image.
    pub path: Spanned<String>,
    /// Mode (default 0755).
    pub mode: Option<Mode>,
    /// Owner uid (default 0).
    pub uid: Option<u32>,
    /// Owner gid (default 0).
    pub gid: Option<u32>,
    /// Only for these platforms (default: all of the recipe's).
    pub platforms: Option<Vec<Spanned<String>>>,
    /// `path` as a path in the image (no leading `/`; `/` itself is
    /// empty), checked when the recipe is parsed.
    #[serde(skip)]
    pub at: String,
    /// The recipe's platforms this entry goes into, parsed from `platforms`.
    #[serde(skip)]
    pub only: PlatformFilter,
}

/// `symlinks = [{ path, target }]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymlinkItem {
    /// Absolute path of the link in the image.
    pub path: Spanned<String>,
    /// What the link points to, stored as written.
    pub target: Spanned<String>,
    /// Owner uid (default 0).
    pub uid: Option<u32>,
    /// Owner gid (default 0).
    pub gid: Option<u32>,
    /// Only for these platforms (default: all of the recipe's).
    pub platforms: Option<Vec<Spanned<String>>>,
    /// `path` as a path in the image (no leading `/`; `/` itself is
    /// empty), checked when the recipe is parsed.
    #[serde(skip)]
    pub at: String,
    /// The recipe's platforms this entry goes into, parsed from `platforms`.
    #[serde(skip)]
    pub only: PlatformFilter,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    name: Spanned<String>,
    base: Option<Spanned<String>>,
    platforms: Option<Vec<Spanned<String>>>,
    compression: Option<Compression>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    #[serde(default)]
    config: ConfigSection,
    #[serde(default)]
    layers: Vec<LayerSection>,
    #[serde(default)]
    repositories: BTreeMap<String, Spanned<RepositorySection>>,
    vm: Option<RawVm>,
    accounts: Option<AccountsSection>,
}

impl Recipe {
    /// Reads and validates the recipe at `path`.
    pub fn load(path: &Path) -> Result<Recipe> {
        let bytes = std::fs::read(path).map_err(|e| {
            let hint = (e.kind() == std::io::ErrorKind::NotFound).then(|| {
                "check the path; recipes are TOML files such as `recipes/hello.toml`".to_string()
            });
            Error::Unusable {
                message: format!("cannot read recipe `{}`", path.display()),
                hint,
                source: e.into(),
            }
        })?;
        let text = String::from_utf8(bytes).map_err(|e| utf8_error(path, e))?;
        Self::parse(path, text)
    }

    /// Parses and validates recipe `text`, which was read from `path`.
    pub fn parse(path: &Path, text: String) -> Result<Recipe> {
        let source = Source {
            path: path.to_path_buf(),
            text,
        };
        let raw: RawRecipe = toml::from_str(&source.text).map_err(|e| toml_error(&source, &e))?;
        validate::no_nul(&source)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::new(),
        };
        validate::recipe(source, dir, raw)
    }
}

/// Names the line, column and byte where a recipe stops being UTF-8.
fn utf8_error(path: &Path, e: std::string::FromUtf8Error) -> Error {
    let at = e.utf8_error().valid_up_to();
    let bytes = e.as_bytes();
    let before = &bytes[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = at
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    Error::invalid(
        format!(
            "{}:{line}:{column}: the recipe is not UTF-8 (byte 0x{:02x} at offset {at})",
            path.display(),
            bytes[at]
        ),
        Some(
            "recipes are TOML, which is UTF-8: save the file as UTF-8 (e.g. `iconv -t UTF-8`)"
                .into(),
        ),
    )
}

fn toml_error(source: &Source, e: &toml::de::Error) -> Error {
    let span = e.span().unwrap_or(0..0);
    let message = e.message().trim_end().to_string();
    let hint = if message.starts_with("unknown field") {
        "remove the key or fix its spelling; the README lists every recipe key"
    } else if message.starts_with("missing field") {
        "add the key; the README's recipe reference shows each table's required keys"
    } else if message.starts_with("invalid type") {
        "check the value's type against the README's recipe reference"
    } else {
        "see the README's recipe reference"
    };
    source.error(span, message).hint(hint).into()
}
