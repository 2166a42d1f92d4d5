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
//! the first differing chunk starts with. No file before that entry is
//! opened again. The bytes are exactly those a cold build writes: the
//! prefix is the same chunks, and the rest is written as always.
//!
//! What is trusted is the store's own records, as far as checks show them
//! whole: a chunk key names one sequence of bytes (the layer writer checks
//! every file against its digest, and a build that fails that check
//! records nothing); the record of states carries its own SHA-256, which
//! covers each chunk's place, lengths and CRC-32s as well as its state, and
//! must agree with the chunk record line by line; the chunks lie end to
//! end; the blob is one the store vouches for; and each chunk's compressed
//! bytes match their CRC-32 as they are copied. Unlike a chunk-cache hit,
//! the prefix's uncompressed bytes are not read, so their CRC-32 (which the
//! gzip trailer combines) is the record's. Like the rest of the store,
//! this guards against damage, not against whoever can write into it.
//!
//! Nor are the prefix's files read: one that changed after planning goes
//! in as planned (the content the layer's key names), where a full build
//! would stop at it.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use super::pgzip::{DryChunk, ParallelGzip, Resumed, HARD_MAX, HEADER};
use super::tar::TarWriter;
use super::{write_entry, Check, EntryError};
use crate::digest::{load_state, ResumableSha256, Resume, CHECKPOINT};
use crate::plan::Entry;
use crate::store::{BlobWriter, ChunkCache, ChunkRecord, Store, MAX_CHUNK_SIZE};

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

