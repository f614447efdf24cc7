//! The lake's key index: for each id of a type, the file and row that hold it, with its
//! version and content hash.
//!
//! A run that meets an id the lake already holds must know that row (to keep it when the
//! content is the same, to retire it and version the new one up when not). Reading every id of
//! the type's table for that made a delta run's time and memory grow with the lake: 48 bytes a
//! row in a hash map, 1.1 GB for a delta of 20,000 claims on a lake of 15 million resources.
//! The index is instead kept with the lake, as durable sorted [`Run`]s under `keys/<Type>/`
//! listed in each snapshot's manifest (oldest first): a run adds one holding every row of the
//! files it wrote (new files and copies of files it removed rows from) and a tombstone for each
//! id it removed, so the newest entry of an id is always right. A lookup asks the newest run
//! first; each run's Bloom filter and block fences are all it keeps in memory (about 1.8 bytes
//! a row). When a type has more than [`MAX_RUNS`] runs the newest ones are merged (size-tiered:
//! an older run joins the merge only when it is at most twice the newer ones together, so a
//! row is rewritten a logarithmic number of times). Runs are immutable: older snapshots keep
//! theirs, and garbage collection removes those no snapshot lists.
//!
//! A type of a lake written before key indexes has none; the first run that touches it builds
//! one from the table (numbering its files), which costs that run what every run used to cost.
//! The same happens to an index found damaged (its runs' checksums, see [`super::runs`]) or
//! marked wrong (`keys/<Type>.rebuild`, left when a copied file's row did not hold the id the
//! index placed there, or by [`verify_key_index`] through `fhirlake snapshots --verify`).

use std::path::{Path, PathBuf};

use super::keys::Key;
use super::runs::{io, newest_of, u32_at, u64_at, Entry, Run};
use crate::lake::{self, Lake, LakeError, TableFile};

/// More runs than this are merged.
const MAX_RUNS: usize = 4;
/// Entries sorted in memory at a time while a run's rows are indexed (12 MiB).
#[cfg(not(test))]
const SORT_CHUNK: usize = 1 << 18;
#[cfg(test)]
const SORT_CHUNK: usize = 16;
/// Sorted chunks open at a time while a run's rows are indexed: more are merged into one
/// (each chunk keeps a file open).
#[cfg(not(test))]
const MAX_CHUNKS: usize = 64;
#[cfg(test)]
const MAX_CHUNKS: usize = 3;
/// The file number of a tombstone.
const GONE: u32 = u32::MAX;

/// Where an id's row is, and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Located {
    /// The file's [`TableFile::number`].
    pub(super) file: u32,
    /// The row in the file.
    pub(super) row: u32,
    /// Its `meta.versionId`.
    pub(super) version: i64,
    /// Its content hash.
    pub(super) hash: u128,
}

/// An entry of an index run: a key and where its row is ([`GONE`] in `file` for a removed id).
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    key: Key,
    at: Located,
}

/// 48 bytes: key (two `u64`s), content hash (two `u64`s), version (`i64`), file and row
/// (`u32`s), all little-endian.
impl Entry for IndexEntry {
    const SIZE: usize = 48;

    fn key(&self) -> Key {
        self.key
    }

