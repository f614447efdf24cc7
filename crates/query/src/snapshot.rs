//! One published snapshot, opened for queries.
//!
//! A [`Snapshot`] holds a DataFusion `SessionContext` with one table per resource type,
//! registered over the snapshot's Parquet files with their declared sort order and with
//! filter pushdown, page-index and bloom-filter pruning on. It is immutable: a request is
//! answered wholly from one snapshot, and the server swaps in a new `Snapshot` when a new one
//! is published.
//!
//! The hot requests (read by id; searches of a compartment type confined to patients, with
//! only `patient` and date filters; `Patient/$everything`) take a direct path over an
//! in-memory index of the files instead (see [`crate::direct`]); it answers exactly as
//! DataFusion would.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};

use datafusion::arrow::array::{Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::logical_expr::{col, lit, Expr, SortExpr};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use mapper::lake::{clustered_by_patient, Lake};
use mapper::registry::{self, IndexValue, ParamType};
use serde_json::Value;

use crate::cursor::{self, Cursor};
use crate::direct::{self, Direct, Loc};
use crate::params::{
    date_eval, date_filter, date_parts, reference_forms, ts, Include, SearchRequest, SortKey,
};
use crate::QueryError;

/// A page of results.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Matching resources (JSON text), in order.
    pub matches: Vec<String>,
    /// Included resources (JSON text), no duplicates, none of them also a match.
    pub included: Vec<String>,
    /// Total number of matches, when known or asked for.
    pub total: Option<u64>,
    /// Cursor of the next page.
    pub next: Option<String>,
    /// Cursor of the previous page.
    pub previous: Option<String>,
    /// Index of the page's first match among all matches.
    pub offset: u64,
}

/// A snapshot opened for queries.
pub struct Snapshot {
    /// The snapshot's name.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    ctx: SessionContext,
    tables: HashSet<String>,
    direct: Option<Direct>,
}

/// How a snapshot is opened.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Answer the hot requests on the direct path (off: everything through DataFusion).
    pub direct: bool,
    /// Budget of the decoded-row cache of the direct path, in bytes.
    pub row_cache_bytes: usize,
}

impl Default for OpenOptions {
    /// The direct path on, with a row cache of `FHIRLAKE_ROW_CACHE_MB` MiB (default 64).
    fn default() -> Self {
        let row_cache_bytes = std::env::var("FHIRLAKE_ROW_CACHE_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(direct::DEFAULT_ROW_CACHE_BYTES, |mb| mb << 20);
        Self {
            direct: true,
            row_cache_bytes,
        }
    }
}

/// One row found on the direct path: where it is, its id and its sort key.
struct Hit {
    loc: Loc,
    id: String,
    key: i64,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("name", &self.name)
            .finish()
    }
}

/// The phases of `Patient/$everything`, in order.
pub const EVERYTHING_PHASES: [&str; 5] = [
    "Patient",
    "Coverage",
    "ExplanationOfBenefit",
    "Organization",
    "Practitioner",
];

impl Snapshot {
    /// Open the lake's current snapshot.
    ///
    /// # Errors
    /// When nothing is published or a table cannot be registered.
    pub async fn open(lake: &Lake) -> Result<Self, QueryError> {
        Self::open_with(lake, OpenOptions::default()).await
    }

    /// Open the lake's current snapshot with options.
    ///
    /// # Errors
    /// As [`Snapshot::open`].
    pub async fn open_with(lake: &Lake, options: OpenOptions) -> Result<Self, QueryError> {
        let dir = lake.current()?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut files = Vec::new();
        for t in registry::resource_types() {
            files.push((t.to_string(), Lake::table_files(&dir, t)?));
        }
        Self::open_files(name, dir, files, options).await
    }