/// The least a prefix must hold to be taken up (a judgement, not a
/// measurement: below a few chunks, reading the record of states is most
/// of what is saved).
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
    // A file not hashed yet gives no key to look a chunk up by; nor would
    // one be read to take its digest.
    if !cache.has_layers() || entries.iter().any(Entry::unhashed) {
        return None;
    }
    // Only as far as some recorded layer shares the chunks so far.
    let mut alive = Vec::new();
    let dry = dry_chunks(entries, mtime, |i, c| {
        cache.still_shared(i, &c.key, c.len, &mut alive)
    })
    .ok()?;
    // The blobs with the longest prefix in common first, among those the
    // page cache holds: reading one it does not hold costs more than the
    // prefix saves (on this project's test machines, 1.7 ns of system time
    // a byte). One whose record or bytes fail a check gives way to the next.
    cache
        .prefixes(dry.iter().map(|c| (&c.key, c.len)))
        .into_iter()
        .filter_map(|(blob, matched)| {
            let first = first_to_write(&dry, matched)?;
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
        .filter(|(blob, records, first)| cached(&store.blob_path(blob), &records[..*first]))
        .find_map(|(blob, records, first)| take_up(store, &dry, blob, &records, first))
}

/// The first `first` chunks of the recorded layer `blob` (whose chunks are
/// `records`) copied into a new blob writer, and both hashings taken up
/// after them; `None` if its record or its bytes fail a check.
fn take_up(
    store: &Store,
    dry: &[DryChunk],
    blob: &crate::digest::Digest,
    records: &[ChunkRecord],
    first: usize,
) -> Option<Prefix> {
    let record = store.resume_record(blob, records)?;
    let records = &records[..first];
    let end = end_to_end(records)?;
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
    let writer = copy_prefix(store, blob, records, at, blob_hasher).ok()??;
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

/// The first chunk to write again after `matched` chunks in common with a
/// recorded layer: one that starts at an entry, after at least one chunk in
/// common, and never past the last chunk (a layer with every chunk in
/// common is found by its key before building).
fn first_to_write(dry: &[DryChunk], matched: usize) -> Option<usize> {
    (1..=matched.min(dry.len().checked_sub(1)?))
        .rev()
        .find(|&i| dry[i].start_entry.is_some())
}

/// Where the last of `records` ends, if they lie end to end from just
/// after the gzip header, each no bigger than a chunk can be.
fn end_to_end(records: &[ChunkRecord]) -> Option<u64> {
    records.iter().try_fold(HEADER.len() as u64, |at, c| {
        (c.offset == at && c.size <= MAX_CHUNK_SIZE && c.len <= HARD_MAX as u64)
            .then(|| at + c.size)
    })
}

/// The chunks `entries`' layer is cut into, and their keys, worked out
/// without reading a host file: all of them, or up to and including the
/// first chunk `i` for which `more(i, chunk)` says no.
fn dry_chunks(
    entries: &[Entry],
    mtime: u64,
    mut more: impl FnMut(usize, &DryChunk) -> bool,
) -> io::Result<Vec<DryChunk>> {
    let mut tar = TarWriter::new(ParallelGzip::dry(io::sink()));
    let mut scratch = Vec::new();
    let mut seen = 0;
    for entry in entries {
        write_entry(&mut tar, entry, mtime, Check::Dry, &mut scratch).map_err(|e| match e {
            EntryError::Io(e) => e,
            EntryError::Kiln(e) => io::Error::other(e.to_string()),
        })?;
        let cut = tar.data().cut_so_far();
        while seen < cut.len() {
            if !more(seen, &cut[seen]) {
                return Ok(cut[..=seen].to_vec());
            }
            seen += 1;
        }
    }
    tar.finish()?.finish_dry()
}

/// A new layer blob writer holding the gzip header and `records`' bytes
/// (which lie end to end), copied from `blob` and each checked against its
/// recorded CRC-32, with
/// its hashing taken up at `at` from `hasher`; `Ok(None)` if the blob is
/// not one the store vouches for, or a check fails.
fn copy_prefix(
    store: &Store,
    blob: &crate::digest::Digest,
    records: &[ChunkRecord],
    at: u64,
    hasher: ResumableSha256,
) -> crate::error::Result<Option<BlobWriter>> {
    let path = store.blob_path(blob);
    let Ok(file) = File::open(&path) else {
        return Ok(None);
    };
    match file.metadata() {
        Ok(meta) if store.stamped(&meta, blob) => {}
        _ => return Ok(None),
    }
    let mut writer = store.layer_writer_from(Some(Resume { hasher, at }))?;
    let mut header = [0u8; HEADER.len()];
    if file.read_exact_at(&mut header, 0).is_err() || header != HEADER {
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
    /// `d/f0200` just over 3 MiB (cut inside its content).
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
            // 3 MiB and a bit: its last chunk starts inside it and holds
            // the files after it too.
            let len = if i == 200 {
                (3 << 20) + 777
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
        // Every blob of the store read first, as the build before would
        // have read the chunks it took: a prefix is taken up only from a
        // blob the page cache holds (see `cached`), and a machine short of
        // memory lets go of pages read once soonest (reproduced by filling
        // 19 of 23 GiB while these tests ran). Read just before, since an
        // oracle's build often comes between.
        if let Ok(blobs) = std::fs::read_dir(store.root().join("blobs/sha256")) {
            for b in blobs.flatten() {
                let _ = std::fs::read(b.path());
            }
        }
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
    }

    /// A store holding one built layer of `tree(…, 320)`, damaged by
    /// `damage(store dir, blob)`, then rebuilt after a late change: nothing
    /// is taken up, and the layer is a cold build's, named for its bytes.
    fn damaged(damage: impl Fn(&Store, &Path, &Digest)) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let mut entries = tree(&input, 320);
        let warm = Store::open(dir.path().join("warm")).unwrap();
        let (first, _) = build(&warm, &entries, 2);
        damage(&warm, &dir.path().join("warm"), &first.digest);
        change(&input, &mut entries, 300, 5);
        let (expected, _) = build(&Store::open(dir.path().join("cold")).unwrap(), &entries, 1);
        let (got, chunks) = build(&warm, &entries, 2);
        assert_eq!(
            chunks.resumed, 0,
            "a damaged store was taken up: {chunks:?}"
        );
        assert_eq!(got, expected);
        assert_eq!(Digest::of(&blob(&warm, &got)), got.digest);
        // The record that build left is whole: the next change takes it up.
        change(&input, &mut entries, 305, 9);
        let (expected, _) = build(&Store::open(dir.path().join("cold1")).unwrap(), &entries, 1);
        let (got, chunks) = build(&warm, &entries, 2);
        assert!(chunks.resumed > 0, "{chunks:?}");
        assert_eq!(got, expected);
    }

    /// Rewrites line `line` of a record file through `edit` (its words).
    fn edit(path: &Path, line: usize, edit: impl Fn(&mut Vec<String>)) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut words: Vec<String> = lines[line].split(' ').map(str::to_string).collect();
        edit(&mut words);
        lines[line] = words.join(" ");
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn v3(store: &Path, blob: &Digest) -> std::path::PathBuf {
        store.join("chunks").join(format!("{}.v3", blob.hex()))
    }

    /// Puts a byte of the blob `blob` in `store` wrong (`at` bytes into
    /// chunk `chunk`) and has `store` vouch for it again, as if its stamp
    /// had not seen the write.
    fn spoil_under_stamp(store: &Store, blob: &Digest, chunk: usize, at: u64) {
        let path = store.blob_path(blob);
        let offset = store.chunk_cache().layer(blob).unwrap()[chunk].offset + at;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offset as usize] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        store.vouch(&std::fs::metadata(&path).unwrap(), blob);
    }

    #[test]
    fn a_damaged_record_of_states_is_not_taken_up() {
        // One hex digit of one saved state: the record's digest no longer matches.
        damaged(|_, store, blob| {
            let path = store.join("chunks").join(format!("{}.r1", blob.hex()));
            edit(&path, 2, |w| {
                let state = w.last_mut().unwrap();
                let flipped = if state.ends_with('0') { '1' } else { '0' };
                state.pop();
                state.push(flipped);
            });
        });
    }

    #[test]
    fn a_chunk_record_that_disagrees_with_the_states_is_not_taken_up() {
        // One bit of a chunk's uncompressed CRC-32 (which the gzip trailer
        // would combine unread).
        damaged(|_, store, blob| {
            edit(&v3(store, blob), 1, |w| {
                w[4] = format!("{:08x}", u32::from_str_radix(&w[4], 16).unwrap() ^ 1);
            })
        });
        // A chunk's place made another's: the record of states disagrees.
        damaged(|_, store, blob| {
            let text = std::fs::read_to_string(v3(store, blob)).unwrap();
            let other = text
                .lines()
                .nth(2)
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .to_string();
            edit(&v3(store, blob), 1, |w| w[1] = other.clone())
        });
        // Sizes and places no chunk can have (the records disagree).
        damaged(|_, store, blob| edit(&v3(store, blob), 1, |w| w[2] = (1u64 << 46).to_string()));
        damaged(|_, store, blob| edit(&v3(store, blob), 3, |w| w[1] = u64::MAX.to_string()));
    }

    #[test]
    fn a_blob_changed_under_its_stamp_is_not_taken_up() {
        // The store still vouches for the blob: the chunk's CRC-32 catches it.
        damaged(|warm, _, blob| spoil_under_stamp(warm, blob, 2, 100));
    }

    #[test]
    fn a_take_up_given_up_halfway_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let mut entries = tree(&input, 320);
        let warm = Store::open(dir.path().join("warm")).unwrap();
        warm.keep_spares(true);
        let (first, _) = build(&warm, &entries, 2);
        let _ = warm.take_spare(&first.digest);
        // A late chunk's bytes go wrong under the stamp: the copy stops
        // there, after writing the chunks before it to a new blob and spare.
        spoil_under_stamp(&warm, &first.digest, 8, 10);
        let tmp = || {
            std::fs::read_dir(dir.path().join("warm/tmp"))
                .unwrap()
                .count()
        };
        let before = tmp();
        change(&input, &mut entries, 300, 7);
        let (got, chunks) = build(&warm, &entries, 2);
        assert_eq!(chunks.resumed, 0, "{chunks:?}");
        assert_eq!(Digest::of(&blob(&warm, &got)), got.digest);
        // The output's spare is the one file the build leaves.
        assert!(warm.take_spare(&got.digest).is_some());
        assert_eq!(tmp(), before, "a writer given up left a file behind");
    }

    /// Entries of every kind and awkward size, all after `a{round}/`: long
    /// paths (PAX records), hard links, long symlink targets, big ids,
    /// inline content, empty files and files of 1 and 2 MiB exactly.
    fn varied(dir: &Path, late_seed: u64) -> Vec<Entry> {
        std::fs::create_dir_all(dir).unwrap();
        let long = "x".repeat(120);
        let sizes = [
            0,
            1,
            511,
            512,
            1 << 20,
            2 << 20,
            (1 << 20) + 1,
            5 << 20,
            300_000,
            0,
            700_000,
            3 << 20,
            4096,
            1 << 20,
        ];
        let mut entries = Vec::new();
        let mut i = 0;
        for round in 0..6 {
            for (k, &len) in sizes.iter().enumerate() {
                i += 1;
                let name = format!("a{round}/{long}{i:05}");
                let seed = if round == 5 && k == 10 {
                    late_seed
                } else {
                    i as u64
                };
                let bytes = text(len, seed);
                if k == 8 {
                    entries.push(Entry {
                        path: name,
                        kind: EntryKind::File {
                            size: bytes.len() as u64,
                            digest: Digest::of(&bytes),
                            content: Content::Inline(bytes.into()),
                        },
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    });
                    continue;
                }
                let path = dir.join(format!("f{i:05}"));
                std::fs::write(&path, &bytes).unwrap();
                entries.push(host(&path, name.clone()));
                entries.push(Entry {
                    path: format!("{name}-h"),
                    kind: EntryKind::HardLink {
                        target: name.clone(),
                    },
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                });
                entries.push(Entry {
                    path: format!("{name}-s"),
                    kind: EntryKind::Symlink {
                        target: format!("{long}{long}{i}"),
                    },
                    mode: 0o777,
                    uid: 3_000_000,
                    gid: 0,
                });
            }
        }
        entries
    }

    #[test]
    fn entries_of_every_kind_cut_and_take_up_as_a_cold_build_does() {
        let dir = tempfile::tempdir().unwrap();
        let entries = varied(&dir.path().join("in"), 1);
        let warm = Store::open(dir.path().join("warm")).unwrap();
        let (record, chunks) = build(&warm, &entries, 2);
        let recorded = warm.chunk_cache().layer(&record.digest).unwrap();
        let dry = dry_chunks(&entries, 0, |_, _| true).unwrap();
        assert_eq!(dry.len() as u64, chunks.total);
        assert_eq!(
            dry.iter().map(|c| (&c.key, c.len)).collect::<Vec<_>>(),
            recorded.iter().map(|c| (&c.key, c.len)).collect::<Vec<_>>()
        );
        let changed = varied(&dir.path().join("in"), 999);
        let (expected, _) = build(&Store::open(dir.path().join("cold")).unwrap(), &changed, 1);
        let (got, chunks) = build(&warm, &changed, 3);
        assert!(chunks.resumed > 0, "{chunks:?}");
        assert_eq!(got, expected);
        assert_eq!(Digest::of(&blob(&warm, &got)), got.digest);
    }

    #[test]
    fn a_dry_run_cuts_where_a_build_does() {
        let dir = tempfile::tempdir().unwrap();
        let entries = tree(&dir.path().join("in"), 260);
        let store = Store::open(dir.path().join("s")).unwrap();
        let (record, chunks) = build(&store, &entries, 2);
        let dry = dry_chunks(&entries, 0, |_, _| true).unwrap();
        let cache = store.chunk_cache();
        let recorded = cache.layer(&record.digest).unwrap();
        assert_eq!(dry.len() as u64, chunks.total);
        assert_eq!(
            dry.iter().map(|c| (&c.key, c.len)).collect::<Vec<_>>(),
            recorded.iter().map(|c| (&c.key, c.len)).collect::<Vec<_>>()
        );
        // Told to stop at a chunk, a dry run gives the chunks up to it.
        let mut asked = Vec::new();
        let some = dry_chunks(&entries, 0, |i, _| {
            asked.push(i);
            i < 3
        })
        .unwrap();
        assert_eq!(some, dry[..4]);
        assert_eq!(asked, [0, 1, 2, 3]);
        // The 3 MiB file is cut inside its content: those chunks start at
        // no entry; the first chunk starts at the first.
        assert_eq!(dry[0].start_entry, Some(0));
        assert!(dry.iter().any(|c| c.start_entry.is_none()));
    }

    /// The first `first` a take-up from `cache` would pick for the chunks
    /// `dry`, blob by blob, as `prefix` picks it (before the checks that
    /// read files).
    fn picks(cache: &ChunkCache, dry: &[DryChunk]) -> Vec<(Digest, usize)> {
        cache
            .prefixes(dry.iter().map(|c| (&c.key, c.len)))
            .into_iter()
            .filter_map(|(blob, matched)| Some((blob.clone(), first_to_write(dry, matched)?)))
            .collect()
    }

    #[test]
    fn an_early_stopped_dry_run_picks_as_a_full_one_with_layers_sharing_different_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let base = tree(&input, 320);
        let warm = Store::open(dir.path().join("warm")).unwrap();
        // Three recorded layers: one changed late, one changed after the
        // big file, one shorter than the new layer (files removed at the end).
        let built_with_change = |i: usize, seed: u64| {
            let path = input.join(format!("d/f{i:04}"));
            let keep = std::fs::read(&path).unwrap();
            let mut entries = base.clone();
            change(&input, &mut entries, i, seed);
            let (record, _) = build(&warm, &entries, 2);
            std::fs::write(&path, keep).unwrap();
            record
        };
        let a = built_with_change(300, 11);
        built_with_change(250, 12);
        let mut short = base.clone();
        short.truncate(290);
        build(&warm, &short, 2);
        let mut new = base.clone();
        change(&input, &mut new, 310, 13);
        let cache = warm.chunk_cache();
        let full = dry_chunks(&new, 0, |_, _| true).unwrap();
        let mut alive = Vec::new();
        let early = dry_chunks(&new, 0, |i, c| {
            cache.still_shared(i, &c.key, c.len, &mut alive)
        })
        .unwrap();
        assert!(early.len() < full.len(), "{} {}", early.len(), full.len());
        assert_eq!(early[..], full[..early.len()]);
        assert_eq!(picks(&cache, &early), picks(&cache, &full));
        assert_eq!(
            cache.prefixes(early.iter().map(|c| (&c.key, c.len))).len(),
            3
        );

        // The longest one's record of states is lost: a shorter one serves.
        let rebuild = |name: &str| {
            let (expected, _) = build(&Store::open(dir.path().join(name)).unwrap(), &new, 1);
            let (got, chunks) = build(&warm, &new, 2);
            assert_eq!(got, expected, "{chunks:?}");
            assert_eq!(Digest::of(&blob(&warm, &got)), got.digest);
            chunks
        };
        std::fs::remove_file(
            warm.root()
                .join("chunks")
                .join(format!("{}.r1", a.digest.hex())),
        )
        .unwrap();
        let from_b = rebuild("cold-b");
        assert!(from_b.resumed > 0, "{from_b:?}");
    }

    /// Replaces `from` with `to` in both records of the layer `blob` in the
    /// store at `store`, and signs the record of states again: the two
    /// agree, and its digest matches.
    fn forge(store: &Path, blob: &Digest, from: &str, to: &str) {
        for suffix in ["v3", "r1"] {
            let path = store
                .join("chunks")
                .join(format!("{}.{suffix}", blob.hex()));
            let text = std::fs::read_to_string(&path).unwrap().replace(from, to);
            let text = if suffix == "r1" {
                let body_end = text.trim_end_matches('\n').rfind('\n').unwrap() + 1;
                let body = &text[..body_end];
                format!("{body}S {}\n", Digest::of(body.as_bytes()).hex())
            } else {
                text
            };
            std::fs::write(&path, text).unwrap();
        }
    }

    #[test]
    fn records_that_agree_but_cannot_lie_end_to_end_are_not_taken_up() {
        // Both records say so, and the record of states is signed again:
        // only the check that the chunks lie end to end is left.
        damaged(|_, store, blob| {
            let line = std::fs::read_to_string(v3(store, blob)).unwrap();
            let words: Vec<&str> = line.lines().nth(1).unwrap().split(' ').collect();
            let huge = [&[words[0], words[1]][..], &["70368744177664"], &words[3..]].concat();
            forge(store, blob, &words.join(" "), &huge.join(" "));
        });
        damaged(|_, store, blob| {
            let line = std::fs::read_to_string(v3(store, blob)).unwrap();
            let words: Vec<&str> = line.lines().nth(3).unwrap().split(' ').collect();
            let max = u64::MAX.to_string();
            let far = [&[words[0], max.as_str()][..], &words[2..]].concat();
            forge(store, blob, &words.join(" "), &far.join(" "));
        });
    }

    #[test]
    fn a_chunk_whose_key_shares_only_its_fingerprint_is_not_taken_up() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let base = tree(&input, 320);
        let warm = Store::open(dir.path().join("warm")).unwrap();
        let mut old = base.clone();
        change(&input, &mut old, 100, 21);
        let (a, _) = build(&warm, &old, 2);
        let mut new = base.clone();
        change(&input, &mut new, 100, 22);
        change(&input, &mut new, 300, 23);
        let dry = dry_chunks(&new, 0, |_, _| true).unwrap();
        let recorded = warm.chunk_cache().layer(&a.digest).unwrap();
        let j = (0..dry.len())
            .find(|&j| dry[j].key != recorded[j].key)
            .unwrap();
        assert_eq!(dry[j].len, recorded[j].len);
        // Give the old chunk j a key with the new chunk's first 16 digits
        // (a fingerprint collision), in both records, the states' resigned.
        let forged = format!(
            "{}{}",
            &dry[j].key.hex()[..16],
            &recorded[j].key.hex()[16..]
        );
        forge(warm.root(), &a.digest, recorded[j].key.hex(), &forged);
        let cache = warm.chunk_cache();
        assert!(cache.prefixes(dry.iter().map(|c| (&c.key, c.len)))[0].1 > j);
        let (expected, _) = build(&Store::open(dir.path().join("cold")).unwrap(), &new, 1);
        let (got, chunks) = build(&warm, &new, 2);
        assert_eq!(chunks.resumed, 0, "{chunks:?}");
        assert_eq!(got, expected);
        assert_eq!(Digest::of(&blob(&warm, &got)), got.digest);
    }
}
