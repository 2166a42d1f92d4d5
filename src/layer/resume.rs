//! Taking up a gzip layer after the prefix an earlier build wrote.
//!
//! A layer's diff_id and blob digest are SHA-256 over the whole tar stream
//! and the whole blob, so a change anywhere makes both hashings run again;
//! but the bytes before the first changed chunk are the same as last time,
//! and so are the two hashers' states there. A build records those states
//! beside the layer's chunk record ([`crate::store::ResumeRecord`]: the tar
//! stream's after every chunk, the blob's every
//! [`crate::digest::CHECKPOINT`] bytes). The next build of a layer first
//! works out its chunks' keys without reading a file
//! ([`super::pgzip::ParallelGzip::dry`]); if a recorded blob starts with
//! the same chunks, it copies that prefix's compressed bytes from the
//! blob (each checked against the CRC-32 recorded for it), takes both
//! hashings up from the saved states, and writes the layer from the entry
//! the first differing chunk starts with. Nothing before that entry is
//! read again. The bytes are exactly those a cold build writes: the
//! prefix is the same chunks, and the rest is written as always.
//!
//! What is trusted is what the chunk cache already trusts: a chunk key
//! names one sequence of bytes (the layer writer checks every file against
//! its digest, and a build that fails that check records nothing), a blob
//! the store vouches for is intact, and a record reads back whole (it
//! carries its own SHA-256).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use super::pgzip::{DryChunk, ParallelGzip, Resumed};
use super::tar::TarWriter;
use super::{write_entry, Check, EntryError};
use crate::digest::{load_state, ResumableSha256, Resume, CHECKPOINT};
use crate::plan::Entry;
use crate::store::{BlobWriter, ChunkCache, ChunkRecord, Store};

/// A layer's blob writer holding the prefix, and where the rest starts.
pub(super) struct Prefix {
    /// The blob so far: the prefix written, its hashing taken up.
    pub writer: BlobWriter,
    /// What the gzip writer takes up from.
    pub resumed: Resumed,
    /// The index of the first entry still to write.
    pub entry: usize,
    /// The blob hasher's saved states up to where it took up.
    pub blob_states: Vec<crate::digest::Checkpoint>,
}

/// The least a prefix must hold to be worth taking up: below it, reading
/// the saved states and the prefix costs about what it saves.
const MIN_PREFIX: u64 = 4 << 20;

/// How many of a prefix's chunks [`cached`] looks at, at most.
const PROBES: usize = 16;

/// Whether the page cache holds the start of some of `records`' chunks in
/// the blob at `path` (up to [`PROBES`] of them, spread over the prefix):
/// read without waiting for the disk (`RWF_NOWAIT`), which fails where it
/// would have to. A blob written with `O_DIRECT` is not held until read.
fn cached(path: &std::path::Path, records: &[ChunkRecord]) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let step = records.len().div_ceil(PROBES).max(1);
    let mut page = [0u8; 4096];
    records.iter().step_by(step).all(|c| {
        let want = page
            .len()
            .min(usize::try_from(c.size).unwrap_or(usize::MAX));
        matches!(
            rustix::io::preadv2(
                &file,
                &mut [io::IoSliceMut::new(&mut page[..want])],
                c.offset,
                rustix::io::ReadWriteFlags::NOWAIT,
            ),
            Ok(n) if n == want
        )
    })
}

/// The prefix of `entries`' layer an earlier build left in `store`, if
/// there is one worth taking up; `None` (and nothing written) otherwise.
pub(super) fn prefix(
    store: &Store,
    cache: &ChunkCache,
    entries: &[Entry],
    mtime: u64,
) -> Option<Prefix> {
    if !cache.has_layers() {
        return None;
    }
    let dry = dry_chunks(entries, mtime).ok()?;
    // The blobs with the longest prefix in common first, among those the
    // page cache holds: reading one it does not hold costs more than the
    // prefix saves (on this project's test machines, 1.7 ns of system time
    // a byte). One whose record or bytes fail a check gives way to the next.
    cache
        .prefixes(dry.iter().map(|c| (&c.key, c.len)))
        .into_iter()
        .filter_map(|(blob, matched)| {
            // The first chunk to write again: one that starts at an entry,
            // after at least one chunk in common (never past the last
            // chunk: a layer with every chunk in common is found by its
            // key before building).
            let first = (1..=matched.min(dry.len() - 1))
                .rev()
                .find(|&i| dry[i].start_entry.is_some())?;
            let kept: u64 = dry[..first].iter().map(|c| c.len).sum();
            if kept < MIN_PREFIX {
                return None;
            }
            // Read again, and checked key by key (prefixes compares short
            // fingerprints).
            let records = cache.layer(blob)?;
            let same = records.len() >= first
                && records[..first]
                    .iter()
                    .zip(&dry[..first])
                    .all(|(r, d)| r.key == d.key && r.len == d.len);
            same.then_some((blob, records, first))
        })
        .filter(|(blob, records, first)| cached(&cache.blob_path(blob), &records[..*first]))
        .find_map(|(blob, records, first)| take_up(store, cache, &dry, blob, &records, first))
}

