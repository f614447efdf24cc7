//! The lake: one Parquet table per resource type, in snapshots published atomically.
//!
//! ```text
//! LAKE/
//!   CURRENT                      name of the snapshot readers use (replaced atomically)
//!   data/<ResourceType>/*.parquet  immutable table files, shared by the snapshots that list
//!                                them; each sorted by (patient_id, id) or id
//!   keys/<ResourceType>/*.keys   the key index's sorted runs (id → file, row, version,
//!                                hash), immutable, listed per snapshot like the files
//!   snapshots/<name>/
//!     manifest.json              the table files of each type, counts, the run that wrote it
//!     report.json, rejects.ndjson  the run's report and rejects
//! ```
//!
//! A table is the set of files its snapshot's manifest lists; every id is in exactly one of
//! them. A run writes only new files: the rows it adds or changes, and copies of the earlier
//! files it removes rows from (copy on write). Files no other snapshot lists are left alone,
//! so a delta costs in proportion to the delta and the files it touches, not to the lake.
//!
//! Invariants of [`Staged::publish`]: a snapshot becomes visible only when all its files are
//! written and synced (fsync of files, then of their directories, then the pointer switch by
//! rename); a crash at any moment leaves `CURRENT` naming the previous, complete snapshot;
//! partial work lives only in `snapshots/.tmp-*` and in data files and key runs no manifest
//! lists, which readers never look at and the next run removes. One run at a time holds
//! `LAKE/.lock`.
//!
//! Each row: `id`, `patient_id`, `version_id`, `last_updated`, `content_hash`, `resource`
//! (FHIR JSON), then the index columns of every search parameter of the type (see
//! [`schema`]).

use std::collections::BTreeMap;
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
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::basic::{Compression, Encoding};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::file::writer::SerializedFileWriter;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::registry::{self, IndexLists, IndexValue, ParamType, SearchParam};
use crate::{Json, Resource};

mod json_column;

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
    /// A key index file is damaged (a checksum or its sizes do not match), or the index
    /// places an id in a row of a table file that does not hold it; the type's index is
    /// rebuilt from its table (by this run, or by the next one).
    #[error("key index {path}: {message}")]
    KeyIndex {
        /// The index file, or the table file it disagrees with.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// Another run (or prune) holds the lake's lock.
    #[error("another fhirlake run is writing the lake {0} (it holds {0}/.lock)")]
    Busy(String),
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

/// A Parquet, Arrow or encoding error of `path`. An I/O error inside one (parquet-rs wraps
/// the file's write errors) stays an I/O error, so that "disk full" or "permission denied"
/// keeps its kind for the operator's message.
fn pq_err<E: std::fmt::Display + 'static>(path: &Path, e: E) -> LakeError {
    match io_cause(&e) {
        Some(source) => LakeError::Io {
            path: path.display().to_string(),
            source,
        },
        None => LakeError::Parquet {
            path: path.display().to_string(),
            message: e.to_string(),
        },
    }
}

/// The I/O error a Parquet or Arrow error carries, rebuilt with its OS error code (or kind).
fn io_cause(e: &dyn std::any::Any) -> Option<std::io::Error> {
    use arrow::error::ArrowError;
    use parquet::errors::ParquetError;
    let io = if let Some(ParquetError::External(inner)) = e.downcast_ref::<ParquetError>() {
        inner.downcast_ref::<std::io::Error>()?
    } else if let Some(ArrowError::IoError(_, io)) = e.downcast_ref::<ArrowError>() {
        io
    } else {
        return None;
    };
    Some(match io.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(io.kind(), io.to_string()),
    })
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
    let s = ingest::layout::trim(s);
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
            let d = match ymd(s.as_bytes()) {
                Some((y, m, d)) => day(y, m, d)?,
                None => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?,
            };
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

/// The year, month and day of a plain `YYYY-MM-DD` (ASCII digits only); `None` for anything
/// else, which then goes through chrono's parser.
fn ymd(b: &[u8]) -> Option<(i32, u32, u32)> {
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    Some((digits(0..4)? as i32, digits(5..7)?, digits(8..10)?))
}

/// One stored row, as read back from a table file.
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