    /// Open a snapshot made of the given table files (type, files); for tests of tables
    /// split into several files.
    ///
    /// # Errors
    /// When a table cannot be registered or indexed.
    #[doc(hidden)]
    pub async fn open_files(
        name: String,
        dir: PathBuf,
        files: Vec<(String, Vec<PathBuf>)>,
        options: OpenOptions,
    ) -> Result<Self, QueryError> {
        let mut config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(1024)
            .with_information_schema(false);
        {
            let opts = config.options_mut();
            opts.execution.parquet.pushdown_filters = true;
            opts.execution.parquet.reorder_filters = true;
            opts.execution.parquet.enable_page_index = true;
            opts.execution.parquet.bloom_filter_on_read = true;
            opts.execution.parquet.schema_force_view_types = false;
            opts.execution.collect_statistics = true;
        }
        let ctx = SessionContext::new_with_config(config);
        let mut tables = HashSet::new();
        for (t, files) in &files {
            let t = t.as_str();
            if files.is_empty() {
                continue;
            }
            let sort: Vec<Vec<SortExpr>> = if clustered_by_patient(t) {
                vec![vec![
                    col("patient_id").sort(true, true),
                    col("id").sort(true, false),
                ]]
            } else {
                vec![vec![col("id").sort(true, false)]]
            };
            let options = ParquetReadOptions::default()
                .file_sort_order(sort)
                .to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
            let urls = files
                .iter()
                .map(|f| ListingTableUrl::parse(f.to_string_lossy()))
                .collect::<Result<Vec<_>, _>>()?;
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(mapper::lake::schema(t));
            ctx.register_table(t, Arc::new(ListingTable::try_new(config)?))?;
            tables.insert(t.to_string());
        }
        let direct = if options.direct {
            let indexed: Vec<(String, Vec<PathBuf>, bool)> = files
                .into_iter()
                .filter(|(_, f)| !f.is_empty())
                .map(|(t, f)| {
                    let c = clustered_by_patient(&t);
                    (t, f, c)
                })
                .collect();
            let bytes = options.row_cache_bytes;
            Some(
                tokio::task::spawn_blocking(move || Direct::open(indexed, bytes))
                    .await
                    .map_err(|e| {
                        QueryError::Engine(datafusion::error::DataFusionError::External(
                            e.to_string().into(),
                        ))
                    })??,
            )
        } else {
            None
        };
        Ok(Self {
            name,
            dir,
            ctx,
            tables,
            direct,
        })
    }

    /// Whether the snapshot has a table for the type.
    pub fn has(&self, resource_type: &str) -> bool {
        self.tables.contains(resource_type)
    }

    /// The compartment restriction of a type for the given patients (`None`: unrestricted).
    fn compartment(resource_type: &str, patients: Option<&[String]>) -> Option<Expr> {
        let patients = patients?;
        let list: Vec<Expr> = patients.iter().map(|p| lit(p.clone())).collect();
        let column = match resource_type {
            "Patient" => "id",
            t if clustered_by_patient(t) => "patient_id",
            _ => return None,
        };
        Some(if list.is_empty() {
            lit(false)
        } else {
            col(column).in_list(list, false)
        })
    }

    async fn fetch(
        &self,
        resource_type: &str,
        filter: Option<Expr>,
        sort: Option<(Vec<SortExpr>, Expr)>,
        limit: Option<usize>,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        if !self.has(resource_type) {
            return Ok(Vec::new());
        }
        let mut df = self.ctx.table(resource_type).await?;
        if let Some(f) = filter {
            df = df.filter(f)?;
        }
        let key = match sort {
            Some((order, key)) => {
                df = df.sort(order)?;
                key
            }
            None => lit(0i64),
        };
        if let Some(n) = limit {
            df = df.limit(0, Some(n))?;
        }
        df = df.select(vec![col("id"), col("resource"), key.alias("sort_key")])?;
        Ok(df.collect().await?)
    }

    /// Read one resource, confined to the compartment (another member's reads as absent).
    ///
    /// # Errors
    /// Engine errors only.
    pub async fn read(
        &self,
        resource_type: &str,
        id: &str,
        patients: Option<&[String]>,
    ) -> Result<Option<String>, QueryError> {
        if !registry::resource_types().contains(&resource_type) {
            return Err(QueryError::UnknownType(resource_type.to_string()));
        }
        if let Some(d) = &self.direct {
            let Some((_, table)) = d.table(resource_type) else {
                return Ok(None);
            };
            let rows = d.rows(resource_type, &table.id_candidates(id))?;
            let Some(r) = rows.into_iter().find(|r| &*r.id == id) else {
                return Ok(None);
            };
            let allowed = in_compartment(resource_type, &r, patients);
            return allowed.then(|| r.resource()).transpose();
        }
        let mut f = col("id").eq(lit(id.to_string()));
        if let Some(c) = Self::compartment(resource_type, patients) {
            f = f.and(c);
        }
        let batches = self.fetch(resource_type, Some(f), None, Some(1)).await?;
        Ok(rows(&batches).into_iter().next().map(|r| r.1))
    }

