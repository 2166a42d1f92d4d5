//! `kiln diff A B`: what changes if image B replaces image A.
//!
//! Both images are read from OCI layouts (an archive unpacked, a registry
//! image pulled into the store, a recipe built: see `pipeline::diff`). The
//! report says, per platform: the runtime config (entrypoint, cmd, env,
//! user, workdir, labels, exposed ports), the layers the two share by
//! digest (never read), the Debian packages added, removed, upgraded or
//! downgraded (from the dpkg database, versions in Debian's order), and the
//! files added, removed and changed (content digest, size, mode, owner,
//! link target).
//!
//! Files are compared over the layers the images do not share: each side's
//! own layers are streamed (never held in memory), in order, into a map of
//! what they leave at each path they touch (an entry, or gone under a
//! whiteout). A path only one side's layers touch is compared with nothing:
//! written there it counts as added, hidden by a whiteout as removed (the
//! shared layers, which would say whether it was there before, are not
//! read). A layer shared by digest above a layer that differs is skipped
//! like the others, so a path it overwrites on both sides may still be
//! reported from the layers below it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, Read};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::layer::read::{
    decompress, walk_layer, Entry, HardLink, Kind, Paths, Rules, Tree, Visitor,
};
use crate::oci::Document;
use crate::source::deb::version;
use crate::source::layout::Layout;

/// Bumped when the JSON report changes shape incompatibly.
pub const REPORT_VERSION: u32 = 1;

/// One side of a diff: an image in a layout.
pub struct Side<'a> {
    /// Where the image lives.
    pub layout: &'a Layout,
    /// Its manifest or index.
    pub top: Digest,
    /// How the user named it.
    pub name: String,
}

/// What changes if B replaces A.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The shape of this report ([`REPORT_VERSION`]).
    pub version: u32,
    /// Whether nothing differs.
    pub identical: bool,
    /// A, as named and by digest.
    pub a: Named,
    /// B, as named and by digest.
    pub b: Named,
    /// Platforms only A has.
    pub platforms_removed: Vec<String>,
    /// Platforms only B has.
    pub platforms_added: Vec<String>,
    /// Per platform both have: what differs.
    pub images: Vec<ImageDiff>,
}

/// An image as the user named it.
#[derive(Debug, Serialize)]
pub struct Named {
    /// As given on the command line.
    pub name: String,
    /// Its manifest or index digest.
    pub digest: Digest,
}

/// The difference between two manifests of one platform.
#[derive(Debug, Serialize)]
pub struct ImageDiff {
    /// `os/arch[/variant]` (B's, when the two differ).
    pub platform: String,
    /// A's manifest.
    pub a: Digest,
    /// B's manifest.
    pub b: Digest,
    /// Whether the two manifests are one (nothing else is then filled in).
    pub identical: bool,
    /// Config fields that differ.
    pub config: Vec<ConfigChange>,
    /// Layers both have (by digest), never read.
    pub shared_layers: Vec<Digest>,
    /// Layers only A has.
    pub layers_removed: Vec<Digest>,
    /// Layers only B has.
    pub layers_added: Vec<Digest>,
    /// Debian packages that differ, by name.
    pub packages: Vec<PackageChange>,
    /// Files that differ, by path.
    pub files: Vec<FileChange>,
}

/// One config field (or one key of `Env`, `Labels`, `ExposedPorts`) that differs.
#[derive(Debug, Serialize, PartialEq)]
pub struct ConfigChange {
    /// `Entrypoint`, `Cmd`, `Env`, `User`, `WorkingDir`, `Labels`, `ExposedPorts`, `platform`.
    pub field: String,
    /// For `Env`, `Labels` and `ExposedPorts`: the variable, label or port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A's value (`null`: unset).
    pub a: Value,
    /// B's value (`null`: unset).
    pub b: Value,
}

/// A Debian package that differs.
#[derive(Debug, Serialize, PartialEq)]
pub struct PackageChange {
    /// The package name.
    pub name: String,
    /// Its architecture.
    pub architecture: String,
    /// `added`, `removed`, `upgraded`, `downgraded` or `rebuilt` (same version).
    pub change: String,
    /// A's version.
    pub a: Option<String>,
    /// B's version.
    pub b: Option<String>,
    /// Listed by a dpkg file that only one side's own layers write: the
    /// other side's entry, in the shared layers (not read), is not known.
    pub over_shared: bool,
}