/// The first `first` chunks of the recorded layer `blob` (whose chunks are
/// `records`) copied into a new blob writer, and both hashings taken up
/// after them; `None` if its record or its bytes fail a check.
fn take_up(
    store: &Store,
    cache: &ChunkCache,
    dry: &[DryChunk],
    blob: &crate::digest::Digest,
    records: &[ChunkRecord],
    first: usize,
) -> Option<Prefix> {
    let record = store.resume_record(blob, records)?;
    let records = &records[..first];
    let end = records.last().map(|c| c.offset + c.size)?;
    let entry = dry[first].start_entry?;
    let hasher = load_state(&record.chunk_states[first - 1])?;
    // The blob's hashing takes up at the last saved state within the prefix.
    let (at, blob_hasher) = record
        .blob_states
        .iter()
        .rev()
        .filter(|(offset, _)| *offset <= end && offset % CHECKPOINT == 0)
        .find_map(|(offset, state)| Some((*offset, load_state(state)?)))
        .unwrap_or((0, ResumableSha256::default()));
    let blob_states: Vec<_> = record
        .blob_states
        .iter()
        .filter(|(offset, _)| *offset <= at)
        .cloned()
        .collect();
    let writer = copy_prefix(store, cache, blob, records, at, blob_hasher).ok()??;
    Some(Prefix {
        writer,
        resumed: Resumed {
            chunks: records.to_vec(),
            states: record.chunk_states[..first].to_vec(),
            hasher,
        },
        entry,
        blob_states,
    })
}

/// The chunks `entries`' layer is cut into, and their keys, worked out
/// without reading a host file.
fn dry_chunks(entries: &[Entry], mtime: u64) -> io::Result<Vec<DryChunk>> {
    let mut tar = TarWriter::new(ParallelGzip::dry(io::sink()));
    let mut scratch = Vec::new();
    for entry in entries {
        write_entry(&mut tar, entry, mtime, Check::Dry, &mut scratch).map_err(|e| match e {
            EntryError::Io(e) => e,
            EntryError::Kiln(e) => io::Error::other(e.to_string()),
        })?;
    }
    tar.finish()?.finish_dry()
}