    /// Run a search.
    ///
    /// `patients` confines the search to those members' compartments (`None`: no
    /// confinement, for public resources and operator access); `secret` signs cursors.
    ///
    /// # Errors
    /// A malformed value or cursor (400) or an engine error.
    pub async fn search(
        &self,
        req: &SearchRequest,
        patients: Option<&[String]>,
        base_url: Option<&str>,
        secret: &[u8],
    ) -> Result<Page, QueryError> {
        let t = req.resource_type.as_str();
        let scope = scope_key(patients);
        let fingerprint = req.fingerprint(&scope);
        let direct_all = self.direct_search(req, patients, base_url)?;
        let mut filter = None;
        if direct_all.is_none() {
            filter = req.filter(base_url)?;
            if let Some(c) = Self::compartment(t, patients) {
                filter = Some(match filter {
                    Some(f) => f.and(c),
                    None => c,
                });
            }
        }
        let total = if req.summary_count || req.total_accurate {
            Some(match &direct_all {
                Some(all) => all.len() as u64,
                None => self.count(t, filter.clone()).await?,
            })
        } else {
            None
        };
        if req.summary_count {
            return Ok(Page {
                total,
                ..Default::default()
            });
        }
        let cursor = match &req.cursor {
            Some(c) => {
                let c = cursor::open(c, secret)?;
                if c.snap != self.name {
                    return Err(QueryError::InvalidCursor(
                        "the data changed since this page; start the search again",
                    ));
                }
                if c.query != fingerprint {
                    return Err(QueryError::InvalidCursor(
                        "cursor belongs to another search or caller",
                    ));
                }
                Some(c)
            }
            None => None,
        };
        let back = cursor.as_ref().is_some_and(|c| c.back);
        let mut found = match direct_all {
            Some(all) => self.direct_page(t, all, &req.sort, cursor.as_ref(), req.count + 1)?,
            None => {
                let (order, key) = sort_exprs(&req.sort, back);
                if let Some(c) = &cursor {
                    let k = keyset(&req.sort, c);
                    filter = Some(match filter {
                        Some(f) => f.and(k),
                        None => k,
                    });
                }
                let batches = self
                    .fetch(t, filter, Some((order, key)), Some(req.count + 1))
                    .await?;
                rows(&batches)
            }
        };
        let more = found.len() > req.count;
        found.truncate(req.count);
        if back {
            found.reverse();
        }
        let cursor_offset = cursor.as_ref().map_or(0, |c| c.offset);
        let offset = if back {
            cursor_offset.saturating_sub(req.count as u64)
        } else {
            cursor_offset
        };
        let seal = |row: Option<&(String, String, Option<i64>)>, back: bool, offset: u64| {
            row.map(|(id, _, k)| {
                cursor::seal(
                    &Cursor {
                        snap: self.name.clone(),
                        query: fingerprint.clone(),
                        key: *k,
                        id: id.clone(),
                        phase: 0,
                        offset,
                        back,
                    },
                    secret,
                )
            })
        };
        // Forward: a next page exists when more rows came back; a previous one when this is
        // not the first page. Backward: the other way round.
        let has_next = if back { true } else { more };
        let has_prev = if back { more } else { cursor.is_some() };
        let next = if has_next {
            seal(found.last(), false, offset + found.len() as u64)
        } else {
            None
        };
        let previous = if has_prev {
            seal(found.first(), true, offset)
        } else {
            None
        };
        let total =
            total.or_else(|| (cursor.is_none() && next.is_none()).then_some(found.len() as u64));
        let matches: Vec<String> = found.into_iter().map(|(_, r, _)| r).collect();
        let included = self.includes(&req.includes, &matches, patients).await?;
        Ok(Page {
            matches,
            included,
            total,
            next,
            previous,
            offset,
        })
    }

