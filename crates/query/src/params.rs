//! FHIR search parameters: parsing request pairs and building DataFusion expressions.
//!
//! Everything comes from `mapper::registry`: a parameter not in it is unknown (ignored, or a
//! 400 under `Prefer: handling=strict`). Semantics follow FHIR R4 search: comma = OR within a
//! parameter, repetition = AND; token `code`, `system|code`, `|code`, `system|`, `:not`,
//! `:missing`; date prefixes `eq ne gt lt ge le sa eb ap` against the precision of partial
//! dates; reference `id`, `Type/id`, or an absolute URL on this server; string starts-with,
//! `:exact`, `:contains`, case- and accent-insensitive.

use std::ops::Not;

use datafusion::common::ScalarValue;
use datafusion::functions::expr_fn::contains;
use datafusion::functions_nested::expr_fn::{array_has, cardinality};
use datafusion::logical_expr::{col, lit, Expr};
use mapper::lake::{date_range, normalize, JOIN_SEP};
use mapper::registry::{self, ParamType, SearchParam};
use sha2::{Digest, Sha256};

use crate::QueryError;

/// One parameter occurrence: values are ORed.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The registry entry.
    pub param: &'static SearchParam,
    /// The modifier after `:`, if any.
    pub modifier: Option<String>,
    /// The comma-separated values.
    pub values: Vec<String>,
}

/// How results are ordered (always with `id` as the final tie-break).
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    /// By id only.
    Id,
    /// By a timestamp column (`last_updated`, or a date parameter's start column).
    Time {
        /// The column.
        column: String,
        /// Descending?
        desc: bool,
        /// The `_sort` text, for links.
        text: String,
    },
}

/// An `_include` request: the reference parameter to follow.
#[derive(Debug, Clone)]
pub struct Include {
    /// The parameter (a reference).
    pub param: &'static SearchParam,
    /// Restrict to one target type (`_include=EOB:provider:Organization`).
    pub target: Option<String>,
    /// The text as given.
    pub text: String,
}

/// A parsed search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Resource type searched.
    pub resource_type: String,
    /// Filters (ANDed).
    pub filters: Vec<Filter>,
    /// Page size.
    pub count: usize,
    /// Ordering.
    pub sort: SortKey,
    /// `_include`s.
    pub includes: Vec<Include>,
    /// `_summary=count`.
    pub summary_count: bool,
    /// `_total=accurate`.
    pub total_accurate: bool,
    /// The paging cursor, if any.
    pub cursor: Option<String>,
    /// The parameters understood, normalised, for the `self` link.
    pub self_params: Vec<(String, String)>,
    /// Parameters ignored (unknown or unsupported).
    pub ignored: Vec<String>,
}

/// Limits on `_count`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Page size when `_count` is absent.
    pub default_count: usize,
    /// Largest page size; larger `_count`s are capped.
    pub max_count: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_count: 20,
            max_count: 200,
        }
    }
}

fn invalid(name: &str, message: impl Into<String>) -> QueryError {
    QueryError::InvalidParameter {
        name: name.to_string(),
        message: message.into(),
    }
}