/// A file that differs.
#[derive(Debug, Serialize, PartialEq)]
pub struct FileChange {
    /// The path, relative to the root.
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: String,
    /// For `changed`: which of `kind`, `content`, `size`, `mode`, `uid`, `gid`, `target` differ.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<String>,
    /// A's entry (`null`: none).
    pub a: Option<Node>,
    /// B's entry (`null`: none).
    pub b: Option<Node>,
    /// Only one side's own layers touch the path: the other side has what
    /// the shared layers (not read) hold there, if anything. `added` then
    /// means "added, or replaced if the shared layers hold it"; `removed`
    /// of a path written only by A's own layers, "removed, or back to the
    /// shared layers' entry".
    pub over_shared: bool,
}

/// A file as a layer leaves it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Node {
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// A regular file's content digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A regular file's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Mode bits, octal (`0644`).
    pub mode: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The text of a dpkg database file, for the package list.
    #[serde(skip)]
    dpkg: Option<String>,
}

/// What a side's own layers leave at a path.
#[derive(Debug, Clone)]
enum State {
    Present(Node),
    Gone,
}

/// Diffs the images `a` and `b`.
pub fn diff(a: &Side<'_>, b: &Side<'_>) -> Result<Report> {
    let mut report = Report {
        version: REPORT_VERSION,
        identical: true,
        a: Named {
            name: a.name.clone(),
            digest: a.top.clone(),
        },
        b: Named {
            name: b.name.clone(),
            digest: b.top.clone(),
        },
        platforms_removed: vec![],
        platforms_added: vec![],
        images: vec![],
    };
    if a.top == b.top {
        return Ok(report);
    }
    let ma = manifests(a)?;
    let mb = manifests(b)?;
    let pairs: Vec<(Digest, Digest)> = if ma.len() == 1 && mb.len() == 1 {
        vec![(ma[0].1.clone(), mb[0].1.clone())]
    } else {
        let pa: BTreeMap<_, _> = ma.iter().cloned().collect();
        let pb: BTreeMap<_, _> = mb.iter().cloned().collect();
        report.platforms_removed = pa
            .keys()
            .filter(|p| !pb.contains_key(*p))
            .cloned()
            .collect();
        report.platforms_added = pb
            .keys()
            .filter(|p| !pa.contains_key(*p))
            .cloned()
            .collect();
        pa.iter()
            .filter_map(|(p, da)| pb.get(p).map(|db| (da.clone(), db.clone())))
            .collect()
    };
    for (da, db) in pairs {
        report
            .images
            .push(image_diff(a.layout, &da, b.layout, &db)?);
    }
    report.identical = report.platforms_added.is_empty()
        && report.platforms_removed.is_empty()
        && report.images.iter().all(|i| i.identical);
    Ok(report)
}

/// The platform manifests of a side: `(os/arch[/variant], digest)`.
fn manifests(side: &Side<'_>) -> Result<Vec<(String, Digest)>> {
    let list = match side.layout.read_document(&side.top)?.1 {
        Document::Index(index) => index.manifests.into_iter().map(|d| d.digest).collect(),
        Document::Manifest(_) => vec![side.top.clone()],
    };
    let mut out = Vec::new();
    for d in list {
        let m = side.layout.read_manifest(&d)?;
        let config = side.layout.read_config(&m.config.digest)?;
        out.push((platform(&config), d));
    }
    Ok(out)
}

fn platform(c: &crate::oci::ConfigView) -> String {
    let mut p = format!(
        "{}/{}",
        c.os.as_deref().unwrap_or("?"),
        c.architecture.as_deref().unwrap_or("?")
    );
    if let Some(v) = &c.variant {
        p = format!("{p}/{v}");
    }
    p
}

