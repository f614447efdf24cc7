//! The FHIR REST routes: read, search, `$everything`, metadata, discovery.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use query::{Page, SearchRequest};

use crate::outcome::{ApiError, FHIR_JSON};
use crate::smart::audit::AuditEvent;
use crate::smart::{is_public_resource, Grant, Interaction};
use crate::App;

/// The FHIR routes (mounted under the base path by [`crate::router`]).
pub fn routes(app: Arc<App>) -> Router {
    let mut r = Router::new()
        .route("/metadata", get(metadata))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route("/{rtype}", any(type_level))
        .route("/{rtype}/_search", any(search_post))
        .route("/{rtype}/{id}", any(instance))
        .route("/{rtype}/{id}/_history", any(history))
        .route("/{rtype}/{id}/_history/{vid}", any(vread))
        .route("/{rtype}/{id}/{op}", get(operation).fallback(read_only))
        .with_state(app.clone());
    if app.settings().smart.is_some() {
        r = r.layer(crate::smart::cors_layer());
    }
    r
}

/// 404 for anything else.
pub async fn not_found() -> Response {
    ApiError::NotFound("no such endpoint".into()).into_response()
}

async fn read_only() -> Response {
    ApiError::MethodNotAllowed.into_response()
}

fn fhir_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}

async fn metadata(State(app): State<Arc<App>>) -> Response {
    let cs = crate::capability::capability_statement(&app);
    fhir_response(StatusCode::OK, cs.to_string())
}

async fn smart_configuration(State(app): State<Arc<App>>) -> Response {
    match &app.settings().smart {
        Some(s) => {
            let mut r = axum::Json(s.smart_configuration()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        None => ApiError::NotFound("this server runs without authorization".into()).into_response(),
    }
}

/// Check the token for a type: `Ok(None)` means no confinement (public data, or auth
/// disabled by the operator); `Ok(Some(grant))` confines to `grant.patients`.
async fn gate(
    app: &App,
    headers: &HeaderMap,
    resource_type: &str,
    interaction: Interaction,
) -> Result<Option<Grant>, ApiError> {
    if is_public_resource(resource_type) {
        return Ok(None);
    }
    let Some(smart) = &app.settings().smart else {
        return Ok(None);
    };
    match smart
        .authorize_interaction(headers, resource_type, interaction)
        .await
    {
        Ok(g) => Ok(Some(g)),
        Err(e) => {
            if let Some(a) = &app.settings().audit {
                let _ = a.record(&AuditEvent::denied(resource_type, &e));
            }
            Err(ApiError::Auth(e))
        }
    }
}

fn audit(app: &App, grant: &Option<Grant>, resource_type: &str, count: u64) {
    if let (Some(a), Some(g)) = (&app.settings().audit, grant) {
        let _ = a.record(&AuditEvent::success(g, resource_type, count));
    }
}

fn known_type(t: &str) -> Result<(), ApiError> {
    if mapper::registry::resource_types().contains(&t) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "resource type '{t}' is not supported"
        )))
    }
}

fn snapshot(app: &App) -> Result<Arc<query::Snapshot>, ApiError> {
    app.snapshot().ok_or(ApiError::Unavailable)
}

async fn type_level(
    State(app): State<Arc<App>>,
    method: Method,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    let pairs = parse_pairs(q.as_deref().unwrap_or("").as_bytes());
    search(&app, &rtype, &headers, pairs).await
}

async fn search_post(
    State(app): State<Arc<App>>,
    method: Method,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    if method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(ApiError::BadRequest(
            "invalid",
            "POST _search takes an application/x-www-form-urlencoded body".into(),
        ));
    }
    let mut pairs = parse_pairs(q.as_deref().unwrap_or("").as_bytes());
    pairs.extend(parse_pairs(&body));
    search(&app, &rtype, &headers, pairs).await
}

fn parse_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn strict(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "handling=strict"))
}

