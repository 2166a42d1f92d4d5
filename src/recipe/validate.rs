//! Checks a raw recipe's values and turns it into a [`Recipe`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use toml::Spanned;

use super::{
    Base, Compression, Kernel, Platform, PlatformFilter, RawRecipe, Recipe, RepositorySection,
    RootFs, VmOutput,
};
use crate::error::{Result, Source};

pub(super) fn recipe(source: Source, dir: PathBuf, raw: RawRecipe) -> Result<Recipe> {
    let name = raw.name.get_ref().trim().to_string();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(source
            .error(raw.name.span(), "`name` must be a plain, non-empty name")
            .hint("use letters, digits, `-`, `_` or `.`, e.g. `name = \"hello\"`; it names the default output `out/NAME`")
            .into());
    }

    let base = match &raw.base {
        None => Base::Scratch,
        Some(b) => parse_base(&source, &dir, b)?,
    };

    let platforms = platforms(&source, &raw.platforms)?;

    let tags = tags(&source, &raw.tags, &name)?;

    let config = raw.config;
    if let Some(w) = &config.workdir {
        image_path(&source, w, "`workdir`")?;
    }
    for v in &config.volumes {
        image_path(&source, v, "a volume")?;
    }
    for p in &config.exposed_ports {
        check_port(&source, p)?;
    }
    for key in config.env.keys() {
        let k = key.get_ref();
        if k.is_empty() || k.contains('=') {
            return Err(source
                .error(key.span(), format!("`{k}` is not an environment variable name"))
                .hint("a name is not empty and has no `=` in it, e.g. `env = { PATH = \"/usr/bin:/bin\" }`")
                .into());
        }
    }

    let wants_packages = raw.layers.iter().find_map(|l| l.packages.first());
    // A recipe on a base recipe inherits its repositories (checked when it is locked).
    let inherits = matches!(base, Base::Recipe { .. });
    if let (Some(first), true, false) = (wants_packages, raw.repositories.is_empty(), inherits) {
        return Err(source
            .error(first.span(), "`packages` needs a Debian repository, and the recipe names none")
            .hint("add `[repositories.debian]` with `suite = \"bookworm\"` (the mirror comes from `KILN_DEBIAN_MIRROR` or the host's apt sources)")
            .into());
    }
    let repositories = repository_sections(&source, raw.repositories)?;
    let mut layers = raw.layers;
    for layer in &mut layers {
        layer_section(&source, &platforms, layer)?;
    }

    let vm = match raw.vm {
        Some(vm) => Some(check_vm(&source, vm, &platforms)?),
        None => None,
    };
    if let Some(a) = &raw.accounts {
        check_accounts(&source, a)?;
    }
    Ok(Recipe {
        source,
        dir,
        name,
        base,
        platforms,
        compression: raw.compression.unwrap_or(Compression::Gzip),
        annotations: raw.annotations,
        tags,
        config,
        layers,
        repositories,
        vm,
        accounts: raw.accounts,
    })
}