fn image_diff(la: &Layout, da: &Digest, lb: &Layout, db: &Digest) -> Result<ImageDiff> {
    let ma = la.read_manifest(da)?;
    let mb = lb.read_manifest(db)?;
    let ca = la.read_config(&ma.config.digest)?;
    let cb = lb.read_config(&mb.config.digest)?;
    let mut out = ImageDiff {
        platform: platform(&cb),
        a: da.clone(),
        b: db.clone(),
        identical: da == db,
        config: vec![],
        shared_layers: vec![],
        layers_removed: vec![],
        layers_added: vec![],
        packages: vec![],
        files: vec![],
    };
    if out.identical {
        return Ok(out);
    }
    out.config = config_changes(&ca, &cb);
    let in_a: BTreeSet<&Digest> = ma.layers.iter().map(|l| &l.digest).collect();
    let in_b: BTreeSet<&Digest> = mb.layers.iter().map(|l| &l.digest).collect();
    out.shared_layers = ma
        .layers
        .iter()
        .filter(|l| in_b.contains(&l.digest))
        .map(|l| l.digest.clone())
        .collect();
    let own_a: Vec<_> = ma
        .layers
        .iter()
        .filter(|l| !in_b.contains(&l.digest))
        .collect();
    let own_b: Vec<_> = mb
        .layers
        .iter()
        .filter(|l| !in_a.contains(&l.digest))
        .collect();
    out.layers_removed = own_a.iter().map(|l| l.digest.clone()).collect();
    out.layers_added = own_b.iter().map(|l| l.digest.clone()).collect();
    let mut ta = Tree::new();
    for l in &own_a {
        apply(la, &l.digest, &l.media_type, &mut ta)?;
    }
    let mut tb = Tree::new();
    for l in &own_b {
        apply(lb, &l.digest, &l.media_type, &mut tb)?;
    }
    out.packages = package_changes(&ta, &tb, !out.shared_layers.is_empty());
    out.files = file_changes(&ta, &tb, !out.shared_layers.is_empty());
    out.identical = out.config.is_empty()
        && out.layers_removed.is_empty()
        && out.layers_added.is_empty()
        && out.files.is_empty();
    Ok(out)
}

/// The config fields compared, as the OCI config names them.
const SCALAR_FIELDS: [&str; 4] = ["Entrypoint", "Cmd", "User", "WorkingDir"];

fn config_changes(a: &crate::oci::ConfigView, b: &crate::oci::ConfigView) -> Vec<ConfigChange> {
    let mut out = Vec::new();
    let (pa, pb) = (platform(a), platform(b));
    if pa != pb {
        out.push(ConfigChange {
            field: "platform".into(),
            key: None,
            a: pa.into(),
            b: pb.into(),
        });
    }
    let null = Value::Null;
    let ca = a.config.as_ref().unwrap_or(&null);
    let cb = b.config.as_ref().unwrap_or(&null);
    for field in SCALAR_FIELDS {
        let (va, vb) = (unset_if_empty(&ca[field]), unset_if_empty(&cb[field]));
        if va != vb {
            out.push(ConfigChange {
                field: field.into(),
                key: None,
                a: va,
                b: vb,
            });
        }
    }
    let env = |c: &Value| -> BTreeMap<String, Value> {
        c["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|e| {
                let (k, v) = e.split_once('=').unwrap_or((e, ""));
                (k.to_string(), Value::String(v.to_string()))
            })
            .collect()
    };
    let object = |c: &Value, field: &str| -> BTreeMap<String, Value> {
        c[field]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    for (field, ma, mb) in [
        ("Env", env(ca), env(cb)),
        ("Labels", object(ca, "Labels"), object(cb, "Labels")),
        (
            "ExposedPorts",
            object(ca, "ExposedPorts"),
            object(cb, "ExposedPorts"),
        ),
    ] {
        let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
        for k in keys {
            let va = ma.get(k).cloned().unwrap_or(Value::Null);
            let vb = mb.get(k).cloned().unwrap_or(Value::Null);
            if va != vb {
                out.push(ConfigChange {
                    field: field.into(),
                    key: Some(k.clone()),
                    a: va,
                    b: vb,
                });
            }
        }
    }
    out
}

/// `null`, `[]` and `""` all mean unset.
fn unset_if_empty(v: &Value) -> Value {
    match v {
        Value::String(s) if s.is_empty() => Value::Null,
        Value::Array(a) if a.is_empty() => Value::Null,
        other => other.clone(),
    }
}