async fn search(
    app: &Arc<App>,
    rtype: &str,
    headers: &HeaderMap,
    pairs: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    known_type(rtype)?;
    let grant = gate(app, headers, rtype, Interaction::Search).await?;
    let req = SearchRequest::parse(rtype, &pairs, strict(headers), app.settings().limits)?;
    let snap = snapshot(app)?;
    let patients = grant.as_ref().map(|g| g.patients.as_slice());
    let page = snap
        .search(&req, patients, Some(&app.settings().base_url), app.secret())
        .await?;
    audit(app, &grant, rtype, page.matches.len() as u64);
    let base = app.settings().base_url.trim_end_matches('/');
    let self_link = link(&format!("{base}/{rtype}"), &req.self_params, None);
    let next = page
        .next
        .as_ref()
        .map(|c| link(&format!("{base}/{rtype}"), &req.self_params, Some(c)));
    let previous = page
        .previous
        .as_ref()
        .map(|c| link(&format!("{base}/{rtype}"), &req.self_params, Some(c)));
    bundle(base, &page, self_link, next, previous, req.summary_count)
}

fn link(path: &str, params: &[(String, String)], cursor: Option<&str>) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    if let Some(c) = cursor {
        ser.append_pair("_cursor", c);
    }
    let q = ser.finish();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    }
}

/// The `resourceType` and `id` of a stored resource. Stored resources start with them (the
/// mapper writes them first); anything else is parsed.
fn head(text: &str) -> Option<(&str, &str)> {
    fn string_at<'a>(s: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
        let rest = s.strip_prefix(prefix)?;
        let end = rest.find(['"', '\\'])?;
        if rest.as_bytes()[end] == b'"' {
            Some((&rest[..end], &rest[end + 1..]))
        } else {
            None
        }
    }
    if let Some((t, rest)) = string_at(text, "{\"resourceType\":\"") {
        if let Some((id, _)) = string_at(rest, ",\"id\":\"") {
            return Some((t, id));
        }
    }
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "resourceType", borrow)]
        resource_type: &'a str,
        #[serde(borrow)]
        id: &'a str,
    }
    let h: Head = serde_json::from_str(text).ok()?;
    Some((h.resource_type, h.id))
}

/// Append `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// The searchset Bundle, written directly: the stored resources are spliced in as they are
/// (they are JSON the lake wrote), not parsed and re-serialised.
fn bundle(
    base: &str,
    page: &Page,
    self_link: String,
    next: Option<String>,
    previous: Option<String>,
    summary_count: bool,
) -> Result<Response, ApiError> {
    let size: usize = page
        .matches
        .iter()
        .chain(&page.included)
        .map(String::len)
        .sum();
    let mut out = String::with_capacity(size + 256 * (page.matches.len() + 2));
    out.push_str("{\"resourceType\":\"Bundle\",\"type\":\"searchset\"");
    if let Some(t) = page.total {
        out.push_str(",\"total\":");
        out.push_str(&t.to_string());
    }
    out.push_str(",\"link\":[");
    let links = std::iter::once(("self", Some(self_link)))
        .chain([("next", next), ("previous", previous)])
        .filter_map(|(r, u)| u.map(|u| (r, u)));
    for (i, (relation, url)) in links.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"relation\":\"");
        out.push_str(relation);
        out.push_str("\",\"url\":");
        push_json_str(&mut out, &url);
        out.push('}');
    }
    out.push(']');
    let has_entries = !page.matches.is_empty() || !page.included.is_empty();
    if !summary_count && has_entries {
        out.push_str(",\"entry\":[");
        let entries = page
            .matches
            .iter()
            .map(|m| (m, "match"))
            .chain(page.included.iter().map(|m| (m, "include")));
        for (i, (text, mode)) in entries.enumerate() {
            let (t, id) = head(text).ok_or(ApiError::Internal("stored resource"))?;
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"fullUrl\":");
            push_json_str(&mut out, &format!("{base}/{t}/{id}"));
            out.push_str(",\"resource\":");
            out.push_str(text.trim());
            out.push_str(",\"search\":{\"mode\":\"");
            out.push_str(mode);
            out.push_str("\"}}");
        }
        out.push(']');
    }
    out.push('}');
    Ok(fhir_response(StatusCode::OK, out))
}