    /// All matches of a search, in search order, when the direct path can answer it: a
    /// compartment type, confined to patients (by the compartment or the `patient`
    /// parameter), filtered by nothing but `patient` and dates. `None`: use DataFusion.
    fn direct_search(
        &self,
        req: &SearchRequest,
        patients: Option<&[String]>,
        base_url: Option<&str>,
    ) -> Result<Option<Vec<Hit>>, QueryError> {
        let Some(d) = &self.direct else {
            return Ok(None);
        };
        let t = req.resource_type.as_str();
        if !clustered_by_patient(t) {
            return Ok(None);
        }
        // Each `patient` occurrence: the references it accepts (ORed); occurrences are ANDed.
        let mut patient_sets: Vec<Vec<String>> = Vec::new();
        // Each date occurrence: its start and end columns and its values (ORed).
        type DateValues = Vec<(String, i64, i64)>;
        let mut dates: Vec<(String, String, DateValues)> = Vec::new();
        for f in &req.filters {
            let p = f.param;
            match (p.code, p.kind, f.modifier.as_deref()) {
                ("patient", ParamType::Reference, None | Some("Patient")) => {
                    let mut forms = Vec::new();
                    for v in &f.values {
                        forms.extend(reference_forms(p, f.modifier.as_deref(), v, base_url));
                    }
                    if forms.iter().any(|r| !r.starts_with("Patient/")) {
                        return Ok(None);
                    }
                    patient_sets.push(forms);
                }
                (code, ParamType::Date, None) => {
                    let (start, end) = if code == "_lastUpdated" {
                        ("last_updated".to_string(), "last_updated".to_string())
                    } else {
                        let c = p.column();
                        (format!("{c}__start"), format!("{c}__end"))
                    };
                    let mut values = Vec::new();
                    for v in &f.values {
                        let (prefix, lo, hi) = date_parts(code, v)?;
                        values.push((prefix.to_string(), lo, hi));
                    }
                    dates.push((start, end, values));
                }
                _ => return Ok(None),
            }
        }
        let mut cands: Option<Vec<String>> = patients.map(<[String]>::to_vec);
        for forms in &patient_sets {
            let ids: Vec<String> = forms
                .iter()
                .filter_map(|f| f.strip_prefix("Patient/"))
                .map(str::to_string)
                .collect();
            cands = Some(match cands {
                None => ids,
                Some(c) => c.into_iter().filter(|x| ids.contains(x)).collect(),
            });
        }
        let Some(mut cands) = cands else {
            return Ok(None);
        };
        cands.sort();
        cands.dedup();
        let Some((_, table)) = d.table(t) else {
            return Ok(Some(Vec::new()));
        };
        // Where the filters' and the sort's columns sit in a member's cached rows.
        let patient_ref = match registry::find(t, "patient") {
            Some(p) if !patient_sets.is_empty() => Some(table.ref_index(&p.column())?),
            _ => None,
        };
        let date_idx = dates
            .iter()
            .map(|(start, end, values)| {
                Ok((table.time_index(start)?, table.time_index(end)?, values))
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        let sort_idx = match &req.sort {
            SortKey::Time { column, .. } => Some(table.time_index(column)?),
            SortKey::Id => None,
        };
        let mut hits = Vec::new();
        for p in &cands {
            let Some(member) = d.member(t, p)? else {
                continue;
            };
            for r in &member.rows {
                if let Some(pi) = patient_ref {
                    let refs = &r.refs[pi];
                    let has = |f: &String| refs.iter().any(|x| **x == **f);
                    if !patient_sets.iter().all(|forms| forms.iter().any(has)) {
                        continue;
                    }
                }
                let dates_ok = date_idx.iter().all(|(start, end, values)| {
                    let (s, e) = (r.times[*start], r.times[*end]);
                    values
                        .iter()
                        .any(|(p, lo, hi)| date_eval(p, *lo, *hi, s, e) == Some(true))
                });
                if !dates_ok {
                    continue;
                }
                hits.push(Hit {
                    loc: r.loc,
                    id: r.id.to_string(),
                    key: sort_idx.and_then(|i| r.times[i]).unwrap_or(0),
                });
            }
        }
        hits.sort_by(|a, b| forward(&req.sort, (a.key, &a.id), (b.key, &b.id)));
        Ok(Some(hits))
    }

    /// The rows of a page from all matches (in search order): after the cursor (before it,
    /// nearest first, for a `previous` cursor), at most `n`.
    fn direct_page(
        &self,
        t: &str,
        all: Vec<Hit>,
        sort: &SortKey,
        cursor: Option<&Cursor>,
        n: usize,
    ) -> Result<Vec<(String, String, Option<i64>)>, QueryError> {
        let Some(d) = &self.direct else {
            return Ok(Vec::new());
        };
        let page: Vec<&Hit> = match cursor {
            None => all.iter().take(n).collect(),
            Some(c) => {
                let at = (c.key.unwrap_or(0), c.id.as_str());
                if c.back {
                    let q = all
                        .partition_point(|h| forward(sort, (h.key, &h.id), at) == Ordering::Less);
                    all[q.saturating_sub(n)..q].iter().rev().collect()
                } else {
                    let p = all.partition_point(|h| {
                        forward(sort, (h.key, &h.id), at) != Ordering::Greater
                    });
                    all[p..].iter().take(n).collect()
                }
            }
        };
        let locs: Vec<Loc> = page.iter().map(|h| h.loc).collect();
        let rows = d.rows(t, &locs)?;
        page.into_iter()
            .zip(rows)
            .map(|(h, r)| Ok((h.id.clone(), r.resource()?, Some(h.key))))
            .collect()
    }

    async fn count(&self, resource_type: &str, filter: Option<Expr>) -> Result<u64, QueryError> {
        if !self.has(resource_type) {
            return Ok(0);
        }
        let mut df = self.ctx.table(resource_type).await?;
        if let Some(f) = filter {
            df = df.filter(f)?;
        }
        Ok(df.count().await? as u64)
    }

    /// Resolve `_include`s of a page: referenced resources, confined to the compartment.
    async fn includes(
        &self,
        includes: &[Include],
        matches: &[String],
        patients: Option<&[String]>,
    ) -> Result<Vec<String>, QueryError> {
        if includes.is_empty() || matches.is_empty() {
            return Ok(Vec::new());
        }
        let parsed: Vec<Value> = matches
            .iter()
            .map(|m| serde_json::from_str(m).map_err(|e| QueryError::Corrupt(e.to_string())))
            .collect::<Result<_, _>>()?;
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for inc in includes {
            for v in &parsed {
                for iv in (inc.param.extract)(v) {
                    let IndexValue::Reference(r) = iv else {
                        continue;
                    };
                    let Some((t, id)) = r.split_once('/') else {
                        continue;
                    };
                    let allowed = inc.param.targets.contains(&t)
                        && inc.target.as_deref().is_none_or(|x| x == t);
                    if allowed {
                        wanted
                            .entry(t.to_string())
                            .or_default()
                            .push(id.to_string());
                    }
                }
            }
        }
        let own: HashSet<String> = parsed
            .iter()
            .filter_map(|v| {
                Some(format!(
                    "{}/{}",
                    v.get("resourceType")?.as_str()?,
                    v.get("id")?.as_str()?
                ))
            })
            .collect();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (t, mut ids) in wanted {
            ids.sort();
            ids.dedup();
            let found = match &self.direct {
                Some(d) => {
                    let Some((_, table)) = d.table(&t) else {
                        continue;
                    };
                    let mut locs: Vec<Loc> =
                        ids.iter().flat_map(|i| table.id_candidates(i)).collect();
                    locs.sort_unstable();
                    locs.dedup();
                    let mut found: Vec<(String, String, Option<i64>)> = d
                        .rows(&t, &locs)?
                        .into_iter()
                        .filter(|r| ids.binary_search_by(|i| i.as_str().cmp(&r.id)).is_ok())
                        .filter(|r| in_compartment(&t, r, patients))
                        .map(|r| Ok((r.id.to_string(), r.resource()?, None)))
                        .collect::<Result<_, QueryError>>()?;
                    found.sort_by(|a, b| a.0.cmp(&b.0));
                    found
                }
                None => {
                    let list: Vec<Expr> = ids.iter().map(|i| lit(i.clone())).collect();
                    let mut f = col("id").in_list(list, false);
                    if let Some(c) = Self::compartment(&t, patients) {
                        f = f.and(c);
                    }
                    let order = vec![col("id").sort(true, false)];
                    rows(
                        &self
                            .fetch(&t, Some(f), Some((order, lit(0i64))), None)
                            .await?,
                    )
                }
            };
            for (id, r, _) in found {
                let key = format!("{t}/{id}");
                if !own.contains(&key) && seen.insert(key) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// `Patient/{id}/$everything`: the member's resources, one phase (resource type) after
    /// another, `count` per page. Organizations and Practitioners are those the member's
    /// Coverages and EOBs reference. `care_dates` (`start`, `end`, dates) keep the claims whose
    /// service dates meet them (`service-date` `ge` start and `le` end); the other phases are
    /// not filtered by them.
    ///
    /// # Errors
    /// A malformed parameter or cursor (400) or an engine error.
    #[allow(clippy::too_many_arguments)]
    pub async fn everything(
        &self,
        patient: &str,
        since: Option<&str>,
        care_dates: (Option<&str>, Option<&str>),
        types: Option<&[String]>,
        count: usize,
        cursor_text: Option<&str>,
        patients: Option<&[String]>,
        secret: &[u8],
    ) -> Result<Page, QueryError> {
        let since_ms = match since {
            Some(s) => Some(
                mapper::lake::date_range(s)
                    .ok_or_else(|| QueryError::InvalidParameter {
                        name: "_since".into(),
                        message: format!("{s:?} is not an instant"),
                    })?
                    .0,
            ),
            None => None,
        };
        // Care dates: the claims whose service dates meet [start, end] (R4 `start`/`end`, of
        // type date: no search prefix).
        let mut care: Vec<(&'static str, i64, i64)> = Vec::new();
        for (name, value, prefix) in [("start", care_dates.0, "ge"), ("end", care_dates.1, "le")] {
            if let Some(v) = value {
                let (given, lo, hi) = date_parts(name, v)?;
                if given != "eq" || v.starts_with("eq") {
                    return Err(QueryError::InvalidParameter {
                        name: name.into(),
                        message: format!("{v:?} is not a date"),
                    });
                }
                care.push((prefix, lo, hi));
            }
        }
        let phases: Vec<&str> = EVERYTHING_PHASES
            .iter()
            .copied()
            .filter(|p| types.is_none_or(|t| t.iter().any(|x| x == p)))
            .collect();
        let scope = scope_key(patients);
        let fingerprint = {
            let mut h =
                format!("everything|{patient}|{since:?}|{care_dates:?}|{types:?}|{count}|{scope}");
            h = format!("{:x}", sha2_short(&h));
            h
        };
        let cursor = match cursor_text {
            Some(c) => {
                let c = cursor::open(c, secret)?;
                if c.snap != self.name {
                    return Err(QueryError::InvalidCursor(
                        "the data changed since this page; start again",
                    ));
                }
                if c.query != fingerprint {
                    return Err(QueryError::InvalidCursor(
                        "cursor belongs to another request or caller",
                    ));
                }
                Some(c)
            }
            None => None,
        };
        let mut phase = cursor.as_ref().map_or(0, |c| c.phase);
        let mut after = cursor.as_ref().map(|c| c.id.clone());
        let offset = cursor.as_ref().map_or(0, |c| c.offset);
        let mut referenced: Option<(Vec<String>, Vec<String>)> = None;
        while phase < phases.len() {
            let t = phases[phase];
            let ids = match t {
                "Patient" | "Coverage" | "ExplanationOfBenefit" => Vec::new(),
                _ => {
                    if referenced.is_none() {
                        referenced = Some(self.referenced(patient).await?);
                    }
                    let empty = (Vec::new(), Vec::new());
                    let (orgs, pracs) = referenced.as_ref().unwrap_or(&empty);
                    let ids = if t == "Organization" { orgs } else { pracs };
                    if ids.is_empty() {
                        phase += 1;
                        after = None;
                        continue;
                    }
                    ids.clone()
                }
            };
            let mut found = self
                .phase_rows(
                    t,
                    patient,
                    &ids,
                    (since_ms, &care),
                    after.as_deref(),
                    Some(count + 1),
                )
                .await?;
            if found.is_empty() {
                phase += 1;
                after = None;
                continue;
            }
            let more_here = found.len() > count;
            found.truncate(count);
            let last = found.last().map(|r| r.0.clone()).unwrap_or_default();
            let next_pos = if more_here {
                Some((phase, last))
            } else {
                // Does any later phase have something? Link to it only if so.
                let mut p = phase + 1;
                let mut found_next = None;
                while p < phases.len() {
                    if self
                        .phase_nonempty(phases[p], patient, (since_ms, &care), &mut referenced)
                        .await?
                    {
                        found_next = Some(p);
                        break;
                    }
                    p += 1;
                }
                found_next.map(|p| (p, String::new()))
            };
            let next = next_pos.map(|(p, id)| {
                let (phase_id, id) = if id.is_empty() {
                    (p, String::new())
                } else {
                    (p, id)
                };
                cursor::seal(
                    &Cursor {
                        snap: self.name.clone(),
                        query: fingerprint.clone(),
                        key: None,
                        id,
                        phase: phase_id,
                        offset: offset + found.len() as u64,
                        back: false,
                    },
                    secret,
                )
            });
            return Ok(Page {
                matches: found.into_iter().map(|r| r.1).collect(),
                included: Vec::new(),
                total: None,
                next,
                previous: None,
                offset,
            });
        }
        Ok(Page {
            offset,
            ..Default::default()
        })
    }

    async fn phase_nonempty(
        &self,
        t: &str,
        patient: &str,
        when: When<'_>,
        referenced: &mut Option<(Vec<String>, Vec<String>)>,
    ) -> Result<bool, QueryError> {
        let ids = match t {
            "Patient" | "Coverage" | "ExplanationOfBenefit" => Vec::new(),
            _ => {
                if referenced.is_none() {
                    *referenced = Some(self.referenced(patient).await?);
                }
                let empty = (Vec::new(), Vec::new());
                let (orgs, pracs) = referenced.as_ref().unwrap_or(&empty);
                let ids = if t == "Organization" { orgs } else { pracs };
                if ids.is_empty() {
                    return Ok(false);
                }
                ids.clone()
            }
        };
        Ok(!self
            .phase_rows(t, patient, &ids, when, None, Some(1))
            .await?
            .is_empty())
    }

    /// The rows of an `$everything` phase, by id: the member's Patient, the member's rows
    /// of a compartment type, or the given ids of another type; updated since the first of
    /// `when`, claims with service dates meeting its care-date comparisons, after the id
    /// `after`, at most `limit`.
    async fn phase_rows(
        &self,
        t: &str,
        patient: &str,
        ids: &[String],
        (since_ms, care): When<'_>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<(String, String, Option<i64>)>, QueryError> {
        if let Some(d) = &self.direct {
            let Some((_, table)) = d.table(t) else {
                return Ok(Vec::new());
            };
            let mut locs: Vec<Loc> = match t {
                "Patient" => table.id_candidates(patient),
                "Coverage" | "ExplanationOfBenefit" => table.patient_candidates(patient),
                _ => ids.iter().flat_map(|i| table.id_candidates(i)).collect(),
            };
            locs.sort_unstable();
            locs.dedup();
            // The claims whose service dates meet the care dates, from the member's cached
            // date columns.
            let in_care: Option<HashSet<Box<str>>> = match (t, care.is_empty()) {
                ("ExplanationOfBenefit", false) => {
                    let c = service_date_column();
                    let (si, ei) = (
                        table.time_index(&format!("{c}__start"))?,
                        table.time_index(&format!("{c}__end"))?,
                    );
                    let member = d.member(t, patient)?;
                    let rows = member.iter().flat_map(|m| m.rows.iter());
                    Some(
                        rows.filter(|r| {
                            care.iter().all(|(p, lo, hi)| {
                                date_eval(p, *lo, *hi, r.times[si], r.times[ei]) == Some(true)
                            })
                        })
                        .map(|r| r.id.clone())
                        .collect(),
                    )
                }
                _ => None,
            };
            let mut found: Vec<(String, String, Option<i64>)> = d
                .rows(t, &locs)?
                .into_iter()
                .filter(|r| match t {
                    "Patient" => &*r.id == patient,
                    "Coverage" | "ExplanationOfBenefit" => r.patient_id.as_deref() == Some(patient),
                    _ => ids.iter().any(|i| **i == *r.id),
                })
                .filter(|r| since_ms.is_none_or(|ms| r.last_updated >= ms))
                .filter(|r| in_care.as_ref().is_none_or(|c| c.contains(&r.id)))
                .filter(|r| after.is_none_or(|a| &*r.id > a))
                .map(|r| Ok((r.id.to_string(), r.resource()?, Some(0))))
                .collect::<Result<_, QueryError>>()?;
            found.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(n) = limit {
                found.truncate(n);
            }
            return Ok(found);
        }
        let mut f = match t {
            "Patient" => col("id").eq(lit(patient.to_string())),
            "Coverage" | "ExplanationOfBenefit" => col("patient_id").eq(lit(patient.to_string())),
            _ => col("id").in_list(ids.iter().map(|i| lit(i.clone())).collect(), false),
        };
        if let Some(ms) = since_ms {
            f = f.and(col("last_updated").gt_eq(ts(ms)));
        }
        if t == "ExplanationOfBenefit" {
            let c = service_date_column();
            for (p, lo, hi) in care {
                let (start, end) = (col(format!("{c}__start")), col(format!("{c}__end")));
                f = f.and(date_filter(p, *lo, *hi, start, end));
            }
        }
        if let Some(a) = after {
            f = f.and(col("id").gt(lit(a.to_string())));
        }
        let order = vec![col("id").sort(true, false)];
        let batches = self
            .fetch(t, Some(f), Some((order, lit(0i64))), limit)
            .await?;
        Ok(rows(&batches))
    }

    /// Organizations and Practitioners the member's Coverages and EOBs reference.
    async fn referenced(&self, patient: &str) -> Result<(Vec<String>, Vec<String>), QueryError> {
        let mut orgs = Vec::new();
        let mut pracs = Vec::new();
        let mut keep = |r: &str| match r.split_once('/') {
            Some(("Organization", id)) => orgs.push(id.to_string()),
            Some(("Practitioner", id)) => pracs.push(id.to_string()),
            _ => {}
        };
        if let Some(d) = &self.direct {
            // The reference columns hold what the parameters extract: no JSON to parse.
            for t in ["Coverage", "ExplanationOfBenefit"] {
                let Some(member) = d.member(t, patient)? else {
                    continue;
                };
                for r in &member.rows {
                    r.refs.iter().flatten().for_each(|x| keep(x));
                }
            }
        } else {
            self.referenced_scan(patient, &mut keep).await?;
        }
        orgs.sort();
        orgs.dedup();
        pracs.sort();
        pracs.dedup();
        Ok((orgs, pracs))
    }

    /// [`Snapshot::referenced`] through DataFusion: every reference of the member's rows.
    async fn referenced_scan(
        &self,
        patient: &str,
        keep: &mut impl FnMut(&str),
    ) -> Result<(), QueryError> {
        for t in ["Coverage", "ExplanationOfBenefit"] {
            for (_, r, _) in self
                .phase_rows(t, patient, &[], (None, &[]), None, None)
                .await?
            {
                let v: Value =
                    serde_json::from_str(&r).map_err(|e| QueryError::Corrupt(e.to_string()))?;
                for p in registry::for_type(t).filter(|p| p.kind == registry::ParamType::Reference)
                {
                    for iv in (p.extract)(&v) {
                        if let IndexValue::Reference(r) = iv {
                            keep(&r);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What an `$everything` phase is filtered by: updated since (epoch ms), and the care-date
/// comparisons (prefix, instant range) the claims' service dates must meet.
type When<'a> = (Option<i64>, &'a [(&'static str, i64, i64)]);

/// The column stem of ExplanationOfBenefit's `service-date`, the claims' care dates.
fn service_date_column() -> String {
    registry::find("ExplanationOfBenefit", "service-date")
        .map(|p| p.column())
        .unwrap_or_else(|| "sp_service_date".into())
}

fn sha2_short(s: &str) -> u128 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_be_bytes(b)
}

/// A stable key for a compartment (the sorted patients), bound into cursors.
fn scope_key(patients: Option<&[String]>) -> String {
    match patients {
        None => "*".to_string(),
        Some(p) => {
            let mut v = p.to_vec();
            v.sort();
            v.join(",")
        }
    }
}

/// Whether a row of type `t` is in the compartment of `patients` (`None`: unconfined); the
/// direct path's form of [`Snapshot::compartment`].
fn in_compartment(t: &str, r: &direct::CachedRow, patients: Option<&[String]>) -> bool {
    match (patients, t) {
        (None, _) => true,
        (Some(p), "Patient") => p.iter().any(|x| **x == *r.id),
        (Some(p), t) if clustered_by_patient(t) => r
            .patient_id
            .as_deref()
            .is_some_and(|pid| p.iter().any(|x| x == pid)),
        _ => true,
    }
}

/// The search order of two rows given as (sort key, id): the key (descending for a `-` sort),
/// then the id.
fn forward(sort: &SortKey, a: (i64, &str), b: (i64, &str)) -> Ordering {
    let k = match sort {
        SortKey::Time { desc: true, .. } => b.0.cmp(&a.0),
        _ => a.0.cmp(&b.0),
    };
    k.then_with(|| a.1.cmp(b.1))
}

/// The order of a search (reversed when paging backwards) and its sort-key expression.
fn sort_exprs(sort: &SortKey, back: bool) -> (Vec<SortExpr>, Expr) {
    match sort {
        SortKey::Id => (vec![col("id").sort(!back, false)], lit(0i64)),
        SortKey::Time { column, desc, .. } => {
            let key = datafusion::functions::expr_fn::coalesce(vec![col(column.as_str()), ts(0)]);
            (
                vec![
                    key.clone().sort(*desc == back, false),
                    col("id").sort(!back, false),
                ],
                datafusion::logical_expr::cast(key, datafusion::arrow::datatypes::DataType::Int64),
            )
        }
    }
}

/// Rows after the cursor's row in the search order (before it, for a `previous` cursor).
fn keyset(sort: &SortKey, c: &Cursor) -> Expr {
    let after_id = if c.back {
        col("id").lt(lit(c.id.clone()))
    } else {
        col("id").gt(lit(c.id.clone()))
    };
    match sort {
        SortKey::Id => after_id,
        SortKey::Time { column, desc, .. } => {
            let key = datafusion::functions::expr_fn::coalesce(vec![col(column.as_str()), ts(0)]);
            let k = ts(c.key.unwrap_or(0));
            let beyond = if *desc != c.back {
                key.clone().lt(k.clone())
            } else {
                key.clone().gt(k.clone())
            };
            beyond.or(key.eq(k).and(after_id))
        }
    }
}

/// (id, resource, sort key) of each row.
fn rows(batches: &[RecordBatch]) -> Vec<(String, String, Option<i64>)> {
    let mut out = Vec::new();
    for b in batches {
        let ids = b.column(0).as_any().downcast_ref::<StringArray>();
        let res = b.column(1).as_any().downcast_ref::<StringArray>();
        let key = b.column(2);
        let (Some(ids), Some(res)) = (ids, res) else {
            continue;
        };
        for i in 0..b.num_rows() {
            let k = if let Some(a) = key
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
            {
                (!a.is_null(i)).then(|| a.value(i))
            } else if let Some(a) = key.as_any().downcast_ref::<TimestampMillisecondArray>() {
                (!a.is_null(i)).then(|| a.value(i))
            } else {
                None
            };
            out.push((ids.value(i).to_string(), res.value(i).to_string(), k));
        }
    }
    out
}