/// Streams one layer blob into `tree`, verifying its digest.
fn apply(layout: &Layout, digest: &Digest, media_type: &str, tree: &mut Tree<State>) -> Result<()> {
    let path = layout.blob_path(digest);
    let file = std::fs::File::open(&path).at("open layer", &path)?;
    let mut hashed = crate::digest::HashingReader::new(BufReader::new(file));
    {
        let mut tar = decompress(&mut hashed, media_type, digest)?;
        let bad = |e: io::Error| Error::io("read layer", &path, e);
        let mut visitor = Own { bad: &bad };
        walk_layer(&mut tar, tree, &mut visitor, bad)?;
        io::copy(&mut tar, &mut io::sink()).at("read layer", &path)?;
    }
    io::copy(&mut hashed, &mut io::sink()).at("read layer", &path)?;
    let actual = hashed.digest_so_far();
    if &actual != digest {
        return Err(Error::DigestMismatch {
            what: format!("`{}`", path.display()),
            expected: Box::new(digest.clone()),
            actual: Box::new(actual),
        });
    }
    Ok(())
}

/// What one side's own layers leave at each path they touch.
struct Own<'a> {
    bad: &'a dyn Fn(io::Error) -> Error,
}

impl Visitor for Own<'_> {
    type Node = State;
    // Whiteouts are read here: what they hide lies in layers not read, so
    // the path is kept as gone rather than dropped.
    const RULES: Rules = Rules {
        paths: Paths::AsWritten,
        whiteouts: false,
    };

    fn entry(&mut self, tree: &mut Tree<State>, entry: Entry<'_>) -> Result<()> {
        let (dir, name) = entry.path.rsplit_once('/').unwrap_or(("", &entry.path));
        if name == ".wh..wh..opq" {
            let prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            crate::layer::read::apply_whiteout(tree, &entry.path);
            tree.insert(format!("{prefix}*"), State::Gone);
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let gone = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            crate::layer::read::apply_whiteout(tree, &entry.path);
            tree.insert(gone, State::Gone);
            return Ok(());
        }
        let mode = format!("{:04o}", entry.mode(0));
        let (kind, target, sums) = match &entry.kind {
            Kind::Dir => ("dir", None, None),
            Kind::File => {
                let keep = is_dpkg_db(&entry.path);
                (
                    "file",
                    None,
                    Some(sums(entry.data, keep).map_err(self.bad)?),
                )
            }
            Kind::Symlink(t) => ("symlink", Some(t.clone()), None),
            // Taken when the layer's other entries are in.
            Kind::HardLink(_) => return Ok(()),
            Kind::Other => ("other", None, None),
        };
        let (sha256, size, dpkg) = match sums {
            Some((s, n, d)) => (Some(s), Some(n), d),
            None => (None, None, None),
        };
        let node = Node {
            kind: kind.into(),
            sha256,
            size,
            mode,
            uid: entry.uid,
            gid: entry.gid,
            target,
            dpkg,
        };
        // A directory over a directory keeps what is under it; anything
        // else replaces the whole path.
        if kind != "dir" {
            crate::layer::read::remove_under(tree, &format!("{}/", entry.path));
        }
        tree.insert(entry.path, State::Present(node));
        Ok(())
    }

    fn hard_link(&mut self, tree: &mut Tree<State>, link: HardLink) -> Result<()> {
        // A hard link is its target's inode; a target in a layer not read
        // leaves the link as an entry of unknown content.
        let node = match tree.get(&link.to) {
            Some(State::Present(n)) => n.clone(),
            _ => Node {
                kind: "hardlink".into(),
                sha256: None,
                size: None,
                mode: format!("{:04o}", link.mode(0)),
                uid: link.uid,
                gid: link.gid,
                target: Some(link.to.clone()),
                dpkg: None,
            },
        };
        tree.insert(link.path, State::Present(node));
        Ok(())
    }
}

/// A file's SHA-256 and size (and its text, when `keep`), read in chunks.
fn sums(data: &mut dyn Read, keep: bool) -> io::Result<(String, u64, Option<String>)> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    let mut kept = Vec::new();
    loop {
        let n = data.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
        if keep {
            kept.extend_from_slice(&buf[..n]);
        }
    }
    Ok((
        hex::encode(hash.finalize()),
        size,
        keep.then(|| String::from_utf8_lossy(&kept).into_owned()),
    ))
}

/// A dpkg database file: `status`, or `status.d/NAME` (not `NAME.md5sums`).
fn is_dpkg_db(path: &str) -> bool {
    path == "var/lib/dpkg/status"
        || path
            .strip_prefix("var/lib/dpkg/status.d/")
            .is_some_and(|n| !n.is_empty() && !n.contains('/') && !n.ends_with(".md5sums"))
}