async fn instance(
    State(app): State<Arc<App>>,
    method: Method,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut current = read_current(&app, &method, &rtype, &id, &headers).await?;
    let now = current.now.take();
    audit(&app, &current.grant, &rtype, u64::from(now.is_some()));
    match now {
        Some(now) => Ok(resource_response(&headers, now)),
        None => Err(current.absent(&app, &rtype, &id).await),
    }
}

/// `GET [type]/[id]/_history/[vid]`: the current version, or an earlier one the lake's retained
/// snapshots still hold (also of a resource a later run deleted); a version no snapshot holds
/// is 404, and a deleted resource's is 410. Gated and confined like a read.
async fn vread(
    State(app): State<Arc<App>>,
    method: Method,
    Path((rtype, id, vid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut current = read_current(&app, &method, &rtype, &id, &headers).await?;
    if let Some(now) = current.now.take_if(|now| now.version_id == vid) {
        audit(&app, &current.grant, &rtype, 1);
        return Ok(resource_response(&headers, now));
    }
    let now = current.now.as_ref().map(|v| v.version_id.clone());
    let earlier = current
        .earlier(&app, &rtype, &id, now.as_deref().unwrap_or(""), Some(&vid))
        .await?;
    audit(&app, &current.grant, &rtype, earlier.len() as u64);
    if let Some(v) = earlier.into_iter().next() {
        return Ok(resource_response(&headers, v));
    }
    Err(match now {
        Some(now) => ApiError::NotFound(format!(
            "version {vid} of {rtype}/{id} is not kept (the current one is {now})"
        )),
        None => current.absent(&app, &rtype, &id).await,
    })
}

/// `GET [type]/[id]/_history`: a `history` Bundle of the current version and the earlier ones
/// the lake's retained snapshots hold, newest first; 410 for a resource a later run deleted.
/// Gated and confined like a read.
async fn history(
    State(app): State<Arc<App>>,
    method: Method,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    if strict(&headers) {
        if let Some((name, _)) = parse_pairs(q.as_deref().unwrap_or("").as_bytes()).first() {
            return Err(query::QueryError::UnsupportedParameter(name.clone()).into());
        }
    }
    let mut current = read_current(&app, &method, &rtype, &id, &headers).await?;
    let label = format!("{rtype}/_history");
    let Some(now) = current.now.take() else {
        audit(&app, &current.grant, &label, 0);
        return Err(current.absent(&app, &rtype, &id).await);
    };
    let earlier = current
        .earlier(&app, &rtype, &id, &now.version_id, None)
        .await?;
    let versions: Vec<query::history::Version> = std::iter::once(now).chain(earlier).collect();
    audit(&app, &current.grant, &label, versions.len() as u64);
    let base = app.settings().base_url.trim_end_matches('/');
    Ok(fhir_response(
        StatusCode::OK,
        history_bundle(base, &rtype, &id, &versions),
    ))
}

/// The `history` Bundle of a resource's versions (newest first), written directly: the
/// stored resources are spliced in as they are.
fn history_bundle(
    base: &str,
    rtype: &str,
    id: &str,
    versions: &[query::history::Version],
) -> String {
    let size: usize = versions.iter().map(|v| v.resource.len() + 256).sum();
    let mut out = String::with_capacity(size + 256);
    out.push_str("{\"resourceType\":\"Bundle\",\"type\":\"history\",\"total\":");
    out.push_str(&versions.len().to_string());
    out.push_str(",\"link\":[{\"relation\":\"self\",\"url\":");
    push_json_str(&mut out, &format!("{base}/{rtype}/{id}/_history"));
    out.push_str("}],\"entry\":[");
    for (i, v) in versions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // The first version was a create; any later one (or the oldest kept, when earlier ones
        // are no longer kept) an update.
        let (method, status) = if v.version_id == "1" {
            ("POST", "201 Created")
        } else {
            ("PUT", "200 OK")
        };
        out.push_str("{\"fullUrl\":");
        push_json_str(&mut out, &format!("{base}/{rtype}/{id}"));
        out.push_str(",\"resource\":");
        out.push_str(v.resource.trim());
        out.push_str(",\"request\":{\"method\":\"");
        out.push_str(method);
        out.push_str("\",\"url\":");
        push_json_str(&mut out, &format!("{rtype}/{id}"));
        out.push_str("},\"response\":{\"status\":\"");
        out.push_str(status);
        out.push('"');
        if !v.version_id.is_empty() {
            out.push_str(",\"etag\":");
            push_json_str(&mut out, &format!("W/\"{}\"", v.version_id));
        }
        if let Some(t) = &v.last_updated {
            out.push_str(",\"lastModified\":");
            push_json_str(&mut out, t);
        }
        out.push_str("}}");
    }
    out.push_str("]}");
    out
}

/// What the served snapshot holds of a resource the caller may see, with what answered it.
struct Current {
    /// The snapshot it was read from (the rest of the request is answered from it too).
    snap: Arc<query::Snapshot>,
    /// The caller's grant (`None`: unconfined).
    grant: Option<Grant>,
    /// The resource as stored, with its version and time; `None` when the snapshot does not
    /// hold it (or not in the caller's compartment).
    now: Option<query::history::Version>,
}

impl Current {
    /// The resource along the line of snapshots behind the served one, as the caller may see it.
    fn lookup<'a>(
        &'a self,
        app: &'a App,
        rtype: &'a str,
        id: &'a str,
    ) -> query::history::Lookup<'a> {
        query::history::Lookup {
            lake: &app.settings().lake,
            current: &self.snap,
            resource_type: rtype,
            id,
            patients: self.grant.as_ref().map(|g| g.patients.as_slice()),
        }
    }

    /// The versions of the resource other than `now_version` the caller may see (only
    /// `wanted`, with it), newest first.
    async fn earlier(
        &self,
        app: &App,
        rtype: &str,
        id: &str,
        now_version: &str,
        wanted: Option<&str>,
    ) -> Result<Vec<query::history::Version>, ApiError> {
        let lookup = self.lookup(app, rtype, id);
        Ok(lookup.earlier_versions(now_version, wanted).await?)
    }

    /// The answer for a resource the served snapshot does not hold: 410 when a kept snapshot
    /// on its line holds it (a later run deleted it), 404 otherwise.
    async fn absent(&self, app: &App, rtype: &str, id: &str) -> ApiError {
        match self.lookup(app, rtype, id).deleted().await {
            Ok(Some(v)) => ApiError::Gone(format!(
                "{rtype}/{id} was deleted after version {}",
                v.version_id
            )),
            Ok(None) => ApiError::NotFound(format!("{rtype}/{id} is not known")),
            Err(e) => e.into(),
        }
    }
}