impl SearchRequest {
    /// Parse request pairs (query string or form body).
    ///
    /// # Errors
    /// A malformed value (400); under `strict`, an unknown parameter (400).
    pub fn parse(
        resource_type: &str,
        pairs: &[(String, String)],
        strict: bool,
        limits: Limits,
    ) -> Result<Self, QueryError> {
        if !registry::resource_types().contains(&resource_type) {
            return Err(QueryError::UnknownType(resource_type.to_string()));
        }
        let mut req = SearchRequest {
            resource_type: resource_type.to_string(),
            filters: Vec::new(),
            count: limits.default_count,
            sort: SortKey::Id,
            includes: Vec::new(),
            summary_count: false,
            total_accurate: false,
            cursor: None,
            self_params: Vec::new(),
            ignored: Vec::new(),
        };
        for (name, value) in pairs {
            match name.as_str() {
                "_count" => {
                    let n: usize = value
                        .parse()
                        .map_err(|_| invalid("_count", "must be a non-negative integer"))?;
                    req.count = n.min(limits.max_count);
                    req.self_params.push((name.clone(), req.count.to_string()));
                }
                "_sort" => {
                    req.sort = parse_sort(resource_type, value)?;
                    req.self_params.push((name.clone(), value.clone()));
                }
                "_include" => {
                    req.includes
                        .extend(parse_include(resource_type, value, strict)?);
                    req.self_params.push((name.clone(), value.clone()));
                }
                "_summary" => match value.as_str() {
                    "count" => {
                        req.summary_count = true;
                        req.self_params.push((name.clone(), value.clone()));
                    }
                    "false" => req.self_params.push((name.clone(), value.clone())),
                    _ if strict => {
                        return Err(QueryError::UnsupportedParameter(format!(
                            "_summary={value}"
                        )))
                    }
                    _ => req.ignored.push(name.clone()),
                },
                "_total" => match value.as_str() {
                    "accurate" => {
                        req.total_accurate = true;
                        req.self_params.push((name.clone(), value.clone()));
                    }
                    "none" | "estimate" => req.self_params.push((name.clone(), value.clone())),
                    _ => return Err(invalid("_total", "must be none, estimate or accurate")),
                },
                "_cursor" => req.cursor = Some(value.clone()),
                "_format" => {}
                _ => {
                    let (code, modifier) = match name.split_once(':') {
                        Some((c, m)) => (c, Some(m.to_string())),
                        None => (name.as_str(), None),
                    };
                    let Some(param) = registry::find(resource_type, code) else {
                        if strict {
                            return Err(QueryError::UnsupportedParameter(name.clone()));
                        }
                        req.ignored.push(name.clone());
                        continue;
                    };
                    if let Some(m) = &modifier {
                        if !modifier_allowed(param.kind, m) {
                            if strict {
                                return Err(QueryError::UnsupportedParameter(name.clone()));
                            }
                            req.ignored.push(name.clone());
                            continue;
                        }
                    }
                    let values: Vec<String> = split_values(value);
                    if values.is_empty() || values.iter().any(String::is_empty) {
                        return Err(invalid(name, "empty value"));
                    }
                    let f = Filter {
                        param,
                        modifier,
                        values,
                    };
                    // Validate now so that a bad value is a 400 before any work.
                    filter_expr(&f, None)?;
                    req.filters.push(f);
                    req.self_params.push((name.clone(), value.clone()));
                }
            }
        }
        Ok(req)
    }

    /// A stable hash of what the request selects and how (not of the cursor), plus `scope`
    /// (the caller's compartment), used to bind cursors to their query.
    pub fn fingerprint(&self, scope: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.resource_type.as_bytes());
        let mut p: Vec<String> = self
            .self_params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        p.sort();
        for s in p {
            h.update(b"\0");
            h.update(s.as_bytes());
        }
        h.update(b"\0scope\0");
        h.update(scope.as_bytes());
        h.finalize()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The whole filter as one expression (`None` when there are no filters).
    ///
    /// # Errors
    /// When a value is malformed.
    pub fn filter(&self, base_url: Option<&str>) -> Result<Option<Expr>, QueryError> {
        let mut all: Option<Expr> = None;
        for f in &self.filters {
            let e = filter_expr(f, base_url)?;
            all = Some(match all {
                None => e,
                Some(a) => a.and(e),
            });
        }
        Ok(all)
    }
}

/// Split a parameter value on unescaped commas (`\,` is a literal comma).
fn split_values(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(',') | Some('|') | Some('$') | Some('\\')) => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn modifier_allowed(kind: ParamType, m: &str) -> bool {
    match kind {
        ParamType::Token => matches!(m, "not" | "missing"),
        ParamType::String => matches!(m, "exact" | "contains" | "missing"),
        ParamType::Reference => m == "missing" || registry::resource_types().contains(&m),
        ParamType::Date => m == "missing",
    }
}