/// Format epoch ms as a FHIR instant.
pub fn instant(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Lower-case hex of a 128-bit hash, 32 digits (what `{:032x}` gives, without `fmt`).
fn lower_hex_128(v: u128) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[((v >> (124 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// Where `meta.versionId` and `meta.lastUpdated` go in a serialized resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetaSlot {
    /// After the last element of a non-empty `meta` object, before its `}`.
    Append(usize),
    /// Inside an empty `meta` object, before its `}`.
    Empty(usize),
    /// No `meta`: a new one before the resource's closing `}`.
    Create(usize),
}

/// A mapped resource in compact form, ready for the lake: its JSON serialized once (without
/// `meta.versionId`/`meta.lastUpdated`, which depend on the merge), the hash of that JSON, and
/// the values of every search parameter of its type: recorded by the builder that wrote the
/// JSON (C4BB), or extracted while its tree was at hand (formulary), so that nothing parses it
/// again.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Resource type.
    pub resource_type: &'static str,
    /// Logical id.
    pub id: String,
    /// Compartment.
    pub patient_id: Option<String>,
    /// [`hash_text`] of the content without the meta the lake sets (the table stores it as
    /// 32 hex digits).
    pub content_hash: u128,
    /// The JSON, without `meta.versionId` and `meta.lastUpdated`.
    pub text: String,
    meta: MetaSlot,
    /// Index values, one list per non-common search parameter of the type, in
    /// [`index_params`] order.
    pub index: IndexLists,
    /// Whether the source deleted it.
    pub deleted: bool,
}

/// The search parameters that have index columns in a type's table, in column order.
pub fn index_params(resource_type: &str) -> &'static [&'static SearchParam] {
    static BY_TYPE: std::sync::OnceLock<Vec<(&'static str, Vec<&'static SearchParam>)>> =
        std::sync::OnceLock::new();
    let all = BY_TYPE.get_or_init(|| {
        registry::resource_types()
            .into_iter()
            .map(|t| {
                let params = registry::for_type(t).filter(|p| !p.is_common()).collect();
                (t, params)
            })
            .collect()
    });
    all.iter()
        .find(|(t, _)| *t == resource_type)
        .map(|(_, p)| p.as_slice())
        .unwrap_or(&[])
}

/// The content hash of serialized JSON: its 128-bit XXH3 (stored as 32 hex digits).
///
/// It only tells whether a resource changed between runs (ids are not derived from it), so a
/// fast non-cryptographic hash does: on an 8 KB claim document it costs a few percent of what
/// SHA-256 did. Lakes written before carry [`legacy_hash`] values; see there.
pub fn hash_text(text: &str) -> u128 {
    twox_hash::XxHash3_128::oneshot(text.as_bytes())
}

/// The content hash earlier lakes stored: the first 128 bits of the JSON's
/// SHA-256, as the number its 32 hex digits spell. A run that finds a stored row whose hash
/// is not the [`hash_text`] of the new JSON compares it with this before it calls the
/// resource changed, so upgrading does not write a new version of every resource.
pub fn legacy_hash(text: &str) -> u128 {
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

impl Prepared {
    /// Serialize a mapped resource, hash it and extract its index values. A resource whose
    /// builder wrote its JSON directly brings its text and index values along.
    pub fn new(r: Resource) -> Self {
        let (text, meta, index) = match r.json {
            Json::Text(w) => (w.text, MetaSlot::Append(w.meta_end), w.index),
            Json::Tree(json) => Self::from_tree(r.resource_type, json),
        };
        let content_hash = hash_text(&text);
        Self {
            resource_type: r.resource_type,
            id: r.id,
            patient_id: r.patient_id,
            content_hash,
            text,
            meta,
            index,
            deleted: r.deleted,
        }
    }

    fn from_tree(resource_type: &str, mut json: Value) -> (String, MetaSlot, IndexLists) {
        if let Some(meta) = json.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
        }
        let text = json.to_string();
        let meta = match json.get("meta") {
            Some(m @ Value::Object(o)) => {
                let inner = m.to_string();
                let needle = format!("\"meta\":{inner}");
                match text.find(&needle) {
                    Some(at) if o.is_empty() => MetaSlot::Empty(at + needle.len() - 1),
                    Some(at) => MetaSlot::Append(at + needle.len() - 1),
                    None => MetaSlot::Create(text.len() - 1),
                }
            }
            _ => MetaSlot::Create(text.len().saturating_sub(1)),
        };
        let params = index_params(resource_type);
        let mut index = IndexLists::empty(0, 0);
        for p in params {
            index.push_list((p.extract)(&json));
        }
        (text, meta, index)
    }

    /// Write the JSON with `meta.versionId` and `meta.lastUpdated` set.
    pub fn write_stamped(
        &self,
        out: &mut impl std::fmt::Write,
        version_id: i64,
        last_updated: &str,
    ) -> std::fmt::Result {
        let mut version = itoa::Buffer::new();
        for piece in self.stamped_pieces(&mut version, version_id, last_updated) {
            out.write_str(piece)?;
        }
        Ok(())
    }

    /// The JSON with `meta.versionId` and `meta.lastUpdated` set, as the pieces to write one
    /// after the other (pieces, not `write!`: this runs for every row written).
    fn stamped_pieces<'a>(
        &'a self,
        version: &'a mut itoa::Buffer,
        version_id: i64,
        last_updated: &'a str,
    ) -> [&'a str; 9] {
        let (at, open, close) = match self.meta {
            MetaSlot::Append(at) => (at, ",", ""),
            MetaSlot::Empty(at) => (at, "", ""),
            MetaSlot::Create(at) => (at, ",\"meta\":{", "}"),
        };
        let (head, rest) = self.text.split_at(at.min(self.text.len()));
        [
            head,
            open,
            "\"versionId\":\"",
            version.format(version_id),
            "\",\"lastUpdated\":\"",
            last_updated,
            "\"",
            close,
            rest,
        ]
    }

    /// The JSON with `meta.versionId` and `meta.lastUpdated` set.
    pub fn stamped(&self, version_id: i64, last_updated: &str) -> String {
        let mut s = String::with_capacity(self.text.len() + 64);
        let _ = self.write_stamped(&mut s, version_id, last_updated);
        s
    }
}

/// A resource of this run on its way into a table file, with the version it gets.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// The resource.
    pub prepared: Prepared,
    /// Its `meta.versionId`.
    pub version_id: i64,
}

/// The place of `resource` among a table's columns (and its Parquet leaves).
const RESOURCE_COLUMN: usize = 5;

/// The columns of new rows other than `resource`, in the table's order.
fn columns_but_resource(resource_type: &str, rows: &[NewRow], last_updated: i64) -> Vec<ArrayRef> {
    let params = index_params(resource_type);
    let mut hashes = StringBuilder::with_capacity(rows.len(), rows.len() * 32);
    for r in rows {
        let hex = lower_hex_128(r.prepared.content_hash);
        hashes.append_value(std::str::from_utf8(&hex).unwrap_or_default());
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.prepared.id.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.prepared.patient_id.as_deref()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.version_id),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|_| last_updated))
                .with_timezone("UTC"),
        ),
        Arc::new(hashes.finish()),
    ];
    for (i, p) in params.iter().enumerate() {
        let values = rows.iter().map(|r| r.prepared.index.get(i));
        index_arrays(p, values, &mut cols);
    }
    cols
}

