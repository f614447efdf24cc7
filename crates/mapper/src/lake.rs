//! The lake: one Parquet table per resource type, in snapshots published atomically.
//!
//! ```text
//! LAKE/
//!   CURRENT                      name of the snapshot readers use (replaced atomically)
//!   snapshots/<name>/
//!     <ResourceType>.parquet     rows sorted by (patient_id, id) or id
//!     manifest.json              counts per type, the run that wrote it
//!     report.json, rejects.ndjson  the run's report and rejects
//! ```
//!
//! Invariants of [`Lake::publish`]: a snapshot becomes visible only when all its files are
//! written and synced (fsync of files, then of the directory, then the pointer switch by
//! rename); a crash at any moment leaves `CURRENT` naming the previous, complete snapshot;
//! partial work lives only in `snapshots/.tmp-*`, which readers never look at and the next
//! run removes.
//!
//! Each row: `id`, `patient_id`, `version_id`, `last_updated`, `content_hash`, `resource`
//! (FHIR JSON), then the index columns of every search parameter of the type (see
//! [`schema`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::registry::{self, IndexValue, ParamType, SearchParam};
use crate::Resource;

/// Errors of the lake.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// A file or directory operation failed (disk full, permissions, …).
    #[error("{path}")]
    Io {
        /// What was being read or written.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Parquet or Arrow failed.
    #[error("parquet {path}: {message}")]
    Parquet {
        /// The file.
        path: String,
        /// The error.
        message: String,
    },
    /// The lake has no published snapshot.
    #[error("no snapshot has been published in {0} yet (run `fhirlake ingest` first)")]
    Empty(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LakeError + '_ {
    move |source| LakeError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn pq_err(path: &Path, e: impl std::fmt::Display) -> LakeError {
    LakeError::Parquet {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Whether rows of this type are clustered by patient (compartment types) or by id.
pub fn clustered_by_patient(resource_type: &str) -> bool {
    matches!(resource_type, "ExplanationOfBenefit" | "Coverage")
}

/// The Arrow schema of a resource type's table.
pub fn schema(resource_type: &str) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let list = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("patient_id", DataType::Utf8, true),
        Field::new("version_id", DataType::Int64, false),
        Field::new("last_updated", ts.clone(), false),
        Field::new("content_hash", DataType::Utf8, false),
        Field::new("resource", DataType::Utf8, false),
    ];
    for p in registry::for_type(resource_type).filter(|p| !p.is_common()) {
        for (name, ty) in index_columns(p) {
            let ty = match ty {
                ColumnKind::Timestamp => ts.clone(),
                ColumnKind::List => list.clone(),
                ColumnKind::Joined => DataType::Utf8,
            };
            fields.push(Field::new(name, ty, true));
        }
    }
    Arc::new(Schema::new(fields))
}

/// How an index column stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `List<Utf8>`: tokens (`system|code`, codes, systems) and references (`Type/id`).
    List,
    /// `Timestamp(ms, UTC)`: the lowest start or highest end of a date parameter's values.
    Timestamp,
    /// `Utf8`: string values joined as `\u{1f}v1\u{1f}v2\u{1f}`, so that "some value starts
    /// with x" is the substring test `\u{1f}x` and "some value is exactly x" is `\u{1f}x\u{1f}`.
    Joined,
}

/// The separator of joined string columns.
pub const JOIN_SEP: char = '\u{1f}';

/// The index columns of a parameter.
pub fn index_columns(p: &SearchParam) -> Vec<(String, ColumnKind)> {
    let c = p.column();
    match p.kind {
        ParamType::Token => vec![
            (c.clone(), ColumnKind::List),
            (format!("{c}__code"), ColumnKind::List),
            (format!("{c}__system"), ColumnKind::List),
        ],
        ParamType::String => vec![
            (c.clone(), ColumnKind::Joined),
            (format!("{c}__exact"), ColumnKind::Joined),
        ],
        ParamType::Reference => vec![(c, ColumnKind::List)],
        ParamType::Date => vec![
            (format!("{c}__start"), ColumnKind::Timestamp),
            (format!("{c}__end"), ColumnKind::Timestamp),
        ],
    }
}

fn joined<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut s = String::from(JOIN_SEP);
    for v in values {
        s.push_str(v);
        s.push(JOIN_SEP);
    }
    s
}

