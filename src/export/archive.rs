//! Writes an OCI archive: the OCI image layout as one tar file, atomically,
//! with the same deterministic tar writer as layers, plus docker's
//! `manifest.json` (see [`super::Output::docker_manifest_json`]) so that
//! `docker load`, `podman load` and `ctr image import` all take it.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::{Output, OCI_LAYOUT};
use crate::error::{Error, Result};
use crate::files;
use crate::layer::tar::{Header, Kind, TarWriter};
use crate::store::{verify_error, Store};

/// Writes `output` as an OCI archive at `dest`, replacing a previous file there.
pub fn write(store: &Store, output: &Output<'_>, dest: &Path) -> Result<()> {
    if dest.is_dir() {
        return Err(Error::invalid(
            format!(
                "refusing to replace `{}`: it is a directory",
                dest.display()
            ),
            Some(
                "an OCI archive is one file: give `--out` a file name such as `out/app.tar`".into(),
            ),
        ));
    }
    let _lock = super::lock_output(dest)?;
    let tmp = files::temp_file_beside(dest)?;
    let tmp_path = tmp.path().to_path_buf();
    let out = BufWriter::with_capacity(1 << 20, tmp);
    let file = write_to(store, output, out, &tmp_path)?
        .into_inner()
        .map_err(|e| Error::io("write", &tmp_path, e.into_error()))?;
    files::commit(file, dest)
}

/// Writes `output` as an OCI archive to `out` (`shown` names it in errors)
/// and returns `out`: the OCI layout's blobs, `index.json`, docker's
/// `manifest.json` and `oci-layout`.
pub fn write_to<W: Write>(store: &Store, output: &Output<'_>, out: W, shown: &Path) -> Result<W> {
    let mut tar = TarWriter::new(out);
    let io_err = |e: io::Error| Error::io("write", shown, e);
    let header = |tar: &mut TarWriter<W>, path: &str, kind: Kind, size: u64| {
        tar.header(&Header {
            path,
            kind,
            mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size,
            mtime: output.mtime,
            link: "",
        })
    };
    header(&mut tar, "blobs", Kind::Dir, 0).map_err(io_err)?;
    header(&mut tar, "blobs/sha256", Kind::Dir, 0).map_err(io_err)?;
    for digest in output.blobs(store)? {
        let size = store.size(&digest)?;
        header(
            &mut tar,
            &format!("blobs/sha256/{}", digest.hex()),
            Kind::File,
            size,
        )
        .map_err(io_err)?;
        let mut src = store.open_blob(&digest)?;
        let copied = io::copy(&mut src, tar.data())
            .map_err(|e| verify_error(e, &store.blob_path(&digest)))?;
        if copied != size {
            return Err(Error::io(
                "read",
                store.blob_path(&digest),
                io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        tar.pad(size).map_err(io_err)?;
    }
    let index = output.index_json();
    let docker = output.docker_manifest_json(store)?;
    for (name, bytes) in [
        ("index.json", index.as_slice()),
        ("manifest.json", docker.as_slice()),
        ("oci-layout", OCI_LAYOUT),
    ] {
        header(&mut tar, name, Kind::File, bytes.len() as u64).map_err(io_err)?;
        tar.data().write_all(bytes).map_err(io_err)?;
        tar.pad(bytes.len() as u64).map_err(io_err)?;
    }
    tar.finish().map_err(io_err)
}
