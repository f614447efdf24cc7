//! CMS QHP machine-readable formulary files (`drugs.json`, `plans.json`, `index.json`).
//!
//! Layout: CMSgov/QHP-provider-formulary-APIs `README.md`. Both data files are one JSON array
//! of objects. They are streamed item by item: the reader parses the array's punctuation
//! itself and hands each item (one drug with its plans, or one plan) to serde_json, so memory
//! holds one item, not the file (real `drugs.json` files run to hundreds of megabytes).
//!
//! Records:
//! - `drugs.json`: one [`FormularyDrug`] per drug × plan entry. A QHP formulary belongs to one
//!   plan, so the formulary id is the HIOS plan id. `drug_tier` is translated to the PDex
//!   drug-tier code (unknown → [`Reason::UnknownCode`]). With [`QhpReader::with_plans`], the
//!   pharmacy benefit types of the drug's tier come from the plan's cost sharing.
//! - `plans.json`: one [`FormularyPlan`] per plan, tiers with cost sharing translated to PDex
//!   codes (coinsurance rates to percentages). A tier, pharmacy type or cost-share option the
//!   PDex value sets do not allow is left out of the plan with a [`Notice`] naming it.
//!
//! Positions: `line` is the line where the item's object starts; `context` is the JSON path
//! (`[3].plans[1].drug_tier`).

// `Item` (a `Result` whose error is the crate's `Reject`) is the readers' contract.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::model::{Change, FormularyDrug, FormularyPlan, Party, PlanContact, Position};
use crate::model::{SourceRecord, TierCostShare};
use crate::{Error, FileSummary, Item, Notice, Reader, Reason, Reject, Stage};

use super::{pharmacy_type_code, rate_to_percent, tier_code, COINSURANCE_OPTIONS, COPAY_OPTIONS};

/// Which QHP file a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QhpKind {
    /// `drugs.json`: drugs with the plans that cover them.
    Drugs,
    /// `plans.json`: plans with their formulary tiers and cost sharing.
    Plans,
    /// `index.json` (`cms-data-index.json`): URLs of the other files; holds no records.
    Index,
}

/// Recognise a QHP file from its first bytes (a few KB): an array whose first object has
/// `rxnorm_id` (drugs) or `marketing_name`/`formulary`/`plan_id_type` (plans), or an object
/// with `formulary_urls`/`plan_urls` (index). Provider files and other JSON give `None`.
pub fn sniff_qhp(head: &[u8]) -> Option<QhpKind> {
    let head = head.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(head);
    let start = head.iter().position(|b| !b.is_ascii_whitespace())?;
    let body = &head[start..];
    let has = |key: &str| memchr::memmem::find(body, key.as_bytes()).is_some();
    match body.first()? {
        b'[' => {
            let rest = &body[1..];
            let next = rest.iter().find(|b| !b.is_ascii_whitespace())?;
            if *next != b'{' || has("\"npi\"") {
                return None;
            }
            if has("\"rxnorm_id\"") {
                Some(QhpKind::Drugs)
            } else if has("\"marketing_name\"") || has("\"formulary\"") || has("\"plan_id_type\"") {
                Some(QhpKind::Plans)
            } else {
                None
            }
        }
        b'{' if has("\"formulary_urls\"") || has("\"plan_urls\"") => Some(QhpKind::Index),
        _ => None,
    }
}

/// What `plans.json` says about one plan that drug records need.
#[derive(Debug, Clone, Default)]
struct PlanInfo {
    /// PDex drug tier → PDex pharmacy benefit types with cost sharing on that tier.
    tiers: HashMap<String, Vec<String>>,
}

/// Reads QHP `drugs.json` and `plans.json` (which one is recognised from the content).
#[derive(Debug, Clone, Default)]
pub struct QhpReader {
    plans: Option<Arc<HashMap<String, PlanInfo>>>,
}

