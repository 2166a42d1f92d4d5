//! Raw deflate of one run of bytes by libdeflate, ended the way a zlib sync
//! flush ends a run: non-final blocks, then an empty stored block, so the
//! output stops on a byte boundary and the next run's blocks can follow it
//! in the same deflate stream.
//!
//! libdeflate only compresses whole buffers into complete streams, whose
//! last block is marked final. [`Deflater::run`] gives it [`SPAN`] bytes at
//! a time, which its fastest level writes as one block, and finds where
//! that block ends from its header alone (`single_block_end`); any other
//! stream it reads back whole (`last_block`: every header, code table and
//! symbol, without producing any output). It then clears the final block's
//! final bit and writes the empty stored block where it ends. A stream that
//! does not read back
//! exactly (a bad header, a code table with more codes than its lengths
//! allow, a symbol out of range, bytes after the final block) is an error,
//! never a guess.
//!
//! The level is part of kiln's format ([`crate::plan::FORMAT_VERSION`]):
//! libdeflate's output depends on its version (pinned by Cargo.lock) and
//! the level, not on the CPU (its SIMD code only clears and shifts the
//! match finder's tables) nor on the thread that runs it.

use std::io;

use libdeflater::{CompressionLvl, Compressor};

/// The bytes that end a gzip layer's deflate stream: an empty final block
/// with fixed codes (header bits 1, 01, then the end-of-block code 0000000).
pub const LAST_BLOCK: [u8; 2] = [0x03, 0x00];

/// The most bytes one libdeflate call is given. At level 1 libdeflate
/// (`deflate_compress_fastest`) writes a buffer of under 70,535 bytes as a
/// single block unless it finds over 8,192 matches in it, so the final block
/// of its output is nearly always its first, and `reopen` finds where it
/// ends from its header alone (`single_block_end`).
pub const SPAN: usize = 64 << 10;

/// A libdeflate compressor at a fixed level, kept for many runs.
pub struct Deflater {
    c: Compressor,
}

impl Deflater {
    /// A compressor at libdeflate `level`.
    pub fn new(level: i32) -> io::Result<Self> {
        let lvl = CompressionLvl::new(level)
            .map_err(|_| io::Error::other(format!("libdeflate has no level {level}")))?;
        Ok(Deflater {
            c: Compressor::new(lvl),
        })
    }

    /// Appends the raw deflate of `input` to `out` as non-final blocks
    /// ending on a byte boundary, [`SPAN`] bytes at a time (each span on its
    /// own: no match reaches back into the span before).
    pub fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        for span in input.chunks(SPAN) {
            let start = out.len();
            let bound = self.c.deflate_compress_bound(span.len());
            out.resize(start + bound, 0);
            let n = self
                .c
                .deflate_compress(span, &mut out[start..])
                .map_err(io::Error::other)?;
            out.truncate(start + n);
            reopen(out, start)?;
        }
        Ok(())
    }
}

/// Turns the complete deflate stream in `buf[start..]` into non-final blocks
/// ending on a byte boundary.
fn reopen(buf: &mut Vec<u8>, start: usize) -> io::Result<()> {
    let (header, end) = match single_block_end(&buf[start..]) {
        Some(end) => (0, end),
        None => last_block(&buf[start..])?,
    };
    buf[start + header / 8] &= !(1 << (header % 8));
    buf.truncate(start + end.div_ceil(8));
    let used = end % 8;
    if used != 0 {
        // Zero the padding after the final block's last bit.
        let last = buf.len() - 1;
        buf[last] &= (1u8 << used) - 1;
    }
    // An empty stored block: three zero header bits (not final, stored),
    // zero bits to the byte boundary, then LEN 0 and NLEN 0xffff.
    if used == 0 || used + 3 > 8 {
        buf.push(0);
    }
    buf.extend_from_slice(&[0, 0, 0xff, 0xff]);
    Ok(())
}