/// `[accounts]`: names and paths that fit the account files, each name and
/// id given once.
fn check_accounts(source: &Source, a: &super::AccountsSection) -> Result<()> {
    let bad_name = |n: &str| {
        n.is_empty()
            || n.len() > 32
            || n.starts_with('-')
            || n.chars().all(|c| c.is_ascii_digit())
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let bad_path = |p: &str| !p.starts_with('/') || p.contains([':', '\n', '\0']);
    let mut names = BTreeSet::new();
    let mut uids = BTreeSet::new();
    for u in &a.users {
        let span = u.span();
        let u = u.get_ref();
        if bad_name(&u.name) {
            return Err(source
                .error(span, format!("user name `{}` cannot go into `/etc/passwd`", u.name))
                .hint("use letters, digits, `_`, `-` or `.` (not all digits), at most 32, e.g. `name = \"app\"`")
                .into());
        }
        for (key, p) in [("home", &u.home), ("shell", &u.shell)] {
            if let Some(p) = p.as_deref().filter(|p| bad_path(p)) {
                return Err(source
                    .error(
                        span.clone(),
                        format!(
                            "user `{}`: `{key}` `{p}` is not an absolute path without `:`",
                            u.name
                        ),
                    )
                    .hint(format!(
                        "write `{key}` as an absolute path, e.g. `/usr/sbin/nologin`"
                    ))
                    .into());
            }
        }
        if !names.insert(u.name.clone()) || !uids.insert(u.uid) {
            return Err(source
                .error(
                    span,
                    format!(
                        "user `{}` (uid {}) is listed twice in `[accounts]`",
                        u.name, u.uid
                    ),
                )
                .hint("give each user one entry, with a name and a uid of its own")
                .into());
        }
    }
    let mut names = BTreeSet::new();
    let mut gids = BTreeSet::new();
    for g in &a.groups {
        let span = g.span();
        let g = g.get_ref();
        if let Some(n) = std::iter::once(&g.name)
            .chain(&g.members)
            .find(|n| bad_name(n))
        {
            return Err(source
                .error(span, format!("name `{n}` cannot go into `/etc/group`"))
                .hint("use letters, digits, `_`, `-` or `.` (not all digits), at most 32")
                .into());
        }
        if !names.insert(g.name.clone()) || !gids.insert(g.gid) {
            return Err(source
                .error(
                    span,
                    format!(
                        "group `{}` (gid {}) is listed twice in `[accounts]`",
                        g.name, g.gid
                    ),
                )
                .hint("give each group one entry, with a name and a gid of its own")
                .into());
        }
    }
    Ok(())
}

/// `platforms`, parsed; the default is `linux/amd64`.
fn platforms(source: &Source, list: &Option<Vec<Spanned<String>>>) -> Result<Vec<Platform>> {
    let mut platforms = Vec::new();
    let mut seen = BTreeSet::new();
    match list {
        None => platforms.push(Platform::default_platform()),
        Some(list) if list.is_empty() => {
            return Err(source
                .error(0..0, "`platforms` is empty")
                .hint("name at least one platform, e.g. `platforms = [\"linux/amd64\"]`, or leave the key out")
                .into())
        }
        Some(list) => {
            for p in list {
                let platform = Platform::parse(p.get_ref()).map_err(|msg| {
                    source
                        .error(p.span(), msg)
                        .hint("platforms are written as in `docker --platform`: `linux/amd64`, `linux/arm64`, `linux/arm/v7`")
                })?;
                if !seen.insert(platform.clone()) {
                    return Err(source
                        .error(p.span(), format!("platform `{platform}` is listed twice"))
                        .hint("remove the duplicate")
                        .into());
                }
                platforms.push(platform);
            }
        }
    }
    Ok(platforms)
}

/// `tags`: each a tag of the image named after the recipe (`v1`) or a
/// full image name (`registry.example/app:1.4`, `app:dev`), none twice.
fn tags(source: &Source, list: &[Spanned<String>], name: &str) -> Result<Vec<String>> {
    let mut tags = Vec::new();
    let mut seen = BTreeSet::new();
    for t in list {
        let tag = t.get_ref();
        let parsed = crate::image_name::ImageName::of_entry(name, tag).map_err(|why| {
            source
                .error(t.span(), format!("`{tag}` is not a valid tag or image name: {why}"))
                .hint("write a tag (`v1`: up to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`), which names the image `NAME:v1` after the recipe, or a full name such as `registry.example/app:1.4` or `app:dev`")
        })?;
        if !seen.insert(parsed.full()) {
            return Err(source
                .error(
                    t.span(),
                    format!("`{tag}` names `{}`, which is listed already", parsed.full()),
                )
                .hint("remove the duplicate")
                .into());
        }
        tags.push(tag.clone());
    }
    Ok(tags)
}

/// One `[[layers]]` table: platform filters and image paths parsed into
/// the entries' `only` and `at`, sources, globs and link targets checked.
fn layer_section(
    source: &Source,
    platforms: &[Platform],
    layer: &mut super::LayerSection,
) -> Result<()> {
    for f in &mut layer.files {
        f.get_mut().only = filter(source, platforms, &f.get_ref().platforms)?;
    }
    for t in &mut layer.trees {
        t.get_mut().only = filter(source, platforms, &t.get_ref().platforms)?;
    }
    for c in &mut layer.contents {
        c.get_mut().only = filter(source, platforms, &c.get_ref().platforms)?;
    }
    for d in &mut layer.dirs {
        d.get_mut().only = filter(source, platforms, &d.get_ref().platforms)?;
    }
    for s in &mut layer.symlinks {
        s.get_mut().only = filter(source, platforms, &s.get_ref().platforms)?;
    }
    for src in layer
        .files
        .iter()
        .map(|i| &i.get_ref().src)
        .chain(layer.trees.iter().map(|i| &i.get_ref().src))
    {
        check_placeholders(source, src)?;
    }
    for f in &mut layer.files {
        let f = f.get_mut();
        non_empty(source, &f.src, "`src`")?;
        f.at = image_path(source, &f.dest, "`dest`")?;
    }
    for t in &mut layer.trees {
        let t = t.get_mut();
        non_empty(source, &t.src, "`src`")?;
        t.at = image_path(source, &t.dest, "`dest`")?;
        for g in &t.exclude {
            globset::Glob::new(g.get_ref()).map_err(|e| {
                source
                    .error(g.span(), format!("invalid exclude glob: {e}"))
                    .hint("globs use `*`, `**`, `?` and `[abc]`, e.g. `*.tmp` or `cache/**`")
            })?;
        }
    }
    for g in &layer.exclude {
        if layer.packages.is_empty() {
            return Err(source
                .error(g.span(), "`exclude` leaves out files of the layer's `packages`, and it has none")
                .hint("move `exclude` to the `[[layers]]` table with the `packages`; `trees` take their own `exclude`")
                .into());
        }
        let text = g.get_ref();
        let bad = if !text.starts_with('/') {
            Some("it is not absolute".to_string())
        } else {
            super::image_glob(text).err()
        };
        if let Some(why) = bad {
            return Err(source
                .error(g.span(), format!("invalid exclude glob `{text}`: {why}"))
                .hint("write absolute globs of image paths, e.g. `/usr/share/doc/**` or `/usr/share/man/**`")
                .into());
        }
    }
    for c in &mut layer.contents {
        let c = c.get_mut();
        c.at = file_path(source, &c.dest)?;
    }
    for d in &mut layer.dirs {
        let d = d.get_mut();
        d.at = image_path(source, &d.path, "`path`")?;
    }
    for s in &mut layer.symlinks {
        let s = s.get_mut();
        s.at = file_path(source, &s.path)?;
        non_empty(source, &s.target, "`target`")?;
        if s.target.get_ref().len() > MAX_PATH {
            return Err(source
                .error(
                    s.target.span(),
                    format!("`target` is {} bytes long", s.target.get_ref().len()),
                )
                .hint(format!(
                    "a link target is at most {MAX_PATH} bytes (Linux's PATH_MAX)"
                ))
                .into());
        }
    }
    Ok(())
}

fn parse_base(source: &Source, dir: &std::path::Path, b: &Spanned<String>) -> Result<Base> {
    let text = b.get_ref().trim();
    let span = b.span();
    if text == "scratch" {
        return Ok(Base::Scratch);
    }
    if let Some(rest) = text.strip_prefix("oci:") {
        let (path, digest) = match rest.rsplit_once('@') {
            Some((p, d)) => {
                let digest = d.parse().map_err(|e| {
                    source
                        .error(span.clone(), format!("{e}"))
                        .hint("write `oci:PATH@sha256:<64 hex digits>`, or `oci:PATH` for a layout holding one image")
                })?;
                (p, Some(digest))
            }
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(source
                .error(span, "`oci:` needs the path of an OCI image layout")
                .hint("write `oci:PATH` or `oci:PATH@sha256:…`")
                .into());
        }
        return Ok(Base::Layout {
            path: dir.join(path),
            digest,
            span,
        });
    }
    if let (Some(shown), Some(secret)) = (
        crate::error::redact_userinfo(text),
        crate::error::userinfo(text),
    ) {
        return Err(source
            .error(span, format!("`base` `{shown}` carries credentials"))
            .redact(secret)
            .hint("remove `USER:PASSWORD@`: kiln takes credentials from `kiln login` or a docker credential helper, never from a recipe")
            .into());
    }
    if text.ends_with(".toml") {
        return Ok(Base::Recipe {
            path: dir.join(text),
            span,
        });
    }
    let first = text.split('/').next().unwrap_or_default();
    let has_registry = text.contains('/') && (first.contains(['.', ':']) || first == "localhost");
    if has_registry {
        text.parse::<oci_client::Reference>().map_err(|e| {
            source
                .error(span.clone(), format!("`{text}` is not an image reference: {e}"))
                .hint("write `REGISTRY/REPOSITORY@sha256:…`, or `REGISTRY/REPOSITORY:TAG` pinned with `kiln lock`")
        })?;
        return Ok(Base::Registry {
            reference: text.to_string(),
            span,
        });
    }
    Err(source
        .error(span, format!("`{text}` is not a base kiln can use yet"))
        .hint("use `scratch`, the path of another recipe (`base-images/x.toml`), an OCI layout (`oci:PATH@sha256:…`), or a registry image with its registry host (`REGISTRY/REPO@sha256:…`)")
        .into())
}

/// A layer entry's `platforms` filter, parsed; it may only name platforms
/// the recipe builds.
fn filter(
    source: &Source,
    built: &[Platform],
    filter: &Option<Vec<Spanned<String>>>,
) -> Result<PlatformFilter> {
    let Some(filter) = filter else {
        return Ok(PlatformFilter(None));
    };
    let mut only = Vec::new();
    for p in filter {
        let platform = Platform::parse(p.get_ref()).map_err(|msg| {
            source.error(p.span(), msg).hint(
                "platforms are written as in `docker --platform`: `linux/amd64`, `linux/arm64`",
            )
        })?;
        if !built.contains(&platform) {
            let list: Vec<String> = built.iter().map(|p| format!("`{p}`")).collect();
            return Err(source
                .error(
                    p.span(),
                    format!("`{platform}` is not one of the recipe's platforms"),
                )
                .hint(format!(
                    "the recipe builds {}; add it to `platforms` at the top, or fix the filter",
                    list.join(", ")
                ))
                .into());
        }
        only.push(platform);
    }
    Ok(PlatformFilter(Some(only)))
}

/// The placeholders a `src` may hold: `{os}`, `{arch}` and `{variant}`.
pub const PLACEHOLDERS: [&str; 3] = ["{os}", "{arch}", "{variant}"];

fn check_placeholders(source: &Source, src: &Spanned<String>) -> Result<()> {
    let mut rest = src.get_ref().as_str();
    while let Some(start) = rest.find('{') {
        let after = &rest[start..];
        let end = after.find('}').map_or(after.len(), |e| e + 1);
        let word = &after[..end];
        if !PLACEHOLDERS.contains(&word) {
            return Err(source
                .error(src.span(), format!("unknown placeholder `{word}` in `src`"))
                .hint("`src` may use `{os}`, `{arch}` and `{variant}`, e.g. `bin/{arch}/app`")
                .into());
        }
        rest = &after[end..];
    }
    Ok(())
}

/// `[repositories.NAME]`: keeps where each is written and checks `archive`,
/// whose name picks the environment variable of its mirror.
fn repository_sections(
    source: &Source,
    raw: BTreeMap<String, Spanned<RepositorySection>>,
) -> Result<BTreeMap<String, RepositorySection>> {
    let mut out = BTreeMap::new();
    for (name, section) in raw {
        let span = section.span();
        let mut section = section.into_inner();
        section.span = span;
        if let Some(a) = &section.archive {
            let text = a.get_ref();
            let ok = text.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && text
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(source
                    .error(a.span(), format!("`{text}` is not an archive name"))
                    .hint("an archive is named in lower-case letters, digits and `-`, e.g. `archive = \"debian-security\"`; its mirror is set outside the recipe (`KILN_MIRROR_DEBIAN_SECURITY` or the host's apt sources)")
                    .into());
            }
        }
        out.insert(name, section);
    }
    Ok(out)
}