impl QhpReader {
    /// A reader that takes each file on its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader that joins `drugs.json` records with the plans of `plans_path`: a drug's
    /// pharmacy benefit types become those the plan prices its tier for. Only that small
    /// index (plan → tier → pharmacy types) is kept.
    ///
    /// # Errors
    /// When `plans_path` cannot be read or is not a QHP `plans.json`.
    pub fn with_plans(plans_path: &Path) -> Result<Self, Error> {
        let mut index = HashMap::new();
        let file = File::open(plans_path).map_err(|source| Error::Io {
            path: plans_path.display().to_string(),
            source,
        })?;
        let mut src = Src::new(BufReader::new(file));
        let name = plans_path.display().to_string();
        let mut ignored = FileSummary::default();
        stream_items(&name, &mut src, &mut ignored, &mut |_, item, _| {
            if let Ok(plan) = plan_record(item, &mut Vec::new()) {
                let mut info = PlanInfo::default();
                for t in &plan.tiers {
                    if let Some(p) = &t.pharmacy_type {
                        let list: &mut Vec<String> = info.tiers.entry(t.tier.clone()).or_default();
                        if !list.contains(p) {
                            list.push(p.clone());
                        }
                    }
                }
                index.insert(plan.plan_id, info);
            }
        })
        .map_err(|e| Error::UnknownFormat {
            path: name.clone(),
            message: e,
        })?;
        Ok(Self {
            plans: Some(Arc::new(index)),
        })
    }

    /// Read a QHP document of the given kind from any byte source (`file` names it in
    /// positions).
    ///
    /// # Errors
    /// I/O errors, or a document that is not a JSON array.
    pub fn read_from<R: Read>(
        &self,
        file: &str,
        kind: QhpKind,
        input: R,
        emit: &mut dyn FnMut(Item),
    ) -> Result<FileSummary, Error> {
        let mut summary = FileSummary::default();
        let file: Arc<str> = Arc::from(file);
        if kind == QhpKind::Index {
            summary.notices.push(Notice {
                position: position(&file, 1, 0, String::new()),
                message:
                    "QHP index file: it lists the URLs of drugs/plans files and holds no records"
                        .into(),
            });
            return Ok(summary);
        }
        let mut src = Src::new(BufReader::with_capacity(256 * 1024, input));
        let mut notices = Vec::new();
        let result = stream_items(
            &file,
            &mut src,
            &mut summary,
            &mut |index, item, (line, offset)| {
                let ctx = format!("[{index}]");
                match kind {
                    QhpKind::Drugs => self.drug_items(&file, item, line, offset, &ctx, emit),
                    QhpKind::Plans | QhpKind::Index => {
                        let mut problems = Vec::new();
                        match plan_record(item, &mut problems) {
                            Ok(mut plan) => {
                                plan.position = position(&file, line, offset, ctx.clone());
                                emit(Ok(SourceRecord::FormularyPlan(Box::new(plan))));
                            }
                            Err((reason, path, message)) => emit(Err(Reject::new(
                                position(&file, line, offset, format!("{ctx}{path}")),
                                Stage::Validate,
                                reason,
                                message,
                                item.to_string(),
                            ))),
                        }
                        for (path, message) in problems {
                            notices.push(Notice {
                                position: position(&file, line, offset, format!("{ctx}{path}")),
                                message,
                            });
                        }
                    }
                }
            },
        );
        summary.notices.extend(notices);
        summary.bytes = src.offset;
        match result {
            Ok(()) => Ok(summary),
            Err(message) => {
                // Not even an array: nothing to account for record by record.
                if summary.units == 0 && src.offset <= 1 {
                    return Err(Error::UnknownFormat {
                        path: file.to_string(),
                        message,
                    });
                }
                let line = src.newlines + 1;
                emit(Err(Reject::new(
                    position(&file, line, src.offset, format!("[{}]", summary.units)),
                    Stage::Parse,
                    Reason::Malformed,
                    format!("JSON is not well-formed at line {line}: {message}; the rest of the file cannot be read"),
                    String::new(),
                )));
                summary.notices.push(Notice {
                    position: position(&file, line, src.offset, String::new()),
                    message: format!("reading stopped at line {line}: {message}"),
                });
                Ok(summary)
            }
        }
    }