fn parse_sort(resource_type: &str, value: &str) -> Result<SortKey, QueryError> {
    let first = value.split(',').next().unwrap_or_default();
    let (desc, code) = match first.strip_prefix('-') {
        Some(c) => (true, c),
        None => (false, first),
    };
    if code == "_id" {
        return Ok(SortKey::Id);
    }
    if code == "_lastUpdated" {
        return Ok(SortKey::Time {
            column: "last_updated".into(),
            desc,
            text: value.to_string(),
        });
    }
    match registry::find(resource_type, code) {
        Some(p) if p.kind == ParamType::Date => Ok(SortKey::Time {
            column: format!("{}__start", p.column()),
            desc,
            text: value.to_string(),
        }),
        _ => Err(invalid("_sort", format!("cannot sort by {code:?}"))),
    }
}

fn parse_include(
    resource_type: &str,
    value: &str,
    strict: bool,
) -> Result<Vec<Include>, QueryError> {
    let mut parts = value.split(':');
    let source = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let target = parts.next().map(str::to_string);
    if source != resource_type {
        if strict {
            return Err(invalid(
                "_include",
                format!("{source} is not the searched type"),
            ));
        }
        return Ok(Vec::new());
    }
    if code == "*" {
        return Ok(registry::for_type(resource_type)
            .filter(|p| p.kind == ParamType::Reference && !p.targets.is_empty())
            .map(|p| Include {
                param: p,
                target: None,
                text: value.to_string(),
            })
            .collect());
    }
    match registry::find(resource_type, code) {
        Some(p) if p.kind == ParamType::Reference => Ok(vec![Include {
            param: p,
            target,
            text: value.to_string(),
        }]),
        _ if strict => Err(invalid(
            "_include",
            format!("{value} is not a supported include"),
        )),
        _ => Ok(Vec::new()),
    }
}

/// A timestamp literal (UTC, ms).
pub fn ts(ms: i64) -> Expr {
    lit(ScalarValue::TimestampMillisecond(
        Some(ms),
        Some("UTC".into()),
    ))
}

fn or_all(exprs: Vec<Expr>) -> Expr {
    exprs
        .into_iter()
        .reduce(|a, b| a.or(b))
        .unwrap_or_else(|| lit(false))
}

/// The expression of one parameter occurrence.
///
/// # Errors
/// When a value is malformed.
pub fn filter_expr(f: &Filter, base_url: Option<&str>) -> Result<Expr, QueryError> {
    let p = f.param;
    let name = match &f.modifier {
        Some(m) => format!("{}:{m}", p.code),
        None => p.code.to_string(),
    };
    if f.modifier.as_deref() == Some("missing") {
        let missing = match f.values.first().map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            _ => return Err(invalid(&name, "must be true or false")),
        };
        let present = match p.kind {
            ParamType::Token | ParamType::Reference => cardinality(col(p.column())).gt(lit(0u64)),
            ParamType::String => col(p.column()).not_eq(lit(JOIN_SEP.to_string())),
            ParamType::Date => col(format!("{}__start", p.column())).is_not_null(),
        };
        return Ok(if missing { present.not() } else { present });
    }
    let column = p.column();
    let e = match (p.code, p.kind) {
        ("_id", _) => {
            let values: Vec<Expr> = f.values.iter().map(|v| lit(v.clone())).collect();
            col("id").in_list(values, false)
        }
        (_, ParamType::Token) => {
            let mut any = Vec::new();
            for v in &f.values {
                any.push(match v.split_once('|') {
                    None => array_has(col(format!("{column}__code")), lit(v.clone())),
                    Some(("", code)) => array_has(col(column.clone()), lit(format!("|{code}"))),
                    Some((system, "")) => {
                        array_has(col(format!("{column}__system")), lit(system.to_string()))
                    }
                    Some(_) => array_has(col(column.clone()), lit(v.clone())),
                });
            }
            let e = or_all(any);
            if f.modifier.as_deref() == Some("not") {
                e.not()
            } else {
                e
            }
        }
        (_, ParamType::Reference) => {
            let mut any = Vec::new();
            for v in &f.values {
                for r in reference_forms(p, f.modifier.as_deref(), v, base_url) {
                    any.push(array_has(col(column.clone()), lit(r)));
                }
            }
            or_all(any)
        }
        (_, ParamType::String) => {
            let mut any = Vec::new();
            for v in &f.values {
                any.push(match f.modifier.as_deref() {
                    Some("exact") => contains(
                        col(format!("{column}__exact")),
                        lit(format!("{JOIN_SEP}{v}{JOIN_SEP}")),
                    ),
                    Some("contains") => contains(col(column.clone()), lit(normalize(v))),
                    _ => contains(
                        col(column.clone()),
                        lit(format!("{JOIN_SEP}{}", normalize(v))),
                    ),
                });
            }
            or_all(any)
        }
        (code, ParamType::Date) => {
            let (start, end) = if code == "_lastUpdated" {
                (col("last_updated"), col("last_updated"))
            } else {
                (
                    col(format!("{column}__start")),
                    col(format!("{column}__end")),
                )
            };
            let mut any = Vec::new();
            for v in &f.values {
                any.push(date_expr(&name, v, start.clone(), end.clone())?);
            }
            or_all(any)
        }
    };
    Ok(e)
}