/// Normalise a string for FHIR string search: lower case, accents removed, spaces folded.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        let base = fold_accent(ch);
        for l in base.to_lowercase() {
            out.push(l);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn fold_accent(c: char) -> char {
    match c {
        'À'..='Å' | 'à'..='å' | 'Ā' | 'ā' => 'a',
        'Ç' | 'ç' => 'c',
        'È'..='Ë' | 'è'..='ë' => 'e',
        'Ì'..='Ï' | 'ì'..='ï' => 'i',
        'Ñ' | 'ñ' => 'n',
        'Ò'..='Ö' | 'Ø' | 'ò'..='ö' | 'ø' => 'o',
        'Ù'..='Ü' | 'ù'..='ü' => 'u',
        'Ý' | 'ý' | 'ÿ' => 'y',
        _ => c,
    }
}

/// The instant range `[start, end]` (epoch milliseconds, inclusive) a FHIR date, dateTime or
/// instant covers at its precision: `2020` covers the whole year.
pub fn date_range(s: &str) -> Option<(i64, i64)> {
    use chrono::{DateTime, Datelike, Duration, NaiveDate};
    let s = s.trim();
    let day = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d);
    let ms = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis())
    };
    match s.len() {
        4 => {
            let y: i32 = s.parse().ok()?;
            Some((ms(day(y, 1, 1)?)?, ms(day(y + 1, 1, 1)?)? - 1))
        }
        7 => {
            let y: i32 = s.get(0..4)?.parse().ok()?;
            let m: u32 = s.get(5..7)?.parse().ok()?;
            if s.as_bytes().get(4) != Some(&b'-') {
                return None;
            }
            let start = day(y, m, 1)?;
            let next = if m == 12 {
                day(y + 1, 1, 1)?
            } else {
                day(y, m + 1, 1)?
            };
            Some((ms(start)?, ms(next)? - 1))
        }
        10 => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            let _ = d.year();
            let start = ms(d)?;
            Some((start, start + Duration::days(1).num_milliseconds() - 1))
        }
        _ => {
            let t = DateTime::parse_from_rfc3339(s).ok()?;
            let has_fraction = s.contains('.');
            let start = t.timestamp_millis();
            Some((start, if has_fraction { start } else { start + 999 }))
        }
    }
}

/// One row, ready to be written.
#[derive(Debug, Clone)]
pub struct Row {
    /// Logical id.
    pub id: String,
    /// Compartment.
    pub patient_id: Option<String>,
    /// `meta.versionId`.
    pub version_id: i64,
    /// `meta.lastUpdated`, epoch ms.
    pub last_updated: i64,
    /// Hash of the resource's content without `meta.versionId`/`meta.lastUpdated`.
    pub content_hash: String,
    /// The FHIR JSON, with `meta.versionId` and `meta.lastUpdated` set.
    pub resource: String,
}

