//! One ingest run: files → records → FHIR resources → a new lake snapshot.
//!
//! Files are read one after another, each by the reader its content selects, on a thread of
//! its own; chunks of records are mapped in parallel (rayon) and every record becomes
//! resources or a reject. Resources stream into per-type buffers that are sorted and written
//! as new table files (by a writer thread) whenever they fill, so memory stays bounded
//! whatever the input. A resource that the previous snapshot already holds with the same
//! content is not written again; one that changed gets the next version, and the earlier
//! file that held it is copied without it. The rejects (NDJSON) are written as they occur;
//! `records read = accepted + rejected` is checked before the snapshot is published
//! atomically.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ingest::detect::{detect, Format};
use ingest::formulary::QhpKind;
use ingest::layout::Mapping;
use ingest::x12::FileEvent;
use ingest::{FileSummary, Item, Reader, Reason, Reject, SourceRecord, Stage};
use rayon::prelude::*;
use serde::Serialize;

use crate::c4bb::{self, Systems};
use crate::lake::{self, Lake, LakeError, MergeStats};
use crate::{MapError, Resource};

mod fates;
mod index;
pub use index::{verify_key_index, Disagreement};
mod keys;
mod runs;

use keys::{Key, KeyMap};

/// Errors that stop a run (record-level problems are rejects, never errors).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A source file could not be read or recognised.
    #[error(transparent)]
    Source(#[from] ingest::Error),
    /// The lake could not be read or written.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The mapper configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The accounting invariant failed (a bug: records were lost).
    #[error(
        "accounting mismatch in {file}: read {read}, accepted {accepted}, rejected {rejected}"
    )]
    Accounting {
        /// The source.
        file: String,
        /// Records read.
        read: u64,
        /// Records accepted.
        accepted: u64,
        /// Records rejected.
        rejected: u64,
    },
}

/// Progress of one source file, reported while it is read.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// The file.
    pub file: &'a str,
    /// Records read so far.
    pub records: u64,
    /// Bytes read so far (the position of the last record).
    pub bytes: u64,
    /// The file's size.
    pub total_bytes: u64,
    /// Whether the file is done.
    pub done: bool,
}

/// A progress callback (the binary draws bars on a terminal, logs JSON otherwise).
pub type ProgressFn = std::sync::Arc<dyn Fn(&Progress<'_>) + Send + Sync>;

/// How to run.
#[derive(Clone)]
pub struct Options {
    /// The lake to update.
    pub lake: PathBuf,
    /// Folder of mapping files (`*.toml`) and `fhir/identifier-systems.toml`.
    pub mappings: PathBuf,
    /// Force every delimited file through this mapping instead of detecting.
    pub forced_mapping: Option<PathBuf>,
    /// Called every few thousand records of each file, and when a file is done.
    pub progress: Option<ProgressFn>,
    /// Rows per table file the run writes; a type's rows are buffered in memory up to this
    /// many (or 128 MiB) before they are sorted and written. `None`: 65,536.
    pub file_rows: Option<usize>,
    /// Bytes of rows all types together hold in memory before the type holding most is
    /// written out (an estimate of the rows' size, not of the process). `None`: 160 MiB.
    pub buffer_bytes: Option<usize>,
    /// Keys of resource ids each type keeps in memory; older ones go to sorted runs on disk,
    /// so the run's memory does not grow with the number of resources. `None`: 262,144.
    pub memory_keys: Option<usize>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("lake", &self.lake)
            .field("mappings", &self.mappings)
            .field("forced_mapping", &self.forced_mapping)
            .field("file_rows", &self.file_rows)
            .field("buffer_bytes", &self.buffer_bytes)
            .field("memory_keys", &self.memory_keys)
            .finish()
    }
}

/// What one source file gave.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceReport {
    /// The file.
    pub file: String,
    /// The layout or format that read it.
    pub layout: String,
    /// Bytes read.
    pub bytes: u64,
    /// Rows/segments/elements read.
    pub units: u64,
    /// Records read.
    pub records_read: u64,
    /// Records accepted.
    pub accepted: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Rejects per reason code.
    pub rejects_by_reason: BTreeMap<String, u64>,
    /// Resources produced per type (before merging).
    pub resources: BTreeMap<String, u64>,
    /// Records that update or cancel an earlier version of a claim.
    pub updates: u64,
    /// Cancelled claims (void).
    pub cancels: u64,
    /// File-level notices (envelope/trailer mismatches).
    pub notices: Vec<String>,
    /// Providers first met in this file whose identifier is labelled an NPI but is not one
    /// (ten digits with a valid check digit), and practitioners named by no NPI at all:
    /// consumers validating against C4BB / US Core reject them.
    pub invalid_npis: u64,
    /// The first few of those identifiers (the NPI, or the resource id of a practitioner
    /// without one; provider identifiers are public, not member data).
    pub invalid_npi_examples: Vec<String>,
    /// Seconds spent.
    pub seconds: f64,
}

/// The report of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// The snapshot published.
    pub snapshot: String,
    /// The snapshot it was built on.
    pub parent: Option<String>,
    /// Per source file.
    pub sources: Vec<SourceReport>,
    /// Records read in all.
    pub records_read: u64,
    /// Records accepted in all.
    pub accepted: u64,
    /// Records rejected in all.
    pub rejected: u64,
    /// Rejects per reason in all.
    pub rejects_by_reason: BTreeMap<String, u64>,
    /// Rows per resource type in the published snapshot.
    pub tables: BTreeMap<String, u64>,
    /// What the merge did per type.
    pub merge: BTreeMap<String, MergeStats>,
    /// Seconds for the whole run.
    pub seconds: f64,
    /// Where the rejects were written.
    pub rejects_file: String,
}

impl RunReport {
    /// The share of records rejected (0 when nothing was read).
    pub fn reject_rate(&self) -> f64 {
        if self.records_read == 0 {
            0.0
        } else {
            self.rejected as f64 / self.records_read as f64
        }
    }
}

/// A resource produced in this run, with whether it is the record's own subject (a Patient
/// from a member file, an EOB from a claim) or a side product (a payer Organization, a
/// Patient described by an 837's subscriber loop). Side products never replace an existing
/// resource; subjects do.
struct Produced {
    resource: lake::Prepared,
    primary: bool,
}

/// What mapping one source item gave.
enum Mapped {
    /// The record was rejected by its reader or by the mapper.
    Rejected(Reject),
    /// The record's resources.
    Accepted {
        produced: Vec<Produced>,
        /// Types of side products dropped because an equal or richer one was seen.
        dropped: Vec<&'static str>,
        change: ingest::model::Change,
        /// Formularies listed in full by this record (a FULL formulary extract).
        full: Vec<String>,
    },
}

/// Records handed from a file's reader to the mappers at a time.
const CHUNK: usize = 1024;

/// A type's rows of this run are written to a new table file when its buffer reaches this
/// many rows or bytes, whichever comes first; this bounds a run's memory whatever its input.
const FILE_ROWS: usize = 65_536;
const FILE_BYTES: usize = 128 << 20;

/// All types' buffers and waiting side products together are held up to this many bytes
/// (unless [`Options::buffer_bytes`] says otherwise); past it the type holding most is
/// written out, its waiting side products first (see [`Tables::spill`]). This bounds a run's
/// memory when every claim names its own member or provider (an 837 names both).
const RUN_BYTES: usize = 160 << 20;

/// Expand folders into their files (sorted; documentation files skipped).
///
/// # Errors
/// When a path does not exist or a folder cannot be read.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RunError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| ingest::Error::Io {
            path: p.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(d) = stack.pop() {
                let rd = std::fs::read_dir(&d).map_err(|source| ingest::Error::Io {
                    path: d.display().to_string(),
                    source,
                })?;
                for e in rd.flatten() {
                    let path = e.path();
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.starts_with('.') {
                        continue;
                    }
                    if path.is_dir() {
                        stack.push(path);
                    } else if !is_documentation(&name) {
                        found.push(path);
                    }
                }
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn is_documentation(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".md")
        || lower.starts_with("readme")
        || lower.starts_with("license")
        || lower == "sources.tsv"
}

