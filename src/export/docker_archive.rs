//! Writes a docker-archive, the format of `docker save`, for tools that read
//! nothing else: `manifest.json` (config, names, layers), the config as
//! `<hex>.json`, each layer uncompressed as `<id>/layer.tar` beside its
//! `VERSION` and legacy `json`, and `repositories`. One image: the top
//! manifest, or an index's first platform ([`Output::single_manifest`]).
//!
//! A layer's directory is named by its chain ID (the OCI image spec's
//! `ChainID`: the first layer's diff_id, then `sha256(parent + " " +
//! diff_id)`), so a layer that appears twice in one image still gets a
//! directory of its own. Every layer is decompressed twice (once to learn its
//! size and check it against the config's diff_id, once to write it), so
//! nothing is held in memory or on disk on the way.

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::Output;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::files;
use crate::json::canonical;
use crate::layer::read::decompress;
use crate::layer::tar::{Header, Kind, TarWriter};
use crate::oci::{ConfigView, Desc};
use crate::store::{verify_error, Store};

/// Writes `output` as a docker-archive at `dest`, replacing a previous file there.
pub fn write(store: &Store, output: &Output<'_>, dest: &Path) -> Result<()> {
    if dest.is_dir() {
        return Err(Error::invalid(
            format!(
                "refusing to replace `{}`: it is a directory",
                dest.display()
            ),
            Some(
                "a docker-archive is one file: give `--out` a file name such as `out/app.tar`"
                    .into(),
            ),
        ));
    }
    let _lock = super::lock_output(dest)?;
    let tmp = files::temp_file_beside(dest)?;
    let tmp_path = tmp.path().to_path_buf();
    let mut tar: TarWriter<BufWriter<tempfile::NamedTempFile>> =
        TarWriter::new(BufWriter::with_capacity(1 << 20, tmp));
    let io_err = |e: io::Error| Error::io("write", &tmp_path, e);
    let (_, manifest) = output.single_manifest(store)?;
    let config_bytes = store.read(&manifest.config.digest)?;
    let config = ConfigView::parse(
        &config_bytes,
        &format!("the config `{}`", manifest.config.digest),
    )?;
    let diff_ids = config.diff_ids();
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::verification(
            format!(
                "the config `{}` lists {} diff_ids for {} layers",
                manifest.config.digest,
                diff_ids.len(),
                manifest.layers.len()
            ),
            "rebuild the image; its config and manifest disagree",
        ));
    }
    let file = |tar: &mut TarWriter<BufWriter<tempfile::NamedTempFile>>,
                path: &str,
                bytes: &[u8]|
     -> Result<()> {
        entry(tar, path, Kind::File, bytes.len() as u64, output.mtime).map_err(io_err)?;
        tar.data().write_all(bytes).map_err(io_err)?;
        tar.pad(bytes.len() as u64).map_err(io_err)
    };
    let mut layer_paths = Vec::new();
    let mut parent: Option<String> = None;
    for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let id = match &parent {
            None => diff_id.hex().to_string(),
            Some(p) => hex::encode(Sha256::digest(format!("sha256:{p} {diff_id}").as_bytes())),
        };
        entry(&mut tar, &id, Kind::Dir, 0, output.mtime).map_err(io_err)?;
        file(&mut tar, &format!("{id}/VERSION"), b"1.0")?;
        let mut legacy = serde_json::json!({ "id": id });
        if let Some(p) = &parent {
            legacy["parent"] = p.clone().into();
        }
        file(&mut tar, &format!("{id}/json"), &canonical(&legacy))?;
        let size = uncompressed_size(store, layer, diff_id)?;
        let path = format!("{id}/layer.tar");
        entry(&mut tar, &path, Kind::File, size, output.mtime).map_err(io_err)?;
        let mut tar_bytes = layer_reader(store, layer)?;
        let copied = io::copy(&mut tar_bytes, tar.data())
            .map_err(|e| verify_error(e, &store.blob_path(&layer.digest)))?;
        if copied != size {
            return Err(Error::verification(
                format!("layer `{}` changed while it was written", layer.digest),
                "run `kiln store verify`, then build again",
            ));
        }
        tar.pad(size).map_err(io_err)?;
        layer_paths.push(path);
        parent = Some(id);
    }
    let config_name = format!("{}.json", manifest.config.digest.hex());
    file(&mut tar, &config_name, &config_bytes)?;
    let names: Vec<String> = output.names.iter().map(|n| n.full()).collect();
    let doc = serde_json::json!([{
        "Config": config_name,
        "RepoTags": names,
        "Layers": layer_paths,
    }]);
    file(&mut tar, "manifest.json", &canonical(&doc))?;
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if let Some(top) = &parent {
        for n in output.names {
            repositories
                .entry(n.familiar_repository())
                .or_default()
                .insert(n.tag().to_string(), top.clone());
        }
    }
    file(&mut tar, "repositories", &canonical(&repositories))?;
    let file = tar
        .finish()
        .map_err(io_err)?
        .into_inner()
        .map_err(|e| io_err(e.into_error()))?;
    files::commit(file, dest)
}

fn entry<W: Write>(
    tar: &mut TarWriter<W>,
    path: &str,
    kind: Kind,
    size: u64,
    mtime: u64,
) -> io::Result<()> {
    tar.header(&Header {
        path,
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        size,
        mtime,
        link: "",
    })
}

/// The layer's tar, decompressed, from its blob in the store.
fn layer_reader<'a>(store: &'a Store, layer: &Desc) -> Result<Box<dyn Read + 'a>> {
    let blob = BufReader::with_capacity(1 << 20, store.open_blob(&layer.digest)?);
    decompress(blob, &layer.media_type, &layer.digest)
}

/// The size of the layer's tar, checked against its diff_id.
fn uncompressed_size(store: &Store, layer: &Desc, diff_id: &Digest) -> Result<u64> {
    let mut reader = layer_reader(store, layer)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| verify_error(e, &store.blob_path(&layer.digest)))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != diff_id.to_string() {
        return Err(Error::verification(
            format!(
                "layer `{}` decompresses to `{got}`, not to its diff_id `{diff_id}`",
                layer.digest
            ),
            "rebuild the image; its config does not describe this layer",
        ));
    }
    Ok(size)
}