/// Hash of a resource's content, ignoring the meta elements the lake sets.
pub fn content_hash(json: &Value) -> String {
    let mut v = json.clone();
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
    }
    let digest = Sha256::digest(v.to_string().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Format epoch ms as a FHIR instant.
pub fn instant(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// A mapped resource in compact form: its JSON already serialized (with `meta.lastUpdated`
/// set to the run's time and a placeholder version), its content hash computed. A run holds
/// these rather than JSON trees, which take tens of times more memory.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Resource type.
    pub resource_type: &'static str,
    /// Logical id.
    pub id: String,
    /// Compartment.
    pub patient_id: Option<String>,
    /// Hash of the content without the meta the lake sets.
    pub content_hash: String,
    /// The JSON, with [`VERSION_PLACEHOLDER`] where the version goes.
    pub text: String,
    /// Whether the source deleted it.
    pub deleted: bool,
}

/// Stands in for `meta.versionId` in [`Prepared::text`] until the merge knows the version.
pub const VERSION_PLACEHOLDER: &str = r"\u0000fhirlake-version\u0000";

impl Prepared {
    /// Serialize a mapped resource for a run published at `now` (epoch ms).
    pub fn new(r: Resource, now: i64) -> Self {
        let content_hash = content_hash(&r.json);
        let mut json = r.json;
        let stamp = serde_json::json!({"versionId": "\u{0}fhirlake-version\u{0}", "lastUpdated": instant(now)});
        match json.get_mut("meta").and_then(Value::as_object_mut) {
            Some(meta) => {
                if let Some(o) = stamp.as_object() {
                    for (k, v) in o {
                        meta.insert(k.clone(), v.clone());
                    }
                }
            }
            None => {
                if let Some(obj) = json.as_object_mut() {
                    obj.insert("meta".into(), stamp);
                }
            }
        }
        Self {
            resource_type: r.resource_type,
            id: r.id,
            patient_id: r.patient_id,
            content_hash,
            text: json.to_string(),
            deleted: r.deleted,
        }
    }

    /// The row of this resource at `version_id`.
    pub fn into_row(self, version_id: i64, last_updated: i64) -> Row {
        Row {
            id: self.id,
            patient_id: self.patient_id,
            version_id,
            last_updated,
            content_hash: self.content_hash,
            resource: self
                .text
                .replacen(VERSION_PLACEHOLDER, &version_id.to_string(), 1),
        }
    }
}

/// Build one record batch of a type from rows (index columns extracted from the JSON).
///
/// # Errors
/// When a row's JSON does not parse (never for rows this crate made).
pub fn batch(resource_type: &str, rows: &[Row]) -> Result<RecordBatch, LakeError> {
    let schema = schema(resource_type);
    let params: Vec<&SearchParam> = registry::for_type(resource_type)
        .filter(|p| !p.is_common())
        .collect();
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.id.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.patient_id.as_deref()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.version_id),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.last_updated))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.content_hash.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.resource.as_str()),
        )),
    ];
    // Parse each row once and extract every parameter's values from it.
    let mut extracted: Vec<Vec<Vec<IndexValue>>> =
        vec![Vec::with_capacity(rows.len()); params.len()];
    for r in rows {
        let v: Value =
            serde_json::from_str(&r.resource).map_err(|e| pq_err(Path::new(resource_type), e))?;
        for (i, p) in params.iter().enumerate() {
            extracted[i].push((p.extract)(&v));
        }
    }
    for (p, values) in params.into_iter().zip(extracted) {
        match p.kind {
            ParamType::Token => {
                let mut full = ListBuilder::new(StringBuilder::new());
                let mut code = ListBuilder::new(StringBuilder::new());
                let mut system = ListBuilder::new(StringBuilder::new());
                for vals in &values {
                    for v in vals {
                        if let IndexValue::Token { system: s, code: c } = v {
                            full.values().append_value(format!("{s}|{c}"));
                            code.values().append_value(c);
                            system.values().append_value(s);
                        }
                    }
                    full.append(true);
                    code.append(true);
                    system.append(true);
                }
                cols.push(Arc::new(full.finish()));
                cols.push(Arc::new(code.finish()));
                cols.push(Arc::new(system.finish()));
            }
            ParamType::String => {
                let mut norm = Vec::with_capacity(values.len());
                let mut exact = Vec::with_capacity(values.len());
                for vals in &values {
                    let strs: Vec<&str> = vals
                        .iter()
                        .filter_map(|v| match v {
                            IndexValue::String(s) => Some(s.as_str()),
                            _ => None,
                        })
                        .collect();
                    let normalized: Vec<String> = strs.iter().map(|s| normalize(s)).collect();
                    norm.push(joined(normalized.iter().map(String::as_str)));
                    exact.push(joined(strs.into_iter()));
                }
                cols.push(Arc::new(StringArray::from(norm)));
                cols.push(Arc::new(StringArray::from(exact)));
            }
            ParamType::Reference => {
                let mut refs = ListBuilder::new(StringBuilder::new());
                for vals in &values {
                    for v in vals {
                        if let IndexValue::Reference(s) = v {
                            refs.values().append_value(s);
                        }
                    }
                    refs.append(true);
                }
                cols.push(Arc::new(refs.finish()));
            }
            ParamType::Date => {
                let mut starts = Vec::with_capacity(values.len());
                let mut ends = Vec::with_capacity(values.len());
                for vals in &values {
                    let mut lo: Option<i64> = None;
                    let mut hi: Option<i64> = None;
                    let mut open_end = false;
                    for v in vals {
                        if let IndexValue::Date { start, end } = v {
                            let s = start.as_deref().and_then(date_range).map(|r| r.0);
                            let e = end.as_deref().and_then(date_range).map(|r| r.1);
                            // An open start or end stretches to the other bound's range.
                            let s = s.or_else(|| end.as_deref().and_then(date_range).map(|r| r.0));
                            if end.is_none() {
                                open_end = true;
                            }
                            let e =
                                e.or_else(|| start.as_deref().and_then(date_range).map(|r| r.1));
                            if let Some(s) = s {
                                lo = Some(lo.map_or(s, |x: i64| x.min(s)));
                            }
                            if let Some(e) = e {
                                hi = Some(hi.map_or(e, |x: i64| x.max(e)));
                            }
                        }
                    }
                    if open_end && lo.is_some() {
                        hi = Some(i64::MAX / 2);
                    }
                    starts.push(lo);
                    ends.push(hi);
                }
                cols.push(Arc::new(
                    TimestampMillisecondArray::from(starts).with_timezone("UTC"),
                ));
                cols.push(Arc::new(
                    TimestampMillisecondArray::from(ends).with_timezone("UTC"),
                ));
            }
        }
    }
    RecordBatch::try_new(schema, cols).map_err(|e| pq_err(Path::new(resource_type), e))
}