/// Where the block ends when `data` is a single final block with dynamic
/// codes, found from its header alone: the end is in the last byte, the
/// bits before it are the end-of-block code, and the bits after it are
/// libdeflate's zero padding. The true end always fits that description;
/// `None` unless exactly one place in the last byte does (the caller then
/// reads every block, `last_block`). It checks nothing else of the block,
/// so it is only for libdeflate's own output (the version Cargo.lock pins),
/// which zero-pads its last byte and writes nothing after the final block.
fn single_block_end(data: &[u8]) -> Option<usize> {
    if data.first()? & 0b111 != 0b101 {
        return None;
    }
    let mut bits = Bits::new(data);
    bits.refill().ok()?;
    bits.take(3);
    let mut lens = [0u8; 288 + 32];
    let (hlit, _) = dynamic_lengths(&mut bits, &mut lens).ok()?;
    let header_end = bits.pos();
    let lens = &lens[..hlit];
    let eob = lens[256];
    let mut count = [0u32; 16];
    for &l in lens {
        count[usize::from(l)] += 1;
    }
    count[0] = 0;
    let mut code = 0u32;
    for l in 1..=usize::from(eob) {
        code = (code + count[l - 1]) << 1;
    }
    code += lens[..256].iter().filter(|&&l| l == eob).count() as u32;
    let eob = u32::from(eob);
    let reversed = u64::from(code.reverse_bits() >> (32 - eob));
    let total = data.len() * 8;
    let mut found = None;
    for end in total.saturating_sub(7)..=total {
        if end < header_end + eob as usize {
            continue;
        }
        if bits_at(data, end, (total - end) as u32) == 0
            && bits_at(data, end - eob as usize, eob) == reversed
        {
            if found.is_some() {
                return None;
            }
            found = Some(end);
        }
    }
    found
}

/// The `n` (at most 32) bits of `data` from bit `pos`, least significant
/// first; zeros past the end.
fn bits_at(data: &[u8], pos: usize, n: u32) -> u64 {
    let mut word = [0u8; 8];
    for (i, b) in word.iter_mut().enumerate() {
        *b = data.get(pos / 8 + i).copied().unwrap_or(0);
    }
    (u64::from_le_bytes(word) >> (pos % 8)) & ((1u64 << n) - 1)
}

fn bad(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("libdeflate's output does not read back as deflate ({why})"),
    )
}

/// Reads back the complete deflate stream `data`: the bit offset of its final
/// block's header, and of the bit after that block's end-of-block code,
/// which must be in its last byte.
fn last_block(data: &[u8]) -> io::Result<(usize, usize)> {
    let mut bits = Bits::new(data);
    let mut litlen = Table::default();
    let mut dist = Table::default();
    let mut lens = [0u8; 288 + 32];
    loop {
        bits.refill()?;
        let header = bits.pos();
        let last = bits.take(1) == 1;
        match bits.take(2) {
            0 => bits.skip_stored()?,
            1 => {
                lens[..144].fill(8);
                lens[144..256].fill(9);
                lens[256..280].fill(7);
                lens[280..288].fill(8);
                litlen.build(&lens[..288], litlen_entry, INVALID)?;
                dist.build(&[5; 32], dist_entry, INVALID)?;
                symbols(&mut bits, &litlen, &dist)?;
            }
            2 => {
                let n = dynamic_lengths(&mut bits, &mut lens)?;
                litlen.build(&lens[..n.0], litlen_entry, INVALID)?;
                dist.build(&lens[n.0..n.0 + n.1], dist_entry, INVALID)?;
                symbols(&mut bits, &litlen, &dist)?;
            }
            _ => return Err(bad("a block of the reserved type 3")),
        }
        let end = bits.pos();
        if end > data.len() * 8 {
            return Err(bad("the stream stops inside a block"));
        }
        if last {
            if end.div_ceil(8) != data.len() {
                return Err(bad("bytes after the final block"));
            }
            return Ok((header, end));
        }
    }
}

/// Extra bits of the length codes 257..=285.
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// Extra bits of the distance codes 0..=29.
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
/// The order in which a dynamic block lists its code length code lengths.
const CL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// What a decoded symbol is, in a table entry's bits 5 and 6.
const SYMBOL: u8 = 0;
const LENGTH: u8 = 1 << 5;
const END: u8 = 2 << 5;
const INVALID: u8 = 3 << 5;
const KIND: u8 = 3 << 5;

