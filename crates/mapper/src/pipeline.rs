//! One ingest run: files → records → FHIR resources → a new lake snapshot.
//!
//! Files are read in parallel (rayon), each by the reader its content selects; every record
//! becomes resources or a reject. The run then merges the resources into the previous
//! snapshot, writes the tables, the rejects (NDJSON) and the report, and publishes the new
//! snapshot atomically. `records read = accepted + rejected` is checked before publishing.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ingest::detect::{detect, Format};
use ingest::formulary::QhpKind;
use ingest::layout::Mapping;
use ingest::{FileSummary, Item, Reader, Reason, Reject, SourceRecord, Stage};
use rayon::prelude::*;
use serde::Serialize;

use crate::c4bb::{self, Systems};
use crate::lake::{self, Lake, LakeError, MergeStats};
use crate::{MapError, Resource};

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
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("lake", &self.lake)
            .field("mappings", &self.mappings)
            .field("forced_mapping", &self.forced_mapping)
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

struct FileResult {
    report: SourceReport,
    produced: Vec<Produced>,
    rejects: Vec<Reject>,
    /// Formularies (`InsurancePlan/<id>`) this file lists in full: their items not in the file
    /// are no longer on them (a FULL formulary extract).
    full_formularies: Vec<String>,
}

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

fn reader_for(
    path: &Path,
    cfg: &Config,
) -> Result<(Box<dyn Reader + Send + Sync>, String), RunError> {
    if let Some(m) = &cfg.forced {
        return Ok((
            Box::new(ingest::delimited::DelimitedReader::new(m.clone())),
            m.source.name.clone(),
        ));
    }
    match detect(path, &cfg.mappings)? {
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
                    crate::registry::IndexValue::Reference(r) => Some(r),
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

fn process_file(
    path: &Path,
    cfg: &Config,
    progress: Option<&ProgressFn>,
    now: i64,
) -> Result<FileResult, RunError> {
    let file_name = path.display().to_string();
    let total_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let (reader, layout) = reader_for(path, cfg)?;
    let mut report = SourceReport {
        file: path.display().to_string(),
        layout,
        ..Default::default()
    };
    let mut produced = Vec::new();
    // A FULL formulary extract lists its formularies completely (see `run`).
    let is_full = report.layout == "formulary-xml"
        && matches!(
            ingest::formulary::extract_kind(path),
            Ok(ingest::formulary::ExtractKind::Full)
        );
    let mut full_formularies: Vec<String> = Vec::new();
    let mut rejects = Vec::new();
    let mut handle = |item: Item, mapped: Option<Result<Vec<Resource>, MapError>>| {
        report.records_read += 1;
        if let Some(p) = progress {
            if report.records_read.is_multiple_of(4096) {
                p(&Progress {
                    file: &file_name,
                    records: report.records_read,
                    bytes: record_offset(&item),
                    total_bytes,
                    done: false,
                });
            }
        }
        let (record, mapped) = match (item, mapped) {
            (Ok(r), Some(m)) => (r, m),
            (Ok(r), None) => {
                let m = map_record(&r, &cfg.systems);
                (r, m)
            }
            (Err(rej), _) => {
                rejects.push(rej);
                return;
            }
        };
        match mapped {
            Ok(resources) => {
                report.accepted += 1;
                if let SourceRecord::Claim(c) = &record {
                    match c.change {
                        ingest::model::Change::Replace => report.updates += 1,
                        ingest::model::Change::Cancel => report.cancels += 1,
                        _ => {}
                    }
                }
                let subject = primary_type(&record);
                for r in resources {
                    if is_full {
                        match r.resource_type {
                            "Basic" => full_formularies.extend(formulary_refs(&r.json)),
                            "InsurancePlan" if r.id.starts_with("formulary-") => {
                                full_formularies.push(format!("InsurancePlan/{}", r.id))
                            }
                            _ => {}
                        }
                    }
                    *report
                        .resources
                        .entry(r.resource_type.to_string())
                        .or_default() += 1;
                    let primary = r.resource_type == subject
                        || (subject == "Patient" && r.resource_type == "Coverage")
                        || matches!(
                            record,
                            SourceRecord::FormularyDrug(_) | SourceRecord::FormularyPlan(_)
                        );
                    produced.push(Produced {
                        resource: lake::Prepared::new(r, now),
                        primary,
                    });
                }
            }
            Err(e) => rejects.push(map_error_reject(&record, &e)),
        }
    };
    let summary: FileSummary = if report.layout == X12_LAYOUT {
        // A large X12 file is cut at interchange boundaries; its pieces are read and mapped
        // in parallel, the results taken in file order.
        ingest::x12::read_parallel(
            path,
            &|item: Item| {
                let mapped = item.as_ref().ok().map(|r| map_record(r, &cfg.systems));
                (item, mapped)
            },
            &mut |(item, mapped)| handle(item, mapped),
        )?
    } else {
        reader.read(path, &mut |item: Item| handle(item, None))?
    };
    if let Some(p) = progress {
        p(&Progress {
            file: &file_name,
            records: report.records_read,
            bytes: total_bytes,
            total_bytes,
            done: true,
        });
    }
    report.rejected = rejects.len() as u64;
    for r in &rejects {
        *report
            .rejects_by_reason
            .entry(r.reason.as_str().to_string())
            .or_default() += 1;
    }
    report.bytes = summary.bytes;
    report.units = summary.units;
    report.notices = summary
        .notices
        .iter()
        .map(|n| {
            format!(
                "{} (segment {:?}, line {}, byte {})",
                n.message, n.position.segment, n.position.line, n.position.byte_offset
            )
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
    full_formularies.sort();
    full_formularies.dedup();
    Ok(FileResult {
        report,
        produced,
        rejects,
        full_formularies,
    })
}

/// Write the rejects as NDJSON.
fn write_rejects(path: &Path, rejects: &[&Reject]) -> Result<(), LakeError> {
    let io = |source| LakeError::Io {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::new(f);
    for r in rejects {
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
        writeln!(w, "{line}").map_err(io)?;
    }
    let f = w.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)
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
    let results: Vec<FileResult> = files
        .par_iter()
        .map(|f| process_file(f, &cfg, opts.progress.as_ref(), now))
        .collect::<Result<_, _>>()?;

    // Resources of this run, by type and id: subjects beat side products; among subjects the
    // later file wins; among side products the richer description wins.
    let mut by_type: BTreeMap<&'static str, HashMap<String, Produced>> = BTreeMap::new();
    let mut results = results;
    for r in results
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.produced))
    {
        let slot = by_type.entry(r.resource.resource_type).or_default();
        let replace = match slot.get(&r.resource.id) {
            None => true,
            Some(old) if r.primary != old.primary => r.primary,
            Some(_) if r.primary => true,
            Some(old) => r.resource.text.len() > old.resource.text.len(),
        };
        if replace {
            slot.insert(r.resource.id.clone(), r);
        }
    }

    let lake = Lake::new(&opts.lake);
    let staged = lake.stage()?;
    let previous = lake.current_name()?.map(|_| lake.current()).transpose()?;
    let mut report = RunReport {
        snapshot: staged.name.clone(),
        parent: staged.parent.clone(),
        ..Default::default()
    };
    let mut types: Vec<&'static str> = crate::registry::resource_types();
    for t in by_type.keys() {
        if !types.contains(t) {
            types.push(t);
        }
    }
    let full: std::collections::HashSet<String> = results
        .iter()
        .flat_map(|r| r.full_formularies.iter().cloned())
        .collect();
    for t in types {
        let mut old_rows = match &previous {
            Some(dir) if Lake::table_path(dir, t).is_file() => {
                lake::read_rows(&Lake::table_path(dir, t))?
            }
            _ => Vec::new(),
        };
        let produced: Vec<Produced> = by_type
            .remove(t)
            .map(|m| m.into_values().collect())
            .unwrap_or_default();
        let existing: std::collections::HashSet<String> =
            old_rows.iter().map(|r| r.id.clone()).collect();
        let new: Vec<lake::Prepared> = produced
            .into_iter()
            .filter(|p| p.primary || !existing.contains(&p.resource.id))
            .map(|p| p.resource)
            .collect();
        if t == "Basic" && !full.is_empty() {
            // A FULL extract replaces its formularies: items it no longer lists are dropped.
            let listed: std::collections::HashSet<&str> =
                new.iter().map(|r| r.id.as_str()).collect();
            let before = old_rows.len();
            old_rows.retain(|r| {
                listed.contains(r.id.as_str())
                    || serde_json::from_str::<serde_json::Value>(&r.resource)
                        .map(|v| !formulary_refs(&v).iter().any(|f| full.contains(f)))
                        .unwrap_or(true)
            });
            report.merge.entry(t.to_string()).or_default().deleted +=
                (before - old_rows.len()) as u64;
        }
        if old_rows.is_empty() && new.is_empty() {
            continue;
        }
        let (rows, mut stats) = lake::merge(old_rows, new, now);
        if let Some(prior) = report.merge.get(t) {
            stats.deleted += prior.deleted;
        }
        let rows = if lake::clustered_by_patient(t) {
            rows
        } else {
            let mut rows = rows;
            rows.sort_by(|a, b| a.id.cmp(&b.id));
            rows
        };
        lake::write_table(&Lake::table_path(&staged.dir, t), t, &rows)?;
        report.tables.insert(t.to_string(), rows.len() as u64);
        report.merge.insert(t.to_string(), stats);
    }

    let rejects: Vec<&Reject> = results.iter().flat_map(|r| r.rejects.iter()).collect();
    write_rejects(&staged.dir.join("rejects.ndjson"), &rejects)?;
    for r in &results {
        report.records_read += r.report.records_read;
        report.accepted += r.report.accepted;
        report.rejected += r.report.rejected;
        for (k, v) in &r.report.rejects_by_reason {
            *report.rejects_by_reason.entry(k.clone()).or_default() += v;
        }
    }
    report.sources = results.into_iter().map(|r| r.report).collect();
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
    staged.publish(report.tables.clone())?;
    Ok(report)
}