fn writer_props(resource_type: &str, schema: &Schema) -> WriterProperties {
    let sort: Vec<SortingColumn> = if clustered_by_patient(resource_type) {
        vec![
            SortingColumn {
                column_idx: 1,
                descending: false,
                nulls_first: true,
            },
            SortingColumn {
                column_idx: 0,
                descending: false,
                nulls_first: false,
            },
        ]
    } else {
        vec![SortingColumn {
            column_idx: 0,
            descending: false,
            nulls_first: false,
        }]
    };
    let _ = schema;
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(8192))
        .set_data_page_row_count_limit(256)
        .set_write_batch_size(256)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_bloom_filter_enabled("id".into(), true)
        .set_column_bloom_filter_enabled("patient_id".into(), true)
        .set_sorting_columns(Some(sort))
        .set_created_by("fhirlake".into())
        .build()
}

/// Write one table file (rows already sorted) and fsync it.
///
/// # Errors
/// On I/O or Parquet errors.
pub fn write_table(path: &Path, resource_type: &str, rows: &[Row]) -> Result<(), LakeError> {
    let file = File::create(path).map_err(io_err(path))?;
    let schema = schema(resource_type);
    let mut w = ArrowWriter::try_new(
        file,
        schema.clone(),
        Some(writer_props(resource_type, &schema)),
    )
    .map_err(|e| pq_err(path, e))?;
    for chunk in rows.chunks(8192) {
        let b = batch(resource_type, chunk)?;
        w.write(&b).map_err(|e| pq_err(path, e))?;
    }
    let file = w.into_inner().map_err(|e| pq_err(path, e))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Read the base columns of a table back (for merging into the next snapshot).
///
/// # Errors
/// On I/O or Parquet errors.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, LakeError> {
    let file = File::open(path).map_err(io_err(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err(path, e))?;
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [0, 1, 2, 3, 4, 5]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| pq_err(path, e))?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| pq_err(path, e))?;
        let s = |i: usize| b.column(i).as_any().downcast_ref::<StringArray>().cloned();
        let (Some(id), Some(pid), Some(hash), Some(res)) = (s(0), s(1), s(4), s(5)) else {
            return Err(pq_err(path, "unexpected column types"));
        };
        let ver = b.column(2).as_any().downcast_ref::<Int64Array>().cloned();
        let lu = b
            .column(3)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .cloned();
        let (Some(ver), Some(lu)) = (ver, lu) else {
            return Err(pq_err(path, "unexpected column types"));
        };
        for i in 0..b.num_rows() {
            out.push(Row {
                id: id.value(i).to_string(),
                patient_id: (!pid.is_null(i)).then(|| pid.value(i).to_string()),
                version_id: ver.value(i),
                last_updated: lu.value(i),
                content_hash: hash.value(i).to_string(),
                resource: res.value(i).to_string(),
            });
        }
    }
    Ok(out)
}

