//! The direct path: hot requests answered from the Parquet files without DataFusion planning.
//!
//! At [`Direct::open`] each table file's footer and offset index are loaded once
//! ([`ArrowReaderMetadata`], kept for the snapshot's life), and only its `id` and `patient_id`
//! columns are read to build a compact in-memory index: the hash of every id with its
//! (file, row), and for the types clustered by patient the hash of every `patient_id` with
//! the (file, first row, row count) of its run (files are sorted by `(patient_id, id)`). A
//! request then reads just the rows it needs: a [`RowSelection`] over the row groups that
//! hold them, which the offset index turns into reads of only the pages holding them.
//! Decoded rows are kept in a bounded cache.
//!
//! The index stores hashes, not ids: every candidate row is read back and its id (or
//! `patient_id`) compared, so a collision costs a read, never a wrong answer. The index
//! assumes what the lake guarantees: every id is in exactly one file, and a resource's
//! `patient` reference is `Patient/<patient_id>`.
//!
//! What the direct path answers is decided in [`crate::snapshot`]; everything else goes
//! through DataFusion. Both give identical results (tests/it/direct_path.rs checks that).

use std::collections::HashMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{
    Array, AsArray, GenericListArray, RecordBatch, RecordBatchReader, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::file::metadata::PageIndexPolicy;
use datafusion::parquet::file::reader::{ChunkReader, Length};
use rayon::prelude::*;

use crate::QueryError;

/// (file index, row index in the file).
pub(crate) type Loc = (u32, u32);

/// A file read with positioned reads (`pread`), so concurrent requests share one descriptor
/// without sharing a file offset.
#[derive(Clone)]
struct Pread {
    file: Arc<File>,
    len: u64,
}

struct PreadReader {
    file: Arc<File>,
    pos: u64,
}

impl Read for PreadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Length for Pread {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Pread {
    type T = PreadReader;

    fn get_read(&self, start: u64) -> datafusion::parquet::errors::Result<Self::T> {
        Ok(PreadReader {
            file: self.file.clone(),
            pos: start,
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> datafusion::parquet::errors::Result<Bytes> {
        let mut buf = vec![0u8; length];
        self.file.read_exact_at(&mut buf, start)?;
        Ok(Bytes::from(buf))
    }
}

fn pq(e: impl std::fmt::Display) -> QueryError {
    QueryError::Engine(datafusion::error::DataFusionError::External(
        e.to_string().into(),
    ))
}

/// The hash the index keys on (stable within a process).
pub(crate) fn key(s: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// The 32-bit hash of the index entries. With 32 bits, a lookup among a billion ids meets a
/// false candidate a quarter of the time; it costs one more row read back and compared.
fn key32(s: &str) -> u32 {
    (key(s) >> 32) as u32
}

struct TableFile {
    src: Pread,
    meta: ArrowReaderMetadata,
    /// First row of each row group, plus the total row count at the end.
    rg_start: Vec<u64>,
}

/// One file's index entries: (hash of id, row) and (hash of patient_id, first row, rows).
type FileIndex = (Vec<(u32, u32)>, Vec<(u32, u32, u32)>);

impl TableFile {
    /// Open a file and load its footer and offset index.
    fn open(path: &Path) -> Result<Self, QueryError> {
        let f = File::open(path).map_err(pq)?;
        let len = f.metadata().map_err(pq)?.len();
        let src = Pread {
            file: Arc::new(f),
            len,
        };
        let options = ArrowReaderOptions::new()
            .with_offset_index_policy(PageIndexPolicy::Optional)
            .with_column_index_policy(PageIndexPolicy::Skip);
        let meta = ArrowReaderMetadata::load(&src, options).map_err(pq)?;
        let mut rg_start = vec![0u64];
        for rg in meta.metadata().row_groups() {
            let last = rg_start.last().copied().unwrap_or(0);
            rg_start.push(last + rg.num_rows().max(0) as u64);
        }
        Ok(Self {
            src,
            meta,
            rg_start,
        })
    }

    /// The file's row count, by its footer.
    fn rows(&self) -> Option<u64> {
        self.rg_start.last().copied()
    }

    /// The index entries of the file whose first table-wide row is `first`: (hash of id,
    /// row) for every row and, when `clustered`, (hash of patient_id, first row, rows) for
    /// every run of one patient.
    fn index(&self, path: &Path, first: u32, clustered: bool) -> Result<FileIndex, QueryError> {
        let cols: &[&str] = if clustered {
            &["id", "patient_id"]
        } else {
            &["id"]
        };
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(self.src.clone(), self.meta.clone())
                .with_projection(mask(&self.meta, cols)?)
                .with_batch_size(8192)
                .build()
                .map_err(pq)?;
        let expected = self.rows().unwrap_or(0);
        let mut ids = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
        let mut patients = Vec::new();
        let mut row = first;
        let mut run: Option<(u32, String, u32)> = None;
        for b in reader {
            let b = b.map_err(pq)?;
            let id = string_col(&b, "id")?;
            for i in 0..id.len() {
                ids.push((key32(id.value(i)), row + i as u32));
            }
            if clustered {
                let pids = string_col(&b, "patient_id")?;
                for i in 0..pids.len() {
                    let r = row + i as u32;
                    let p = (!pids.is_null(i)).then(|| pids.value(i));
                    let same = matches!((&run, p), (Some((_, rp, _)), Some(p)) if rp == p);
                    if !same {
                        if let Some((h, _, start)) = run.take() {
                            patients.push((h, start, r - start));
                        }
                        run = p.map(|p| (key32(p), p.to_string(), r));
                    }
                }
            }
            row += b.num_rows() as u32;
        }
        if let Some((h, _, start)) = run.take() {
            patients.push((h, start, row - start));
        }
        if u64::from(row - first) != expected {
            return Err(pq(format!(
                "{}: the footer counts {expected} rows, the id column {}",
                path.display(),
                row - first
            )));
        }
        Ok((ids, patients))
    }
}

/// One table: its files and their index.
///
/// Rows are numbered across the table's files (the first row of file `f` is
/// `file_start[f]`), so an index entry is 8 bytes for an id and 12 for a member's run: the
/// index of a lake of a million claims takes some 12 MB.
pub(crate) struct Table {
    files: Vec<TableFile>,
    /// The table-wide number of each file's first row.
    file_start: Vec<u32>,
    /// (32-bit hash of id, table-wide row), sorted.
    ids: Vec<(u32, u32)>,
    /// (32-bit hash of patient_id, table-wide first row, rows), sorted; empty unless
    /// clustered by patient. A run never crosses files.
    patients: Vec<(u32, u32, u32)>,
    /// The reference columns of the type's search parameters (kept in [`MemberRows`]).
    ref_cols: Vec<String>,
    /// The timestamp columns of the table (kept in [`MemberRows`]).
    time_cols: Vec<String>,
}

/// A decoded row's base columns, as cached.
///
/// The resource JSON is kept LZ4-compressed: a C4BB resource repeats its profile, system and
/// extension URLs, so it shrinks three to tenfold, and unpacking it (several GB/s) costs less
/// than the copy every answer made of it anyway, while the same budget holds several times
/// the rows.
#[derive(Debug)]
pub(crate) struct CachedRow {
    pub id: Box<str>,
    pub patient_id: Option<Box<str>>,
    pub last_updated: i64,
    packed: Box<[u8]>,
}

impl CachedRow {
    fn new(id: &str, patient_id: Option<&str>, last_updated: i64, resource: &str) -> Self {
        Self {
            id: id.into(),
            patient_id: patient_id.map(Into::into),
            last_updated,
            packed: lz4_flex::block::compress_prepend_size(resource.as_bytes()).into(),
        }
    }

    /// The resource JSON.
    pub(crate) fn resource(&self) -> Result<String, QueryError> {
        let bytes = lz4_flex::block::decompress_size_prepended(&self.packed)
            .map_err(|e| pq(format!("cached row: {e}")))?;
        String::from_utf8(bytes).map_err(|e| pq(format!("cached row: {e}")))
    }

    /// What the row holds on the heap, for the cache's budget.
    fn bytes(&self) -> usize {
        64 + self.id.len() + self.patient_id.as_deref().map_or(0, str::len) + self.packed.len()
    }
}

/// A bounded cache: two generations, the older dropped when the newer fills half the budget
/// (an approximate LRU without per-hit bookkeeping).
struct GenCache<K, V> {
    budget: usize,
    inner: Mutex<Generations<K, V>>,
}

struct Generations<K, V> {
    young: HashMap<K, (V, usize)>,
    young_bytes: usize,
    old: HashMap<K, (V, usize)>,
}

impl<K: Hash + Eq + Copy, V: Clone> GenCache<K, V> {
    fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::new(Generations {
                young: HashMap::new(),
                young_bytes: 0,
                old: HashMap::new(),
            }),
        }
    }

    fn get(&self, k: K) -> Option<V> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, _)) = g.young.get(&k) {
            return Some(v.clone());
        }
        let (v, bytes) = g.old.remove(&k)?;
        Self::put_locked(&mut g, self.budget, k, v.clone(), bytes);
        Some(v)
    }

    /// Keep `v`, which costs about `bytes` of memory.
    fn put(&self, k: K, v: V, bytes: usize) {
        if self.budget == 0 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Self::put_locked(&mut g, self.budget, k, v, bytes);
    }

    fn put_locked(g: &mut Generations<K, V>, budget: usize, k: K, v: V, bytes: usize) {
        g.young_bytes += bytes;
        g.young.insert(k, (v, bytes));
        if g.young_bytes > budget / 2 {
            g.old = std::mem::take(&mut g.young);
            g.young_bytes = 0;
        }
    }
}

/// The small columns of one member's rows in a table clustered by patient: everything a
/// patient-confined search filters and sorts on, and the references `$everything` follows,
/// so that a repeated request for the member reads no Parquet page.
#[derive(Debug)]
pub(crate) struct MemberRows {
    patient: Box<str>,
    /// The member's rows (`patient_id` equal to the member), in file order.
    pub rows: Vec<MemberRow>,
}

/// One row of [`MemberRows`].
#[derive(Debug)]
pub(crate) struct MemberRow {
    pub loc: Loc,
    pub id: Box<str>,
    /// Values of the table's reference columns, in [`Table::ref_index`] order.
    pub refs: Box<[Box<[Box<str>]>]>,
    /// Values of the table's timestamp columns, in [`Table::time_index`] order.
    pub times: Box<[Option<i64>]>,
}

impl MemberRows {
    fn bytes(&self) -> usize {
        let row = |r: &MemberRow| {
            96 + r.id.len()
                + r.times.len() * 16
                + r.refs
                    .iter()
                    .map(|l| 16 + l.iter().map(|s| s.len() + 16).sum::<usize>())
                    .sum::<usize>()
        };
        64 + self.patient.len() + self.rows.iter().map(row).sum::<usize>()
    }
}

/// The direct-path index of a snapshot.
pub(crate) struct Direct {
    tables: HashMap<String, (u16, Table)>,
    cache: GenCache<(u16, Loc), Arc<CachedRow>>,
    members: GenCache<(u16, u64), Arc<MemberRows>>,
}

/// Default budget of the decoded-row cache.
pub const DEFAULT_ROW_CACHE_BYTES: usize = 64 << 20;

/// Share of the row cache's budget given, on top of it, to the cache of members' search
/// columns ([`MemberRows`]): about 2 KiB per member of ten claims, so 16 MiB by default
/// holds some 8,000 members.
const MEMBER_CACHE_SHARE: usize = 4;

impl Direct {
    /// Index the given tables (type, files, clustered by patient).
    pub(crate) fn open(
        tables: Vec<(String, Vec<PathBuf>, bool)>,
        cache_bytes: usize,
    ) -> Result<Self, QueryError> {
        let mut out = HashMap::new();
        for (i, (t, files, clustered)) in tables.into_iter().enumerate() {
            match Table::open(&t, &files, clustered)? {
                Some(table) => {
                    out.insert(t, (i as u16, table));
                }
                None => tracing::warn!(
                    resource_type = %t,
                    "table has more rows than the direct index numbers (2^32); it is served through DataFusion only"
                ),
            }
        }
        Ok(Self {
            tables: out,
            cache: GenCache::new(cache_bytes),
            members: GenCache::new(cache_bytes / MEMBER_CACHE_SHARE),
        })
    }

    /// The search columns of a member's rows in a table clustered by patient (`None` when
    /// the table is not indexed), from the cache or the files.
    pub(crate) fn member(
        &self,
        t: &str,
        patient: &str,
    ) -> Result<Option<Arc<MemberRows>>, QueryError> {
        let Some((ti, table)) = self.table(t) else {
            return Ok(None);
        };
        let k = (ti, key(patient));
        if let Some(m) = self.members.get(k) {
            if &*m.patient == patient {
                return Ok(Some(m));
            }
        }
        let m = Arc::new(table.member_rows(patient)?);
        self.members.put(k, m.clone(), m.bytes());
        Ok(Some(m))
    }

    /// The table of a type, if indexed.
    pub(crate) fn table(&self, t: &str) -> Option<(u16, &Table)> {
        self.tables.get(t).map(|(i, t)| (*i, t))
    }

    /// The base columns of rows (in the order given), from the cache or the files.
    pub(crate) fn rows(&self, t: &str, locs: &[Loc]) -> Result<Vec<Arc<CachedRow>>, QueryError> {
        let Some((ti, table)) = self.table(t) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Option<Arc<CachedRow>>> =
            locs.iter().map(|l| self.cache.get((ti, *l))).collect();
        let mut missing: Vec<Loc> = locs
            .iter()
            .zip(&out)
            .filter(|(_, r)| r.is_none())
            .map(|(l, _)| *l)
            .collect();
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            let mut fetched: HashMap<Loc, Arc<CachedRow>> = HashMap::new();
            for (file, rows) in by_file(&missing) {
                let b = table.read(
                    file,
                    &rows,
                    &["id", "patient_id", "last_updated", "resource"],
                )?;
                let ids = string_col(&b, "id")?;
                let pids = string_col(&b, "patient_id")?;
                let lu = ts_col(&b, "last_updated")?;
                let res = string_col(&b, "resource")?;
                for (i, row) in rows.iter().enumerate() {
                    let r = Arc::new(CachedRow::new(
                        ids.value(i),
                        (!pids.is_null(i)).then(|| pids.value(i)),
                        lu.value(i),
                        res.value(i),
                    ));
                    self.cache.put((ti, (file, *row)), r.clone(), r.bytes());
                    fetched.insert((file, *row), r);
                }
            }
            for (slot, l) in out.iter_mut().zip(locs) {
                if slot.is_none() {
                    *slot = fetched.get(l).cloned();
                }
            }
        }
        out.into_iter()
            .map(|r| r.ok_or_else(|| pq("row beyond the end of its file")))
            .collect()
    }
}