pub(crate) fn reference_forms(
    p: &SearchParam,
    modifier: Option<&str>,
    v: &str,
    base_url: Option<&str>,
) -> Vec<String> {
    let mut v = v.trim_end_matches('/').to_string();
    if let Some(base) = base_url {
        let base = base.trim_end_matches('/');
        if let Some(rest) = v.strip_prefix(base) {
            v = rest.trim_start_matches('/').to_string();
        }
    }
    if v.contains("://") {
        return Vec::new(); // a reference to another server matches nothing here
    }
    // Drop a version suffix (`Patient/1/_history/2`).
    if let Some((head, _)) = v.split_once("/_history/") {
        v = head.to_string();
    }
    if v.contains('/') {
        return vec![v];
    }
    match modifier {
        Some(t) => vec![format!("{t}/{v}")],
        None => p.targets.iter().map(|t| format!("{t}/{v}")).collect(),
    }
}

/// The prefix of a search date and the instant range of its date.
pub(crate) fn date_parts<'a>(
    name: &str,
    value: &'a str,
) -> Result<(&'a str, i64, i64), QueryError> {
    let (prefix, date) = match value.get(..2) {
        Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb" | "ap")) => {
            (p, &value[2..])
        }
        _ => ("eq", value),
    };
    let (lo, hi) =
        date_range(date).ok_or_else(|| invalid(name, format!("{date:?} is not a FHIR date")))?;
    Ok((prefix, lo, hi))
}

/// The slack of `ap` around a date starting at `lo`: 10% of the distance from now, at least a
/// day.
fn ap_slack(lo: i64) -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    ((now - lo).abs() / 10).max(86_400_000)
}

/// [`date_expr`] evaluated on one row, with SQL's three-valued logic (`None`: unknown, which
/// a filter treats as false).
pub(crate) fn date_eval(
    prefix: &str,
    lo: i64,
    hi: i64,
    start: Option<i64>,
    end: Option<i64>,
) -> Option<bool> {
    fn and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
        match (a, b) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }
    }
    match prefix {
        "eq" => and(start.map(|s| s >= lo), end.map(|e| e <= hi)),
        "ne" => and(start.map(|s| s >= lo), end.map(|e| e <= hi)).map(|b| !b),
        "gt" => end.map(|e| e > hi),
        "lt" => start.map(|s| s < lo),
        "ge" => end.map(|e| e >= lo),
        "le" => start.map(|s| s <= hi),
        "sa" => start.map(|s| s > hi),
        "eb" => end.map(|e| e < lo),
        _ => {
            let slack = ap_slack(lo);
            and(start.map(|s| s <= hi + slack), end.map(|e| e >= lo - slack))
        }
    }
}