/// A lake directory.
#[derive(Debug, Clone)]
pub struct Lake {
    root: PathBuf,
}

/// What a snapshot holds, written as `manifest.json`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Manifest {
    /// The snapshot's name.
    pub name: String,
    /// The snapshot it was built on, if any.
    pub parent: Option<String>,
    /// When it was published (FHIR instant).
    pub created: String,
    /// Rows per resource type.
    pub counts: BTreeMap<String, u64>,
}

impl Lake {
    /// A lake rooted at `root` (created on first publish).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The lake's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// The name of the current snapshot, if one was published.
    ///
    /// # Errors
    /// When `CURRENT` exists but cannot be read.
    pub fn current_name(&self) -> Result<Option<String>, LakeError> {
        let p = self.root.join("CURRENT");
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// The directory of the current snapshot.
    ///
    /// # Errors
    /// [`LakeError::Empty`] when nothing was published yet.
    pub fn current(&self) -> Result<PathBuf, LakeError> {
        let name = self
            .current_name()?
            .ok_or_else(|| LakeError::Empty(self.root.display().to_string()))?;
        Ok(self.snapshots().join(name))
    }

    /// The table file of a type in a snapshot directory.
    pub fn table_path(snapshot: &Path, resource_type: &str) -> PathBuf {
        snapshot.join(format!("{resource_type}.parquet"))
    }

    /// The Parquet files holding a type's table in a published snapshot directory, in a stable
    /// order; empty when the snapshot has no rows of that type. Every id of the table is in
    /// exactly one of them; each file is sorted by `(patient_id, id)` for compartment types
    /// and by `id` otherwise.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn table_files(snapshot: &Path, resource_type: &str) -> Result<Vec<PathBuf>, LakeError> {
        let p = Self::table_path(snapshot, resource_type);
        Ok(if p.is_file() { vec![p] } else { Vec::new() })
    }

    /// Begin a new snapshot: a staging directory that only [`Lake::publish`] makes visible.
    /// Leftovers of crashed runs are removed first.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn stage(&self) -> Result<Staged, LakeError> {
        let snaps = self.snapshots();
        fs::create_dir_all(&snaps).map_err(io_err(&snaps))?;
        for e in fs::read_dir(&snaps).map_err(io_err(&snaps))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let parent = self.current_name()?;
        let seq = self
            .list()?
            .iter()
            .filter_map(|n| n.split('-').nth(1)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let name = format!(
            "snap-{seq:06}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        );
        let dir = snaps.join(format!(".tmp-{name}"));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Staged {
            lake: self.clone(),
            name,
            dir,
            parent,
        })
    }

    /// Names of the published snapshots, oldest first.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn list(&self) -> Result<Vec<String>, LakeError> {
        let snaps = self.snapshots();
        let mut v: Vec<String> = match fs::read_dir(&snaps) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("snap-"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&snaps)(e)),
        };
        v.sort();
        Ok(v)
    }

    /// Point `CURRENT` at an existing snapshot (rollback).
    ///
    /// # Errors
    /// When the snapshot does not exist or the pointer cannot be written.
    pub fn switch_to(&self, name: &str) -> Result<(), LakeError> {
        let dir = self.snapshots().join(name);
        if !dir.join("manifest.json").is_file() {
            return Err(LakeError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such snapshot"),
            });
        }
        write_atomic(&self.root, "CURRENT", name.as_bytes())
    }

    /// Remove published snapshots beyond the newest `keep`, never the current one. Returns the
    /// names removed.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn prune(&self, keep: usize) -> Result<Vec<String>, LakeError> {
        let current = self.current_name()?;
        let all = self.list()?;
        let cut = all.len().saturating_sub(keep.max(1));
        let mut removed = Vec::new();
        for name in all.into_iter().take(cut) {
            if Some(&name) == current.as_ref() {
                continue;
            }
            let dir = self.snapshots().join(&name);
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            removed.push(name);
        }
        sync_dir(&self.snapshots())?;
        Ok(removed)
    }

    /// Read the manifest of a snapshot.
    ///
    /// # Errors
    /// On I/O or JSON errors.
    pub fn manifest(&self, name: &str) -> Result<Manifest, LakeError> {
        let p = self.snapshots().join(name).join("manifest.json");
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        serde_json::from_str(&text).map_err(|e| pq_err(&p, e))
    }
}