/// The installed packages the dpkg files of `tree` (among `paths`) list:
/// (name, arch) → (version, the dpkg file listing it).
fn packages<'p>(
    tree: &Tree<State>,
    paths: &BTreeSet<&'p String>,
) -> BTreeMap<(String, String), (String, &'p String)> {
    let mut out = BTreeMap::new();
    for p in paths {
        let Some(State::Present(node)) = tree.get(*p) else {
            continue;
        };
        for stanza in crate::source::deb::control::parse(node.dpkg.as_deref().unwrap_or_default()) {
            if stanza
                .get("Status")
                .is_some_and(|s| !s.trim_end().ends_with(" installed"))
            {
                continue;
            }
            if let (Some(n), Some(v)) = (stanza.get("Package"), stanza.get("Version")) {
                let arch = stanza.get("Architecture").cloned().unwrap_or_default();
                out.insert((n.clone(), arch), (v.clone(), *p));
            }
        }
    }
    out
}

/// The packages that differ; `shared` as for [`file_changes`].
fn package_changes(ta: &Tree<State>, tb: &Tree<State>, shared: bool) -> Vec<PackageChange> {
    let paths: BTreeSet<&String> = ta
        .keys()
        .chain(tb.keys())
        .filter(|p| is_dpkg_db(p))
        .collect();
    let pa = packages(ta, &paths);
    let pb = packages(tb, &paths);
    let keys: BTreeSet<&(String, String)> = pa.keys().chain(pb.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (ea, eb) = (pa.get(k), pb.get(k));
        // Listed by a dpkg file only one side's own layers write.
        let over_shared = shared
            && [(ea, tb), (eb, ta)]
                .iter()
                .any(|(e, other)| e.is_some_and(|(_, path)| !other.contains_key(*path)));
        let (va, vb) = (ea.map(|e| &e.0), eb.map(|e| &e.0));
        let change = match (va, vb) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            (Some(a), Some(b)) => match version::compare(a, b) {
                std::cmp::Ordering::Less => "upgraded",
                std::cmp::Ordering::Greater => "downgraded",
                std::cmp::Ordering::Equal => continue,
            },
            (None, None) => continue,
        };
        out.push(PackageChange {
            name: k.0.clone(),
            architecture: k.1.clone(),
            change: change.into(),
            a: va.cloned(),
            b: vb.cloned(),
            over_shared,
        });
    }
    out
}

/// The paths whose state differs; `shared`: whether the images share layers
/// (a path one side does not touch is then what they hold, else absent).
fn file_changes(ta: &Tree<State>, tb: &Tree<State>, shared: bool) -> Vec<FileChange> {
    let keys: BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    let mut out = Vec::new();
    for path in keys {
        let (sa, sb) = (ta.get(path), tb.get(path));
        let node = |s: Option<&State>| match s {
            Some(State::Present(n)) => Some(n.clone()),
            _ => None,
        };
        let (na, nb) = (node(sa), node(sb));
        let change = match (sa, sb) {
            (Some(State::Present(a)), Some(State::Present(b))) => {
                let what = differences(a, b);
                if what.is_empty() {
                    continue;
                }
                out.push(FileChange {
                    path: path.clone(),
                    change: "changed".into(),
                    what,
                    a: na,
                    b: nb,
                    over_shared: false,
                });
                continue;
            }
            (_, Some(State::Present(_))) => "added",
            (Some(State::Present(_)), _) => "removed",
            // Without shared layers, a path hidden and a path never written are both absent.
            (None, Some(State::Gone)) if shared => "removed",
            (Some(State::Gone), None) if shared => "added",
            _ => continue,
        };
        out.push(FileChange {
            path: path.clone(),
            change: change.into(),
            what: vec![],
            a: na,
            b: nb,
            over_shared: shared && (sa.is_none() || sb.is_none()),
        });
    }
    out
}

fn differences(a: &Node, b: &Node) -> Vec<String> {
    let mut what = Vec::new();
    if a.kind != b.kind {
        what.push("kind");
    }
    if a.sha256 != b.sha256 {
        what.push("content");
    }
    if a.size != b.size {
        what.push("size");
    }
    if a.mode != b.mode {
        what.push("mode");
    }
    if a.uid != b.uid {
        what.push("uid");
    }
    if a.gid != b.gid {
        what.push("gid");
    }
    if a.target != b.target {
        what.push("target");
    }
    what.into_iter().map(String::from).collect()
}