/// What the served snapshot holds of a resource the caller may see (the caller audits what it
/// returns).
async fn read_current(
    app: &Arc<App>,
    method: &Method,
    rtype: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<Current, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    known_type(rtype)?;
    let grant = gate(app, headers, rtype, Interaction::Read).await?;
    let snap = snapshot(app)?;
    let patients = grant.as_ref().map(|g| g.patients.as_slice());
    let found = snap.read(rtype, id, patients).await?;
    Ok(Current {
        snap,
        grant,
        now: found.map(query::history::Version::of),
    })
}

/// A resource with its version as the ETag (`W/"vid"`) and its `meta.lastUpdated` as
/// Last-Modified; `304 Not Modified` (no body) when the request's `If-None-Match` names that
/// version, or, without `If-None-Match`, when `If-Modified-Since` is not before
/// `meta.lastUpdated` (FHIR conditional read, RFC 9110 §13).
fn resource_response(headers: &HeaderMap, v: query::history::Version) -> Response {
    let etag = (!v.version_id.is_empty()).then(|| format!("W/\"{}\"", v.version_id));
    let modified = v
        .last_updated
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    let not_modified = match headers.get(header::IF_NONE_MATCH) {
        Some(inm) => etag.as_deref().is_some_and(|etag| {
            let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
            inm.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim() == "*" || weak(t) == weak(etag))
        }),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| chrono::DateTime::parse_from_rfc2822(h).ok())
            .zip(modified)
            .is_some_and(|(since, modified)| modified.timestamp() <= since.timestamp()),
    };
    let mut r = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        fhir_response(StatusCode::OK, v.resource)
    };
    if let Some(h) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        r.headers_mut().insert(header::ETAG, h);
    }
    let http_date = modified.map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string());
    if let Some(h) = http_date.and_then(|d| HeaderValue::from_str(&d).ok()) {
        r.headers_mut().insert(header::LAST_MODIFIED, h);
    }
    r
}