/// The mapper's configuration, loaded once per run.
pub struct Config {
    mappings: Vec<Arc<Mapping>>,
    forced: Option<Arc<Mapping>>,
    systems: Systems,
}

impl Config {
    /// Load mapping files and code tables.
    ///
    /// # Errors
    /// When a mapping file is invalid.
    pub fn load(opts: &Options) -> Result<Self, RunError> {
        let mappings = Mapping::load_dir(&opts.mappings)?
            .into_iter()
            .map(Arc::new)
            .collect();
        let forced = match &opts.forced_mapping {
            Some(p) => Some(Arc::new(Mapping::load(p)?)),
            None => None,
        };
        let sys_path = opts.mappings.join("fhir").join("identifier-systems.toml");
        let systems = match std::fs::read_to_string(&sys_path) {
            Ok(t) => Systems::parse(&t)
                .map_err(|e| RunError::Config(format!("{}: {e}", sys_path.display())))?,
            Err(_) => Systems::default(),
        };
        Ok(Self {
            mappings,
            forced,
            systems,
        })
    }
}

/// Map one source record to resources.
///
/// # Errors
/// When the record cannot be mapped.
pub fn map_record(record: &SourceRecord, systems: &Systems) -> Result<Vec<Resource>, MapError> {
    match record {
        SourceRecord::Member(m) => c4bb::map_member(m, systems),
        SourceRecord::Claim(c) => c4bb::map_claim(c, systems),
        SourceRecord::FormularyDrug(d) => crate::formulary::map_drug(d),
        SourceRecord::FormularyPlan(p) => crate::formulary::map_plan(p),
    }
}

fn primary_type(record: &SourceRecord) -> &'static str {
    match record {
        SourceRecord::Member(_) => "Patient",
        SourceRecord::Claim(_) => "ExplanationOfBenefit",
        SourceRecord::FormularyDrug(_) => "Basic",
        SourceRecord::FormularyPlan(_) => "InsurancePlan",
    }
}

/// The layout name of X12 837 sources.
const X12_LAYOUT: &str = "x12-837";

/// The format of `path` recognised from its content, when no mapping is forced; `None` also
/// when it cannot be recognised ([`reader_for`] then says why).
fn known_format(path: &Path, cfg: &Config) -> Option<Format> {
    cfg.forced
        .is_none()
        .then(|| detect(path, &cfg.mappings).ok())
        .flatten()
}

/// The reader of `path` and its layout name: the forced mapping's, or that of its `format`
/// ([`known_format`], recognised again when `None`).
fn reader_for(
    path: &Path,
    cfg: &Config,
    format: Option<Format>,
) -> Result<(Box<dyn Reader + Send + Sync>, String), RunError> {
    if let Some(m) = &cfg.forced {
        return Ok((
            Box::new(ingest::delimited::DelimitedReader::new(m.clone())),
            m.source.name.clone(),
        ));
    }
    let format = match format {
        Some(f) => f,
        None => detect(path, &cfg.mappings)?,
    };
    match format {
        Format::Delimited(m) => Ok((
            Box::new(ingest::delimited::DelimitedReader::new(m.clone())),
            m.source.name.clone(),
        )),
        Format::X12 => Ok((
            Box::new(ingest::x12::X12Reader::new()),
            X12_LAYOUT.to_string(),
        )),
        Format::Xml => Ok((
            Box::new(ingest::formulary::FormularyXmlReader::new()),
            "formulary-xml".to_string(),
        )),
        Format::Json => {
            // A QHP drugs.json is joined with the plans.json beside it, when there is one.
            let plans = path.parent().and_then(|dir| {
                std::fs::read_dir(dir)
                    .ok()?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| {
                        p != path
                            && p.extension().is_some_and(|x| x == "json")
                            && sniff(p) == Some(QhpKind::Plans)
                    })
            });
            let reader = match (sniff(path), plans) {
                (Some(QhpKind::Drugs), Some(plans)) => {
                    ingest::formulary::QhpReader::with_plans(&plans)?
                }
                _ => ingest::formulary::QhpReader::new(),
            };
            Ok((Box::new(reader), "cms-qhp-json".to_string()))
        }
    }
}

/// The formularies a FormularyItem (Basic) is on.
fn formulary_refs(json: &serde_json::Value) -> Vec<String> {
    crate::registry::find("Basic", "formulary")
        .map(|p| {
            (p.extract)(json)
                .into_iter()
                .filter_map(|v| match v {
                    crate::registry::IndexValue::Reference(r) => Some(r.into()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sniff(path: &Path) -> Option<QhpKind> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let mut f = std::fs::File::open(path).ok()?;
    let n = f.read(&mut head).ok()?;
    ingest::formulary::sniff_qhp(&head[..n])
}

fn map_error_reject(record: &SourceRecord, e: &MapError) -> Reject {
    let position = match record {
        SourceRecord::Member(m) => m.position.clone(),
        SourceRecord::Claim(c) => c.position.clone(),
        SourceRecord::FormularyDrug(d) => d.position.clone(),
        SourceRecord::FormularyPlan(p) => p.position.clone(),
    };
    let reason = match e {
        MapError::Missing(_) => Reason::MissingValue,
        MapError::UnknownCode { .. } => Reason::UnknownCode,
        MapError::Invalid { .. } => Reason::Rule,
    };
    let mut raw = format!("{record:?}");
    raw.truncate(65_536);
    Reject::new(position, Stage::Map, reason, e.to_string(), raw)
}

fn record_offset(item: &Item) -> u64 {
    match item {
        Err(r) => r.position.byte_offset,
        Ok(SourceRecord::Member(m)) => m.position.byte_offset,
        Ok(SourceRecord::Claim(c)) => c.position.byte_offset,
        Ok(SourceRecord::FormularyDrug(d)) => d.position.byte_offset,
        Ok(SourceRecord::FormularyPlan(p)) => p.position.byte_offset,
    }
}

/// Side products seen so far in the run. Claims repeat the same payer, providers and (X12)
/// members thousands of times: a side product whose input was built before is not built again
/// ([`fingerprint`]), and a description no richer than one already seen, by `Type/id`, is
/// dropped on the mapping thread, before it is hashed and indexed (see [`Tables::add`]).
///
/// Both are caches: [`Tables`] makes the decisions, so forgetting an entry only costs
/// building or hashing one side product again. Each is emptied when it reaches
/// [`SIDE_SEEN_CAP`] entries, which bounds a run's memory when every claim brings a new one.
#[derive(Default)]
struct SideSeen {
    /// `Type/id` key → length and XXH3-64 of the best description seen.
    best: std::sync::Mutex<KeyMap<(usize, u64)>>,
    /// Fingerprints of the inputs of claims' side products built in this run (by claims
    /// that mapped: a rejected claim's side products never reach the tables).
    built: std::sync::Mutex<KeyMap<()>>,
}

/// Entries each of [`SideSeen`]'s caches holds at most (about 14 and 28 MiB).
const SIDE_SEEN_CAP: usize = 1 << 19;

/// A `std::hash::Hasher` that only collects the bytes (hashed at once afterwards: XXH3's
/// streaming state is slow for the many tiny writes of a derived `Hash`).
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::hash::Hasher for Bytes<'_> {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn finish(&self) -> u64 {
        twox_hash::XxHash3_64::oneshot(self.0)
    }
}

/// XXH3-128 of everything a side product is built from (not where it was read).
fn fingerprint(side: c4bb::Side<'_>) -> Key {
    use std::hash::Hash as _;
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        let mut h = Bytes(buf);
        match side {
            c4bb::Side::Payer(p) => (0u8, p).hash(&mut h),
            c4bb::Side::Provider(p) => (1u8, p).hash(&mut h),
            c4bb::Side::Member(m) => {
                // Every field but the position; a new field must be added here (or the
                // destructuring stops compiling).
                let ingest::model::Member {
                    member_id,
                    identifiers,
                    family,
                    given,
                    gender,
                    birth_date,
                    death_date,
                    address_lines,
                    city,
                    state,
                    postal_code,
                    coverages,
                    change,
                    position: _,
                } = m;
                2u8.hash(&mut h);
                (member_id, identifiers, family, given, gender, birth_date).hash(&mut h);
                (death_date, address_lines, city, state, postal_code).hash(&mut h);
                (coverages, change).hash(&mut h);
            }
        }
        Key::from(twox_hash::XxHash3_128::oneshot(buf))
    })
}

impl SideSeen {
    /// Whether a side product with this fingerprint was built by a claim that mapped.
    fn was_built(&self, fingerprint: Key) -> bool {
        self.built
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&fingerprint)
    }

    /// Record the side products a claim that mapped has built.
    fn record_built(&self, fingerprints: &[Key]) {
        if fingerprints.is_empty() {
            return;
        }
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if built.len() + fingerprints.len() > SIDE_SEEN_CAP {
            built.clear();
        }
        for &f in fingerprints {
            built.insert(f, ());
        }
    }

    /// Whether a side product must go on to the tables.
    fn keep(&self, r: &Resource) -> bool {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let (len, hash) = match &r.json {
            crate::Json::Text(w) => (
                w.text.len(),
                twox_hash::XxHash3_64::oneshot(w.text.as_bytes()),
            ),
            crate::Json::Tree(json) => BUF.with_borrow_mut(|buf| {
                buf.clear();
                let _ = serde_json::to_writer(&mut *buf, json);
                (buf.len(), twox_hash::XxHash3_64::oneshot(buf))
            }),
        };
        let k = Key::of(&format!("{}/{}", r.resource_type, r.id));
        let mut seen = self.best.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(&k) {
            // Identical, or shorter than one seen: the tables would not take it.
            Some(&(l, h)) if l > len || (l == len && h == hash) => false,
            Some(&(l, _)) if l == len => true,
            _ => {
                if seen.len() >= SIDE_SEEN_CAP {
                    seen.clear();
                }
                seen.insert(k, (len, hash));
                true
            }
        }
    }
}