    fn drug_items(
        &self,
        file: &Arc<str>,
        item: &Value,
        line: u64,
        offset: u64,
        ctx: &str,
        emit: &mut dyn FnMut(Item),
    ) {
        let reject = |path: String, reason: Reason, message: String| {
            Err(Reject::new(
                position(file, line, offset, path),
                Stage::Validate,
                reason,
                message,
                item.to_string(),
            ))
        };
        let plans = match item.get("plans") {
            Some(Value::Array(p)) if !p.is_empty() => p.as_slice(),
            _ => {
                let path = format!("{ctx}.plans");
                emit(reject(
                    path.clone(),
                    Reason::MissingValue,
                    format!("{path}: no plans"),
                ));
                return;
            }
        };
        let rxnorm = match item.get("rxnorm_id") {
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
        .filter(|s| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_digit()));
        let name = item
            .get("drug_name")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from);
        for (j, entry) in plans.iter().enumerate() {
            let here = format!("{ctx}.plans[{j}]");
            let Some(rxnorm) = rxnorm.clone() else {
                let path = format!("{ctx}.rxnorm_id");
                emit(reject(
                    path.clone(),
                    Reason::MissingValue,
                    format!(
                        "{path}: missing or not 1-8 digits ({})",
                        item.get("rxnorm_id").unwrap_or(&Value::Null)
                    ),
                ));
                continue;
            };
            let plan_id = match entry.get("plan_id").and_then(Value::as_str).map(str::trim) {
                Some(p) if !p.is_empty() => p.to_string(),
                _ => {
                    let path = format!("{here}.plan_id");
                    emit(reject(
                        path.clone(),
                        Reason::MissingValue,
                        format!("{path}: missing"),
                    ));
                    continue;
                }
            };
            let tier = match entry.get("drug_tier").and_then(Value::as_str) {
                Some(t) => match tier_code(t) {
                    Some(code) => code.to_string(),
                    None => {
                        let path = format!("{here}.drug_tier");
                        emit(reject(
                            path.clone(),
                            Reason::UnknownCode,
                            format!("{path}: {t:?} is not a known drug tier"),
                        ));
                        continue;
                    }
                },
                None => {
                    let path = format!("{here}.drug_tier");
                    emit(reject(
                        path.clone(),
                        Reason::MissingValue,
                        format!("{path}: missing"),
                    ));
                    continue;
                }
            };
            let mut flags = [None; 3];
            let mut bad = None;
            for (k, key) in ["prior_authorization", "step_therapy", "quantity_limit"]
                .iter()
                .enumerate()
            {
                match entry.get(*key) {
                    None | Some(Value::Null) => {}
                    Some(Value::Bool(b)) => flags[k] = Some(*b),
                    Some(other) => {
                        bad = Some((format!("{here}.{key}"), other.clone()));
                        break;
                    }
                }
            }
            if let Some((path, value)) = bad {
                emit(reject(
                    path.clone(),
                    Reason::UnknownCode,
                    format!("{path}: {value} is not true or false"),
                ));
                continue;
            }
            let (start, end, year) = years(entry.get("years"));
            let pharmacy = self
                .plans
                .as_ref()
                .and_then(|p| p.get(&plan_id))
                .and_then(|info| info.tiers.get(&tier))
                .cloned()
                .unwrap_or_default();
            emit(Ok(SourceRecord::FormularyDrug(Box::new(FormularyDrug {
                formulary_id: plan_id,
                formulary_name: None,
                rxnorm,
                drug_name: name.clone(),
                ndcs: Vec::new(),
                dose_form: None,
                tier: Some(tier),
                pharmacy_benefit_types: pharmacy,
                prior_auth: flags[0],
                step_therapy: flags[1],
                quantity_limit: flags[2],
                effective_start: start,
                effective_end: end,
                contract_year: year,
                change: Change::Upsert,
                position: position(file, line, offset, here),
                ..FormularyDrug::default()
            }))));
        }
    }
}

impl Reader for QhpReader {
    fn read(&self, path: &Path, emit: &mut dyn FnMut(Item)) -> Result<FileSummary, Error> {
        let name = path.display().to_string();
        let io = |source| Error::Io {
            path: name.clone(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let mut head = vec![0u8; 4096];
        let mut n = 0;
        while n < head.len() {
            let k = file.read(&mut head[n..]).map_err(io)?;
            if k == 0 {
                break;
            }
            n += k;
        }
        head.truncate(n);
        let kind = sniff_qhp(&head).ok_or_else(|| Error::UnknownFormat {
            path: name.clone(),
            message: "not a QHP drugs.json, plans.json or index.json".into(),
        })?;
        let file = File::open(path).map_err(io)?;
        self.read_from(&name, kind, file, emit)
    }
}

fn position(file: &Arc<str>, line: u64, offset: u64, context: String) -> Position {
    Position {
        file: file.clone(),
        line,
        byte_offset: offset,
        segment: None,
        context: Some(context.into()),
    }
}

/// Period and contract year from a QHP `years` array.
fn years(v: Option<&Value>) -> (Option<String>, Option<String>, Option<String>) {
    let ys: Vec<u64> = match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|y| {
                y.as_u64()
                    .or_else(|| y.as_str().and_then(|s| s.parse().ok()))
            })
            .filter(|y| (1900..=9999).contains(y))
            .collect(),
        _ => Vec::new(),
    };
    match (ys.iter().min(), ys.iter().max()) {
        (Some(lo), Some(hi)) => (
            Some(format!("{lo}-01-01")),
            Some(format!("{hi}-12-31")),
            (lo == hi).then(|| lo.to_string()),
        ),
        _ => (None, None, None),
    }
}