/// `src` with the platform's placeholders filled in.
pub fn expand_src(src: &str, p: &Platform) -> String {
    src.replace("{os}", &p.os)
        .replace("{arch}", &p.arch)
        .replace("{variant}", p.variant.as_deref().unwrap_or(""))
}

/// Checks `[vm]` and parses it into its types, defaults filled in.
fn check_vm(source: &Source, vm: super::RawVm, platforms: &[Platform]) -> Result<super::VmSection> {
    let kernel_span = vm.kernel.span();
    let kernel = match vm.kernel.into_inner() {
        super::RawKernel {
            path: Some(path),
            package: None,
        } => Kernel::Path(path.into()),
        super::RawKernel {
            path: None,
            package: Some(package),
        } => Kernel::Package(package),
        _ => {
            return Err(source
            .error(kernel_span, "`kernel` needs exactly one of `path` and `package`")
            .hint("write `kernel = { path = \"vmlinuz\" }` or `kernel = { package = \"linux-image-cloud-amd64\" }`")
            .into())
        }
    };
    if let Some(init) = &vm.init {
        image_path(source, init, "`init`")?;
    }
    let mut outputs = Vec::new();
    for o in &vm.outputs {
        let Some(output) = VmOutput::parse(o.get_ref()) else {
            return Err(source
                .error(o.span(), format!("`{}` is not a VM output kiln can write", o.get_ref()))
                .hint("kiln writes `initramfs` (the whole image root in memory), `raw` (an erofs root disk) and `qcow2` (the same disk for qemu)")
                .into());
        };
        outputs.push(output);
    }
    if outputs.is_empty() {
        outputs.push(VmOutput::Initramfs);
    }
    let root = match &vm.root {
        None => RootFs::Erofs,
        Some(root) => RootFs::parse(root.get_ref()).ok_or_else(|| {
            source
                .error(
                    root.span(),
                    format!(
                        "`{}` is not a root filesystem kiln can make yet",
                        root.get_ref()
                    ),
                )
                .hint("use `root = \"erofs\"`, `\"squashfs\"` or `\"ext4\"`")
        })?,
    };
    let size = match &vm.size {
        None => None,
        Some(size) => Some(super::parse_size(size.get_ref()).ok_or_else(|| {
            source
                .error(size.span(), format!("`{}` is not a size", size.get_ref()))
                .hint("write a number with K, M, G or T, e.g. `size = \"512M\"`")
        })?),
    };
    if platforms.len() != 1 || platforms[0].os != "linux" || platforms[0].arch != "amd64" {
        return Err(source
            .error(
                kernel_span,
                "a VM bundle is built for exactly one platform, `linux/amd64`",
            )
            .hint("set `platforms = [\"linux/amd64\"]` (or leave it out)")
            .into());
    }
    Ok(super::VmSection {
        kernel,
        kernel_span,
        init: vm
            .init
            .map_or_else(|| "/sbin/init".to_string(), Spanned::into_inner),
        cmdline: vm.cmdline.unwrap_or_else(|| "console=ttyS0".into()),
        outputs,
        root,
        size,
    })
}