/// Map one item (on a rayon worker).
fn map_item(item: Item, cfg: &Config, is_full: bool, side: &SideSeen) -> Mapped {
    let record = match item {
        Ok(r) => r,
        Err(rej) => return Mapped::Rejected(rej),
    };
    let mut dropped = Vec::new();
    let mut built = Vec::new();
    let mapped = match &record {
        // A side product already built is not built again (the tables would drop it).
        SourceRecord::Claim(c) => c4bb::map_claim_with(c, &cfg.systems, &mut |s| {
            let f = fingerprint(s);
            if built.contains(&f) || side.was_built(f) {
                s.resource_types(&mut dropped);
                return false;
            }
            built.push(f);
            true
        }),
        _ => map_record(&record, &cfg.systems),
    };
    let resources = match mapped {
        Ok(r) => r,
        Err(e) => return Mapped::Rejected(map_error_reject(&record, &e)),
    };
    side.record_built(&built);
    let change = match &record {
        SourceRecord::Claim(c) => c.change,
        _ => ingest::model::Change::default(),
    };
    let subject = primary_type(&record);
    let mut full = Vec::new();
    let produced = resources
        .into_iter()
        .filter_map(|r| {
            if is_full {
                match r.resource_type {
                    "Basic" => {
                        full.extend(r.json.as_tree().map(formulary_refs).unwrap_or_default())
                    }
                    "InsurancePlan" if r.id.starts_with("formulary-") => {
                        full.push(format!("InsurancePlan/{}", r.id))
                    }
                    _ => {}
                }
            }
            let primary = r.resource_type == subject
                || (subject == "Patient" && r.resource_type == "Coverage")
                || matches!(
                    record,
                    SourceRecord::FormularyDrug(_) | SourceRecord::FormularyPlan(_)
                );
            if !primary && !side.keep(&r) {
                dropped.push(r.resource_type);
                return None;
            }
            Some(Produced {
                resource: lake::Prepared::new(r),
                primary,
            })
        })
        .collect();
    Mapped::Accepted {
        produced,
        dropped,
        change,
        full,
    }
}