/// A new layer blob writer holding the gzip header and `records`' bytes,
/// copied from `blob` and each checked against its recorded CRC-32, with
/// its hashing taken up at `at` from `hasher`; `Ok(None)` if the blob is
/// not one the store vouches for, or a check fails.
fn copy_prefix(
    store: &Store,
    cache: &ChunkCache,
    blob: &crate::digest::Digest,
    records: &[ChunkRecord],
    at: u64,
    hasher: ResumableSha256,
) -> crate::error::Result<Option<BlobWriter>> {
    let path = cache.blob_path(blob);
    let Ok(file) = File::open(&path) else {
        return Ok(None);
    };
    match file.metadata() {
        Ok(meta) if store.stamped(&meta, blob) => {}
        _ => return Ok(None),
    }
    let mut writer = store.layer_writer_from(Some(Resume { hasher, at }))?;
    let mut header = [0u8; 10];
    if records.first().map(|c| c.offset) != Some(10)
        || file.read_exact_at(&mut header, 0).is_err()
        || header != super::pgzip::HEADER
    {
        return Ok(None);
    }
    let write = |w: &mut BlobWriter, bytes: &[u8]| {
        w.write_all(bytes)
            .map_err(|e| crate::error::Error::io("write a layer into", store.tmp_dir(), e))
    };
    write(&mut writer, &header)?;
    let mut bytes = Vec::new();
    for c in records {
        let Ok(size) = usize::try_from(c.size) else {
            return Ok(None);
        };
        bytes.resize(size, 0);
        if file.read_exact_at(&mut bytes, c.offset).is_err() || crc32fast::hash(&bytes) != c.zcrc {
            return Ok(None);
        }
        write(&mut writer, &bytes)?;
    }
    Ok(Some(writer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::plan::{Content, EntryKind};
    use crate::recipe::Compression;
    use crate::store::LayerRecord;
    use std::path::Path;

    /// Text of about `len` bytes that deflate shrinks, different per `seed`.
    fn text(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut out = Vec::with_capacity(len + 64);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(
                format!("line {} of {seed}: {}\n", out.len(), x % 977).as_bytes(),
            );
        }
        out.truncate(len);
        out
    }

    /// Writes `files` host files under `dir` and plans them as a layer
    /// (sorted, as planning gives them): `d/fNNNN`, about 24 KiB each, and
    /// `d/f0200` 3 MiB (cut inside its content).
    fn tree(dir: &Path, files: usize) -> Vec<Entry> {
        std::fs::create_dir_all(dir.join("d")).unwrap();
        let mut entries = vec![Entry {
            path: "d".into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        }];
        for i in 0..files {
            let len = if i == 200 {
                3 << 20
            } else {
                20_000 + i * 37 % 9_000
            };
            let path = dir.join(format!("d/f{i:04}"));
            std::fs::write(&path, text(len, i as u64)).unwrap();
            entries.push(host(&path, format!("d/f{i:04}")));
        }
        entries
    }

    fn host(path: &Path, name: String) -> Entry {
        let bytes = std::fs::read(path).unwrap();
        Entry {
            path: name,
            kind: EntryKind::File {
                content: Content::Host(path.to_path_buf(), None),
                size: bytes.len() as u64,
                digest: Digest::of(&bytes),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    /// Rewrites file `i` of `tree` (entry `i + 1`) and plans it again.
    fn change(dir: &Path, entries: &mut [Entry], i: usize, seed: u64) {
        let path = dir.join(format!("d/f{i:04}"));
        std::fs::write(&path, text(21_111, seed)).unwrap();
        entries[i + 1] = host(&path, format!("d/f{i:04}"));
    }

    fn build(
        store: &Store,
        entries: &[Entry],
        threads: usize,
    ) -> (LayerRecord, super::super::Chunks) {
        let (record, chunks) =
            super::super::build(store, entries, Compression::Gzip, 0, threads).unwrap();
        (record, chunks.unwrap())
    }

    fn blob(store: &Store, record: &LayerRecord) -> Vec<u8> {
        std::fs::read(store.blob_path(&record.digest)).unwrap()
    }

    #[test]
    fn a_rebuild_takes_up_after_the_unchanged_prefix_without_reading_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries = tree(&dir.path().join("in"), 400);
        let warm = Store::open(dir.path().join("warm")).unwrap();
        let (first, chunks) = build(&warm, &entries, 2);
        assert_eq!(chunks.resumed, 0, "an empty store has nothing to take up");

        change(dir.path().join("in").as_path(), &mut entries, 300, 7);
        // The oracle: a cold build of the changed layer in an empty store.
        let cold = Store::open(dir.path().join("cold")).unwrap();
        let (expected, _) = build(&cold, &entries, 1);
        assert_ne!(expected.digest, first.digest);

        // Files well before the change are moved away: a build that opened
        // one would fail.
        let aside = dir.path().join("aside");
        std::fs::rename(dir.path().join("in/d"), &aside).unwrap();
        std::fs::create_dir(dir.path().join("in/d")).unwrap();
        for i in 150..400 {
            let name = format!("f{i:04}");
            std::fs::rename(aside.join(&name), dir.path().join("in/d").join(&name)).unwrap();
        }
        let (got, chunks) = build(&warm, &entries, 7);
        assert!(chunks.resumed >= 3, "{chunks:?}");
        assert!(chunks.total - chunks.reused <= 2, "{chunks:?}");
        assert_eq!(
            got, expected,
            "a resumed build gives the cold build's layer"
        );
        assert_eq!(blob(&warm, &got), blob(&cold, &expected));
        for i in 0..150 {
            let name = format!("f{i:04}");
            std::fs::rename(aside.join(&name), dir.path().join("in/d").join(&name)).unwrap();
        }

        // And again, from the resumed build's own record.
        change(dir.path().join("in").as_path(), &mut entries, 350, 8);
        let (expected, _) = build(&Store::open(dir.path().join("cold2")).unwrap(), &entries, 1);
        let (got, chunks) = build(&warm, &entries, 1);
        assert!(chunks.resumed > 0, "{chunks:?}");
        assert_eq!(got, expected);
        assert_eq!(
            Digest::of(&blob(&warm, &got)),
            got.digest,
            "the blob's digest is its bytes'"
        );
    }

    #[test]
    fn every_place_of_a_change_gives_the_cold_layer() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let base = tree(&input, 320);
        let warm = Store::open(dir.path().join("warm")).unwrap();
        build(&warm, &base, 2);
        // The first file (nothing to take up), one just after the 3 MiB
        // file, the 3 MiB file itself, the last file, a file removed, one
        // added in the middle.
        let mut cases: Vec<(&str, Vec<Entry>)> = Vec::new();
        for (name, i) in [
            ("first", 0),
            ("after big", 201),
            ("big", 200),
            ("last", 319),
        ] {
            let mut entries = base.clone();
            let path = input.join(format!("d/f{i:04}"));
            let keep = std::fs::read(&path).unwrap();
            change(&input, &mut entries, i, 1000 + i as u64);
            // Built now, then the file is put back for the next case.
            let cold = Store::open(dir.path().join(format!("cold-{i}"))).unwrap();
            let (expected, _) = build(&cold, &entries, 1);
            let (got, chunks) = build(&warm, &entries, 2);
            assert_eq!(got, expected, "{name}: {chunks:?}");
            if i >= 200 {
                assert!(chunks.resumed > 0, "{name}: {chunks:?}");
            } else {
                assert_eq!(chunks.resumed, 0, "{name}: {chunks:?}");
            }
            std::fs::write(&path, keep).unwrap();
            cases.push((name, entries));
        }
        let mut removed = base.clone();
        removed.remove(261);
        let mut added = base.clone();
        let extra = input.join("d/f0250a");
        std::fs::write(&extra, text(30_000, 99)).unwrap();
        added.insert(252, host(&extra, "d/f0250a".into()));
        for (name, entries) in [("removed", removed), ("added", added)] {
            let cold = Store::open(dir.path().join(format!("cold-{name}"))).unwrap();
            let (expected, _) = build(&cold, &entries, 1);
            let (got, chunks) = build(&warm, &entries, 2);
            assert_eq!(got, expected, "{name}: {chunks:?}");
            assert!(chunks.resumed > 0, "{name}: {chunks:?}");
        }
        assert_eq!(cases.len(), 4);
    }

    #[test]
    fn a_damaged_record_or_blob_is_not_taken_up() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let mut entries = tree(&input, 320);
        let warm = Store::open(dir.path().join("warm")).unwrap();
        let (first, _) = build(&warm, &entries, 2);
        let record = |blob: &Digest| {
            dir.path()
                .join("warm/chunks")
                .join(format!("{}.r1", blob.hex()))
        };

        // One hex digit of one saved state changed: the record's own digest
        // no longer matches, and nothing is taken up.
        let path = record(&first.digest);
        let text = std::fs::read_to_string(&path).unwrap();
        let at = text.find("\nC ").unwrap() + 3 + 64 + 1 + 10;
        let mut bytes = text.into_bytes();
        bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
        std::fs::write(&path, &bytes).unwrap();
        change(&input, &mut entries, 300, 5);
        let (expected, _) = build(&Store::open(dir.path().join("cold")).unwrap(), &entries, 1);
        let (got, chunks) = build(&warm, &entries, 2);
        assert_eq!(chunks.resumed, 0, "a damaged record was used: {chunks:?}");
        assert_eq!(got, expected);
        // The record that build left is whole: the next change takes it up.
        change(&input, &mut entries, 305, 9);
        let (expected, _) = build(&Store::open(dir.path().join("cold1")).unwrap(), &entries, 1);
        let (got, chunks) = build(&warm, &entries, 2);
        assert!(chunks.resumed > 0, "{chunks:?}");
        assert_eq!(got, expected);

        // A byte of the blob's prefix changed: the store no longer vouches
        // for the blob, its chunks fail their CRC, and the layer comes out
        // as a cold build's.
        let blob_path = warm.blob_path(&got.digest);
        let mut blob = std::fs::read(&blob_path).unwrap();
        blob[5000] ^= 0x40;
        std::fs::write(&blob_path, &blob).unwrap();
        change(&input, &mut entries, 310, 6);
        let (expected, _) = build(&Store::open(dir.path().join("cold2")).unwrap(), &entries, 1);
        let (got, chunks) = build(&warm, &entries, 2);
        assert_eq!(got, expected, "{chunks:?}");
        assert_eq!(
            Digest::of(&std::fs::read(warm.blob_path(&got.digest)).unwrap()),
            got.digest
        );
    }

    #[test]
    fn a_dry_run_cuts_where_a_build_does() {
        let dir = tempfile::tempdir().unwrap();
        let entries = tree(&dir.path().join("in"), 260);
        let store = Store::open(dir.path().join("s")).unwrap();
        let (record, chunks) = build(&store, &entries, 2);
        let dry = dry_chunks(&entries, 0).unwrap();
        let cache = store.chunk_cache();
        let recorded = cache.layer(&record.digest).unwrap();
        assert_eq!(dry.len() as u64, chunks.total);
        assert_eq!(
            dry.iter().map(|c| (&c.key, c.len)).collect::<Vec<_>>(),
            recorded.iter().map(|c| (&c.key, c.len)).collect::<Vec<_>>()
        );
        // The 3 MiB file is cut inside its content: those chunks start at
        // no entry; the first chunk starts at the first.
        assert_eq!(dry[0].start_entry, Some(0));
        assert!(dry.iter().any(|c| c.start_entry.is_none()));
    }
}
