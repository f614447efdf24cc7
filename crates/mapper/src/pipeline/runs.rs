//! Sorted runs of fixed-size entries on disk, found by key with a Bloom filter and the first
//! key of each block in memory.
//!
//! Two things use them: the run's fates of the ids it writes ([`super::fates`], temporary runs
//! removed when dropped) and the lake's index of where each id's row is ([`super::index`],
//! durable runs that carry their fences and filter in a footer and outlive the run).
//!
//! A run is entries sorted by key, no key twice, in blocks of [`BLOCK`] entries, each block
//! followed by an XXH3-64 checksum of its bytes. A lookup asks the Bloom filter first (one
//! 64-byte block of it, about 1.5 bytes a key in memory), so a key the run does not hold is
//! almost never read from disk; otherwise it reads the one block its key falls in and checks
//! its sum. A durable run's footer (fences, filter and counts) has a checksum of its own. An
//! entry that changed on disk would send a run to the wrong row — retiring another resource's
//! row, or missing the old one and keeping two — so a damaged block or footer is an error
//! ([`LakeError::KeyIndex`]) and never an answer; the pipeline then rebuilds the type's index
//! from its table.
//!
//! Runs written before checksums (`FLKEYS01`: 128-entry blocks, no sums) are still read.

use std::fs::File;
use std::hash::Hasher as _;
use std::io::{BufReader, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use twox_hash::XxHash3_64;

use super::keys::Key;
use crate::lake::LakeError;

/// Entries per block of a run: a lookup reads one block (3 KiB of index entries).
const BLOCK: usize = 64;
/// Bytes of a block's checksum, after its entries.
const SUM: usize = 8;
/// Bloom filter bits per key (six probes in one 512-bit block: about 1 % false positives).
const BLOOM_BITS_PER_KEY: usize = 12;
/// The last bytes of a durable run: this tag; the entry count, the fence count and the Bloom
/// block count as little-endian `u64`s; then the XXH3-64 of the fences, the filter and those
/// three counts.
const MAGIC: &[u8; 8] = b"FLKEYS02";
const FOOTER: usize = 40;
/// The first format: the tag and the three counts, 128-entry blocks, no checksums.
const MAGIC_V1: &[u8; 8] = b"FLKEYS01";
const FOOTER_V1: usize = 32;
const BLOCK_V1: usize = 128;

/// An entry of a run: a key and a fixed-size value.
pub(super) trait Entry: Copy {
    /// Bytes of an encoded entry.
    const SIZE: usize;
    /// The entry's key.
    fn key(&self) -> Key;
    /// Write the entry into `out` (`SIZE` bytes).
    fn encode(&self, out: &mut [u8]);
    /// Read an entry from `b` (`SIZE` bytes).
    fn decode(b: &[u8]) -> Self;
}

/// Little-endian `u64` at `at` of `b`.
pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Little-endian `u32` at `at` of `b`.
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LakeError + '_ {
    move |source| LakeError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn damaged(path: &Path, why: &str) -> LakeError {
    LakeError::KeyIndex {
        path: path.display().to_string(),
        message: why.to_string(),
    }
}

/// Check a block read from disk: its entries' `bytes`, then (when `summed`) their checksum.
fn check_block(buf: &[u8], bytes: usize, summed: bool, path: &Path) -> Result<(), LakeError> {
    if summed && XxHash3_64::oneshot(&buf[..bytes]) != u64_at(buf, bytes) {
        return Err(damaged(path, "a block does not match its checksum"));
    }
    Ok(())
}

/// The checksum of a durable run's fences and filter (`tail`) and its counts.
fn footer_sum(tail: &[u8], counts: &[u8]) -> u64 {
    let mut h = XxHash3_64::default();
    h.write(tail);
    h.write(counts);
    h.finish()
}

/// A blocked Bloom filter over keys that already are uniform hashes.
pub(super) struct Bloom {
    blocks: Vec<[u64; 8]>,
}

impl Bloom {
    pub(super) fn new(keys: usize) -> Self {
        let n = (keys * BLOOM_BITS_PER_KEY).div_ceil(512).max(1);
        Self {
            blocks: vec![[0; 8]; n],
        }
    }

    /// The block of a key (from its high half) and its six bits (nine bits each of the low).
    fn probes(&self, k: Key) -> (usize, impl Iterator<Item = usize>) {
        let (lo, hi) = k.halves();
        let block = ((u128::from(hi) * self.blocks.len() as u128) >> 64) as usize;
        (block, (0..6).map(move |i| ((lo >> (9 * i)) & 511) as usize))
    }

    pub(super) fn add(&mut self, k: Key) {
        let (b, bits) = self.probes(k);
        let block = &mut self.blocks[b];
        for bit in bits {
            block[bit / 64] |= 1 << (bit % 64);
        }
    }

    pub(super) fn may_hold(&self, k: Key) -> bool {
        let (b, mut bits) = self.probes(k);
        let block = &self.blocks[b];
        bits.all(|bit| block[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

/// Entries sorted by key in a file, with the first key of each block and a Bloom filter in
/// memory.
pub(super) struct Run<E> {
    path: PathBuf,
    file: File,
    len: usize,
    fences: Vec<u128>,
    bloom: Bloom,
    /// Entries per block.
    block: usize,
    /// Whether each block ends with its checksum (all but `FLKEYS01` runs).
    summed: bool,
    /// Removed when dropped.
    temporary: bool,
    entry: PhantomData<E>,
}

impl<E: Entry> Run<E> {
    /// Write `entries` (sorted by key, no key twice; about `len` of them) to `path`. A
    /// `durable` run gets its fences and filter in a footer and is synced to disk, and stays
    /// when dropped; a temporary one is removed when dropped.
    pub(super) fn write(
        path: PathBuf,
        len: usize,
        entries: impl Iterator<Item = Result<E, LakeError>>,
        durable: bool,
    ) -> Result<Self, LakeError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut out = BufWriter::with_capacity(1 << 16, &file);
        let mut bloom = Bloom::new(len);
        let mut fences = Vec::with_capacity(len.div_ceil(BLOCK));
        let mut block = Vec::with_capacity(BLOCK * E::SIZE + SUM);
        let mut end_block = |block: &mut Vec<u8>| {
            let sum = XxHash3_64::oneshot(block);
            block.extend_from_slice(&sum.to_le_bytes());
            let written = out.write_all(block);
            block.clear();
            written
        };
        let mut n = 0;
        for e in entries {
            let e = e?;
            let k = e.key();
            if n % BLOCK == 0 {
                if n > 0 {
                    end_block(&mut block).map_err(io(&path))?;
                }
                fences.push(k.ordinal());
            }
            bloom.add(k);
            let at = block.len();
            block.resize(at + E::SIZE, 0);
            e.encode(&mut block[at..]);
            n += 1;
        }
        if !block.is_empty() {
            end_block(&mut block).map_err(io(&path))?;
        }
        if durable {
            let mut tail = Vec::with_capacity(fences.len() * 16 + bloom.blocks.len() * 64);
            for f in &fences {
                tail.extend_from_slice(&f.to_le_bytes());
            }
            for w in bloom.blocks.iter().flatten() {
                tail.extend_from_slice(&w.to_le_bytes());
            }
            let counts: Vec<u8> = [n, fences.len(), bloom.blocks.len()]
                .iter()
                .flat_map(|v| (*v as u64).to_le_bytes())
                .collect();
            out.write_all(&tail).map_err(io(&path))?;
            out.write_all(MAGIC).map_err(io(&path))?;
            out.write_all(&counts).map_err(io(&path))?;
            out.write_all(&footer_sum(&tail, &counts).to_le_bytes())
                .map_err(io(&path))?;
        }
        out.flush().map_err(io(&path))?;
        drop(out);
        if durable {
            file.sync_all().map_err(io(&path))?;
        }
        Ok(Self {
            path,
            file,
            len: n,
            fences,
            bloom,
            block: BLOCK,
            summed: true,
            temporary: !durable,
            entry: PhantomData,
        })
    }

    /// Open a durable run: read its footer, fences and filter, and check their sum.
    ///
    /// # Errors
    /// [`LakeError::KeyIndex`] when the file is not a whole run or its footer is damaged.
    pub(super) fn open(path: PathBuf) -> Result<Self, LakeError> {
        let file = File::open(&path).map_err(io(&path))?;
        let size = file.metadata().map_err(io(&path))?.len() as usize;
        let mut last = [0u8; FOOTER];
        let have = size.min(FOOTER);
        file.read_exact_at(&mut last[..have], (size - have) as u64)
            .map_err(io(&path))?;
        let last = &last[..have];
        let (footer, block, summed) = if last.starts_with(MAGIC) && have == FOOTER {
            (last, BLOCK, true)
        } else if have >= FOOTER_V1 && last[have - FOOTER_V1..].starts_with(MAGIC_V1) {
            (&last[have - FOOTER_V1..], BLOCK_V1, false)
        } else {
            return Err(damaged(&path, "no footer"));
        };
        let [len, nf, nb] = [8, 16, 24].map(|at| u64_at(footer, at) as usize);
        let sums = if summed { nf.checked_mul(SUM) } else { Some(0) };
        let body = len.checked_mul(E::SIZE).zip(sums).map(|(e, s)| e + s);
        let expected = body
            .and_then(|v| v.checked_add(nf.checked_mul(16)?))
            .and_then(|v| v.checked_add(nb.checked_mul(64)?))
            .and_then(|v| v.checked_add(footer.len()));
        let (Some(body), true) = (body, expected == Some(size)) else {
            return Err(damaged(&path, "sizes do not add up"));
        };
        if nf != len.div_ceil(block) || nb == 0 {
            return Err(damaged(&path, "sizes do not add up"));
        }
        let mut tail = vec![0u8; nf * 16 + nb * 64];
        file.read_exact_at(&mut tail, body as u64)
            .map_err(io(&path))?;
        if summed && footer_sum(&tail, &footer[8..32]) != u64_at(footer, 32) {
            return Err(damaged(&path, "the footer does not match its checksum"));
        }
        let (f, b) = tail.split_at(nf * 16);
        let fences = f
            .chunks_exact(16)
            .map(|c| u128::from(u64_at(c, 0)) | (u128::from(u64_at(c, 8)) << 64))
            .collect();
        let blocks = b
            .chunks_exact(64)
            .map(|c| std::array::from_fn(|i| u64_at(c, i * 8)))
            .collect();
        Ok(Self {
            path,
            file,
            len,
            fences,
            bloom: Bloom { blocks },
            block,
            summed,
            temporary: false,
            entry: PhantomData,
        })
    }

    /// Bytes a full block takes on disk, its checksum included.
    fn stride(&self) -> usize {
        self.block * E::SIZE + if self.summed { SUM } else { 0 }
    }

    /// Entries in the run.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The run's entry for `k`.
    ///
    /// # Errors
    /// When the block cannot be read, or [`LakeError::KeyIndex`] when it is damaged.
    pub(super) fn get(&self, k: Key) -> Result<Option<E>, LakeError> {
        if !self.bloom.may_hold(k) {
            return Ok(None);
        }
        let target = k.ordinal();
        let block = match self.fences.partition_point(|&f| f <= target) {
            0 => return Ok(None),
            b => b - 1,
        };
        let count = self.block.min(self.len - block * self.block);
        let bytes = count * E::SIZE;
        let mut buf = vec![0u8; bytes + if self.summed { SUM } else { 0 }];
        self.file
            .read_exact_at(&mut buf, (block * self.stride()) as u64)
            .map_err(io(&self.path))?;
        check_block(&buf, bytes, self.summed, &self.path)?;
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let e = E::decode(&buf[mid * E::SIZE..(mid + 1) * E::SIZE]);
            match e.key().ordinal().cmp(&target) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(e)),
            }
        }
        Ok(None)
    }

    /// Every entry, in key order; each block's checksum is checked as it is read (the items
    /// end at the first error).
    pub(super) fn entries(
        &self,
    ) -> Result<impl Iterator<Item = Result<E, LakeError>> + use<'_, E>, LakeError> {
        let file = File::open(&self.path).map_err(io(&self.path))?;
        let mut r = BufReader::with_capacity(1 << 16, file);
        let (path, len, block, summed) = (&self.path, self.len, self.block, self.summed);
        let mut buf = Vec::with_capacity(self.stride());
        let (mut done, mut at, mut held) = (0, 0, 0);
        Ok(std::iter::from_fn(move || {
            if done == len {
                return None;
            }
            if at == held {
                held = block.min(len - done);
                buf.resize(held * E::SIZE + if summed { SUM } else { 0 }, 0);
                let read = r.read_exact(&mut buf).map_err(io(path));
                if let Err(e) = read.and_then(|()| check_block(&buf, held * E::SIZE, summed, path))
                {
                    done = len;
                    return Some(Err(e));
                }
                at = 0;
            }
            let e = E::decode(&buf[at * E::SIZE..(at + 1) * E::SIZE]);
            at += 1;
            done += 1;
            Some(Ok(e))
        }))
    }
}