/// A literal/length symbol's table entry: its kind, and the bits its code
/// (`len` long) and its extra bits take.
fn litlen_entry(sym: usize, len: u8) -> u8 {
    match sym {
        0..=255 => SYMBOL | len,
        256 => END | len,
        257..=285 => LENGTH | (len + LEN_EXTRA[sym - 257]),
        _ => INVALID,
    }
}

/// A distance symbol's table entry.
fn dist_entry(sym: usize, len: u8) -> u8 {
    match DIST_EXTRA.get(sym) {
        Some(&extra) => SYMBOL | (len + extra),
        None => INVALID,
    }
}

/// A code length symbol's table entry: the symbol above the code's length
/// (its extra bits are read apart); 0 is invalid.
fn cl_entry(sym: usize, len: u8) -> u16 {
    ((sym as u16) << 5) | u16::from(len)
}

/// Skips one block's symbols, up to and including its end-of-block code.
/// Only their bit lengths matter: a symbol and its extra bits are skipped
/// in one step, and a distance code is looked up after every symbol but
/// skipped only after a length, so that literals and lengths, which come
/// in no predictable order, take the same path. The tables' one-byte
/// entries keep both in the first-level cache.
fn symbols(bits: &mut Bits<'_>, litlen: &Table<u8>, dist: &Table<u8>) -> io::Result<()> {
    let mut bad_distance = 0;
    loop {
        // 56 bits hold a length code, its extra bits, a distance code and
        // its extra bits (at most 15 + 5 + 15 + 13).
        bits.refill()?;
        let e = litlen.get(bits.buf);
        bits.skip(e & 0x1f);
        if e & KIND >= END {
            if e & KIND == INVALID {
                return Err(bad("a literal/length code that is not in the table"));
            }
            if bad_distance != 0 {
                return Err(bad("a distance code that is not in the table"));
            }
            return Ok(());
        }
        let d = dist.get(bits.buf);
        // 1 after a length, 0 after a literal.
        let length = (e >> 5) & 1;
        bad_distance |= length & (d >> 6) & 1;
        bits.skip((d & 0x1f) * length);
    }
}

/// Reads a dynamic block's code lengths into `lens`: how many are the
/// literal/length code's, and how many the distance code's, which follow.
fn dynamic_lengths(bits: &mut Bits<'_>, lens: &mut [u8; 320]) -> io::Result<(usize, usize)> {
    let hlit = bits.take(5) as usize + 257;
    let hdist = bits.take(5) as usize + 1;
    let hclen = bits.take(4) as usize + 4;
    if hlit > 286 || hdist > 30 {
        return Err(bad("more codes than deflate has"));
    }
    let mut cl = [0u8; 19];
    for &i in &CL_ORDER[..hclen] {
        bits.refill()?;
        cl[i] = bits.take(3) as u8;
    }
    let mut cl_table = Table::default();
    cl_table.build(&cl, cl_entry, 0)?;
    let mut i = 0;
    while i < hlit + hdist {
        bits.refill()?;
        let e = cl_table.get(bits.buf);
        if e == 0 {
            return Err(bad("a code length code that is not in the table"));
        }
        bits.take(u32::from(e & 0x1f));
        let sym = e >> 5;
        let (value, repeat) = match sym {
            0..=15 => (sym as u8, 1),
            16 => {
                let prev = *lens[..i]
                    .last()
                    .ok_or_else(|| bad("a repeat with nothing before it"))?;
                (prev, 3 + bits.take(2) as usize)
            }
            17 => (0, 3 + bits.take(3) as usize),
            _ => (0, 11 + bits.take(7) as usize),
        };
        if i + repeat > hlit + hdist {
            return Err(bad("code lengths run past their count"));
        }
        lens[i..i + repeat].fill(value);
        i += repeat;
    }
    if lens[256] == 0 {
        return Err(bad("no end-of-block code"));
    }
    Ok((hlit, hdist))
}

/// A prefix code as a lookup table indexed by the next `max` bits of the
/// stream (deflate sends codes most significant bit first, so the table is
/// indexed by the bit-reversed code), holding what `entry` makes of each
/// symbol and its code's length, or `invalid` where no code starts with
/// those bits.
#[derive(Default)]
struct Table<T> {
    entries: Vec<T>,
    mask: u64,
}

