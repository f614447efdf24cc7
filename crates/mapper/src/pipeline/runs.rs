//! Sorted runs of fixed-size entries on disk, found by key with a Bloom filter and the first
//! key of each block in memory.
//!
//! Two things use them: the run's fates of the ids it writes ([`super::fates`], temporary runs
//! removed when dropped) and the lake's index of where each id's row is ([`super::index`],
//! durable runs that carry their fences and filter in a footer and outlive the run).
//!
//! A run is entries sorted by key, no key twice, in blocks of [`BLOCK`] entries. A lookup asks
//! the Bloom filter first (one 64-byte block of it, about 1.5 bytes a key in memory), so a key
//! the run does not hold is almost never read from disk; otherwise it reads the one block its
//! key falls in.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::keys::Key;
use crate::lake::LakeError;

/// Entries per block of a run: a lookup reads one block.
const BLOCK: usize = 128;
/// Bloom filter bits per key (six probes in one 512-bit block: about 1 % false positives).
const BLOOM_BITS_PER_KEY: usize = 12;
/// The last bytes of a durable run: this tag, then the entry count, the fence count and the
/// Bloom block count as little-endian `u64`s.
const MAGIC: &[u8; 8] = b"FLKEYS01";
const FOOTER: usize = 32;

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

fn corrupt(path: &Path, why: &str) -> LakeError {
    LakeError::Parquet {
        path: path.display().to_string(),
        message: format!("key index: {why}"),
    }
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
        let mut buf = vec![0u8; E::SIZE];
        let mut n = 0;
        for e in entries {
            let e = e?;
            let k = e.key();
            if n % BLOCK == 0 {
                fences.push(k.ordinal());
            }
            bloom.add(k);
            e.encode(&mut buf);
            out.write_all(&buf).map_err(io(&path))?;
            n += 1;
        }
        if durable {
            for f in &fences {
                out.write_all(&f.to_le_bytes()).map_err(io(&path))?;
            }
            for b in &bloom.blocks {
                for w in b {
                    out.write_all(&w.to_le_bytes()).map_err(io(&path))?;
                }
            }
            out.write_all(MAGIC).map_err(io(&path))?;
            for v in [n, fences.len(), bloom.blocks.len()] {
                out.write_all(&(v as u64).to_le_bytes())
                    .map_err(io(&path))?;
            }
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
            temporary: !durable,
            entry: PhantomData,
        })
    }

    /// Open a durable run: read its footer, fences and filter.
    pub(super) fn open(path: PathBuf) -> Result<Self, LakeError> {
        let file = File::open(&path).map_err(io(&path))?;
        let size = file.metadata().map_err(io(&path))?.len() as usize;
        if size < FOOTER {
            return Err(corrupt(&path, "shorter than its footer"));
        }
        let mut footer = [0u8; FOOTER];
        file.read_exact_at(&mut footer, (size - FOOTER) as u64)
            .map_err(io(&path))?;
        if &footer[..8] != MAGIC {
            return Err(corrupt(&path, "no footer"));
        }
        let [len, nf, nb] = [8, 16, 24].map(|at| u64_at(&footer, at) as usize);
        let expected = len
            .checked_mul(E::SIZE)
            .and_then(|v| v.checked_add(nf.checked_mul(16)?))
            .and_then(|v| v.checked_add(nb.checked_mul(64)?))
            .and_then(|v| v.checked_add(FOOTER));
        if expected != Some(size) || nf != len.div_ceil(BLOCK) || nb == 0 {
            return Err(corrupt(&path, "sizes do not add up"));
        }
        let mut tail = vec![0u8; nf * 16 + nb * 64];
        file.read_exact_at(&mut tail, (len * E::SIZE) as u64)
            .map_err(io(&path))?;
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
            temporary: false,
            entry: PhantomData,
        })
    }

    /// Entries in the run.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The run's entry for `k`.
    pub(super) fn get(&self, k: Key) -> Result<Option<E>, LakeError> {
        if !self.bloom.may_hold(k) {
            return Ok(None);
        }
        let target = k.ordinal();
        let block = match self.fences.partition_point(|&f| f <= target) {
            0 => return Ok(None),
            b => b - 1,
        };
        let first = block * BLOCK;
        let count = BLOCK.min(self.len - first);
        let mut buf = vec![0u8; count * E::SIZE];
        self.file
            .read_exact_at(&mut buf, (first * E::SIZE) as u64)
            .map_err(io(&self.path))?;
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

    /// Every entry, in key order.
    pub(super) fn entries(
        &self,
    ) -> Result<impl Iterator<Item = Result<E, LakeError>> + use<'_, E>, LakeError> {
        let file = File::open(&self.path).map_err(io(&self.path))?;
        let mut r = BufReader::with_capacity(1 << 16, file);
        let path = &self.path;
        let mut buf = vec![0u8; E::SIZE];
        Ok((0..self.len).map(move |_| {
            r.read_exact(&mut buf).map_err(io(path))?;
            Ok(E::decode(&buf))
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
        let mut entries: Vec<E> = (0..1000).map(entry).collect();
        entries.sort_by_key(|e| e.0.ordinal());
        let path = dir.path().join("r.keys");
        let written =
            Run::write(path.clone(), 1000, entries.iter().copied().map(Ok), true).unwrap();
        drop(written);
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
}