/// The file and row of table-wide row `row`, given each file's first row (ascending; a file
/// with no rows shares its first row with the next file).
fn locate(file_start: &[u32], row: u32) -> Loc {
    let f = file_start.partition_point(|s| *s <= row).saturating_sub(1);
    (f as u32, row - file_start.get(f).copied().unwrap_or(0))
}

/// Group sorted locations by file.
pub(crate) fn by_file(locs: &[Loc]) -> Vec<(u32, Vec<u32>)> {
    let mut out: Vec<(u32, Vec<u32>)> = Vec::new();
    for &(f, r) in locs {
        match out.last_mut() {
            Some((lf, rows)) if *lf == f => rows.push(r),
            _ => out.push((f, vec![r])),
        }
    }
    out
}

/// A Utf8 column of a batch, by name.
pub(crate) fn string_col<'a>(
    b: &'a RecordBatch,
    name: &str,
) -> Result<&'a StringArray, QueryError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| pq(format!("column {name} is missing or not Utf8")))
}

/// A timestamp column of a batch, by name.
pub(crate) fn ts_col<'a>(
    b: &'a RecordBatch,
    name: &str,
) -> Result<&'a TimestampMillisecondArray, QueryError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
        .ok_or_else(|| pq(format!("column {name} is missing or not a timestamp")))
}