/// The report as text, one change a line (`+` added, `-` removed, `~` changed).
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "--- {} {}\n+++ {} {}\n",
        r.a.name, r.a.digest, r.b.name, r.b.digest
    );
    if r.identical {
        s += "identical\n";
        return s;
    }
    for p in &r.platforms_removed {
        s += &format!("- platform {p}\n");
    }
    for p in &r.platforms_added {
        s += &format!("+ platform {p}\n");
    }
    for img in &r.images {
        s += &format!("\nplatform {}: {} -> {}\n", img.platform, img.a, img.b);
        if img.identical {
            s += "  identical\n";
            continue;
        }
        for c in &img.config {
            let name = match &c.key {
                Some(k) => format!("{}[{k}]", c.field),
                None => c.field.clone(),
            };
            let sign = match (&c.a, &c.b) {
                (Value::Null, _) => '+',
                (_, Value::Null) => '-',
                _ => '~',
            };
            s += &format!("{sign} config {name}: {} -> {}\n", show(&c.a), show(&c.b));
        }
        s += &format!(
            "  layers: {} shared (not read), {} removed, {} added\n",
            img.shared_layers.len(),
            img.layers_removed.len(),
            img.layers_added.len()
        );
        for p in &img.packages {
            let sign = match p.change.as_str() {
                "added" => '+',
                "removed" => '-',
                _ => '~',
            };
            s += &format!(
                "{sign} package {}:{} {} -> {} ({}){}\n",
                p.name,
                p.architecture,
                p.a.as_deref().unwrap_or("(none)"),
                p.b.as_deref().unwrap_or("(none)"),
                p.change,
                if p.over_shared {
                    " [over shared layers]"
                } else {
                    ""
                }
            );
        }
        for f in &img.files {
            let over = if f.over_shared {
                " [over shared layers]"
            } else {
                ""
            };
            match f.change.as_str() {
                "added" => s += &format!("+ {} {}{over}\n", f.path, node_text(f.b.as_ref())),
                "removed" => s += &format!("- {} {}{over}\n", f.path, node_text(f.a.as_ref())),
                _ => {
                    s += &format!(
                        "~ {} ({}): {} -> {}\n",
                        f.path,
                        f.what.join(", "),
                        node_text(f.a.as_ref()),
                        node_text(f.b.as_ref())
                    )
                }
            }
        }
    }
    s
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "(unset)".into(),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn node_text(n: Option<&Node>) -> String {
    let Some(n) = n else {
        return "(gone)".into();
    };
    let mut s = format!("{} {} {}:{}", n.kind, n.mode, n.uid, n.gid);
    if let (Some(h), Some(size)) = (&n.sha256, n.size) {
        s += &format!(" {size} bytes sha256:{}", &h[..12]);
    }
    if let Some(t) = &n.target {
        s += &format!(" -> {t}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: &str, mode: &str) -> State {
        State::Present(Node {
            kind: kind.into(),
            sha256: None,
            size: None,
            mode: mode.into(),
            uid: 0,
            gid: 0,
            target: None,
            dpkg: None,
        })
    }

    #[test]
    fn whiteouts_and_one_sided_paths_read_as_removed_or_added() {
        let mut a = Tree::new();
        a.insert("x".to_string(), node("file", "0644"));
        a.insert("m".to_string(), node("file", "0644"));
        a.insert("w".to_string(), State::Gone);
        let mut b = Tree::new();
        b.insert("m".to_string(), node("file", "0755"));
        b.insert("y".to_string(), node("file", "0644"));
        b.insert("z".to_string(), State::Gone);
        let got: Vec<(String, String)> = file_changes(&a, &b, true)
            .into_iter()
            .map(|f| (f.path, f.change))
            .collect();
        let want = [
            ("m", "changed"),
            ("w", "added"),
            ("x", "removed"),
            ("y", "added"),
            ("z", "removed"),
        ];
        assert_eq!(
            got,
            want.map(|(p, c)| (p.to_string(), c.to_string())).to_vec()
        );
    }
}