/// The instant range of a search date, and the date expression for a prefix.
fn date_expr(name: &str, value: &str, start: Expr, end: Expr) -> Result<Expr, QueryError> {
    let (prefix, lo, hi) = date_parts(name, value)?;
    Ok(date_filter(prefix, lo, hi, start, end))
}

/// The expression of a date comparison (`prefix`, the instant range `[lo, hi]` of the value)
/// on a row's period `[start, end]`; [`date_eval`] evaluates it on one row.
pub(crate) fn date_filter(prefix: &str, lo: i64, hi: i64, start: Expr, end: Expr) -> Expr {
    match prefix {
        "eq" => start.gt_eq(ts(lo)).and(end.lt_eq(ts(hi))),
        "ne" => start.gt_eq(ts(lo)).and(end.lt_eq(ts(hi))).not(),
        "gt" => end.gt(ts(hi)),
        "lt" => start.lt(ts(lo)),
        "ge" => end.gt_eq(ts(lo)),
        "le" => start.lt_eq(ts(hi)),
        "sa" => start.gt(ts(hi)),
        "eb" => end.lt(ts(lo)),
        _ => {
            // ap: within 10% of the distance from now (at least a day) around the value.
            let slack = ap_slack(lo);
            start.lt_eq(ts(hi + slack)).and(end.gt_eq(ts(lo - slack)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str, q: &[(&str, &str)]) -> Result<SearchRequest, QueryError> {
        let pairs: Vec<(String, String)> = q
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        SearchRequest::parse(t, &pairs, false, Limits::default())
    }

    #[test]
    fn values_split_on_unescaped_commas() {
        assert_eq!(split_values("a,b\\,c"), vec!["a", "b,c"]);
        assert_eq!(split_values("x"), vec!["x"]);
    }

    #[test]
    fn unknown_parameters_are_ignored_unless_strict() {
        let r = parse("ExplanationOfBenefit", &[("foo", "1"), ("patient", "p1")]).unwrap();
        assert_eq!(r.ignored, vec!["foo"]);
        assert_eq!(
            r.self_params,
            vec![("patient".to_string(), "p1".to_string())]
        );
        let strict = SearchRequest::parse(
            "ExplanationOfBenefit",
            &[("foo".into(), "1".into())],
            true,
            Limits::default(),
        );
        assert!(matches!(strict, Err(QueryError::UnsupportedParameter(_))));
    }

    #[test]
    fn malformed_values_are_errors() {
        assert!(parse("ExplanationOfBenefit", &[("service-date", "2020-13-45")]).is_err());
        assert!(parse("ExplanationOfBenefit", &[("_count", "-1")]).is_err());
        assert!(parse("ExplanationOfBenefit", &[("patient", "")]).is_err());
        assert!(parse("Nope", &[]).is_err());
        assert!(parse("ExplanationOfBenefit", &[("_sort", "identifier")]).is_err());
    }

    #[test]
    fn counts_are_capped() {
        let r = parse("ExplanationOfBenefit", &[("_count", "100000")]).unwrap();
        assert_eq!(r.count, 200);
    }

    #[test]
    fn references_take_every_form() {
        let p = registry::find("ExplanationOfBenefit", "patient").unwrap();
        assert_eq!(reference_forms(p, None, "1", None), vec!["Patient/1"]);
        assert_eq!(
            reference_forms(p, None, "Patient/1", None),
            vec!["Patient/1"]
        );
        assert_eq!(
            reference_forms(p, None, "http://h/fhir/Patient/1", Some("http://h/fhir")),
            vec!["Patient/1"]
        );
        assert!(reference_forms(
            p,
            None,
            "http://other/fhir/Patient/1",
            Some("http://h/fhir")
        )
        .is_empty());
    }
}