/// A list-of-Utf8 column of a batch, by name.
pub(crate) fn list_col<'a>(
    b: &'a RecordBatch,
    name: &str,
) -> Result<&'a GenericListArray<i32>, QueryError> {
    b.column_by_name(name)
        .and_then(|c| c.as_list_opt::<i32>())
        .ok_or_else(|| pq(format!("column {name} is missing or not a list")))
}

impl Table {
    /// Load the files' metadata and index them; `None` when the table has more rows than a
    /// `u32` numbers.
    fn open(t: &str, files: &[PathBuf], clustered: bool) -> Result<Option<Self>, QueryError> {
        let schema = mapper::lake::schema(t);
        let time_cols = schema
            .fields()
            .iter()
            .filter(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
            .map(|f| f.name().clone())
            .collect();
        let ref_cols = mapper::registry::for_type(t)
            .filter(|p| p.kind == mapper::registry::ParamType::Reference)
            .map(|p| p.column())
            .filter(|c| schema.index_of(c).is_ok())
            .collect();
        let mut out = Table {
            files: Vec::with_capacity(files.len()),
            file_start: Vec::with_capacity(files.len()),
            ids: Vec::new(),
            patients: Vec::new(),
            ref_cols,
            time_cols,
        };
        // The files' footers, then their id (and patient) columns, on all cores: the files'
        // row counts fix each file's first table-wide row before any column is read.
        let opened: Vec<TableFile> = files
            .par_iter()
            .map(|path| TableFile::open(path))
            .collect::<Result<_, _>>()?;
        let mut first = 0u32;
        for f in &opened {
            out.file_start.push(first);
            let Some(next) = f
                .rows()
                .and_then(|n| u32::try_from(n).ok())
                .and_then(|n| n.checked_add(first))
            else {
                return Ok(None);
            };
            first = next;
        }
        let parts: Vec<FileIndex> = opened
            .par_iter()
            .zip(files.par_iter())
            .zip(out.file_start.par_iter())
            .map(|((f, path), first)| f.index(path, *first, clustered))
            .collect::<Result<_, _>>()?;
        out.ids.reserve_exact(parts.iter().map(|p| p.0.len()).sum());
        out.patients
            .reserve_exact(parts.iter().map(|p| p.1.len()).sum());
        for (ids, patients) in parts {
            out.ids.extend_from_slice(&ids);
            out.patients.extend_from_slice(&patients);
        }
        out.files = opened;
        out.ids.par_sort_unstable();
        out.patients.par_sort_unstable();
        Ok(Some(out))
    }

    /// The file and row of a table-wide row number.
    fn loc(&self, row: u32) -> Loc {
        locate(&self.file_start, row)
    }

    /// Rows whose id may be `id` (hash matches; the caller compares the id).
    pub(crate) fn id_candidates(&self, id: &str) -> Vec<Loc> {
        let h = key32(id);
        let i = self.ids.partition_point(|e| e.0 < h);
        self.ids[i..]
            .iter()
            .take_while(|e| e.0 == h)
            .map(|e| self.loc(e.1))
            .collect()
    }

    /// Rows whose `patient_id` may be `patient` (the caller compares), sorted.
    pub(crate) fn patient_candidates(&self, patient: &str) -> Vec<Loc> {
        let h = key32(patient);
        let i = self.patients.partition_point(|e| e.0 < h);
        let mut out = Vec::new();
        for e in self.patients[i..].iter().take_while(|e| e.0 == h) {
            let (file, row) = self.loc(e.1);
            out.extend((row..row + e.2).map(|r| (file, r)));
        }
        out
    }

    /// Position of a reference column among [`MemberRow::refs`].
    pub(crate) fn ref_index(&self, column: &str) -> Result<usize, QueryError> {
        self.ref_cols
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| pq(format!("column {column} is not a reference column")))
    }