fn non_empty(source: &Source, s: &Spanned<String>, what: &str) -> Result<()> {
    if s.get_ref().is_empty() {
        return Err(source
            .error(s.span(), format!("{what} is empty"))
            .hint("give a path")
            .into());
    }
    Ok(())
}

/// The longest image path kiln takes, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// The longest file name in an image path, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// Refuses a NUL in any key or string of the recipe: it would cut a path, a
/// tar header or a config value short without a word. The error points at
/// the first `\u0000` escape in the text (TOML has no other way to write one).
pub(super) fn no_nul(source: &Source) -> Result<()> {
    const NUL_ESCAPES: [&str; 2] = ["\\u0000", "\\U00000000"];
    fn has_nul(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => s.contains('\0'),
            toml::Value::Array(a) => a.iter().any(has_nul),
            toml::Value::Table(t) => t.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    // TOML has no raw NUL: only these escapes can make one, so the second
    // parse below runs only for a recipe that holds one of them.
    if !NUL_ESCAPES.iter().any(|e| source.text.contains(e)) {
        return Ok(());
    }
    let Ok(doc) = toml::from_str::<toml::Table>(&source.text) else {
        return Ok(());
    };
    if !doc.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
        return Ok(());
    }
    let text = &source.text;
    let at = NUL_ESCAPES
        .iter()
        .filter_map(|e| text.find(e).map(|i| i..i + e.len()))
        .min_by_key(|r| r.start)
        .unwrap_or(0..0);
    Err(source
        .error(at, "a NUL character (`\\u0000`) in the recipe")
        .hint("remove it: NUL cannot stand in a path, a link target, a name or a config value")
        .into())
}