/// Read one file: its reader runs on its own thread and hands chunks of records to the
/// mappers (rayon, in parallel); the results go, in file order, into the run's tables and
/// rejects.
fn process_file(
    path: &Path,
    format: Option<Format>,
    cfg: &Config,
    progress: Option<&ProgressFn>,
    tables: &mut Tables<'_>,
    rejects: &mut RejectSink,
    side: &SideSeen,
) -> Result<SourceReport, RunError> {
    let file_name = path.display().to_string();
    let total_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let (reader, layout) = reader_for(path, cfg, format)?;
    let mut report = SourceReport {
        file: path.display().to_string(),
        layout,
        ..Default::default()
    };
    // A FULL formulary extract lists its formularies completely (see `Tables::finish`).
    let is_full = report.layout == "formulary-xml"
        && matches!(
            ingest::formulary::extract_kind(path),
            Ok(ingest::formulary::ExtractKind::Full)
        );
    // The reader runs on a thread of its own and hands chunks of records to the mappers.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Item>>(2);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let summary = std::thread::scope(|scope| -> Result<FileSummary, RunError> {
        let reading = scope.spawn(|| {
            let tx = tx;
            let mut chunk = Vec::with_capacity(CHUNK);
            let mut read = 0u64;
            let summary = reader.read(path, &mut |item: Item| {
                read += 1;
                if let Some(p) = progress {
                    // From the first record on, so that a bar's rate counts the whole file.
                    if read == 1 || read.is_multiple_of(4096) {
                        p(&Progress {
                            file: &file_name,
                            records: read,
                            bytes: record_offset(&item),
                            total_bytes,
                            done: false,
                        });
                    }
                }
                chunk.push(item);
                if chunk.len() == CHUNK {
                    // The receiver only stops early on an error, which ends the run anyway.
                    let _ = tx.send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
                }
            });
            if !chunk.is_empty() {
                let _ = tx.send(chunk);
            }
            summary
        });
        // Chunks are mapped on the rayon pool by a thread of their own, so that the next
        // chunk is mapped while this one's resources are merged into the tables.
        let (mapped_tx, mapped_rx) = std::sync::mpsc::sync_channel::<Vec<Mapped>>(2);
        let stop_ref = &stop;
        let mapping = scope.spawn(move || {
            for chunk in rx.iter() {
                if stop_ref.load(std::sync::atomic::Ordering::Relaxed) {
                    continue; // drain, so the reader finishes
                }
                let mapped: Vec<Mapped> = chunk
                    .into_par_iter()
                    .map(|item| map_item(item, cfg, is_full, side))
                    .collect();
                if mapped_tx.send(mapped).is_err() {
                    stop_ref.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let mut failure = None;
        for mapped in mapped_rx.iter() {
            if failure.is_some() {
                continue; // drain, so the mapper and the reader finish
            }
            for m in mapped {
                report.records_read += 1;
                if let Err(e) = accept(m, &mut report, tables, rejects) {
                    failure = Some(e);
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
            }
        }
        mapping
            .join()
            .map_err(|_| RunError::Config("a mapping thread panicked".into()))?;
        let summary = reading
            .join()
            .map_err(|_| RunError::Config("a reader thread panicked".into()))??;
        match failure {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    })?;
    finish_report(&mut report, summary, progress, total_bytes, started)?;
    Ok(report)
}

/// Complete a file's report from its reader's summary (progress, notices, times) and check
/// that every record read was accepted or rejected.
fn finish_report(
    report: &mut SourceReport,
    summary: FileSummary,
    progress: Option<&ProgressFn>,
    total_bytes: u64,
    started: Instant,
) -> Result<(), RunError> {
    if let Some(p) = progress {
        p(&Progress {
            file: &report.file,
            records: report.records_read,
            bytes: total_bytes,
            total_bytes,
            done: true,
        });
    }
    report.bytes = summary.bytes;
    report.units = summary.units;
    report.notices = summary
        .notices
        .iter()
        .map(|n| {
            let p = &n.position;
            match p.segment {
                Some(seg) => format!("{} (segment {seg}, byte {})", n.message, p.byte_offset),
                None => format!("{} (line {}, byte {})", n.message, p.line, p.byte_offset),
            }
        })
        .collect();
    if report.records_read != report.accepted + report.rejected {
        return Err(RunError::Accounting {
            file: report.file.clone(),
            read: report.records_read,
            accepted: report.accepted,
            rejected: report.rejected,
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(())
}

/// Read consecutive X12 files: their pieces are read and mapped side by side on the rayon
/// pool's threads (a large file's pieces, or many small files at once), the results taken in
/// the order of the files and of each file. Returns a report per file.
fn process_x12_files(
    paths: &[&Path],
    cfg: &Config,
    progress: Option<&ProgressFn>,
    tables: &mut Tables<'_>,
    rejects: &mut RejectSink,
    side: &SideSeen,
) -> Result<Vec<SourceReport>, RunError> {
    let mut reports: Vec<SourceReport> = paths
        .iter()
        .map(|p| SourceReport {
            file: p.display().to_string(),
            layout: X12_LAYOUT.to_string(),
            ..Default::default()
        })
        .collect();
    let sizes: Vec<u64> = paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .collect();
    // A file's time runs from the end of the one before it, as its results are taken.
    let mut started = Instant::now();
    let mut failure = None;
    let map = |item: Item| (record_offset(&item), map_item(item, cfg, false, side));
    ingest::x12::read_parallel_files(paths, &map, &mut |f, event| {
        let report = &mut reports[f];
        let done = match event {
            FileEvent::Item((offset, m)) => {
                report.records_read += 1;
                if let Some(p) = progress {
                    if report.records_read == 1 || report.records_read.is_multiple_of(4096) {
                        p(&Progress {
                            file: &report.file,
                            records: report.records_read,
                            bytes: offset,
                            total_bytes: sizes[f],
                            done: false,
                        });
                    }
                }
                accept(m, report, tables, rejects)
            }
            FileEvent::Done(summary) => {
                let done = finish_report(report, summary, progress, sizes[f], started);
                started = Instant::now();
                done
            }
        };
        match done {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                // The run fails: stop reading instead of parsing the rest for nothing.
                failure = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}

/// Account for one mapped record and hand its resources to the tables.
fn accept(
    m: Mapped,
    report: &mut SourceReport,
    tables: &mut Tables<'_>,
    rejects: &mut RejectSink,
) -> Result<(), RunError> {
    match m {
        Mapped::Rejected(r) => {
            report.rejected += 1;
            *report
                .rejects_by_reason
                .entry(r.reason.as_str().to_string())
                .or_default() += 1;
            rejects.write(&r)?;
        }
        Mapped::Accepted {
            produced,
            dropped,
            change,
            full,
        } => {
            for t in dropped {
                count_resource(report, t);
            }
            report.accepted += 1;
            match change {
                ingest::model::Change::Replace => report.updates += 1,
                ingest::model::Change::Cancel => report.cancels += 1,
                _ => {}
            }
            tables.full.extend(full);
            for p in produced {
                count_resource(report, p.resource.resource_type);
                check_npi(report, &p.resource);
                tables.add(p)?;
            }
        }
    }
    Ok(())
}

/// Count a provider resource filed under an NPI ([`crate::ids::npi_in_id`]) whose NPI fails
/// the NPI check, and a Practitioner filed under anything but an NPI (C4BB-Practitioner
/// requires one). Each provider is built once per run, so each is counted once, in the file
/// that first named it.
fn check_npi(report: &mut SourceReport, r: &crate::lake::Prepared) {
    let npi = crate::ids::npi_in_id(&r.id);
    let bad = match (r.resource_type, npi) {
        ("Practitioner" | "Organization", Some(npi)) => !ingest::model::is_valid_npi(npi),
        ("Practitioner", None) => true,
        _ => false,
    };
    if bad {
        report.invalid_npis += 1;
        let id = npi.unwrap_or(&r.id);
        let examples = &mut report.invalid_npi_examples;
        if examples.len() < 3 && !examples.iter().any(|e| e == id) {
            examples.push(id.to_string());
        }
    }
}

/// Count one resource of type `t` in a file's report (the type's name is allocated only the
/// first time the report meets it).
fn count_resource(report: &mut SourceReport, t: &str) {
    match report.resources.get_mut(t) {
        Some(n) => *n += 1,
        None => {
            report.resources.insert(t.to_string(), 1);
        }
    }
}

/// The rejects file, written as records are rejected.
struct RejectSink {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl RejectSink {
    fn create(path: PathBuf) -> Result<Self, LakeError> {
        let f = std::fs::File::create(&path).map_err(|source| LakeError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            path,
            out: std::io::BufWriter::new(f),
        })
    }

    fn io(&self, source: std::io::Error) -> LakeError {
        LakeError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn write(&mut self, r: &Reject) -> Result<(), LakeError> {
        let line = serde_json::json!({
            "file": &*r.position.file,
            "line": r.position.line,
            "byte_offset": r.position.byte_offset,
            "segment": r.position.segment,
            "context": r.position.context,
            "stage": r.stage.as_str(),
            "reason": r.reason.as_str(),
            "message": r.message,
            "raw": r.raw,
        });
        writeln!(self.out, "{line}").map_err(|e| self.io(e))
    }

    fn finish(self) -> Result<(), LakeError> {
        let path = self.path;
        let io = |source| LakeError::Io {
            path: path.display().to_string(),
            source,
        };
        let f = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)
    }
}

/// What this run decided for an id: a new row (in flush `generation`, at `index` of that
/// flush's buffer), [`Fate::UNCHANGED`] or [`Fate::DELETED`]. Eight bytes, so that the run's
/// map of them costs 24 bytes a key ([`keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fate {
    generation: u32,
    index: u32,
}

impl Fate {
    /// Came again with the content it has: the previous row stays.
    const UNCHANGED: Self = Self {
        generation: u32::MAX,
        index: 0,
    };
    /// Deleted by its source.
    const DELETED: Self = Self {
        generation: u32::MAX,
        index: 1,
    };

    /// Whether the run wrote a row for the id.
    fn is_new(self) -> bool {
        self.generation != u32::MAX
    }
}

// The point of `Key` and of keeping side lengths out of `Fate`: a fate map entry is 24 bytes
// (a `u128` key, or a fate carrying the length, would make it 32).
const _: () = assert!(std::mem::size_of::<(Key, Fate)>() == 24);

/// A flushed buffer: its file, where each buffered row went after sorting, and each buffered
/// row's side length (as [`TypeTable::buf_side`]; empty when the buffer held records only).
struct Flushed {
    file: lake::TableFile,
    position: fates::List,
    side: fates::List,
}

/// Where the run's key index runs go: the lake root, the snapshot they are named after, and a
/// directory for temporary files.
struct IndexPlace {
    root: PathBuf,
    snapshot: String,
    scratch: PathBuf,
}

/// One resource type's table, being built by the run.
struct TypeTable {
    resource_type: &'static str,
    place: std::sync::Arc<IndexPlace>,
    prev_files: Vec<lake::TableFile>,
    /// The previous snapshot's key index runs of the type.
    prev_keys: Vec<String>,
    /// The key index, opened when the run first touches the type.
    prev: Option<index::Index>,
    /// The number the next table file of the type gets ([`lake::TableFile::number`]).
    next_number: u32,
    fates: fates::Fates,
    buf: Vec<Option<lake::NewRow>>,
    /// Per buffered row: 0 for a record's row; for a side product no record describes, the
    /// length of its description (a richer one met later replaces the row).
    buf_side: Vec<u32>,
    buf_bytes: usize,
    flushed: Vec<Flushed>,
    /// Where [`Flushed`]'s lists are kept.
    lists: fates::Lists,
    /// Rows of this run's flushed files (by generation) a later record replaced, with the
    /// [`Key::fingerprint`] of the id each must hold.
    dead_in_run: BTreeMap<u32, HashMap<u32, u32>>,
    /// Rows of the previous snapshot's files (by position in `prev_files`) this run retires,
    /// with the [`Key::fingerprint`] of the id each must hold.
    dead_prev: BTreeMap<u32, HashMap<u32, u32>>,
    /// Ids of the previous snapshot this run removes: tombstones in the key index.
    gone: HashSet<Key>,
    /// Position in `prev_files` of each file number (set when the index is opened).
    prev_position: HashMap<u32, u32>,
    /// Side products no record of this run describes, by id: the richest description seen.
    side: HashMap<String, lake::Prepared>,
    side_bytes: usize,
    stats: MergeStats,
}

/// A table file to write, handed to the writer thread.
struct WriteJob {
    path: PathBuf,
    resource_type: &'static str,
    rows: Vec<lake::NewRow>,
}

/// All tables of the run, and the thread that writes their files.
struct Tables<'a> {
    lake: &'a Lake,
    snapshot: String,
    types: BTreeMap<&'static str, TypeTable>,
    file_rows: usize,
    seq: u32,
    jobs: Option<std::sync::mpsc::SyncSender<WriteJob>>,
    /// The most all types may hold together ([`Tables::held`]).
    budget: usize,
    /// How many keys each type keeps in memory ([`fates`]; the rest go to `place.scratch`).
    key_limit: usize,
    /// Where key index runs and the run's temporary key files go.
    place: std::sync::Arc<IndexPlace>,
    /// Formularies (`InsurancePlan/<id>`) listed in full by a FULL extract of this run: their
    /// items not in the run are no longer on them.
    full: HashSet<String>,
}

impl TypeTable {
    /// The table of `resource_type`, on the previous snapshot's files and key index runs;
    /// `key_limit` keys in memory, the rest under `place.scratch`.
    fn new(
        resource_type: &'static str,
        place: std::sync::Arc<IndexPlace>,
        prev_files: Vec<lake::TableFile>,
        prev_keys: Vec<String>,
        key_limit: usize,
    ) -> Self {
        let fates = fates::Fates::new(&place.scratch, resource_type, key_limit);
        let lists = fates::Lists::new(&place.scratch, resource_type, key_limit);
        // Past every number the files have, and past 1..=n, which they get when their index
        // is built from the table (a lake from before key indexes, or an unreadable index).
        let next_number = (prev_files.iter().map(|f| f.number).max().unwrap_or(0))
            .max(prev_files.len() as u32)
            + 1;
        Self {
            resource_type,
            place,
            prev_files,
            prev_keys,
            prev: None,
            next_number,
            fates,
            buf: Vec::new(),
            buf_side: Vec::new(),
            buf_bytes: 0,
            flushed: Vec::new(),
            lists,
            dead_in_run: BTreeMap::new(),
            dead_prev: BTreeMap::new(),
            gone: HashSet::new(),
            prev_position: HashMap::new(),
            side: HashMap::new(),
            side_bytes: 0,
            stats: MergeStats::default(),
        }
    }

    /// The previous snapshot's key index of this type, opened (or, for a table written before
    /// key indexes, built) when the run first touches the type.
    fn prev(&mut self) -> Result<&index::Index, LakeError> {
        if self.prev.is_none() {
            let t = self.resource_type;
            let place = std::sync::Arc::clone(&self.place);
            let (root, snapshot, scratch) = (&place.root, &place.snapshot, &place.scratch);
            let numbered = self.prev_files.iter().all(|f| f.number != 0);
            let opened = if self.prev_files.is_empty() {
                Some(index::Index::empty(root, t, snapshot))
            } else if numbered
                && !self.prev_keys.is_empty()
                && !Lake::new(root).rebuild_marker(t).exists()
            {
                // A damaged index is rebuilt from the table rather than failing the run.
                index::Index::open(root, &self.prev_keys, t, snapshot)
                    .inspect_err(|e| warn_rebuilding(t, e))
                    .ok()
            } else {
                None
            };
            let index = match opened {
                Some(i) => i,
                None => {
                    // Numbers the files 1..=n; `next_number` is past them already.
                    let i = index::Index::build(root, &mut self.prev_files, t, snapshot, scratch)?;
                    self.stats.key_index_built = true;
                    i
                }
            };
            self.prev_position = (self.prev_files.iter().enumerate())
                .map(|(i, f)| (f.number, i as u32))
                .collect();
            self.prev = Some(index);
        }
        Ok(self.prev.as_ref().expect("opened above"))
    }

    /// The previous snapshot's row of `k`, from the key index. An index block found damaged
    /// makes the index be rebuilt from the table (once a run), and the lookup asked again:
    /// an answer is never read from a damaged block.
    fn lookup(&mut self, k: Key) -> Result<Option<index::Located>, LakeError> {
        match self.prev()?.get(k) {
            Err(e @ LakeError::KeyIndex { .. }) if !self.stats.key_index_built => {
                warn_rebuilding(self.resource_type, &e);
                self.prev = None;
                self.prev_keys.clear();
                self.prev()?.get(k)
            }
            r => r,
        }
    }

    /// Count what a fate does to the previous snapshot (`old`, its row of the id), or take
    /// that back when `add` is false (a later record of the id changed its fate): merge
    /// statistics, the previous row it retires, the tombstone of a removed id. Kept as fates
    /// change, so that finishing needs no second look at the index.
    fn account(
        &mut self,
        k: Key,
        fate: Fate,
        old: Option<index::Located>,
        add: bool,
    ) -> Result<(), LakeError> {
        let s = &mut self.stats;
        let counter = match (fate, old) {
            (Fate::UNCHANGED, _) => &mut s.unchanged,
            (Fate::DELETED, None) => return Ok(()),
            (Fate::DELETED, Some(_)) => &mut s.deleted,
            (_, Some(_)) => &mut s.updated,
            (_, None) => &mut s.created,
        };
        if add {
            *counter += 1;
        } else {
            *counter -= 1;
        }
        // A new row or a deletion retires the previous snapshot's row.
        let Some(old) = old.filter(|_| fate != Fate::UNCHANGED) else {
            return Ok(());
        };
        let Some(&fi) = self.prev_position.get(&old.file) else {
            let t = self.resource_type;
            let why = format!("names file {} the snapshot does not list", old.file);
            return Err(index_wrong(&self.place.root, t, Lake::keys_rel(t), &why));
        };
        let dead = self.dead_prev.entry(fi).or_default();
        if add {
            dead.insert(old.row, k.fingerprint());
        } else {
            dead.remove(&old.row);
        }
        if fate == Fate::DELETED {
            if add {
                self.gone.insert(k);
            } else {
                self.gone.remove(&k);
            }
        }
        Ok(())
    }

    /// A number for a new table file of the type.
    fn take_number(&mut self) -> u32 {
        let n = self.next_number;
        self.next_number += 1;
        n
    }

    fn generation(&self) -> u32 {
        self.flushed.len() as u32
    }

    /// The side length (as [`TypeTable::buf_side`]) of the row a fate wrote.
    fn side_of(&self, fate: Fate) -> Result<u32, LakeError> {
        if !fate.is_new() {
            return Ok(0);
        }
        if fate.generation == self.generation() {
            return Ok(self.buf_side.get(fate.index as usize).copied().unwrap_or(0));
        }
        match self.flushed.get(fate.generation as usize) {
            Some(f) => Ok(self.lists.get(&f.side, fate.index)?.unwrap_or(0)),
            None => Ok(0),
        }
    }

    /// Forget this run's earlier row of an id (a later record replaced it).
    fn kill(&mut self, k: Key, fate: Fate) -> Result<(), LakeError> {
        let Fate { generation, index } = fate;
        if !fate.is_new() {
            return Ok(());
        }
        if generation == self.generation() {
            if let Some(r) = self.buf.get_mut(index as usize).and_then(Option::take) {
                self.buf_bytes -= weight(&r.prepared);
            }
        } else if let Some(f) = self.flushed.get(generation as usize) {
            if let Some(pos) = self.lists.get(&f.position, index)? {
                self.dead_in_run
                    .entry(generation)
                    .or_default()
                    .insert(pos, k.fingerprint());
            }
        }
        Ok(())
    }

    /// Buffer a row; `side` as in [`TypeTable::buf_side`].
    fn push(&mut self, prepared: lake::Prepared, version_id: i64, side: u32) -> Fate {
        let fate = Fate {
            generation: self.generation(),
            index: self.buf.len() as u32,
        };
        self.buf_side.push(side);
        self.buf_bytes += weight(&prepared);
        self.buf.push(Some(lake::NewRow {
            prepared,
            version_id,
        }));
        fate
    }

    fn full(&self, file_rows: usize) -> bool {
        self.buf.len() >= file_rows || self.buf_bytes >= FILE_BYTES
    }

    /// Bytes held in memory for the run: the buffer and the waiting side products.
    fn held(&self) -> usize {
        self.buf_bytes + self.side_bytes
    }
}

/// Log that the key index of `t` is rebuilt from its table because of `e` (unreadable or
/// damaged; the error names the file, never an id).
fn warn_rebuilding(t: &str, e: &LakeError) {
    tracing::warn!(resource_type = t, error = %e, "key index unreadable or damaged; rebuilding it from the table");
}

/// The error of a run that found the key index of `t` whole but wrong (`path`, `message`: where
/// and how): the run publishes nothing, and leaves the marker that makes the next run rebuild
/// that index from the table ([`Lake::rebuild_marker`]).
fn index_wrong(root: &Path, t: &str, path: String, message: &str) -> LakeError {
    if let Err(e) = Lake::new(root).mark_key_index_wrong(t, "a run") {
        return e;
    }
    LakeError::KeyIndex {
        path,
        message: format!(
            "{message}; nothing was published, and the next run rebuilds the {t} key index \
             from the table"
        ),
    }
}

/// Memory a buffered row takes: its own size and what it holds on the heap.
fn weight(p: &lake::Prepared) -> usize {
    std::mem::size_of::<Option<lake::NewRow>>()
        + p.text.capacity()
        + p.id.capacity()
        + p.patient_id.as_ref().map_or(0, String::capacity)
        + p.index.heap_bytes()
}

impl<'a> Tables<'a> {
    fn table(&mut self, t: &'static str) -> &mut TypeTable {
        let (limit, place) = (self.key_limit, &self.place);
        self.types.entry(t).or_insert_with(|| {
            TypeTable::new(
                t,
                std::sync::Arc::clone(place),
                Vec::new(),
                Vec::new(),
                limit,
            )
        })
    }

    /// Bytes all types hold in memory for the run.
    fn held(&self) -> usize {
        self.types.values().map(TypeTable::held).sum()
    }

    /// Take one produced resource, then keep the run within its budget ([`RUN_BYTES`]).
    fn add(&mut self, p: Produced) -> Result<(), LakeError> {
        self.add_one(p)?;
        while self.held() > self.budget {
            let Some((&t, _)) = self.types.iter().max_by_key(|(_, table)| table.held()) else {
                break;
            };
            self.spill(t)?;
            self.flush(t)?;
        }
        Ok(())
    }

    /// Take one produced resource.
    fn add_one(&mut self, p: Produced) -> Result<(), LakeError> {
        let file_rows = self.file_rows;
        let t = p.resource.resource_type;
        let table = self.table(t);
        if !p.primary {
            // Side products: the richer description wins; written if nothing else describes
            // the id.
            let k = Key::of(&p.resource.id);
            if let Some(fate) = table.fates.get(&k)? {
                match table.side_of(fate)? {
                    // A record of this run describes the id.
                    0 => return Ok(()),
                    // Written out early as a side product: a richer description replaces it.
                    side if side as usize >= p.resource.text.len() => return Ok(()),
                    _ => {
                        // Written by `spill`, which writes no id the previous snapshot holds.
                        table.fates.remove(&k)?;
                        table.account(k, fate, None, false)?;
                        table.kill(k, fate)?;
                    }
                }
            }
            match table.side.get(&p.resource.id) {
                Some(old) if old.text.len() >= p.resource.text.len() => {}
                old => {
                    let old = old.map(weight).unwrap_or(0);
                    table.side_bytes = table.side_bytes + weight(&p.resource) - old;
                    table.side.insert(p.resource.id.clone(), p.resource);
                }
            }
            if table.side.len() >= file_rows {
                self.spill(t)?;
            }
            return Ok(());
        }
        let k = Key::of(&p.resource.id);
        if !table.side.is_empty() {
            if let Some(old) = table.side.remove(&p.resource.id) {
                table.side_bytes -= weight(&old);
            }
        }
        let prev = table.lookup(k)?;
        if let Some(fate) = table.fates.get(&k)? {
            table.account(k, fate, prev, false)?;
            table.kill(k, fate)?;
        }
        let fate = if p.resource.deleted {
            Fate::DELETED
        } else {
            match prev {
                Some(old) if old.hash == p.resource.content_hash => Fate::UNCHANGED,
                // A row an earlier version wrote, with the SHA-256 content hash it used.
                Some(old) if old.hash == lake::legacy_hash(&p.resource.text) => Fate::UNCHANGED,
                Some(old) => table.push(p.resource, old.version + 1, 0),
                None => table.push(p.resource, 1, 0),
            }
        };
        table.account(k, fate, prev, true)?;
        table.fates.insert(k, fate)?;
        if table.full(file_rows) {
            self.flush(t)?;
        }
        Ok(())
    }

    /// Move a type's waiting side products to its buffer, in id order, except those a record
    /// of this run or the previous snapshot describes.
    fn spill(&mut self, t: &'static str) -> Result<(), LakeError> {
        let file_rows = self.file_rows;
        let table = self.table(t);
        table.side_bytes = 0;
        let mut side: Vec<lake::Prepared> = std::mem::take(&mut table.side).into_values().collect();
        side.sort_by(|a, b| a.id.cmp(&b.id));
        for p in side {
            let table = self.table(t);
            let k = Key::of(&p.id);
            // The run's own fates first: mostly in memory, where the index is a disk read.
            if table.fates.get(&k)?.is_some() || table.lookup(k)?.is_some() {
                continue;
            }
            let len = u32::try_from(p.text.len()).unwrap_or(u32::MAX).max(1);
            let fate = table.push(p, 1, len);
            table.account(k, fate, None, true)?;
            table.fates.insert(k, fate)?;
            if table.full(file_rows) {
                self.flush(t)?;
            }
        }
        Ok(())
    }

    /// Sort a type's buffer and hand it to the writer as a new table file (nothing when the
    /// buffer is empty).
    fn flush(&mut self, t: &'static str) -> Result<(), LakeError> {
        if self.types.get(t).is_none_or(|table| table.buf.is_empty()) {
            return Ok(());
        }
        self.seq += 1;
        let name = format!("{}-{:05}.parquet", self.snapshot, self.seq);
        let rel = format!("data/{t}/{name}");
        let path = self.lake.root().join(&rel);
        let table = self.types.get_mut(t).expect("flushed tables exist");
        let buf = std::mem::take(&mut table.buf);
        let mut side = std::mem::take(&mut table.buf_side);
        if side.iter().all(|&s| s == 0) {
            side = Vec::new();
        }
        table.buf_bytes = 0;
        let mut order: Vec<u32> = (0..buf.len() as u32)
            .filter(|&i| buf[i as usize].is_some())
            .collect();
        let sort_key = |i: &u32| {
            let p = buf[*i as usize].as_ref().map(|r| &r.prepared);
            (
                p.and_then(|p| p.patient_id.as_deref()),
                p.map(|p| p.id.as_str()),
            )
        };
        if lake::clustered_by_patient(t) {
            order.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        } else {
            order.sort_by(|a, b| sort_key(a).1.cmp(&sort_key(b).1));
        }
        let mut position = vec![u32::MAX; buf.len()];
        for (post, &pre) in order.iter().enumerate() {
            position[pre as usize] = post as u32;
        }
        let mut buf = buf;
        let rows: Vec<lake::NewRow> = order
            .iter()
            .filter_map(|&i| buf[i as usize].take())
            .collect();
        let position = table.lists.keep(position)?;
        let side = table.lists.keep(side)?;
        let number = table.take_number();
        table.flushed.push(Flushed {
            file: lake::TableFile {
                path: rel,
                rows: rows.len() as u64,
                number,
            },
            position,
            side,
        });
        if rows.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(self.lake.data_dir(t)).map_err(|source| LakeError::Io {
            path: self.lake.data_dir(t).display().to_string(),
            source,
        })?;
        let job = WriteJob {
            path,
            resource_type: t,
            rows,
        };
        match &self.jobs {
            Some(tx) if tx.send(job).is_ok() => Ok(()),
            // The writer stopped on an error, which `run` reports when it joins it.
            _ => Err(LakeError::Parquet {
                path: self.lake.data_dir(t).display().to_string(),
                message: "the table writer stopped".into(),
            }),
        }
    }

    /// The last rows of every touched type to the writer: side products nothing else
    /// described, the removals of a FULL formulary extract, and the rows still buffered.
    fn write_out(&mut self, types: &[&'static str]) -> Result<(), LakeError> {
        let root = self.lake.root().to_path_buf();
        for t in types {
            let t = *t;
            let full = self.full.clone();
            let table = self.types.get_mut(t).expect("listed");
            let touched = !table.fates.is_empty()
                || !table.side.is_empty()
                || (t == "Basic" && !full.is_empty());
            if !touched {
                continue;
            }
            // Side products nothing else describes.
            self.spill(t)?;
            let table = self.types.get_mut(t).expect("listed");
            table.prev()?;
            if t == "Basic" && !full.is_empty() {
                // A FULL extract replaces its formularies: items it no longer lists go.
                let column = crate::registry::find("Basic", "formulary")
                    .map(|p| p.column())
                    .unwrap_or_else(|| "formulary".into());
                for (fi, f) in table.prev_files.iter().enumerate() {
                    let rows = lake::list_column(&root.join(&f.path), &column)?;
                    for (row, (id, refs)) in rows.iter().enumerate() {
                        if !refs.iter().any(|r| full.contains(r)) {
                            continue;
                        }
                        let k = Key::of(id);
                        if table.fates.get(&k)?.is_none()
                            && (table.dead_prev.entry(fi as u32).or_default())
                                .insert(row as u32, k.fingerprint())
                                .is_none()
                        {
                            table.stats.deleted += 1;
                            table.gone.insert(k);
                        }
                    }
                }
            }
            self.flush(t)?;
        }
        Ok(())
    }

    /// Finish every table: its last rows ([`Self::write_out`]), copies of earlier files
    /// without the rows this run replaced, the key index run of what it wrote. Returns the new
    /// snapshot's files, row counts, merge statistics and key index runs per type. The writer
    /// must be joined (all flushed files written) before the copies are made, so this takes
    /// the join as a closure, and calls it whatever happens before, so that no file is still
    /// being written when a failed run removes its files (`Staged`'s drop).
    #[allow(clippy::type_complexity)]
    fn finish(
        mut self,
        join_writer: impl FnOnce() -> Result<(), LakeError>,
    ) -> Result<
        (
            BTreeMap<String, Vec<lake::TableFile>>,
            BTreeMap<String, u64>,
            BTreeMap<String, MergeStats>,
            BTreeMap<String, Vec<String>>,
        ),
        LakeError,
    > {
        let root = self.lake.root().to_path_buf();
        let types: Vec<&'static str> = self.types.keys().copied().collect();
        let written = self.write_out(&types);
        self.jobs = None;
        let joined = join_writer();
        written?;
        joined?;

        let mut files = BTreeMap::new();
        let mut counts = BTreeMap::new();
        let mut stats = BTreeMap::new();
        let mut keys = BTreeMap::new();
        // Types whose key index gets a run of the files this run wrote, done in parallel.
        let mut indexing = Vec::new();
        for t in types {
            let mut table = self.types.remove(t).expect("listed");
            let dead = std::mem::take(&mut table.dead_prev);
            // Files from before the type's current search columns are copied with them; the
            // key index then gets a run of the copies, so it is opened if the run did not
            // touch the type. A published snapshot's files of a type all have the columns of
            // the release that published it (a run rewrites every file that lacks them), so
            // one footer tells whether the others need reading: a delta run does not read
            // every file of the lake.
            let first_outdated = match table.prev_files.first() {
                Some(f) => lake::outdated(&root.join(&f.path), t)?,
                None => false,
            };
            let outdated = if first_outdated {
                table.prev()?;
                table
                    .prev_files
                    .iter()
                    .map(|f| lake::outdated(&root.join(&f.path), t))
                    .collect::<Result<Vec<bool>, _>>()?
            } else {
                vec![false; table.prev_files.len()]
            };
            let mut list = Vec::new();
            // The files this run wrote: the key index gets a run of their rows.
            let mut written = Vec::new();
            let mut copies: Vec<(lake::TableFile, HashMap<u32, u32>)> = Vec::new();
            for (fi, f) in std::mem::take(&mut table.prev_files)
                .into_iter()
                .enumerate()
            {
                match dead.get(&(fi as u32)) {
                    Some(d) if !d.is_empty() => copies.push((f, d.clone())),
                    // A table of a snapshot from before file lists lives in that snapshot's
                    // directory, which pruning removes: copy it into data/.
                    _ if !f.path.starts_with("data/") => copies.push((f, HashMap::new())),
                    _ if outdated[fi] => copies.push((f, HashMap::new())),
                    _ => list.push(f),
                }
            }
            for (g, f) in std::mem::take(&mut table.flushed).into_iter().enumerate() {
                if f.file.rows == 0 {
                    continue;
                }
                match table.dead_in_run.get(&(g as u32)) {
                    Some(d) if !d.is_empty() => copies.push((f.file, d.clone())),
                    _ => written.push(f.file),
                }
            }
            let names: Vec<(String, u32)> = (0..copies.len())
                .map(|_| {
                    self.seq += 1;
                    let rel = format!("data/{t}/{}-{:05}.parquet", self.snapshot, self.seq);
                    (rel, table.take_number())
                })
                .collect();
            let copied: Vec<Result<lake::TableFile, LakeError>> = copies
                .par_iter()
                .zip(names)
                .map(|((f, d), (rel, number))| {
                    let (src, dst) = (root.join(&f.path), root.join(&rel));
                    let rows = lake::copy_without(&src, &dst, t, d, |fp, id| {
                        *fp == Key::of(id).fingerprint()
                    })?;
                    Ok(lake::TableFile {
                        path: rel,
                        rows,
                        number,
                    })
                })
                .collect();
            for c in copied {
                let c = match c {
                    // The index placed an id in a row that holds another one.
                    Err(LakeError::KeyIndex { path, message }) => {
                        return Err(index_wrong(&root, t, path, &message))
                    }
                    c => c?,
                };
                if c.rows > 0 {
                    written.push(c);
                } else {
                    let _ = std::fs::remove_file(root.join(&c.path));
                }
            }
            list.extend(written.iter().cloned());
            let gone: Vec<Key> = table.gone.drain().collect();
            match table.prev.take() {
                Some(_) if list.is_empty() => {}
                Some(index) if written.is_empty() && gone.is_empty() => {
                    keys.insert(t.to_string(), index.paths());
                }
                Some(index) => indexing.push((t, index, written, gone, list.clone())),
                None if table.prev_keys.is_empty() => {}
                None => {
                    keys.insert(t.to_string(), std::mem::take(&mut table.prev_keys));
                }
            }
            let rows: u64 = list.iter().map(|f| f.rows).sum();
            if !list.is_empty() {
                counts.insert(t.to_string(), rows);
                files.insert(t.to_string(), list);
            }
            if table.stats != MergeStats::default() {
                stats.insert(t.to_string(), table.stats);
            }
        }
        let (scratch, snapshot) = (&self.place.scratch, &self.place.snapshot);
        let indexed: Vec<Result<(&str, Vec<String>, bool), LakeError>> = indexing
            .into_par_iter()
            .map(|(t, mut index, written, gone, mut all)| {
                match index.add_run(&written, gone, scratch) {
                    // An older run was found damaged while merging runs: index the whole
                    // table of the new snapshot instead.
                    Err(e @ LakeError::KeyIndex { .. }) => {
                        warn_rebuilding(t, &e);
                        let index = index::Index::build(&root, &mut all, t, snapshot, scratch)?;
                        Ok((t, index.paths(), true))
                    }
                    r => r.map(|()| (t, index.paths(), false)),
                }
            })
            .collect();
        for i in indexed {
            let (t, runs, rebuilt) = i?;
            keys.insert(t.to_string(), runs);
            if rebuilt {
                stats.entry(t.to_string()).or_default().key_index_built = true;
            }
        }
        Ok((files, counts, stats, keys))
    }
}

/// Threads writing table files. One was the run's bottleneck on a plain CSV file (its
/// encoding and compression took two thirds of the wall time, and the readers and mappers
/// waited on it); two let a second file be written while the first is. Each holds one file's
/// rows, outside the run's buffer budget.
const WRITERS: usize = 2;

/// Write the files of the jobs `jobs` hands over, [`WRITERS`] at a time, stamped with
/// `last_updated`. Files are fsynced by a thread of their own, so that a writer goes on to the
/// next file while the disk catches up; everything is synced when this returns.
fn write_files(
    jobs: std::sync::mpsc::Receiver<WriteJob>,
    last_updated: i64,
) -> Result<(), LakeError> {
    let jobs = std::sync::Mutex::new(jobs);
    let (sync_tx, sync_rx) = std::sync::mpsc::channel::<(PathBuf, std::fs::File)>();
    let syncer = std::thread::spawn(move || -> Result<(), LakeError> {
        for (path, file) in sync_rx {
            lake::sync_file(&path, &file)?;
        }
        Ok(())
    });
    let panicked = |what: &str| LakeError::Parquet {
        path: format!("({what})"),
        message: format!("the {what} panicked"),
    };
    let written = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (jobs, sync_tx) = (&jobs, sync_tx.clone());
                scope.spawn(move || -> Result<(), LakeError> {
                    // The lock is held while waiting for a job, not while writing it.
                    while let Some(job) = jobs.lock().ok().and_then(|rx| rx.recv().ok()) {
                        let (_, file) = lake::write_file_unsynced(
                            &job.path,
                            job.resource_type,
                            job.rows,
                            last_updated,
                        )?;
                        if sync_tx.send((job.path, file)).is_err() {
                            break; // the syncer stopped on an error, which its join returns
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        writers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or_else(|_| Err(panicked("table writer"))))
    });
    // A writer that fails stops taking jobs (the others go on); its error is returned here,
    // and the run, which stops handing over jobs when the receiver goes, reports it.
    drop(sync_tx);
    let synced = syncer
        .join()
        .unwrap_or_else(|_| Err(panicked("file syncer")));
    written.and(synced)
}

/// Run an ingest over `paths` into the lake.
///
/// # Errors
/// When a file cannot be read or recognised, the configuration is invalid, or the lake cannot
/// be written; the previous snapshot then stays current.
pub fn run(paths: &[PathBuf], opts: &Options) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let cfg = Config::load(opts)?;
    let files = expand(paths)?;
    let now = chrono::Utc::now().timestamp_millis();
    let lake = Lake::new(&opts.lake);
    let staged = lake.stage()?;
    let prev_manifest = match &staged.parent {
        Some(name) => Some(lake.manifest(name)?),
        None => None,
    };
    // Keys of the run that go to disk (see `fates`); the directory goes before publishing,
    // and with the staging directory of a run that never published.
    let keys_dir = staged.dir.join("keys");
    let key_limit = opts.memory_keys.unwrap_or(fates::MEMORY_KEYS);
    let place = std::sync::Arc::new(IndexPlace {
        root: lake.root().to_path_buf(),
        snapshot: staged.name.clone(),
        scratch: keys_dir.clone(),
    });
    let mut types = BTreeMap::new();
    if let Some(m) = &prev_manifest {
        for (t, list) in lake.snapshot_files(&m.name)? {
            let Some(t) = crate::registry::resource_types()
                .into_iter()
                .find(|x| *x == t)
            else {
                continue;
            };
            let root = lake.root();
            let list = list
                .into_iter()
                .map(|p| {
                    let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                    let listed = m
                        .files
                        .get(t)
                        .and_then(|fs| fs.iter().find(|f| f.path == rel));
                    listed.cloned().unwrap_or_else(|| lake::TableFile {
                        // A table from before file lists: the snapshot's only file of the type.
                        rows: m.counts.get(t).copied().unwrap_or(0),
                        path: rel,
                        number: 0,
                    })
                })
                .collect();
            let prev_keys = m.keys.get(t).cloned().unwrap_or_default();
            let place = std::sync::Arc::clone(&place);
            types.insert(t, TypeTable::new(t, place, list, prev_keys, key_limit));
        }
    }
    let mut report = RunReport {
        snapshot: staged.name.clone(),
        parent: staged.parent.clone(),
        ..Default::default()
    };
    let mut rejects = RejectSink::create(staged.dir.join("rejects.ndjson"))?;

    let (tx, rx) = std::sync::mpsc::sync_channel::<WriteJob>(0);
    let writer = std::thread::spawn(move || write_files(rx, now));
    let mut tables = Tables {
        lake: &lake,
        snapshot: staged.name.clone(),
        types,
        budget: opts.buffer_bytes.unwrap_or(RUN_BYTES).max(1),
        file_rows: opts.file_rows.unwrap_or(FILE_ROWS).max(1),
        key_limit,
        place,
        seq: 0,
        jobs: Some(tx),
        full: HashSet::new(),
    };
    let mut failure = None;
    let side = SideSeen::default();
    // Each file's format, recognised once.
    let mut formats: Vec<Option<Format>> = files.iter().map(|f| known_format(f, &cfg)).collect();
    let mut i = 0;
    while i < files.len() {
        // Consecutive X12 files are read together, so that small ones share the cores.
        let x12 = (formats[i..].iter())
            .take_while(|f| matches!(f, Some(Format::X12)))
            .count();
        let done = if x12 > 0 {
            let paths: Vec<&Path> = files[i..i + x12].iter().map(PathBuf::as_path).collect();
            i += x12;
            process_x12_files(
                &paths,
                &cfg,
                opts.progress.as_ref(),
                &mut tables,
                &mut rejects,
                &side,
            )
        } else {
            i += 1;
            process_file(
                &files[i - 1],
                formats[i - 1].take(),
                &cfg,
                opts.progress.as_ref(),
                &mut tables,
                &mut rejects,
                &side,
            )
            .map(|r| vec![r])
        };
        match done {
            Ok(r) => report.sources.extend(r),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let join = move || -> Result<(), LakeError> {
        writer.join().map_err(|_| LakeError::Parquet {
            path: "(writer)".into(),
            message: "the table writer panicked".into(),
        })?
    };
    if let Some(e) = failure {
        drop(tables);
        return Err(match join() {
            Err(w) => w.into(),
            Ok(()) => e,
        });
    }
    let (files_by_type, counts, merge, keys) = tables.finish(join)?;
    if keys_dir.exists() {
        std::fs::remove_dir_all(&keys_dir).map_err(|source| LakeError::Io {
            path: keys_dir.display().to_string(),
            source,
        })?;
    }
    rejects.finish()?;
    report.tables = counts;
    report.merge = merge;
    for r in &report.sources {
        report.records_read += r.records_read;
        report.accepted += r.accepted;
        report.rejected += r.rejected;
        for (k, v) in &r.rejects_by_reason {
            *report.rejects_by_reason.entry(k.clone()).or_default() += v;
        }
    }
    if report.records_read != report.accepted + report.rejected {
        return Err(RunError::Accounting {
            file: "(all sources)".into(),
            read: report.records_read,
            accepted: report.accepted,
            rejected: report.rejected,
        });
    }
    report.rejects_file = lake
        .root()
        .join("snapshots")
        .join(&staged.name)
        .join("rejects.ndjson")
        .display()
        .to_string();
    report.seconds = started.elapsed().as_secs_f64();
    let text = serde_json::to_vec_pretty(&report).map_err(|e| LakeError::Parquet {
        path: "report.json".into(),
        message: e.to_string(),
    })?;
    std::fs::write(staged.dir.join("report.json"), text).map_err(|source| LakeError::Io {
        path: staged.dir.join("report.json").display().to_string(),
        source,
    })?;
    staged.publish(report.tables.clone(), files_by_type, keys)?;
    // The indexes this run rebuilt are published: a marker asking for that is done with.
    for (t, _) in report.merge.iter().filter(|(_, s)| s.key_index_built) {
        let _ = std::fs::remove_file(lake.rebuild_marker(t));
    }
    Ok(report)
}