    fn encode(&self, out: &mut [u8]) {
        let (lo, hi) = self.key.halves();
        out[..8].copy_from_slice(&lo.to_le_bytes());
        out[8..16].copy_from_slice(&hi.to_le_bytes());
        out[16..32].copy_from_slice(&self.at.hash.to_le_bytes());
        out[32..40].copy_from_slice(&self.at.version.to_le_bytes());
        out[40..44].copy_from_slice(&self.at.file.to_le_bytes());
        out[44..48].copy_from_slice(&self.at.row.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Self {
        Self {
            key: Key::from_halves(u64_at(b, 0), u64_at(b, 8)),
            at: Located {
                hash: u128::from(u64_at(b, 16)) | (u128::from(u64_at(b, 24)) << 64),
                version: u64_at(b, 32) as i64,
                file: u32_at(b, 40),
                row: u32_at(b, 44),
            },
        }
    }
}

/// A type's key index (see the module doc).
pub(super) struct Index {
    root: PathBuf,
    runs: Vec<Run<IndexEntry>>,
    /// The runs' paths relative to the lake root, as the manifest lists them.
    rel: Vec<String>,
    /// Where new runs go (relative to the lake root) and what they are named after.
    dir: String,
    snapshot: String,
    seq: u32,
}

impl Index {
    /// An index with no runs; new runs go to `keys/<resource_type>/<snapshot>-kNN.keys` under
    /// the lake's `root`.
    pub(super) fn empty(root: &Path, resource_type: &str, snapshot: &str) -> Self {
        Self {
            root: root.to_path_buf(),
            runs: Vec::new(),
            rel: Vec::new(),
            dir: Lake::keys_rel(resource_type),
            snapshot: snapshot.to_string(),
            seq: 0,
        }
    }

    /// Open the runs a manifest lists (`rel`, oldest first).
    ///
    /// # Errors
    /// When a run cannot be read or is damaged.
    pub(super) fn open(
        root: &Path,
        rel: &[String],
        resource_type: &str,
        snapshot: &str,
    ) -> Result<Self, LakeError> {
        let mut index = Self::empty(root, resource_type, snapshot);
        for r in rel {
            index.runs.push(Run::open(root.join(r))?);
            index.rel.push(r.clone());
        }
        Ok(index)
    }

    /// Build the index of `files` from their rows (for tables written before key indexes, or
    /// whose index is damaged). Files written before file numbers are numbered from 1.
    ///
    /// # Errors
    /// When a file cannot be read or the run cannot be written.
    pub(super) fn build(
        root: &Path,
        files: &mut [TableFile],
        resource_type: &str,
        snapshot: &str,
        scratch: &Path,
    ) -> Result<Self, LakeError> {
        if files.iter().any(|f| f.number == 0) {
            for (i, f) in files.iter_mut().enumerate() {
                f.number = i as u32 + 1;
            }
        }
        let mut index = Self::empty(root, resource_type, snapshot);
        index.add_run(files, Vec::new(), scratch)?;
        Ok(index)
    }

    /// The runs' paths, as the manifest lists them.
    pub(super) fn paths(&self) -> Vec<String> {
        self.rel.clone()
    }

    /// Where the row of `k` is, if the table holds it.
    ///
    /// # Errors
    /// When a run cannot be read.
    pub(super) fn get(&self, k: Key) -> Result<Option<Located>, LakeError> {
        for run in self.runs.iter().rev() {
            if let Some(e) = run.get(k)? {
                return Ok((e.at.file != GONE).then_some(e.at));
            }
        }
        Ok(None)
    }

    /// How many ids the index holds (the newest entry of each key that is not a tombstone).
    ///
    /// # Errors
    /// When a run cannot be read.
    pub(super) fn live(&self) -> Result<u64, LakeError> {
        let mut n = 0;
        for e in newest_of(&self.runs)? {
            if e?.at.file != GONE {
                n += 1;
            }
        }
        Ok(n)
    }

    /// How many runs the index has.
    pub(super) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Add a run holding every row of `files` (read back from them) and a tombstone for each
    /// key of `gone`, then merge runs if there are too many. `scratch` takes temporary sorted
    /// chunks.
    ///
    /// # Errors
    /// When a file cannot be read or a run cannot be written.
    pub(super) fn add_run(
        &mut self,
        files: &[TableFile],
        gone: Vec<Key>,
        scratch: &Path,
    ) -> Result<(), LakeError> {
        std::fs::create_dir_all(scratch).map_err(io(scratch))?;
        let stem = self.dir.replace('/', "-");
        let mut made = 0;
        let mut chunk_path = || {
            made += 1;
            scratch.join(format!("{stem}-{made}.chunk"))
        };
        let sorted = |entries: &mut Vec<IndexEntry>, path: PathBuf| {
            entries.sort_unstable_by_key(|e| e.key.ordinal());
            Run::write(path, entries.len(), entries.drain(..).map(Ok), false)
        };
        // The tombstones are the oldest chunk: a row written by this run is newer than a
        // removal of its id.
        let mut tombstones: Vec<IndexEntry> = (gone.into_iter())
            .map(|key| IndexEntry {
                key,
                at: Located {
                    file: GONE,
                    row: 0,
                    version: 0,
                    hash: 0,
                },
            })
            .collect();
        tombstones.sort_unstable_by_key(|e| e.key.ordinal());
        tombstones.dedup_by_key(|e| e.key);
        let mut chunks = vec![sorted(&mut tombstones, chunk_path())?];
        let total: usize = files.iter().map(|f| f.rows as usize).sum();
        let mut buf: Vec<IndexEntry> = Vec::with_capacity(total.min(SORT_CHUNK));
        for (i, f) in files.iter().enumerate() {
            lake::for_each_key(&self.root.join(&f.path), |row, id, version, hash| {
                buf.push(IndexEntry {
                    key: Key::of(id),
                    at: Located {
                        file: f.number,
                        row,
                        version,
                        hash: hex128(hash),
                    },
                });
            })?;
            if buf.len() >= SORT_CHUNK || i + 1 == files.len() {
                chunks.push(sorted(&mut buf, chunk_path())?);
            }
            if chunks.len() >= MAX_CHUNKS {
                let len = chunks.iter().map(Run::len).sum();
                let merged = Run::write(chunk_path(), len, newest_of(&chunks)?, false)?;
                chunks = vec![merged];
            }
        }
        drop(buf);
        let len = chunks.iter().map(Run::len).sum();
        let merged = newest_of(&chunks)?;
        let (rel, path) = self.next_path()?;
        let run = Run::write(path, len, merged, true)?;
        self.push((rel, run));
        if self.runs.len() > MAX_RUNS {
            self.compact()?;
        }
        Ok(())
    }

    /// The path (relative to the lake root, and absolute) of the next run, its directory
    /// created.
    fn next_path(&mut self) -> Result<(String, PathBuf), LakeError> {
        self.seq += 1;
        let rel = format!("{}/{}-k{:02}.keys", self.dir, self.snapshot, self.seq);
        let path = self.root.join(&rel);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        Ok((rel, path))
    }

    fn push(&mut self, (rel, run): (String, Run<IndexEntry>)) {
        self.rel.push(rel);
        self.runs.push(run);
    }

    /// Merge the newest runs into one: at least two, and each older run that is at most twice
    /// the size of the newer ones together. Tombstones go when the oldest run is merged.
    fn compact(&mut self) -> Result<(), LakeError> {
        let n = self.runs.len();
        let mut from = n - 2;
        let mut total = self.runs[n - 2].len() + self.runs[n - 1].len();
        let (rel, path) = self.next_path()?;
        while from > 0 && self.runs[from - 1].len() <= 2 * total {
            from -= 1;
            total += self.runs[from].len();
        }
        let all = from == 0;
        let entries = newest_of(&self.runs[from..])?
            .filter(|e| !(all && matches!(e, Ok(e) if e.at.file == GONE)));
        let merged = Run::write(path, total, entries, true)?;
        self.runs.truncate(from);
        self.rel.truncate(from);
        self.push((rel, merged));
        Ok(())
    }
}

/// A content hash as the tables store it (hex); 0 for one that is not 128-bit hex.
fn hex128(s: &str) -> u128 {
    u128::from_str_radix(s, 16).unwrap_or(0)
}

/// Where the current snapshot's key index and its tables disagree (no id in it: ids may name
/// members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// The type whose index disagrees; `None` when the snapshot itself could not be read.
    pub resource_type: Option<String>,
    /// What disagrees.
    pub message: String,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.resource_type {
            Some(t) => write!(f, "{t}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Check the current snapshot's key index against its tables: every row is found where it is,
/// with its version and content hash, and the index holds no other id. Returns the rows
/// checked and the most index runs a type has. Types without an index (lakes written before
/// key indexes) are skipped.
///
/// # Errors
/// Each type whose index disagrees (its first disagreement), or the snapshot that cannot be
/// read.
pub fn verify_key_index(lake: &Path) -> Result<(u64, usize), Vec<Disagreement>> {
    let whole = |message: String| {
        vec![Disagreement {
            resource_type: None,
            message,
        }]
    };
    let l = Lake::new(lake);
    let name = l
        .current_name()
        .map_err(|e| whole(e.to_string()))?
        .ok_or_else(|| whole("empty lake".into()))?;
    let m = l.manifest(&name).map_err(|e| whole(e.to_string()))?;
    let (mut checked, mut most_runs, mut wrong) = (0, 0, Vec::new());
    for (t, runs) in &m.keys {
        let files = m.files.get(t).map(Vec::as_slice).unwrap_or_default();
        match verify_type(l.root(), &name, t, runs, files) {
            Ok((rows, n)) => {
                checked += rows;
                most_runs = most_runs.max(n);
            }
            Err(message) => wrong.push(Disagreement {
                resource_type: Some(t.clone()),
                message,
            }),
        }
    }
    if wrong.is_empty() {
        Ok((checked, most_runs))
    } else {
        Err(wrong)
    }
}

/// [`verify_key_index`] for one type: its rows and index runs.
fn verify_type(
    root: &Path,
    snapshot: &str,
    t: &str,
    runs: &[String],
    files: &[TableFile],
) -> Result<(u64, usize), String> {
    let index = Index::open(root, runs, t, snapshot).map_err(|e| e.to_string())?;
    let mut rows = 0;
    for f in files {
        let mut wrong = None;
        lake::for_each_key(&root.join(&f.path), |row, id, version, hash| {
            rows += 1;
            let want = Located {
                file: f.number,
                row,
                version,
                hash: hex128(hash),
            };
            match index.get(Key::of(id)) {
                Ok(Some(got)) if got == want => {}
                Err(e) if wrong.is_none() => wrong = Some(e.to_string()),
                got if wrong.is_none() => {
                    // The id stays out of the message (it may name a member).
                    wrong = Some(format!("index has {got:?}, table {want:?}"));
                }
                _ => {}
            }
        })
        .map_err(|e| e.to_string())?;
        if let Some(w) = wrong {
            return Err(w);
        }
    }
    let live = index.live().map_err(|e| e.to_string())?;
    if live != rows {
        return Err(format!("the index holds {live} ids, the table {rows} rows"));
    }
    Ok((rows, index.runs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three table files of 40 patients each; returns them and each id's expected place.
    fn tables(root: &Path) -> (Vec<TableFile>, Vec<(String, Located)>) {
        std::fs::create_dir_all(root.join("data/Patient")).unwrap();
        let (mut files, mut want) = (Vec::new(), Vec::new());
        for f in 0..3u32 {
            let rows: Vec<lake::NewRow> = (0..40u32)
                .map(|i| {
                    let id = format!("p-{f}-{i:03}");
                    let json = serde_json::json!({"resourceType": "Patient", "id": id});
                    let prepared = lake::Prepared::new(crate::Resource {
                        resource_type: "Patient",
                        id: id.clone(),
                        patient_id: Some(id.clone()),
                        json: crate::Json::Tree(json),
                        deleted: false,
                    });
                    let at = Located {
                        file: f + 7,
                        row: i,
                        version: i64::from(i) + 1,
                        hash: prepared.content_hash,
                    };
                    want.push((id, at));
                    lake::NewRow {
                        prepared,
                        version_id: i64::from(i) + 1,
                    }
                })
                .collect();
            let rel = format!("data/Patient/f{f}.parquet");
            lake::write_file(&root.join(&rel), "Patient", rows, 0).unwrap();
            files.push(TableFile {
                path: rel,
                rows: 40,
                number: f + 7,
            });
        }
        (files, want)
    }

    /// Rows sorted in many chunks (merged past the open-chunk limit) are all found where they
    /// are; tombstones hide ids from older runs, not rows of their own run; merged runs keep
    /// the newest entry of each id and reopen as written.
    #[test]
    fn the_index_finds_every_row_through_chunks_runs_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let scratch = root.join("scratch");
        let (files, want) = tables(root);
        let mut index = Index::empty(root, "Patient", "snap");
        index
            .add_run(&files, vec![Key::of("p-0-000")], &scratch)
            .unwrap();
        for (id, at) in &want {
            assert_eq!(index.get(Key::of(id)).unwrap(), Some(*at), "{id}");
        }
        assert_eq!(index.get(Key::of("p-9-000")).unwrap(), None);
        assert_eq!(index.live().unwrap(), 120);

        // Six more runs, each removing two ids: merged as they pile up.
        let mut gone = Vec::new();
        for n in 0..6 {
            let ids = [want[n * 7].0.clone(), want[n * 11 + 3].0.clone()];
            index
                .add_run(&[], ids.iter().map(|i| Key::of(i)).collect(), &scratch)
                .unwrap();
            gone.extend(ids);
            assert!(index.runs() <= MAX_RUNS, "{} runs", index.runs());
        }
        gone.sort();
        gone.dedup();
        let reopened = Index::open(root, &index.paths(), "Patient", "snap2").unwrap();
        for i in [&index, &reopened] {
            for (id, at) in &want {
                let expect = (!gone.contains(id)).then_some(*at);
                assert_eq!(i.get(Key::of(id)).unwrap(), expect, "{id}");
            }
            assert_eq!(i.live().unwrap(), 120 - gone.len() as u64);
        }
        // The listed runs are on disk (merged-away ones stay for older snapshots until
        // garbage collection), and no scratch chunk is left.
        for rel in index.paths() {
            assert!(root.join(&rel).is_file(), "{rel}");
        }
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    }
}