impl<T: Copy> Table<T> {
    fn build(&mut self, lens: &[u8], entry: fn(usize, u8) -> T, invalid: T) -> io::Result<()> {
        let mut count = [0u16; 16];
        for &l in lens {
            count[usize::from(l)] += 1;
        }
        count[0] = 0;
        // Kraft: no length may have more codes than are left for it.
        let mut left: i32 = 1;
        for &c in &count[1..] {
            left = 2 * left - i32::from(c);
            if left < 0 {
                return Err(bad("a code table with more codes than its lengths allow"));
            }
        }
        let max = (1..16).rev().find(|&l| count[l] > 0).unwrap_or(0);
        let mut next = [0u32; 16];
        let mut code = 0u32;
        for l in 1..16 {
            code = (code + u32::from(count[l - 1])) << 1;
            next[l] = code;
        }
        self.mask = (1u64 << max) - 1;
        self.entries.clear();
        self.entries.resize(1 << max, invalid);
        for (sym, &l) in lens.iter().enumerate() {
            if l == 0 {
                continue;
            }
            let code = next[usize::from(l)];
            next[usize::from(l)] += 1;
            let reversed = code.reverse_bits() >> (32 - u32::from(l));
            let e = entry(sym, l);
            let mut i = reversed as usize;
            while i < self.entries.len() {
                self.entries[i] = e;
                i += 1 << l;
            }
        }
        Ok(())
    }

    /// The entry for the code at the start of `buf` (an empty code's table
    /// has one, invalid, entry).
    fn get(&self, buf: u64) -> T {
        self.entries[(buf & self.mask) as usize]
    }
}