/// Normalises an absolute image path from a recipe into a tar path (no leading `/`).
///
/// `/` itself becomes the empty string. Errors name the recipe line: the
/// path must be absolute and must not climb out with `..`.
pub fn image_path(source: &Source, s: &Spanned<String>, what: &str) -> Result<String> {
    let text = s.get_ref();
    if !text.starts_with('/') {
        return Err(source
            .error(s.span(), format!("{what} `{text}` is not an absolute path"))
            .hint(format!(
                "paths in the image start with `/`, e.g. `/{}`",
                text.trim_start_matches("./")
            ))
            .into());
    }
    if text.len() > MAX_PATH {
        return Err(source
            .error(s.span(), format!("{what} is {} bytes long", text.len()))
            .hint(format!(
                "an image path is at most {MAX_PATH} bytes (Linux's PATH_MAX)"
            ))
            .into());
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            p if p.len() > MAX_NAME => {
                return Err(source
                    .error(s.span(), format!("{what} has a {}-byte component", p.len()))
                    .hint(format!(
                        "a file name is at most {MAX_NAME} bytes (Linux's NAME_MAX)"
                    ))
                    .into())
            }
            ".." => {
                return Err(source
                    .error(s.span(), format!("{what} `{text}` contains `..`"))
                    .hint("write the path without `..`; paths may not climb out of the image root")
                    .into())
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Like [`image_path`], for a path that names a file (not `/`).
fn file_path(source: &Source, s: &Spanned<String>) -> Result<String> {
    let path = image_path(source, s, "the path")?;
    if path.is_empty() {
        return Err(source
            .error(s.span(), "`/` cannot be a file or link")
            .hint("give the full path, e.g. `/etc/hostname`")
            .into());
    }
    Ok(path)
}

fn check_port(source: &Source, p: &Spanned<String>) -> Result<()> {
    let text = p.get_ref();
    let (num, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let ok = num.parse::<u16>().is_ok_and(|n| n > 0) && matches!(proto, "tcp" | "udp" | "sctp");
    if !ok {
        return Err(source
            .error(p.span(), format!("`{text}` is not a port"))
            .hint("write `PORT` or `PORT/PROTO`, e.g. `8080` or `53/udp` (tcp, udp or sctp)")
            .into());
    }
    Ok(())
}

/// The `PORT/PROTO` form of a validated port.
pub fn port_key(text: &str) -> String {
    if text.contains('/') {
        text.to_string()
    } else {
        format!("{text}/tcp")
    }
}
