//! The run's fate of every id it writes, in memory that does not grow with the input.
//!
//! A run must know, for each id it meets, whether it already wrote a row for it (a later record
//! replaces it, a side product is not written twice). An 837 whose claims each bring a new
//! member and provider meets four new ids per claim, so an in-memory map of them grows with the
//! file (7.6 million keys, about 300 MiB, for 1.89 million claims). [`Fates`] keeps the most
//! recent [`Fates::new`]`(.., limit)` keys of a type in a [`KeyMap`] and writes older ones to
//! temporary sorted runs on disk ([`super::runs`]): 24 bytes an entry (key, fate), read back
//! one block of 64 entries at a time. A lookup that misses the map asks each run's Bloom filter first,
//! so a key that no run holds is almost never read from disk. Runs are merged into one when
//! there are more than [`MAX_RUNS`], so a lookup asks only a few.
//!
//! The newest value of a key wins: the map over the runs, a newer run over an older one. A key
//! removed while a run may hold it is shadowed by a tombstone.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::keys::{Key, KeyMap};
use super::runs::{io, newest_of, u32_at, u64_at, Entry, Run};
use super::Fate;
use crate::lake::LakeError;

/// More runs than this are merged into one.
pub(super) const MAX_RUNS: usize = 4;
/// Keys a type keeps in memory before the older ones go to a run on disk.
pub(super) const MEMORY_KEYS: usize = 1 << 18;

/// A removed key, shadowing older runs.
const GONE: Fate = Fate {
    generation: u32::MAX,
    index: u32::MAX,
};

/// An entry of a run: the key (two little-endian `u64`s) and the fate (two `u32`s).
impl Entry for (Key, Fate) {
    const SIZE: usize = 24;

    fn key(&self) -> Key {
        self.0
    }

    fn encode(&self, out: &mut [u8]) {
        let (lo, hi) = self.0.halves();
        out[..8].copy_from_slice(&lo.to_le_bytes());
        out[8..16].copy_from_slice(&hi.to_le_bytes());
        out[16..20].copy_from_slice(&self.1.generation.to_le_bytes());
        out[20..24].copy_from_slice(&self.1.index.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Self {
        let key = Key::from_halves(u64_at(b, 0), u64_at(b, 8));
        let fate = Fate {
            generation: u32_at(b, 16),
            index: u32_at(b, 20),
        };
        (key, fate)
    }
}

/// What a run decided for each id of one resource type (see the module doc).
pub(super) struct Fates {
    mem: KeyMap<Fate>,
    runs: Vec<Run<(Key, Fate)>>,
    dir: PathBuf,
    name: String,
    seq: u32,
    limit: usize,
}

impl Fates {
    /// An empty set whose runs go to `dir` (created when the first run is written), named
    /// after `name`, keeping at most `limit` keys in memory.
    pub(super) fn new(dir: &Path, name: &str, limit: usize) -> Self {
        Self {
            mem: KeyMap::default(),
            runs: Vec::new(),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            seq: 0,
            limit: limit.max(1),
        }
    }

    /// The fate of `k`.
    ///
    /// # Errors
    /// When a run cannot be read.
    pub(super) fn get(&self, k: &Key) -> Result<Option<Fate>, LakeError> {
        if let Some(&f) = self.mem.get(k) {
            return Ok((f != GONE).then_some(f));
        }
        for run in self.runs.iter().rev() {
            if let Some((_, f)) = run.get(*k)? {
                return Ok((f != GONE).then_some(f));
            }
        }
        Ok(None)
    }

    /// Whether the run met no id of this type.
    pub(super) fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.runs.is_empty()
    }

    /// Set the fate of `k`, writing the keys in memory to a run when they reach the limit.
    ///
    /// # Errors
    /// When a run cannot be written.
    pub(super) fn insert(&mut self, k: Key, f: Fate) -> Result<(), LakeError> {
        self.mem.insert(k, f);
        if self.mem.len() >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    /// Forget `k`.
    ///
    /// # Errors
    /// When a run cannot be written.
    pub(super) fn remove(&mut self, k: &Key) -> Result<(), LakeError> {
        if self.runs.is_empty() {
            self.mem.remove(k);
            Ok(())
        } else {
            self.insert(*k, GONE)
        }
    }

    fn next_path(&mut self) -> Result<PathBuf, LakeError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        self.seq += 1;
        Ok(self.dir.join(format!("{}-{:04}.keys", self.name, self.seq)))
    }

    /// Write the keys in memory to a new run (merging the runs when there are too many).
    fn spill(&mut self) -> Result<(), LakeError> {
        if self.mem.is_empty() {
            return Ok(());
        }
        let mut entries: Vec<(Key, Fate)> = self.mem.iter().map(|(k, f)| (*k, *f)).collect();
        entries.sort_unstable_by_key(|(k, _)| k.ordinal());
        let path = self.next_path()?;
        let run = Run::write(path, entries.len(), entries.into_iter().map(Ok), false)?;
        self.runs.push(run);
        // The tables keep their room for the next keys.
        self.mem.clear();
        if self.runs.len() > MAX_RUNS {
            self.merge()?;
        }
        Ok(())
    }

    /// Merge all runs into one; tombstones go (no older run is left for them to shadow).
    fn merge(&mut self) -> Result<(), LakeError> {
        let len = self.runs.iter().map(Run::len).sum();
        let path = self.next_path()?;
        let merged = newest_of(&self.runs)?.filter(|e| !matches!(e, Ok((_, f)) if *f == GONE));
        let merged = Run::write(path, len, merged, false)?;
        self.runs.clear();
        self.runs.push(merged);
        Ok(())
    }

    /// How many runs are on disk (for tests).
    #[cfg(test)]
    fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// Lists of numbers, one per row of each buffer a type flushed (where the row went after
/// sorting, the length of a side product's description): kept in memory until a type's lists
/// hold [`Fates::new`]'s limit of numbers, then appended to a file on disk and read back one
/// number at a time (only when a later record replaces a row already written).
pub(super) struct Lists {
    path: PathBuf,
    file: Option<File>,
    end: u64,
    in_memory: usize,
    limit: usize,
}

/// One list of [`Lists`].
pub(super) enum List {
    /// Held in memory.
    Memory(Vec<u32>),
    /// `len` little-endian `u32`s at `offset` of the file.
    Disk { offset: u64, len: u32 },
}

impl Lists {
    /// No lists yet; past `limit` numbers in memory they go to a file in `dir` named after
    /// `name`.
    pub(super) fn new(dir: &Path, name: &str, limit: usize) -> Self {
        Self {
            path: dir.join(format!("{name}.lists")),
            file: None,
            end: 0,
            in_memory: 0,
            limit,
        }
    }

    /// Keep a list.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub(super) fn keep(&mut self, list: Vec<u32>) -> Result<List, LakeError> {
        if self.in_memory + list.len() <= self.limit {
            self.in_memory += list.len();
            return Ok(List::Memory(list));
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                }
                let f = File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&self.path)
                    .map_err(io(&self.path))?;
                self.file.insert(f)
            }
        };
        let bytes: Vec<u8> = list.iter().flat_map(|v| v.to_le_bytes()).collect();
        file.write_all_at(&bytes, self.end)
            .map_err(io(&self.path))?;
        let offset = self.end;
        self.end += bytes.len() as u64;
        Ok(List::Disk {
            offset,
            len: list.len() as u32,
        })
    }

    /// The `i`th number of a list.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub(super) fn get(&self, list: &List, i: u32) -> Result<Option<u32>, LakeError> {
        match list {
            List::Memory(v) => Ok(v.get(i as usize).copied()),
            // A list on disk was written to the file, which is open from then on.
            List::Disk { offset, len } if i < *len => {
                let f = self.file.as_ref().expect("a list on disk has its file");
                let mut b = [0u8; 4];
                f.read_exact_at(&mut b, offset + u64::from(i) * 4)
                    .map_err(io(&self.path))?;
                Ok(Some(u32::from_le_bytes(b)))
            }
            List::Disk { .. } => Ok(None),
        }
    }
}