/// A `plans.json` item → a plan record; problems that leave part of the plan out are pushed
/// to `problems` as (JSON path suffix, message). The record's position is set by the caller.
fn plan_record(
    item: &Value,
    problems: &mut Vec<(String, String)>,
) -> Result<FormularyPlan, (Reason, String, String)> {
    let plan_id = match item.get("plan_id").and_then(Value::as_str).map(str::trim) {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => {
            return Err((
                Reason::MissingValue,
                ".plan_id".into(),
                "plan_id is missing".into(),
            ))
        }
    };
    let text = |key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let mut contacts = Vec::new();
    for (key, purpose) in [
        ("marketing_url", "MARKETING"),
        ("summary_url", "SUMMARY"),
        ("formulary_url", "FORMULARY"),
    ] {
        if let Some(url) = text(key) {
            contacts.push(PlanContact {
                purpose: purpose.into(),
                system: "url".into(),
                value: url,
            });
        }
    }
    if let Some(mail) = text("plan_contact") {
        contacts.push(PlanContact {
            purpose: "ADMIN".into(),
            system: "email".into(),
            value: mail,
        });
    }
    let formularies: Vec<&Value> = match item.get("formulary") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o @ Value::Object(_)) => vec![o],
        _ => Vec::new(),
    };
    let mut tiers = Vec::new();
    for (i, f) in formularies.iter().enumerate() {
        let here = if matches!(item.get("formulary"), Some(Value::Array(_))) {
            format!(".formulary[{i}]")
        } else {
            ".formulary".to_string()
        };
        let label = f
            .get("drug_tier")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(tier) = tier_code(label) else {
            problems.push((
                format!("{here}.drug_tier"),
                format!("plan {plan_id}: drug_tier {label:?} is not a PDex drug tier; its cost sharing is left out"),
            ));
            continue;
        };
        let mail_order = f.get("mail_order").and_then(Value::as_bool);
        let costs = match f.get("cost_sharing") {
            Some(Value::Array(c)) => c.as_slice(),
            _ => &[],
        };
        if costs.is_empty() {
            tiers.push(TierCostShare {
                tier: tier.into(),
                mail_order,
                ..TierCostShare::default()
            });
        }
        for (k, c) in costs.iter().enumerate() {
            let at = format!("{here}.cost_sharing[{k}]");
            let ptype = c
                .get("pharmacy_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Some(pharmacy) = pharmacy_type_code(ptype) else {
                problems.push((
                    format!("{at}.pharmacy_type"),
                    format!("plan {plan_id}: pharmacy_type {ptype:?} is not a PDex pharmacy benefit type; left out"),
                ));
                continue;
            };
            let amount = |key: &str| match c.get(key) {
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => {
                    Some(s.trim().to_string())
                }
                _ => None,
            };
            let option = |key: &str, allowed: &[&str]| -> Result<String, String> {
                match c.get(key) {
                    Some(Value::String(s))
                        if allowed.iter().any(|a| a.eq_ignore_ascii_case(s.trim())) =>
                    {
                        Ok(s.trim().to_ascii_lowercase())
                    }
                    other => Err(other.cloned().unwrap_or(Value::Null).to_string()),
                }
            };
            let mut share = TierCostShare {
                tier: tier.into(),
                pharmacy_type: Some(pharmacy),
                mail_order,
                ..TierCostShare::default()
            };
            if let Some(copay) = amount("copay_amount") {
                match option("copay_opt", COPAY_OPTIONS) {
                    Ok(opt) => {
                        share.copay = Some(copay);
                        share.copay_option = Some(opt);
                    }
                    Err(found) => problems.push((
                        format!("{at}.copay_opt"),
                        format!("plan {plan_id}: copay_opt {found} is not a PDex copay option; the copay is left out"),
                    )),
                }
            }
            if let Some(rate) = amount("coinsurance_rate") {
                match (option("coinsurance_opt", COINSURANCE_OPTIONS), rate_to_percent(&rate)) {
                    (Ok(opt), Some(pct)) => {
                        share.coinsurance = Some(pct);
                        share.coinsurance_option = Some(opt);
                    }
                    (Err(found), _) => problems.push((
                        format!("{at}.coinsurance_opt"),
                        format!("plan {plan_id}: coinsurance_opt {found} is not a PDex coinsurance option; the coinsurance is left out"),
                    )),
                    (Ok(_), None) => problems.push((
                        format!("{at}.coinsurance_rate"),
                        format!("plan {plan_id}: coinsurance_rate {rate} is not a rate; left out"),
                    )),
                }
            }
            tiers.push(share);
        }
    }
    let (period_start, period_end, _) = years(item.get("years"));
    let issuer = (plan_id.len() == 14 && plan_id.as_bytes()[..5].iter().all(u8::is_ascii_digit))
        .then(|| plan_id[..5].to_string());
    Ok(FormularyPlan {
        formulary_id: plan_id.clone(),
        plan_name: text("marketing_name"),
        plan_type: Some("qhp".into()),
        formulary_name: None,
        payer: Party {
            id_kind: issuer.as_ref().map(|_| "hios-issuer".into()),
            id: issuer.map(Into::into),
            ..Party::default()
        },
        tiers,
        // The state the HIOS plan id was issued in (plans.json names no service area).
        coverage_areas: super::hios_state(&plan_id)
            .map(String::from)
            .into_iter()
            .collect(),
        period_start,
        period_end,
        contacts,
        change: Change::Upsert,
        position: Position::default(),
        plan_id,
    })
}