impl<E> Drop for Run<E> {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The entries of `runs` (oldest first) in key order, each key's from the newest run that
/// holds it.
///
/// # Errors
/// When a run cannot be opened (read errors come as items).
pub(super) fn newest_of<E: Entry>(
    runs: &[Run<E>],
) -> Result<impl Iterator<Item = Result<E, LakeError>> + '_, LakeError> {
    let mut sources = Vec::with_capacity(runs.len());
    for r in runs {
        sources.push(r.entries()?.peekable());
    }
    Ok(std::iter::from_fn(move || next_newest(&mut sources)))
}

/// The smallest key at the head of the sources, from the newest (last) source that holds it;
/// the older sources' entries of that key are skipped.
fn next_newest<E, I>(sources: &mut [std::iter::Peekable<I>]) -> Option<Result<E, LakeError>>
where
    E: Entry,
    I: Iterator<Item = Result<E, LakeError>>,
{
    let mut least: Option<u128> = None;
    for s in sources.iter_mut() {
        match s.peek() {
            Some(Ok(e)) => {
                let k = e.key().ordinal();
                if least.is_none_or(|l| k < l) {
                    least = Some(k);
                }
            }
            Some(Err(_)) => return s.next(),
            None => {}
        }
    }
    let least = least?;
    let mut newest = None;
    for s in sources.iter_mut() {
        if let Some(Ok(e)) = s.peek() {
            if e.key().ordinal() == least {
                newest = s.next();
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        Key::of(&format!("id-{i}"))
    }

    /// The fates' entries ([`super::super::fates`]) serve as the entry type.
    type E = (Key, super::super::Fate);

    fn entry(i: u64) -> E {
        let fate = super::super::Fate {
            generation: i as u32,
            index: (i * 3) as u32,
        };
        (key(i), fate)
    }

    /// The entries of keys `0..n`, in key order.
    fn sorted(n: u64) -> Vec<E> {
        let mut entries: Vec<E> = (0..n).map(entry).collect();
        entries.sort_by_key(|e| e.0.ordinal());
        entries
    }

    /// A durable run of `entries` written (and closed) at `dir/r.keys`.
    fn durable(dir: &Path, entries: &[E]) -> PathBuf {
        let path = dir.join("r.keys");
        let n = entries.len();
        drop(Run::write(path.clone(), n, entries.iter().copied().map(Ok), true).unwrap());
        path
    }

    #[test]
    fn bloom_filters_hold_every_key_and_few_others() {
        let mut b = Bloom::new(10_000);
        for i in 0..10_000 {
            b.add(key(i));
        }
        assert!((0..10_000).all(|i| b.may_hold(key(i))));
        let false_hits = (10_000..110_000).filter(|&i| b.may_hold(key(i))).count();
        assert!(
            false_hits < 2_000,
            "{false_hits} false positives in 100,000"
        );
    }

    /// A durable run reopened answers as the run that wrote it; a damaged one is refused.
    #[test]
    fn durable_runs_reopen_with_their_fences_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let entries = sorted(1000);
        let path = durable(dir.path(), &entries);
        let run = Run::<E>::open(path.clone()).unwrap();
        assert_eq!(run.len(), 1000);
        for i in 0..1200 {
            let want = (i < 1000).then(|| entry(i));
            assert_eq!(run.get(key(i)).unwrap(), want, "key {i}");
        }
        let all: Vec<E> = run.entries().unwrap().map(Result::unwrap).collect();
        assert_eq!(all, entries);
        drop(run);
        assert!(path.exists(), "a durable run stays");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(Run::<E>::open(path.clone()).is_err());
        std::fs::write(&path, b"").unwrap();
        assert!(Run::<E>::open(path).is_err());
    }

    fn is_damaged<T>(r: Result<T, LakeError>) -> bool {
        matches!(r, Err(LakeError::KeyIndex { .. }))
    }

    /// One changed byte anywhere in a durable run is found: in an entry (by the lookups and the
    /// full read of that block, which give no answer from it), in the fences, the filter or
    /// the counts (by `open`).
    #[test]
    fn a_changed_byte_is_an_error_not_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let entries = sorted(1000);
        let path = durable(dir.path(), &entries);
        let clean = std::fs::read(&path).unwrap();
        let stride = BLOCK * 24 + SUM;
        // Byte 5 of the entry at index 3 of block 2: its key's low half.
        let hit = 2 * stride + 3 * 24 + 5;
        let mut bytes = clean.clone();
        bytes[hit] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let run = Run::<E>::open(path.clone()).unwrap();
        for (i, e) in entries.iter().enumerate() {
            let got = run.get(e.0);
            if i / BLOCK == 2 {
                assert!(is_damaged(got), "entry {i} of the damaged block");
            } else {
                assert_eq!(got.unwrap(), Some(*e), "entry {i} of a sound block");
            }
        }
        let read: Vec<_> = run.entries().unwrap().collect();
        assert_eq!(
            read.len(),
            2 * BLOCK + 1,
            "the entries end at the damaged block"
        );
        assert!(is_damaged(read.into_iter().last().unwrap()));
        drop(run);
        let body = 1000 * 24 + 1000usize.div_ceil(BLOCK) * SUM;
        for (what, at) in [
            ("a block's checksum", stride - 1),
            ("a fence", body + 20),
            ("the filter", clean.len() - FOOTER - 70),
            ("the entry count", clean.len() - FOOTER + 8),
            ("the footer's checksum", clean.len() - 1),
        ] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x01;
            std::fs::write(&path, &bytes).unwrap();
            let found = match Run::<E>::open(path.clone()) {
                Err(e) => matches!(e, LakeError::KeyIndex { .. }),
                Ok(run) => run.entries().unwrap().any(is_damaged),
            };
            assert!(found, "a changed byte in {what} went unnoticed");
        }
    }

    /// A run written before checksums (`FLKEYS01`) is still read.
    #[test]
    fn runs_of_the_first_format_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let entries = sorted(300);
        let mut bloom = Bloom::new(300);
        let mut bytes = Vec::new();
        let mut fences = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if i % BLOCK_V1 == 0 {
                fences.push(e.0.ordinal());
            }
            bloom.add(e.0);
            let mut b = [0u8; 24];
            e.encode(&mut b);
            bytes.extend_from_slice(&b);
        }
        for f in &fences {
            bytes.extend_from_slice(&f.to_le_bytes());
        }
        for w in bloom.blocks.iter().flatten() {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        bytes.extend_from_slice(MAGIC_V1);
        for v in [300, fences.len(), bloom.blocks.len()] {
            bytes.extend_from_slice(&(v as u64).to_le_bytes());
        }
        let path = dir.path().join("old.keys");
        std::fs::write(&path, &bytes).unwrap();
        let run = Run::<E>::open(path).unwrap();
        for e in &entries {
            assert_eq!(run.get(e.0).unwrap(), Some(*e));
        }
        assert_eq!(run.get(key(5000)).unwrap(), None);
        let all: Vec<E> = run.entries().unwrap().map(Result::unwrap).collect();
        assert_eq!(all, entries);
    }
}