async fn operation(
    State(app): State<Arc<App>>,
    Path((rtype, id, op)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    if rtype != "Patient" || op != "$everything" {
        return Err(ApiError::NotFound(format!(
            "{rtype}/{id}/{op} is not supported"
        )));
    }
    let pairs = parse_pairs(q.as_deref().unwrap_or("").as_bytes());
    // Parameters not applied are left out of the links, as in a search, and refused under
    // strict handling.
    if strict(&headers) {
        const APPLIED: [&str; 6] = ["_count", "_since", "start", "end", "_type", "_cursor"];
        if let Some((name, _)) = pairs.iter().find(|(n, _)| !APPLIED.contains(&n.as_str())) {
            return Err(query::QueryError::UnsupportedParameter(name.clone()).into());
        }
    }
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let count = match get("_count") {
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| {
                ApiError::BadRequest("invalid", "_count must be a non-negative integer".into())
            })?
            .clamp(1, app.settings().limits.max_count),
        None => app.settings().limits.default_count,
    };
    let types: Option<Vec<String>> =
        get("_type").map(|t| t.split(',').map(str::to_string).collect());
    if let Some(ts) = &types {
        if let Some(bad) = ts
            .iter()
            .find(|t| !query::snapshot::EVERYTHING_PHASES.contains(&t.as_str()))
        {
            return Err(ApiError::BadRequest(
                "invalid",
                format!("_type {bad} is not in a member's record"),
            ));
        }
    }
    // The member's own Patient must be readable by this token: that is the compartment check.
    let grant = gate(&app, &headers, "Patient", Interaction::Search).await?;
    let patients = grant.as_ref().map(|g| g.patients.as_slice());
    let snap = snapshot(&app)?;
    if snap.read("Patient", &id, patients).await?.is_none() {
        return Err(ApiError::NotFound(format!("Patient/{id} is not known")));
    }
    if let Some(g) = &grant {
        // Each phase's type must be in scope too.
        let scoped: Vec<String> = query::snapshot::EVERYTHING_PHASES
            .iter()
            .filter(|t| types.as_ref().is_none_or(|ts| ts.iter().any(|x| x == *t)))
            .filter(|t| g.can_search(t))
            .map(|t| t.to_string())
            .collect();
        return everything(
            &app,
            &snap,
            &id,
            &pairs,
            count,
            Some(scoped),
            patients,
            grant.as_ref(),
        )
        .await;
    }
    everything(&app, &snap, &id, &pairs, count, types, patients, None).await
}

#[allow(clippy::too_many_arguments)]
async fn everything(
    app: &Arc<App>,
    snap: &query::Snapshot,
    id: &str,
    pairs: &[(String, String)],
    count: usize,
    types: Option<Vec<String>>,
    patients: Option<&[String]>,
    grant: Option<&Grant>,
) -> Result<Response, ApiError> {
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let since = get("_since");
    let (start, end) = (get("start"), get("end"));
    let cursor = get("_cursor");
    let page = snap
        .everything(
            id,
            since.as_deref(),
            (start.as_deref(), end.as_deref()),
            types.as_deref(),
            count,
            cursor.as_deref(),
            patients,
            app.secret(),
        )
        .await?;
    if let Some(g) = grant {
        audit(
            app,
            &Some(g.clone()),
            "Patient/$everything",
            page.matches.len() as u64,
        );
    }
    let base = app.settings().base_url.trim_end_matches('/');
    let path = format!("{base}/Patient/{id}/$everything");
    let mut params: Vec<(String, String)> = vec![("_count".into(), count.to_string())];
    for k in ["_since", "start", "end", "_type"] {
        if let Some(v) = get(k) {
            params.push((k.into(), v));
        }
    }
    let self_link = link(&path, &params, cursor.as_deref());
    let next = page.next.as_ref().map(|c| link(&path, &params, Some(c)));
    bundle(base, &page, self_link, next, None, false)
}