/// A byte source with one byte of look-ahead that counts lines and bytes consumed.
struct Src<R> {
    inner: R,
    peeked: Option<u8>,
    newlines: u64,
    offset: u64,
}

impl<R: BufRead> Src<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            peeked: None,
            newlines: 0,
            offset: 0,
        }
    }

    fn peek(&mut self) -> std::io::Result<Option<u8>> {
        if self.peeked.is_none() {
            let buf = self.inner.fill_buf()?;
            if let Some(&b) = buf.first() {
                self.inner.consume(1);
                self.peeked = Some(b);
            }
        }
        Ok(self.peeked)
    }

    fn bump(&mut self) {
        if let Some(b) = self.peeked.take() {
            self.offset += 1;
            if b == b'\n' {
                self.newlines += 1;
            }
        }
    }

    /// Skip whitespace; the next byte, not consumed.
    fn next_token(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            match self.peek()? {
                Some(b) if b.is_ascii_whitespace() => self.bump(),
                other => return Ok(other),
            }
        }
    }
}

impl<R: BufRead> Read for Src<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        match self.peek()? {
            Some(b) => {
                out[0] = b;
                self.bump();
                Ok(1)
            }
            None => Ok(0),
        }
    }
}

/// Called with each array item: its index, the item, and its (line, byte offset).
type ItemFn<'a> = dyn FnMut(u64, &Value, (u64, u64)) + 'a;