/// Write a file atomically: temp file, fsync, rename, fsync of the directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LakeError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let fin = dir.join(name);
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &fin).map_err(io_err(&fin))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), LakeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// A snapshot being written.
#[derive(Debug)]
pub struct Staged {
    lake: Lake,
    /// The snapshot's final name.
    pub name: String,
    /// The staging directory: write table files and side files here.
    pub dir: PathBuf,
    /// The snapshot this one builds on.
    pub parent: Option<String>,
}

impl Staged {
    /// Publish: fsync, rename the staging directory into place, switch `CURRENT`.
    ///
    /// # Errors
    /// On I/O errors; the previous snapshot stays current.
    pub fn publish(self, counts: BTreeMap<String, u64>) -> Result<Manifest, LakeError> {
        let manifest = Manifest {
            name: self.name.clone(),
            parent: self.parent.clone(),
            created: instant(chrono::Utc::now().timestamp_millis()),
            counts,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| pq_err(&self.dir, e))?;
        write_atomic(&self.dir, "manifest.json", &text)?;
        sync_dir(&self.dir)?;
        let fin = self.lake.snapshots().join(&self.name);
        fs::rename(&self.dir, &fin).map_err(io_err(&fin))?;
        sync_dir(&self.lake.snapshots())?;
        write_atomic(self.lake.root(), "CURRENT", self.name.as_bytes())?;
        Ok(manifest)
    }
}

/// Merge new resources into the rows of the previous snapshot: a resource whose content is
/// unchanged keeps its version and `last_updated`; a changed one gets the next version and
/// `now`; a deleted one is removed.
pub fn merge(previous: Vec<Row>, new: Vec<Prepared>, now: i64) -> (Vec<Row>, MergeStats) {
    let mut stats = MergeStats::default();
    let mut by_id: HashMap<String, Row> = previous.into_iter().map(|r| (r.id.clone(), r)).collect();
    for r in new {
        if r.deleted {
            if by_id.remove(&r.id).is_some() {
                stats.deleted += 1;
            }
            continue;
        }
        match by_id.get(&r.id) {
            Some(old) if old.content_hash == r.content_hash => stats.unchanged += 1,
            Some(old) => {
                let v = old.version_id + 1;
                stats.updated += 1;
                let id = r.id.clone();
                by_id.insert(id, r.into_row(v, now));
            }
            None => {
                stats.created += 1;
                let id = r.id.clone();
                by_id.insert(id, r.into_row(1, now));
            }
        }
    }
    let mut rows: Vec<Row> = by_id.into_values().collect();
    rows.sort_by(|a, b| (&a.patient_id, &a.id).cmp(&(&b.patient_id, &b.id)));
    (rows, stats)
}

/// What a merge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MergeStats {
    /// New resources.
    pub created: u64,
    /// Resources whose content changed (new version).
    pub updated: u64,
    /// Resources that came again unchanged.
    pub unchanged: u64,
    /// Resources removed.
    pub deleted: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dates_cover_their_precision() {
        let (s, e) = date_range("2020").unwrap();
        assert_eq!(instant(s), "2020-01-01T00:00:00.000Z");
        assert_eq!(instant(e), "2020-12-31T23:59:59.999Z");
        let (s, e) = date_range("2020-02").unwrap();
        assert_eq!(instant(s), "2020-02-01T00:00:00.000Z");
        assert_eq!(instant(e), "2020-02-29T23:59:59.999Z");
        let (s, e) = date_range("2021-03-04").unwrap();
        assert_eq!(instant(e - s + 1), instant(86_400_000));
        assert!(date_range("2021-13").is_none());
        assert!(date_range("junk").is_none());
        let (s, _) = date_range("2021-03-04T10:00:00+02:00").unwrap();
        assert_eq!(instant(s), "2021-03-04T08:00:00.000Z");
    }

    #[test]
    fn strings_fold_case_and_accents() {
        assert_eq!(normalize("  José   ÁLVAREZ "), "jose alvarez");
    }
}