    /// Position of a timestamp column among [`MemberRow::times`].
    pub(crate) fn time_index(&self, column: &str) -> Result<usize, QueryError> {
        self.time_cols
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| pq(format!("column {column} is missing or not a timestamp")))
    }

    /// Read the search columns of a member's rows.
    fn member_rows(&self, patient: &str) -> Result<MemberRows, QueryError> {
        let locs = self.patient_candidates(patient);
        let mut cols: Vec<&str> = vec!["id", "patient_id"];
        cols.extend(self.ref_cols.iter().map(String::as_str));
        cols.extend(self.time_cols.iter().map(String::as_str));
        let mut out = Vec::new();
        for (file, rows) in by_file(&locs) {
            let b = self.read(file, &rows, &cols)?;
            let ids = string_col(&b, "id")?;
            let pids = string_col(&b, "patient_id")?;
            let refs = self
                .ref_cols
                .iter()
                .map(|c| list_col(&b, c))
                .collect::<Result<Vec<_>, _>>()?;
            let times = self
                .time_cols
                .iter()
                .map(|c| ts_col(&b, c))
                .collect::<Result<Vec<_>, _>>()?;
            for (i, row) in rows.iter().enumerate() {
                if pids.is_null(i) || pids.value(i) != patient {
                    continue;
                }
                let list = |l: &GenericListArray<i32>| -> Box<[Box<str>]> {
                    if l.is_null(i) {
                        return Box::default();
                    }
                    let v = l.value(i);
                    let Some(v) = v.as_any().downcast_ref::<StringArray>() else {
                        return Box::default();
                    };
                    (0..v.len())
                        .filter(|&j| !v.is_null(j))
                        .map(|j| v.value(j).into())
                        .collect()
                };
                out.push(MemberRow {
                    loc: (file, *row),
                    id: ids.value(i).into(),
                    refs: refs.iter().map(|l| list(l)).collect(),
                    times: times
                        .iter()
                        .map(|a| (!a.is_null(i)).then(|| a.value(i)))
                        .collect(),
                });
            }
        }
        Ok(MemberRows {
            patient: patient.into(),
            rows: out,
        })
    }

    /// Read the named columns of some rows of one file (`rows` sorted, distinct); the batch
    /// has one row per requested row, in order.
    pub(crate) fn read(
        &self,
        file: u32,
        rows: &[u32],
        cols: &[&str],
    ) -> Result<RecordBatch, QueryError> {
        let f = self
            .files
            .get(file as usize)
            .ok_or_else(|| pq("no such file"))?;
        let mut groups = Vec::new();
        let mut selectors = Vec::new();
        let mut i = 0;
        for g in 0..f.rg_start.len().saturating_sub(1) {
            let (lo, hi) = (f.rg_start[g], f.rg_start[g + 1]);
            if i >= rows.len() {
                break;
            }
            if u64::from(rows[i]) >= hi {
                continue;
            }
            groups.push(g);
            let mut pos = lo;
            while i < rows.len() && u64::from(rows[i]) < hi {
                let r = u64::from(rows[i]);
                let mut end = r + 1;
                i += 1;
                while i < rows.len() && u64::from(rows[i]) == end && end < hi {
                    end += 1;
                    i += 1;
                }
                if r > pos {
                    selectors.push(RowSelector::skip((r - pos) as usize));
                }
                selectors.push(RowSelector::select((end - r) as usize));
                pos = end;
            }
            if hi > pos {
                selectors.push(RowSelector::skip((hi - pos) as usize));
            }
        }
        if i < rows.len() {
            return Err(pq("row beyond the end of its file"));
        }
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(f.src.clone(), f.meta.clone())
                .with_projection(mask(&f.meta, cols)?)
                .with_row_groups(groups)
                .with_row_selection(RowSelection::from(selectors))
                .with_batch_size(rows.len().max(1))
                .build()
                .map_err(pq)?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(pq)?;
        let b = if batches.len() == 1 {
            batches
                .into_iter()
                .next()
                .unwrap_or_else(|| RecordBatch::new_empty(schema))
        } else {
            concat_batches(&schema, &batches).map_err(pq)?
        };
        if b.num_rows() != rows.len() {
            return Err(pq("row selection returned the wrong number of rows"));
        }
        Ok(b)
    }
}