/// Stream the objects of a top-level JSON array: `each(index, item, (line, offset))`.
/// `summary.units` counts the items. Returns a message when the bytes stop being a JSON array
/// of objects (the items before it have been handed over).
fn stream_items<R: BufRead>(
    _file: &str,
    src: &mut Src<R>,
    summary: &mut FileSummary,
    each: &mut ItemFn<'_>,
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("read error: {e}");
    if src.peek().map_err(io)? == Some(0xEF) {
        // UTF-8 byte-order mark
        for _ in 0..3 {
            src.peek().map_err(io)?;
            src.bump();
        }
    }
    match src.next_token().map_err(io)? {
        Some(b'[') => src.bump(),
        Some(b) => return Err(format!("expected a JSON array, found {:?}", b as char)),
        None => return Err("empty file".into()),
    }
    let mut index = 0u64;
    loop {
        match src.next_token().map_err(io)? {
            Some(b']') if index == 0 => {
                src.bump();
                return Ok(());
            }
            Some(b'{') => {}
            Some(b) => {
                return Err(format!(
                    "expected an object in the array, found {:?}",
                    b as char
                ))
            }
            None => return Err("file ends inside the array".into()),
        }
        let line = src.newlines + 1;
        let offset = src.offset;
        let mut de = serde_json::Deserializer::from_reader(&mut *src);
        let item = Value::deserialize(&mut de).map_err(|e| {
            format!(
                "item [{index}] starting at line {line}: {e} (line {} of the file)",
                line + e.line() as u64 - 1
            )
        })?;
        summary.units += 1;
        each(index, &item, (line, offset));
        index += 1;
        match src.next_token().map_err(io)? {
            Some(b',') => src.bump(),
            Some(b']') => {
                src.bump();
                return Ok(());
            }
            Some(b) => {
                return Err(format!(
                    "expected ',' or ']' after item [{}], found {:?}",
                    index - 1,
                    b as char
                ))
            }
            None => return Err("file ends inside the array".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_qhp_files() {
        assert_eq!(
            sniff_qhp(b"[\n {\n \"rxnorm_id\": \"1\", \"plans\": [{\"plan_id_type\": 1}]"),
            Some(QhpKind::Drugs)
        );
        assert_eq!(
            sniff_qhp(b"  [{\"plan_id_type\": \"HIOS-PLAN-ID\", \"marketing_name\": \"x\""),
            Some(QhpKind::Plans)
        );
        assert_eq!(
            sniff_qhp(b"{\"provider_urls\": [], \"formulary_urls\": []}"),
            Some(QhpKind::Index)
        );
        assert_eq!(
            sniff_qhp(b"[{\"npi\": \"1\", \"plans\": [{\"plan_id_type\": 1}]}]"),
            None
        );
        assert_eq!(sniff_qhp(b"<FormularyExtract/>"), None);
    }

    fn read(kind: QhpKind, json: &str) -> (Vec<Item>, FileSummary) {
        let mut items = Vec::new();
        let s = QhpReader::new()
            .read_from("t.json", kind, json.as_bytes(), &mut |i| items.push(i))
            .expect("reads");
        (items, s)
    }

    #[test]
    fn one_record_per_drug_and_plan_with_lines() {
        let json = "[\n{\"rxnorm_id\": \"1\", \"drug_name\": \"a\", \"plans\": [\n{\"plan_id\": \"P1\", \"drug_tier\": \"GENERIC\", \"years\": [2020]},\n{\"plan_id\": \"P2\", \"drug_tier\": \"GOLD\"}]},\n{\"rxnorm_id\": \"2\", \"plans\": [{\"plan_id\": \"P1\", \"drug_tier\": \"SPECIALTY\", \"prior_authorization\": true}]}\n]";
        let (items, summary) = read(QhpKind::Drugs, json);
        assert_eq!(items.len(), 3);
        let Ok(SourceRecord::FormularyDrug(d)) = &items[0] else {
            panic!()
        };
        assert_eq!(
            (d.formulary_id.as_str(), d.tier.as_deref(), d.position.line),
            ("P1", Some("generic"), 2)
        );
        assert_eq!(d.effective_start.as_deref(), Some("2020-01-01"));
        let Err(r) = &items[1] else { panic!() };
        assert_eq!(r.reason, Reason::UnknownCode);
        assert_eq!(
            r.position.context.as_deref(),
            Some("[0].plans[1].drug_tier")
        );
        let Ok(SourceRecord::FormularyDrug(d)) = &items[2] else {
            panic!()
        };
        assert_eq!((d.position.line, d.prior_auth), (5, Some(true)));
        assert_eq!(summary.units, 2);
    }

    #[test]
    fn a_syntax_error_keeps_the_items_before_it() {
        let json = "[{\"rxnorm_id\": \"1\", \"plans\": [{\"plan_id\": \"P1\", \"drug_tier\": \"GENERIC\"}]},\n{\"rxnorm_id\": \"2\" \"plans\": []}]";
        let (items, summary) = read(QhpKind::Drugs, json);
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        let Err(r) = &items[1] else { panic!() };
        assert_eq!((r.reason, r.position.line), (Reason::Malformed, 2));
        assert!(summary.notices[0].message.contains("reading stopped"));
    }
}