/// Bits read least significant first. Past the end it reads zeros, up to a
/// bound; callers compare [`Bits::pos`] with the length.
struct Bits<'a> {
    data: &'a [u8],
    next: usize,
    buf: u64,
    have: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits {
            data,
            next: 0,
            buf: 0,
            have: 0,
        }
    }

    fn pos(&self) -> usize {
        self.next * 8 - self.have as usize
    }

    /// Fills the buffer to at least 56 bits.
    #[inline]
    fn refill(&mut self) -> io::Result<()> {
        if self.have >= 56 {
            return Ok(());
        }
        if let Some(word) = self.data.get(self.next..self.next + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            self.buf |= word << self.have;
            self.next += ((63 - self.have) / 8) as usize;
            self.have |= 56;
            return Ok(());
        }
        if self.next > self.data.len() + 8 {
            return Err(bad("the stream stops inside a block"));
        }
        while self.have <= 56 {
            let byte = self.data.get(self.next).copied().unwrap_or(0);
            self.buf |= u64::from(byte) << self.have;
            self.have += 8;
            self.next += 1;
        }
        Ok(())
    }

    /// Skips `n` bits (a table entry's length); the buffer holds them.
    fn skip(&mut self, n: u8) {
        self.buf >>= n;
        self.have -= u32::from(n);
    }

    /// The next `n` (at most 32) bits; the buffer must hold them.
    fn take(&mut self, n: u32) -> u64 {
        debug_assert!(n <= self.have);
        let v = self.buf & ((1u64 << n) - 1);
        self.buf >>= n;
        self.have -= n;
        v
    }

    /// Skips a stored block whose 3 header bits were just read.
    fn skip_stored(&mut self) -> io::Result<()> {
        let at = self.pos().div_ceil(8);
        let len = self
            .data
            .get(at..at + 4)
            .ok_or_else(|| bad("the stream stops inside a stored block's header"))?;
        let (n, nn) = (
            u16::from_le_bytes([len[0], len[1]]),
            u16::from_le_bytes([len[2], len[3]]),
        );
        if n != !nn {
            return Err(bad(
                "a stored block whose length and its complement disagree",
            ));
        }
        self.next = at + 4 + usize::from(n);
        self.buf = 0;
        self.have = 0;
        if self.next > self.data.len() {
            return Err(bad("the stream stops inside a stored block"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inflate(stream: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(stream)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    use crate::layer::tests::noise;

    /// Appends the raw deflate of `input` at `level` to `out`, as
    /// non-final blocks ending on a byte boundary.
    fn compress(input: &[u8], level: i32, out: &mut Vec<u8>) -> io::Result<()> {
        Deflater::new(level)?.run(input, out)
    }

    /// libdeflate's complete stream for `input` at `level`.
    fn whole(level: i32, input: &[u8]) -> Vec<u8> {
        let mut c = Compressor::new(CompressionLvl::new(level).unwrap());
        let mut out = vec![0; c.deflate_compress_bound(input.len())];
        let n = c.deflate_compress(input, &mut out).unwrap();
        out.truncate(n);
        out
    }

    /// Reads `stream`'s end both ways: whether its header alone told it
    /// (then the same end reading every block gives).
    fn ends_agree(stream: &[u8], what: &str) -> bool {
        let full = last_block(stream).unwrap();
        let fast = single_block_end(stream);
        if let Some(end) = fast {
            assert_eq!((0, end), full, "{what}");
        }
        fast.is_some()
    }

    fn text(n: usize, seed: usize) -> Vec<u8> {
        (seed..)
            .flat_map(|j| format!("line {j}: {}\n", j * 7919 % 1013).into_bytes())
            .take(n)
            .collect()
    }

    /// Runs ended by `compress` and joined, then closed by the final
    /// block, inflate to the runs joined, at every level and for every kind
    /// of block libdeflate writes (fixed, dynamic, stored).
    #[test]
    fn joined_runs_inflate_to_their_input() {
        let runs: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b"abcabcabcabcabcabcabc".to_vec(),
            text(300, 0),
            text(200_000, 5),
            noise(70_000, 3),
            vec![0; 100_000],
            [text(5000, 9), noise(5000, 1), vec![7; 5000]].concat(),
            (0..=255u8).collect(),
        ];
        for level in [1, 2, 4, 6, 12] {
            let mut all = Vec::new();
            let mut stream = Vec::new();
            for run in &runs {
                let before = stream.len();
                compress(run, level, &mut stream).unwrap();
                assert_eq!(
                    &stream[stream.len() - 4..],
                    &[0, 0, 0xff, 0xff],
                    "ends like a sync flush"
                );
                // On its own, the run is a valid (unfinished) stream.
                let mut alone = stream[before..].to_vec();
                alone.extend_from_slice(&LAST_BLOCK);
                assert_eq!(inflate(&alone), *run, "level {level}");
                all.extend_from_slice(run);
            }
            stream.extend_from_slice(&LAST_BLOCK);
            assert_eq!(inflate(&stream), all, "level {level}");
        }
    }

    #[test]
    fn the_final_block_is_found_at_every_bit_alignment() {
        // Different inputs end the final block at different bit offsets;
        // all eight must occur and all must join.
        let mut seen = [false; 8];
        for n in 1..400 {
            let run = text(n * 37, n);
            let (_, end) = last_block(&whole(2, &run)).unwrap();
            seen[end % 8] = true;
            let mut stream = Vec::new();
            compress(&run, 2, &mut stream).unwrap();
            compress(b"next", 2, &mut stream).unwrap();
            stream.extend_from_slice(&LAST_BLOCK);
            assert_eq!(inflate(&stream), [run, b"next".to_vec()].concat());
        }
        assert_eq!(seen, [true; 8], "every alignment was tried");
    }

    /// The header-only end agrees with reading every symbol, for every
    /// single-block span of a varied sample; and it is the common case.
    #[test]
    fn the_end_found_from_the_header_is_the_end_every_symbol_gives() {
        let sample = [
            text(400_000, 3),
            noise(30_000, 5),
            vec![0; 70_000],
            (0..200_000u32)
                .flat_map(|i| i.wrapping_mul(i).to_le_bytes())
                .collect(),
        ]
        .concat();
        let (mut fast, mut spans) = (0, 0);
        for size in [100, 1000, 4099, 20_000, SPAN] {
            for span in sample.chunks(size) {
                if ends_agree(&whole(1, span), &format!("span of {size}")) {
                    fast += usize::from(size >= 20_000);
                }
                spans += usize::from(size >= 20_000);
            }
        }
        // Small spans often get fixed codes, read in full; big ones almost
        // never miss.
        assert!(
            fast * 10 > spans * 9,
            "{fast} of {spans} big spans found from the header"
        );
    }

    /// Random mixes of noise, text, runs and small alphabets, cut into
    /// runs of random lengths, at levels 1 (one block per span, found from
    /// its header) and 2 (several blocks, read in full): the joined stream
    /// inflates to the input, and wherever the header alone finds an end,
    /// reading every symbol finds the same one.
    #[test]
    fn random_runs_join_and_both_readings_agree() {
        let mut rng = fastrand::Rng::with_seed(0x6b696c6e);
        for case in 0..60 {
            let mut input = Vec::new();
            while input.len() < rng.usize(1..300_000) {
                let n = rng.usize(1..40_000);
                match rng.u8(0..5) {
                    0 => input.extend(noise(n, rng.u64(..))),
                    1 => input.extend(text(n, rng.usize(..1000))),
                    2 => input.extend(std::iter::repeat_n(rng.u8(..), n)),
                    3 => {
                        let k = rng.u8(2..6);
                        input.extend((0..n).map(|_| rng.u8(..k)));
                    }
                    _ => {
                        let motif: Vec<u8> = (0..rng.usize(1..50)).map(|_| rng.u8(..)).collect();
                        input.extend(motif.iter().cycle().take(n));
                    }
                }
            }
            let level = if case % 3 == 2 { 2 } else { 1 };
            let mut d = Deflater::new(level).unwrap();
            let mut stream = Vec::new();
            let mut at = 0;
            while at < input.len() {
                let end = (at + rng.usize(1..200_000)).min(input.len());
                d.run(&input[at..end], &mut stream).unwrap();
                at = end;
            }
            stream.extend_from_slice(&LAST_BLOCK);
            assert_eq!(inflate(&stream), input, "case {case}");

            for span in input.chunks(SPAN) {
                ends_agree(&whole(level, span), &format!("case {case}"));
            }
        }
    }

    /// 4-byte words drawn from 16 (`seed` picks them and their order): at
    /// libdeflate's fastest level nearly every word is a match, over 8,192
    /// in a 64 KiB span, which then comes out as several blocks.
    fn words(n: usize, seed: u64) -> Vec<u8> {
        let vocabulary = noise(64, seed);
        let picks = noise(n / 4 + 1, seed + 1);
        picks
            .iter()
            .flat_map(|&p| &vocabulary[usize::from(p % 16) * 4..][..4])
            .copied()
            .take(n)
            .collect()
    }

    /// Spans of many short matches are several blocks: their end is read
    /// back in full, and they join like any other.
    #[test]
    fn spans_of_several_blocks_are_read_back_and_join() {
        let input = words(5 * SPAN, 3);
        for span in input.chunks(SPAN) {
            let stream = whole(1, span);
            assert_eq!(stream[0] & 1, 0, "the first block is not the final one");
            assert!(!ends_agree(&stream, "several blocks"));
        }
        let mut stream = Vec::new();
        compress(&input, 1, &mut stream).unwrap();
        stream.extend_from_slice(&LAST_BLOCK);
        assert_eq!(inflate(&stream), input);
    }

    #[test]
    fn streams_that_do_not_read_back_are_refused() {
        let good = whole(2, &text(50_000, 1));
        let len = good.len();
        assert!(last_block(&good).is_ok());
        // Cut short, or followed by more bytes.
        assert!(last_block(&good[..len - 3]).is_err());
        assert!(last_block(&[good.clone(), vec![0]].concat()).is_err());
        // The reserved block type, and a stored block whose lengths disagree.
        assert!(last_block(&[0b111]).is_err());
        assert!(last_block(&[0b001, 5, 0, 0, 0]).is_err());
        // No final block at all.
        assert!(last_block(&[0, 0, 0, 0xff, 0xff]).is_err());
        // Flipped bits anywhere are an error or another valid stream,
        // never a panic.
        for i in 0..good.len().min(2000) {
            let mut bent = good.clone();
            bent[i] ^= 0x10;
            let _ = last_block(&bent);
        }
    }
}