fn mask(meta: &ArrowReaderMetadata, cols: &[&str]) -> Result<ProjectionMask, QueryError> {
    let schema = meta.schema();
    let idx = cols
        .iter()
        .map(|c| schema.index_of(c).map_err(pq))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ProjectionMask::roots(meta.parquet_schema(), idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_wide_rows_map_to_file_and_row() {
        // Files of 3, 0, 2 and 4 rows.
        let starts = [0, 3, 3, 5];
        let got: Vec<Loc> = (0..9).map(|r| locate(&starts, r)).collect();
        assert_eq!(
            got,
            [
                (0, 0),
                (0, 1),
                (0, 2),
                (2, 0),
                (2, 1),
                (3, 0),
                (3, 1),
                (3, 2),
                (3, 3)
            ]
        );
    }

    #[test]
    fn cached_rows_give_back_their_json() {
        let json = r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Ünal"}]}"#;
        let r = CachedRow::new("p1", Some("p1"), 7, json);
        assert_eq!(r.resource().expect("unpacks"), json);
        let big = format!("[{}]", vec![json; 200].join(","));
        let r = CachedRow::new("p1", None, 7, &big);
        assert_eq!(r.resource().expect("unpacks"), big);
        assert!(r.bytes() < big.len() / 10, "{} bytes cached", r.bytes());
    }
}