/// Append the index columns of one parameter, built from each row's values.
fn index_arrays<'a>(
    p: &SearchParam,
    values: impl Iterator<Item = &'a [IndexValue]>,
    cols: &mut Vec<ArrayRef>,
) {
    match p.kind {
        ParamType::Token => {
            let mut full = ListBuilder::new(StringBuilder::new());
            let mut code = ListBuilder::new(StringBuilder::new());
            let mut system = ListBuilder::new(StringBuilder::new());
            for vals in values {
                for v in vals {
                    if let IndexValue::Token { system: s, code: c } = v {
                        {
                            use std::fmt::Write as _;
                            let v = full.values();
                            let _ = v.write_str(s);
                            let _ = v.write_str("|");
                            let _ = v.write_str(c);
                            v.append_value("");
                        }
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
            let mut norm = StringBuilder::new();
            let mut exact = StringBuilder::new();
            for vals in values {
                let strs = vals.iter().filter_map(|v| match v {
                    IndexValue::String(s) => Some(s.as_str()),
                    _ => None,
                });
                let normalized: Vec<String> = strs.clone().map(normalize).collect();
                norm.append_value(joined(normalized.iter().map(String::as_str)));
                exact.append_value(joined(strs));
            }
            cols.push(Arc::new(norm.finish()));
            cols.push(Arc::new(exact.finish()));
        }
        ParamType::Reference => {
            let mut refs = ListBuilder::new(StringBuilder::new());
            for vals in values {
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
            let mut starts = Vec::new();
            let mut ends = Vec::new();
            for vals in values {
                let (lo, hi) = date_bounds(vals);
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

/// The lowest start and highest end of a date parameter's values; an open end stretches to
/// the end of time, an open start to the other bound's range.
fn date_bounds(vals: &[IndexValue]) -> (Option<i64>, Option<i64>) {
    let mut lo: Option<i64> = None;
    let mut hi: Option<i64> = None;
    let mut open_end = false;
    for v in vals {
        if let IndexValue::Date { start, end } = v {
            let s = start.as_deref().and_then(date_range).map(|r| r.0);
            let e = end.as_deref().and_then(date_range).map(|r| r.1);
            let s = s.or_else(|| end.as_deref().and_then(date_range).map(|r| r.0));
            if end.is_none() {
                open_end = true;
            }
            let e = e.or_else(|| start.as_deref().and_then(date_range).map(|r| r.1));
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
    (lo, hi)
}

fn writer_props(resource_type: &str) -> WriterProperties {
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
    // Values unique to a row ([`unique_columns`]) are not dictionary-encoded: a dictionary as
    // large as the values would only cost time. Min/max statistics of whole documents and
    // of hashes help no query.
    //
    // Data pages are version 2, which compresses the values straight from the encoder's
    // buffer (a version 1 page first copies them, levels and values, into one more buffer:
    // for the JSON column that is a copy of every document). Values that are not
    // dictionary-encoded stay PLAIN, the encoding every reader knows (version 2 would
    // otherwise pick the DELTA encodings).
    let column = |c: &str| parquet::schema::types::ColumnPath::from(c);
    let mut props = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_encoding(Encoding::PLAIN)
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(256)
        .set_write_batch_size(256)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_statistics_enabled(column("resource"), EnabledStatistics::None)
        .set_column_statistics_enabled(column("content_hash"), EnabledStatistics::None)
        .set_column_bloom_filter_enabled("id".into(), true)
        .set_column_bloom_filter_enabled("patient_id".into(), true)
        .set_sorting_columns(Some(sort))
        .set_created_by("fhirlake".into());
    let zstd = json_column::compression();
    for path in unique_columns() {
        props = props
            .set_column_compression(path.clone(), zstd)
            .set_column_dictionary_enabled(path.clone(), false);
    }
    props.build()
}

/// The columns whose values are unique to a row (the JSON, its hash, the id, the
/// identifiers): PLAIN and zstd-compressed, where zstd saves the most space. The others
/// (dates, references, codes) are dictionary-encoded, their pages mostly short runs of
/// dictionary indexes, which Snappy compresses at a fraction of zstd's cost per page: zstd
/// took about 4.5 % of a carrier run's CPU on them, and made a fresh compression context,
/// with fresh memory, for every column of every row group.
fn unique_columns() -> &'static [parquet::schema::types::ColumnPath] {
    static PATHS: std::sync::OnceLock<Vec<parquet::schema::types::ColumnPath>> =
        std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        let item = |c: &str| {
            parquet::schema::types::ColumnPath::new(vec![c.into(), "list".into(), "item".into()])
        };
        vec![
            "resource".into(),
            "content_hash".into(),
            "id".into(),
            item("sp_identifier"),
            item("sp_identifier__code"),
        ]
    })
}

/// Rows per row group of a table file.
pub const ROW_GROUP_ROWS: usize = 8192;

/// Rows per record batch handed to the Parquet writer.
const WRITE_BATCH_ROWS: usize = 512;

/// Write one table file from new rows, already in the table's sort order, and fsync it.
/// Returns the number of rows written.
///
/// # Errors
/// On I/O or Parquet errors.
pub fn write_file(
    path: &Path,
    resource_type: &str,
    rows: Vec<NewRow>,
    last_updated: i64,
) -> Result<u64, LakeError> {
    let (rows, file) = write_file_unsynced(path, resource_type, rows, last_updated)?;
    sync_file(path, &file)?;
    Ok(rows)
}

/// [`write_file`] without the fsync: returns the row count and the open file, which the caller
/// must pass to [`sync_file`] before anything refers to it.
///
/// # Errors
/// On I/O or Parquet errors.
pub fn write_file_unsynced(
    path: &Path,
    resource_type: &str,
    rows: Vec<NewRow>,
    last_updated: i64,
) -> Result<(u64, File), LakeError> {
    let mut w = TableWriter::create(path, resource_type)?;
    // Batches smaller than a row group keep each batch's buffers (the JSON column is ~8 KB a
    // row) small enough for the allocator to reuse, instead of mapping and zeroing fresh
    // memory for every batch; the writer still cuts row groups of `ROW_GROUP_ROWS`. Each
    // batch's rows are freed once written, so the file's rows leave memory as it is written.
    let mut rows = rows.into_iter();
    let mut chunk = Vec::with_capacity(WRITE_BATCH_ROWS);
    loop {
        chunk.extend(rows.by_ref().take(WRITE_BATCH_ROWS));
        if chunk.is_empty() {
            break;
        }
        w.write_rows(&chunk, last_updated)?;
        chunk.clear();
    }
    w.close()
}

/// Flush a written file's data to disk.
///
/// # Errors
/// When the fsync fails.
pub fn sync_file(path: &Path, file: &File) -> Result<(), LakeError> {
    file.sync_all().map_err(io_err(path))
}

/// A table file being written batch by batch.
///
/// The `resource` column is encoded by the `json_column` module straight from each row's
/// text; the other columns go through parquet-rs's Arrow column writers. Row groups hold
/// [`ROW_GROUP_ROWS`] rows.
pub struct TableWriter {
    path: PathBuf,
    resource_type: String,
    /// The table's fields but `resource`, in order.
    fields: Vec<arrow::datatypes::FieldRef>,
    file: SerializedFileWriter<File>,
    columns: ArrowRowGroupWriterFactory,
    row_groups: usize,
    /// The row group being filled.
    group: Option<Group>,
    zstd: json_column::Zstd,
    rows: u64,
}

/// The open row group: a column writer per leaf but `resource`, and that column's pages.
struct Group {
    columns: Vec<ArrowColumnWriter>,
    json: json_column::JsonColumn,
    rows: usize,
}

impl TableWriter {
    /// Create the file.
    ///
    /// # Errors
    /// On I/O or Parquet errors.
    pub fn create(path: &Path, resource_type: &str) -> Result<Self, LakeError> {
        let err = |e| pq_err(path, e);
        let file = File::create(path).map_err(io_err(path))?;
        let schema = schema(resource_type);
        let mut props = writer_props(resource_type);
        let parquet_schema = ArrowSchemaConverter::new()
            .with_coerce_types(props.coerce_types())
            .convert(&schema)
            .map_err(err)?;
        add_encoded_arrow_schema_to_metadata(&schema, &mut props);
        let props = Arc::new(props);
        let file = SerializedFileWriter::new(file, parquet_schema.root_schema_ptr(), props)
            .map_err(err)?;
        let columns = ArrowRowGroupWriterFactory::new(&file, schema.clone());
        let mut fields = schema.fields().to_vec();
        fields.remove(RESOURCE_COLUMN);
        Ok(Self {
            path: path.to_path_buf(),
            resource_type: resource_type.to_string(),
            fields,
            file,
            columns,
            row_groups: 0,
            group: None,
            zstd: json_column::Zstd::new().map_err(err)?,
            rows: 0,
        })
    }

    /// Append new rows, stamped with `last_updated` (epoch ms).
    ///
    /// # Errors
    /// On I/O or Parquet errors.
    pub fn write_rows(&mut self, rows: &[NewRow], last_updated: i64) -> Result<(), LakeError> {
        let stamp = instant(last_updated);
        let cols = columns_but_resource(&self.resource_type, rows, last_updated);
        self.write_parts(&cols, rows.len(), |json, zstd, i| {
            let r = &rows[i];
            let mut version = itoa::Buffer::new();
            json.push(
                &r.prepared
                    .stamped_pieces(&mut version, r.version_id, &stamp),
                zstd,
            )
        })
    }

    /// Append a batch of the table's schema.
    ///
    /// # Errors
    /// On I/O or Parquet errors.
    pub fn write(&mut self, b: &RecordBatch) -> Result<(), LakeError> {
        let mut cols = b.columns().to_vec();
        if cols.len() != self.fields.len() + 1 {
            return Err(pq_err(
                &self.path,
                "batch does not have the table's columns",
            ));
        }
        let resource = cols.remove(RESOURCE_COLUMN);
        let resource = resource
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| pq_err(&self.path, "column resource is not text"))?;
        self.write_parts(&cols, b.num_rows(), |json, zstd, i| {
            json.push(&[resource.value(i)], zstd)
        })
    }

    /// Append `n` rows: `cols` are the columns but `resource` (in the table's order), `json`
    /// pushes row `i`'s document. Cuts row groups at [`ROW_GROUP_ROWS`].
    fn write_parts(
        &mut self,
        cols: &[ArrayRef],
        n: usize,
        mut json: impl FnMut(
            &mut json_column::JsonColumn,
            &mut json_column::Zstd,
            usize,
        ) -> parquet::errors::Result<()>,
    ) -> Result<(), LakeError> {
        let mut done = 0;
        while done < n {
            let mut group = match self.group.take() {
                Some(group) => group,
                None => self.open_group()?,
            };
            let err = |e| pq_err(&self.path, e);
            let take = (ROW_GROUP_ROWS - group.rows).min(n - done);
            for ((field, col), writer) in self.fields.iter().zip(cols).zip(&mut group.columns) {
                let part = col.slice(done, take);
                for leaf in compute_leaves(field, &part).map_err(err)? {
                    writer.write(&leaf).map_err(err)?;
                }
            }
            for i in done..done + take {
                json(&mut group.json, &mut self.zstd, i).map_err(err)?;
            }
            group.rows += take;
            done += take;
            self.rows += take as u64;
            if group.rows >= ROW_GROUP_ROWS {
                self.close_group(group)?;
            } else {
                self.group = Some(group);
            }
        }
        Ok(())
    }

    /// Start the next row group: a column writer per leaf but `resource`, and its pages.
    fn open_group(&mut self) -> Result<Group, LakeError> {
        let mut columns = self
            .columns
            .create_column_writers(self.row_groups)
            .map_err(|e| pq_err(&self.path, e))?;
        self.row_groups += 1;
        columns.remove(RESOURCE_COLUMN);
        let descr = self.file.schema_descr().column(RESOURCE_COLUMN);
        Ok(Group {
            columns,
            json: json_column::JsonColumn::new(descr),
            rows: 0,
        })
    }

    /// Write a row group's column chunks, in leaf order.
    fn close_group(&mut self, group: Group) -> Result<(), LakeError> {
        let err = |e| pq_err(&self.path, e);
        let mut rg = self.file.next_row_group().map_err(err)?;
        let append =
            |column: ArrowColumnWriter, rg: &mut _| column.close()?.append_to_row_group(rg);
        let mut columns = group.columns.into_iter();
        for column in columns.by_ref().take(RESOURCE_COLUMN) {
            append(column, &mut rg).map_err(err)?;
        }
        let (data, close) = group.json.close(&mut self.zstd).map_err(err)?;
        rg.append_column(&data, close).map_err(err)?;
        for column in columns {
            append(column, &mut rg).map_err(err)?;
        }
        rg.close().map_err(err)?;
        Ok(())
    }

    /// Close and fsync the file; returns its row count.
    ///
    /// # Errors
    /// On I/O or Parquet errors.
    pub fn finish(self) -> Result<u64, LakeError> {
        let path = self.path.clone();
        let (rows, file) = self.close()?;
        sync_file(&path, &file)?;
        Ok(rows)
    }

    /// Close the file without fsync; returns its row count and the file, for [`sync_file`].
    ///
    /// # Errors
    /// On I/O or Parquet errors.
    pub fn close(mut self) -> Result<(u64, File), LakeError> {
        if let Some(group) = self.group.take() {
            self.close_group(group)?;
        }
        let file = self.file.into_inner().map_err(|e| pq_err(&self.path, e))?;
        Ok((self.rows, file))
    }
}

fn open_batches(
    path: &Path,
    columns: &[&str],
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, LakeError> {
    let file = File::open(path).map_err(io_err(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err(path, e))?;
    let builder = if columns.is_empty() {
        builder
    } else {
        let roots: Vec<usize> = columns
            .iter()
            .filter_map(|c| builder.schema().index_of(c).ok())
            .collect();
        let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots);
        builder.with_projection(mask)
    };
    builder
        .with_batch_size(ROW_GROUP_ROWS)
        .build()
        .map_err(|e| pq_err(path, e))
}

fn strings<'a>(b: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a StringArray, LakeError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| pq_err(path, format!("column {name} is missing or not text")))
}

/// Read the base columns of a table file back.
///
/// # Errors
/// On I/O or Parquet errors.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, LakeError> {
    let mut out = Vec::new();
    let cols = [
        "id",
        "patient_id",
        "version_id",
        "last_updated",
        "content_hash",
        "resource",
    ];
    for b in open_batches(path, &cols)? {
        let b = b.map_err(|e| pq_err(path, e))?;
        let (id, pid, hash, res) = (
            strings(&b, "id", path)?,
            strings(&b, "patient_id", path)?,
            strings(&b, "content_hash", path)?,
            strings(&b, "resource", path)?,
        );
        let ver = b
            .column_by_name("version_id")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
        let lu = b
            .column_by_name("last_updated")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>());
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

/// Call `f(row, id, version_id, content_hash)` for every row of a table file, in file order,
/// reading only those columns.
///
/// # Errors
/// On I/O or Parquet errors.
pub fn for_each_key(path: &Path, mut f: impl FnMut(u32, &str, i64, &str)) -> Result<(), LakeError> {
    let mut row = 0u32;
    for b in open_batches(path, &["id", "version_id", "content_hash"])? {
        let b = b.map_err(|e| pq_err(path, e))?;
        let id = strings(&b, "id", path)?;
        let hash = strings(&b, "content_hash", path)?;
        let ver = b
            .column_by_name("version_id")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| pq_err(path, "version_id is not Int64"))?;
        for i in 0..b.num_rows() {
            f(row, id.value(i), ver.value(i), hash.value(i));
            row += 1;
        }
    }
    Ok(())
}

/// The values of a list column (a reference or token parameter) of every row, with its id.
///
/// # Errors
/// On I/O or Parquet errors.
pub fn list_column(path: &Path, column: &str) -> Result<Vec<(String, Vec<String>)>, LakeError> {
    let mut out = Vec::new();
    for b in open_batches(path, &["id", column])? {
        let b = b.map_err(|e| pq_err(path, e))?;
        let id = strings(&b, "id", path)?;
        let list = b
            .column_by_name(column)
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::ListArray>())
            .ok_or_else(|| pq_err(path, format!("{column} is not a list")))?;
        for i in 0..b.num_rows() {
            let values = list.value(i);
            let values = values
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|a| a.iter().flatten().map(str::to_string).collect())
                .unwrap_or_default();
            out.push((id.value(i).to_string(), values));
        }
    }
    Ok(out)
}

/// Whether a table file lacks columns its type's table has now: it was written before a search
/// parameter was added to the registry, so its rows are not found by that parameter until a
/// run rewrites the file ([`copy_without`] fills the columns in).
///
/// # Errors
/// When the file cannot be opened or its footer read.
pub fn outdated(path: &Path, resource_type: &str) -> Result<bool, LakeError> {
    let file = File::open(path).map_err(io_err(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err(path, e))?;
    Ok(!has_columns_of(builder.schema(), resource_type))
}

/// Whether `has` holds every column of the type's table.
fn has_columns_of(has: &Schema, resource_type: &str) -> bool {
    schema(resource_type)
        .fields()
        .iter()
        .all(|f| has.index_of(f.name()).is_ok())
}

/// A batch of a table file in the table's current schema: as it is when it has it; otherwise
/// its base columns and resources as they are, with every index column made anew from the
/// stored JSON by the search registry's extractors (which find the values the builders
/// record, `tests/it/c4bb.rs`), so that no version or time moves.
fn upgraded(b: RecordBatch, resource_type: &str, path: &Path) -> Result<RecordBatch, LakeError> {
    let target = schema(resource_type);
    if b.num_columns() == target.fields().len() && has_columns_of(&b.schema(), resource_type) {
        return Ok(b);
    }
    let resources = strings(&b, "resource", path)?;
    let docs = (0..b.num_rows())
        .map(|i| serde_json::from_str::<Value>(resources.value(i)).map_err(|e| pq_err(path, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for f in target.fields().iter().take(RESOURCE_COLUMN + 1) {
        let c = b
            .column_by_name(f.name())
            .ok_or_else(|| pq_err(path, format!("column {} is missing", f.name())))?;
        cols.push(c.clone());
    }
    for p in index_params(resource_type) {
        let values: Vec<Vec<IndexValue>> = docs.iter().map(|d| (p.extract)(d)).collect();
        index_arrays(p, values.iter().map(Vec::as_slice), &mut cols);
    }
    RecordBatch::try_new(target, cols).map_err(|e| pq_err(path, e))
}

/// Copy a table file without the rows whose positions are keys of `dead`, and fsync the copy;
/// a file written before the table's current columns gets them ([`outdated`]).
/// Each dropped row must hold the id its entry stands for (`holds(entry, id)`), and be in the
/// file: a row is only ever dropped for the id the run meant to retire. Returns the number of
/// rows kept.
///
/// # Errors
/// On I/O or Parquet errors; [`LakeError::KeyIndex`] when a row to drop holds another id or
/// is past the file's end.
pub fn copy_without<K>(
    src: &Path,
    dst: &Path,
    resource_type: &str,
    dead: &std::collections::HashMap<u32, K>,
    holds: impl Fn(&K, &str) -> bool,
) -> Result<u64, LakeError> {
    let mut w = TableWriter::create(dst, resource_type)?;
    let (mut row, mut dropped) = (0u32, 0);
    for b in open_batches(src, &[])? {
        let b = upgraded(b.map_err(|e| pq_err(src, e))?, resource_type, src)?;
        let ids = b
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| pq_err(src, "no id column"))?;
        let mut keep = Vec::with_capacity(b.num_rows());
        for i in 0..b.num_rows() {
            let at = row + i as u32;
            match dead.get(&at) {
                None => keep.push(Some(true)),
                Some(k) if holds(k, ids.value(i)) => {
                    keep.push(Some(false));
                    dropped += 1;
                }
                Some(_) => {
                    // The row is named, the id is not (it may name a member).
                    return Err(LakeError::KeyIndex {
                        path: src.display().to_string(),
                        message: format!(
                            "row {at} does not hold the id the key index places there"
                        ),
                    });
                }
            }
        }
        row += b.num_rows() as u32;
        let keep = arrow::array::BooleanArray::from(keep);
        let kept = arrow::compute::filter_record_batch(&b, &keep).map_err(|e| pq_err(src, e))?;
        if kept.num_rows() > 0 {
            w.write(&kept)?;
        }
    }
    if dropped != dead.len() {
        return Err(LakeError::KeyIndex {
            path: src.display().to_string(),
            message: format!("the key index places ids past its last row ({row})"),
        });
    }
    w.finish()
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
    /// The table files of each resource type. Empty in snapshots written before tables
    /// became file lists (their tables are `<Type>.parquet` in the snapshot directory).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, Vec<TableFile>>,
    /// The key index of each type: sorted runs (paths relative to the lake root, oldest first)
    /// that say which file and row hold each id, so that a run finds the rows it replaces
    /// without reading the table. Absent for types of lakes written before key indexes (the
    /// next run that touches such a type builds it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, Vec<String>>,
}

/// One table file of a snapshot.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TableFile {
    /// Path relative to the lake root (`data/<Type>/<name>.parquet`).
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// The file's number among its type's files (from 1; 0 in lakes written before key
    /// indexes): how the type's key index names it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub number: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Holds the lake's writer lock (`LAKE/.lock`) until dropped: one run or prune at a time.
#[derive(Debug)]
pub struct LakeLock {
    _file: File,
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

    /// The legacy table file of a type in a snapshot directory (snapshots written before
    /// tables became file lists).
    pub fn table_path(snapshot: &Path, resource_type: &str) -> PathBuf {
        snapshot.join(format!("{resource_type}.parquet"))
    }

    /// The directory of a type's table files.
    pub fn data_dir(&self, resource_type: &str) -> PathBuf {
        self.root.join("data").join(resource_type)
    }

    /// The directory of a type's key index runs.
    pub fn keys_dir(&self, resource_type: &str) -> PathBuf {
        self.root.join(Self::keys_rel(resource_type))
    }

    /// [`Lake::keys_dir`] relative to the lake root, as manifests name the runs in it.
    pub fn keys_rel(resource_type: &str) -> String {
        format!("keys/{resource_type}")
    }

    /// `keys/<Type>.rebuild`: left by a run that found a type's key index placing an id in a
    /// row holding another, or by `fhirlake snapshots --verify` finding it wrong, it makes the
    /// next run that touches the type build the index from the table; that run removes it once
    /// its snapshot is published.
    pub fn rebuild_marker(&self, resource_type: &str) -> PathBuf {
        self.root
            .join("keys")
            .join(format!("{resource_type}.rebuild"))
    }

    /// Leave the [`Lake::rebuild_marker`] of a type, saying who found its index wrong.
    ///
    /// # Errors
    /// When the marker cannot be written.
    pub fn mark_key_index_wrong(
        &self,
        resource_type: &str,
        found_by: &str,
    ) -> Result<(), LakeError> {
        let marker = self.rebuild_marker(resource_type);
        fs::create_dir_all(self.root.join("keys"))
            .and_then(|()| fs::write(&marker, format!("{found_by} found the key index wrong\n")))
            .map_err(io_err(&marker))
    }

    /// Take the writer lock, or fail when another run holds it.
    ///
    /// # Errors
    /// [`LakeError::Busy`] when another process holds the lock; I/O errors.
    pub fn lock(&self) -> Result<LakeLock, LakeError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let p = self.root.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p))?;
        match file.try_lock() {
            Ok(()) => Ok(LakeLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => {
                Err(LakeError::Busy(self.root.display().to_string()))
            }
            Err(fs::TryLockError::Error(e)) => Err(io_err(&p)(e)),
        }
    }

    /// The table files of every type in a snapshot, as absolute paths.
    ///
    /// # Errors
    /// On I/O or JSON errors.
    pub fn snapshot_files(&self, name: &str) -> Result<BTreeMap<String, Vec<PathBuf>>, LakeError> {
        let dir = self.snapshots().join(name);
        let mut out = BTreeMap::new();
        for t in registry::resource_types() {
            let files = Self::table_files(&dir, t)?;
            if !files.is_empty() {
                out.insert(t.to_string(), files);
            }
        }
        Ok(out)
    }

    /// Remove table files and key index runs no published snapshot refers to (left by crashed
    /// runs or by pruned snapshots). Call with the lock held.
    fn collect_garbage(&self) -> Result<(), LakeError> {
        let mut referenced = std::collections::HashSet::new();
        for name in self.list()? {
            let m = self.manifest(&name)?;
            for f in m.files.values().flatten() {
                referenced.insert(self.root.join(&f.path));
            }
            for k in m.keys.values().flatten() {
                referenced.insert(self.root.join(k));
            }
        }
        let types = ["data", "keys"]
            .iter()
            .filter_map(|d| fs::read_dir(self.root.join(d)).ok())
            .flatten();
        for t in types.flatten() {
            let Ok(files) = fs::read_dir(t.path()) else {
                continue;
            };
            for f in files.flatten() {
                if !referenced.contains(&f.path()) {
                    fs::remove_file(f.path()).map_err(io_err(&f.path()))?;
                }
            }
            sync_dir(&t.path())?;
        }
        Ok(())
    }

    /// The Parquet files holding a type's table in a published snapshot directory, in a stable
    /// order; empty when the snapshot has no rows of that type. Every id of the table is in
    /// exactly one of them; each file is sorted by `(patient_id, id)` for compartment types
    /// and by `id` otherwise.
    ///
    /// # Errors
    /// On I/O errors.
    pub fn table_files(snapshot: &Path, resource_type: &str) -> Result<Vec<PathBuf>, LakeError> {
        let p = snapshot.join("manifest.json");
        let manifest: Manifest = match fs::read_to_string(&p) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| pq_err(&p, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => return Err(io_err(&p)(e)),
        };
        if manifest.files.is_empty() {
            let legacy = Self::table_path(snapshot, resource_type);
            return Ok(if legacy.is_file() {
                vec![legacy]
            } else {
                Vec::new()
            });
        }
        let root = snapshot
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        Ok(manifest
            .files
            .get(resource_type)
            .map(|fs| fs.iter().map(|f| root.join(&f.path)).collect())
            .unwrap_or_default())
    }

    /// Begin a new snapshot: a staging directory that only [`Staged::publish`] makes visible,
    /// under the writer lock. Leftovers of crashed runs are removed first.
    ///
    /// # Errors
    /// [`LakeError::Busy`] when another run holds the lake; I/O errors.
    pub fn stage(&self) -> Result<Staged, LakeError> {
        let lock = self.lock()?;
        self.collect_garbage()?;
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
            published: false,
            _lock: lock,
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
        let _lock = self.lock()?;
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
        self.collect_garbage()?;
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
    /// Set by [`Staged::publish`]; a snapshot dropped unpublished removes what it wrote.
    published: bool,
    _lock: LakeLock,
}

impl Drop for Staged {
    /// A run that fails (disk full, permission denied, an unreadable input, …) leaves the lake
    /// as it was: its staging directory and the table files and key runs it wrote are
    /// removed, under the lock it still holds. (A killed run's leftovers are removed by the
    /// next run's [`Lake::stage`].) A snapshot that `CURRENT` already names is never removed,
    /// whatever failed after the switch.
    fn drop(&mut self) {
        if self.published {
            return;
        }
        if self.lake.current_name().ok().flatten().as_deref() == Some(self.name.as_str()) {
            return;
        }
        let _ = fs::remove_dir_all(&self.dir);
        let renamed = self.lake.snapshots().join(&self.name);
        if renamed.exists() {
            let _ = fs::remove_dir_all(&renamed);
        }
        if let Err(e) = self.lake.collect_garbage() {
            tracing::warn!(error = %e, "removing the files of a run that did not publish");
        }
    }
}

impl Staged {
    /// The lake being written.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Publish: fsync, rename the staging directory into place, switch `CURRENT`.
    ///
    /// # Errors
    /// On I/O errors; the previous snapshot stays current.
    pub fn publish(
        mut self,
        counts: BTreeMap<String, u64>,
        files: BTreeMap<String, Vec<TableFile>>,
        keys: BTreeMap<String, Vec<String>>,
    ) -> Result<Manifest, LakeError> {
        for t in files.keys() {
            for dir in [self.lake.data_dir(t), self.lake.keys_dir(t)] {
                if dir.is_dir() {
                    sync_dir(&dir)?;
                }
            }
        }
        let manifest = Manifest {
            name: self.name.clone(),
            parent: self.parent.clone(),
            created: instant(chrono::Utc::now().timestamp_millis()),
            counts,
            files,
            keys,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| pq_err(&self.dir, e))?;
        write_atomic(&self.dir, "manifest.json", &text)?;
        sync_dir(&self.dir)?;
        let fin = self.lake.snapshots().join(&self.name);
        fs::rename(&self.dir, &fin).map_err(io_err(&fin))?;
        sync_dir(&self.lake.snapshots())?;
        write_atomic(self.lake.root(), "CURRENT", self.name.as_bytes())?;
        self.published = true;
        // Files this run wrote and then replaced (side products written out early, then
        // rewritten with a richer description) are in no snapshot: remove them now rather
        // than at the next run, so that the lake holds only what its snapshots list. The
        // snapshot is published either way; what is left is removed by the next run.
        if let Err(e) = self.lake.collect_garbage() {
            tracing::warn!(error = %e, "removing table files no snapshot lists");
        }
        Ok(manifest)
    }
}

/// What a run did to a table.
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
    /// The run built the type's key index from its table (a lake written before key indexes,
    /// an index that could not be read or was found damaged, or one marked wrong).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub key_index_built: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::ArrowWriter;

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
        for d in [
            "2020-02-29",
            "2021-02-29",
            "2021-00-10",
            "0000-01-01",
            "9999-12-31",
            "2021-1-100",
        ] {
            let chrono = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp_millis());
            assert_eq!(date_range(d).map(|r| r.0), chrono, "{d}");
        }
        let (s, _) = date_range("2021-03-04T10:00:00+02:00").unwrap();
        assert_eq!(instant(s), "2021-03-04T08:00:00.000Z");
    }

    #[test]
    fn publishing_removes_the_files_no_snapshot_lists() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::new(dir.path());
        let staged = lake.stage().unwrap();
        let data = lake.data_dir("Patient");
        fs::create_dir_all(&data).unwrap();
        // Two files written by the run: one the snapshot lists, one it replaced.
        let (kept, replaced) = (data.join("a-00001.parquet"), data.join("a-00002.parquet"));
        write_file(&kept, "Patient", varied_rows(3), 0).unwrap();
        write_file(&replaced, "Patient", varied_rows(3), 0).unwrap();
        let files = BTreeMap::from([(
            "Patient".to_string(),
            vec![TableFile {
                path: "data/Patient/a-00001.parquet".into(),
                rows: 3,
                number: 1,
            }],
        )]);
        let counts = BTreeMap::from([("Patient".to_string(), 3)]);
        staged.publish(counts, files, BTreeMap::new()).unwrap();
        assert!(kept.is_file());
        assert!(!replaced.exists());
    }

    #[test]
    fn one_writer_at_a_time() {
        let dir = std::env::temp_dir().join(format!("fhirlake-lock-{}", std::process::id()));
        let lake = Lake::new(&dir);
        let staged = lake.stage().unwrap();
        assert!(matches!(lake.stage(), Err(LakeError::Busy(_))));
        assert!(matches!(lake.prune(1), Err(LakeError::Busy(_))));
        drop(staged);
        assert!(lake.stage().is_ok());
        let _ = fs::remove_dir_all(&dir);
    }

    /// The record batch `ArrowWriter` would be given for new rows: the writer before
    /// [`json_column`], kept as the oracle of [`table_writer_matches_arrow_writer`].
    fn batch(
        resource_type: &str,
        rows: &[NewRow],
        last_updated: i64,
    ) -> Result<RecordBatch, LakeError> {
        let stamp = instant(last_updated);
        let mut resource = StringBuilder::with_capacity(
            rows.len(),
            rows.iter().map(|r| r.prepared.text.len() + 64).sum(),
        );
        for r in rows {
            let _ = r
                .prepared
                .write_stamped(&mut resource, r.version_id, &stamp);
            resource.append_value("");
        }
        let mut cols = columns_but_resource(resource_type, rows, last_updated);
        cols.insert(RESOURCE_COLUMN, Arc::new(resource.finish()));
        RecordBatch::try_new(schema(resource_type), cols)
            .map_err(|e| pq_err(Path::new(resource_type), e))
    }

    /// Rows of varied sizes: some pages are cut by bytes, some by rows, over several row
    /// groups; a few rows are incompressible.
    fn varied_rows(n: usize) -> Vec<NewRow> {
        let mut noise = 0x9e37_79b9_7f4a_7c15_u64;
        (0..n)
            .map(|i| {
                let pad = match i % 7 {
                    0 => 20_000,
                    1 => 0,
                    _ => 300 + i % 2_000,
                };
                let text: String = if i % 97 == 0 {
                    (0..pad)
                        .map(|_| {
                            noise ^= noise << 13;
                            noise ^= noise >> 7;
                            noise ^= noise << 17;
                            char::from(b'a' + (noise % 26) as u8)
                        })
                        .collect()
                } else {
                    "x".repeat(pad)
                };
                let json = serde_json::json!({"resourceType": "Patient", "id": format!("p{i:06}"),
                    "meta": {"profile": ["x"]}, "name": [{"text": text}],
                    "identifier": [{"system": "s", "value": format!("m{i}")}]});
                NewRow {
                    prepared: Prepared::new(Resource {
                        resource_type: "Patient",
                        id: format!("p{i:06}"),
                        patient_id: Some(format!("p{i:06}")),
                        json: Json::Tree(json),
                        deleted: false,
                    }),
                    version_id: 1 + (i % 3) as i64,
                }
            })
            .collect()
    }

    /// `TableWriter` writes the `resource` column itself: the file must read back as the
    /// `ArrowWriter` file of the same rows does, with the same column chunk metadata.
    #[test]
    fn table_writer_matches_arrow_writer() {
        let dir = tempfile::tempdir().unwrap();
        let rows = varied_rows(20_000);
        let at = 1_700_000_000_123;
        let ours = dir.path().join("ours.parquet");
        write_file(&ours, "Patient", rows.clone(), at).unwrap();
        let theirs = dir.path().join("theirs.parquet");
        let mut w = ArrowWriter::try_new(
            File::create(&theirs).unwrap(),
            schema("Patient"),
            Some(writer_props("Patient")),
        )
        .unwrap();
        for chunk in rows.chunks(WRITE_BATCH_ROWS) {
            w.write(&batch("Patient", chunk, at).unwrap()).unwrap();
        }
        w.close().unwrap();

        let read = |p: &Path| -> Vec<RecordBatch> {
            open_batches(p, &[]).unwrap().map(|b| b.unwrap()).collect()
        };
        let (a, b) = (read(&ours), read(&theirs));
        assert_eq!(a.len(), b.len());
        assert_eq!(a, b);
        let docs = strings(&a[0], "resource", &ours).unwrap();
        assert_eq!(
            docs.value(3),
            rows[3].prepared.stamped(rows[3].version_id, &instant(at))
        );

        let meta = |p: &Path| {
            let f = File::open(p).unwrap();
            ParquetRecordBatchReaderBuilder::try_new_with_options(
                f,
                parquet::arrow::arrow_reader::ArrowReaderOptions::new()
                    .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required),
            )
            .unwrap()
            .metadata()
            .clone()
        };
        let (ma, mb) = (meta(&ours), meta(&theirs));
        assert_eq!(ma.num_row_groups(), 3);
        assert_eq!(ma.num_row_groups(), mb.num_row_groups());
        assert_eq!(
            ma.file_metadata().key_value_metadata(),
            mb.file_metadata().key_value_metadata()
        );
        assert_eq!(
            ma.file_metadata().schema_descr(),
            mb.file_metadata().schema_descr()
        );
        let offsets = ma.offset_index().unwrap();
        for (g, (ra, rb)) in ma.row_groups().iter().zip(mb.row_groups()).enumerate() {
            assert_eq!(ra.num_rows(), rb.num_rows());
            assert_eq!(ra.sorting_columns(), rb.sorting_columns());
            let (ca, cb) = (ra.column(RESOURCE_COLUMN), rb.column(RESOURCE_COLUMN));
            assert_eq!(ca.compression(), cb.compression());
            assert_eq!(ca.encodings_mask(), cb.encodings_mask());
            assert_eq!(ca.num_values(), cb.num_values());
            assert_eq!(ca.statistics(), cb.statistics());
            assert_eq!(ca.dictionary_page_offset(), None);
            assert_eq!(ca.page_encoding_stats(), cb.page_encoding_stats());
            // Every page is in the offset index; the pages cover the row group's rows.
            let pages = offsets[g][RESOURCE_COLUMN].page_locations();
            assert_eq!(pages[0].first_row_index, 0);
            assert!(pages
                .windows(2)
                .all(|w| w[0].first_row_index < w[1].first_row_index
                    && w[1].first_row_index - w[0].first_row_index <= 256));
            let sizes: i64 = pages
                .iter()
                .map(|p| i64::from(p.compressed_page_size))
                .sum();
            assert_eq!(sizes, ca.compressed_size());
            assert_eq!(ca.data_page_offset(), pages[0].offset);
            assert_eq!(
                ma.column_index().unwrap()[g][RESOURCE_COLUMN],
                mb.column_index().unwrap()[g][RESOURCE_COLUMN]
            );
            // The other columns are written as before.
            for c in (0..ra.num_columns()).filter(|&c| c != RESOURCE_COLUMN) {
                assert_eq!(
                    ra.column(c).compressed_size(),
                    rb.column(c).compressed_size(),
                    "column {c}"
                );
            }
        }
        // The JSON, hash, id and identifiers are PLAIN and zstd, the other columns Snappy;
        // every path named unique is a column (a misspelt one would silently be Snappy).
        let columns = ma.row_groups()[0].columns();
        for path in unique_columns() {
            assert!(
                columns.iter().any(|c| c.column_path() == path),
                "{path} is not a Patient column"
            );
        }
        for c in columns {
            let unique = unique_columns().contains(c.column_path());
            assert_eq!(
                c.dictionary_page_offset().is_some(),
                !unique && c.num_values() > 0,
                "dictionary of {}",
                c.column_path()
            );
            let want = if unique {
                json_column::compression()
            } else {
                Compression::SNAPPY
            };
            assert_eq!(c.compression(), want, "{}", c.column_path());
        }
    }

    #[test]
    fn stamps_go_inside_meta() {
        let r = |json: Value| Resource {
            resource_type: "Patient",
            id: "p".into(),
            patient_id: None,
            json: Json::Tree(json),
            deleted: false,
        };
        let with = Prepared::new(r(serde_json::json!({"resourceType": "Patient", "id": "p",
            "meta": {"profile": ["x"], "versionId": "9"}, "active": true})));
        assert_eq!(
            with.stamped(2, "T"),
            r#"{"resourceType":"Patient","id":"p","meta":{"profile":["x"],"versionId":"2","lastUpdated":"T"},"active":true}"#
        );
        let empty = Prepared::new(r(
            serde_json::json!({"resourceType": "Patient", "meta": {}}),
        ));
        assert_eq!(
            empty.stamped(1, "T"),
            r#"{"resourceType":"Patient","meta":{"versionId":"1","lastUpdated":"T"}}"#
        );
        let none = Prepared::new(r(serde_json::json!({"resourceType": "Patient"})));
        assert_eq!(
            none.stamped(1, "T"),
            r#"{"resourceType":"Patient","meta":{"versionId":"1","lastUpdated":"T"}}"#
        );
        // The hash ignores the stamps.
        let a = Prepared::new(r(
            serde_json::json!({"resourceType": "Patient", "meta": {"versionId": "1"}}),
        ));
        let b = Prepared::new(r(
            serde_json::json!({"resourceType": "Patient", "meta": {"lastUpdated": "x"}}),
        ));
        assert_eq!(a.content_hash, b.content_hash);
    }

    #[test]
    fn lower_hex_128_is_fmt_lower_hex_of_32_digits() {
        for v in [0, 1, 0xabc, u128::MAX, u128::MAX / 3, hash_text("x")] {
            assert_eq!(
                std::str::from_utf8(&lower_hex_128(v)).unwrap(),
                format!("{v:032x}")
            );
        }
    }

    #[test]
    fn content_hashes_are_xxh3_128_and_the_legacy_ones_sha256() {
        // Expected values from independent implementations: PyPI xxhash's `xxh3_128_hexdigest`
        // and Python's hashlib.sha256 (first 32 hex digits).
        let text = r#"{"resourceType":"Patient","id":"p1"}"#;
        assert_eq!(
            format!("{:032x}", hash_text(text)),
            "623738fc9fd3d606d08935ceec12caee"
        );
        assert_eq!(
            format!("{:032x}", legacy_hash(text)),
            "43bdf12d90068b936a6368063247ab46"
        );
    }

    #[test]
    fn strings_fold_case_and_accents() {
        assert_eq!(normalize("  José   ÁLVAREZ "), "jose alvarez");
    }
}