impl Drop for Lists {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        Key::of(&format!("id-{i}"))
    }

    fn fate(i: u64) -> Fate {
        Fate {
            generation: (i % 7) as u32,
            index: i as u32,
        }
    }

    /// The same operations on [`Fates`] with a tiny memory limit (many runs, merges) and on a
    /// plain map give the same answers and the same final contents.
    #[test]
    fn runs_on_disk_answer_as_a_map_would() {
        let dir = tempfile::tempdir().unwrap();
        let mut fates = Fates::new(dir.path(), "T", 100);
        let mut model = std::collections::HashMap::new();
        for i in 0..5_000u64 {
            fates.insert(key(i), fate(i)).unwrap();
            model.insert(i, fate(i));
            if i % 3 == 0 {
                // Replace an older key's fate (it may live in a run by now).
                let j = i / 2;
                fates.insert(key(j), fate(i + 1)).unwrap();
                model.insert(j, fate(i + 1));
            }
            if i % 5 == 0 {
                let j = i / 3;
                fates.remove(&key(j)).unwrap();
                model.remove(&j);
            }
        }
        assert!(fates.runs() >= 1 && fates.runs() <= MAX_RUNS);
        // Every key ever inserted or removed, and keys never met.
        for i in 0..6_000u64 {
            assert_eq!(
                fates.get(&key(i)).unwrap(),
                model.get(&i).copied(),
                "key {i}"
            );
        }
        drop(fates);
        // The runs' files are removed with them.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Without runs, nothing touches the disk.
    #[test]
    fn small_sets_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("keys");
        let mut fates = Fates::new(&sub, "T", 1000);
        for i in 0..999 {
            fates.insert(key(i), fate(i)).unwrap();
        }
        fates.remove(&key(3)).unwrap();
        assert_eq!(fates.get(&key(3)).unwrap(), None);
        for i in (0..999).filter(|&i| i != 3) {
            assert_eq!(fates.get(&key(i)).unwrap(), Some(fate(i)), "key {i}");
        }
        assert_eq!(fates.runs(), 0);
        assert!(!sub.exists());
    }

    #[test]
    fn lists_past_the_limit_are_read_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut lists = Lists::new(dir.path(), "T", 10);
        let a = lists.keep((0..8).collect()).unwrap();
        let b = lists.keep((100..120).collect()).unwrap();
        let c = lists.keep(vec![7, 9]).unwrap();
        let d = lists.keep(Vec::new()).unwrap();
        assert!(matches!(a, List::Memory(_)) && matches!(b, List::Disk { .. }));
        assert!(matches!(c, List::Memory(_)) && matches!(d, List::Memory(_)));
        assert_eq!(lists.get(&a, 3).unwrap(), Some(3));
        assert_eq!(lists.get(&b, 0).unwrap(), Some(100));
        assert_eq!(lists.get(&b, 19).unwrap(), Some(119));
        assert_eq!(lists.get(&b, 20).unwrap(), None);
        assert_eq!(lists.get(&c, 1).unwrap(), Some(9));
        assert_eq!(lists.get(&d, 0).unwrap(), None);
        drop(lists);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
