//! The FHIR REST routes: read, search, `$everything`, metadata, discovery.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use query::{Page, SearchRequest};
use serde::Serialize;
use serde_json::value::RawValue;

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

#[derive(Serialize)]
struct Bundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
    link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Link {
    relation: &'static str,
    url: String,
}

#[derive(Serialize)]
struct Entry<'a> {
    #[serde(rename = "fullUrl")]
    full_url: String,
    resource: &'a RawValue,
    search: SearchMode,
}

#[derive(Serialize)]
struct SearchMode {
    mode: &'static str,
}

#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: &'a str,
    #[serde(borrow)]
    id: &'a str,
}

fn bundle(
    base: &str,
    page: &Page,
    self_link: String,
    next: Option<String>,
    previous: Option<String>,
    summary_count: bool,
) -> Result<Response, ApiError> {
    let mut links = vec![Link {
        relation: "self",
        url: self_link,
    }];
    if let Some(n) = next {
        links.push(Link {
            relation: "next",
            url: n,
        });
    }
    if let Some(p) = previous {
        links.push(Link {
            relation: "previous",
            url: p,
        });
    }
    let mut raws = Vec::new();
    for (text, mode) in page
        .matches
        .iter()
        .map(|m| (m, "match"))
        .chain(page.included.iter().map(|m| (m, "include")))
    {
        let raw: &RawValue =
            serde_json::from_str(text).map_err(|_| ApiError::Internal("stored resource"))?;
        let head: Head =
            serde_json::from_str(text).map_err(|_| ApiError::Internal("stored resource"))?;
        raws.push(Entry {
            full_url: format!("{base}/{}/{}", head.resource_type, head.id),
            resource: raw,
            search: SearchMode { mode },
        });
    }
    let b = Bundle {
        resource_type: "Bundle",
        kind: "searchset",
        total: page.total,
        link: links,
        entry: if summary_count { Vec::new() } else { raws },
    };
    let body = serde_json::to_string(&b).map_err(|_| ApiError::Internal("bundle"))?;
    Ok(fhir_response(StatusCode::OK, body))
}

async fn instance(
    State(app): State<Arc<App>>,
    method: Method,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    known_type(&rtype)?;
    let grant = gate(&app, &headers, &rtype, Interaction::Read).await?;
    let snap = snapshot(&app)?;
    let patients = grant.as_ref().map(|g| g.patients.as_slice());
    let found = snap.read(&rtype, &id, patients).await?;
    audit(&app, &grant, &rtype, u64::from(found.is_some()));
    let Some(text) = found else {
        return Err(ApiError::NotFound(format!("{rtype}/{id} is not known")));
    };
    let mut r = fhir_response(StatusCode::OK, text.clone());
    #[derive(serde::Deserialize)]
    struct Meta {
        meta: Option<MetaInner>,
    }
    #[derive(serde::Deserialize)]
    struct MetaInner {
        #[serde(rename = "versionId")]
        version_id: Option<String>,
    }
    if let Ok(Meta {
        meta: Some(MetaInner {
            version_id: Some(v),
        }),
    }) = serde_json::from_str(&text)
    {
        if let Ok(h) = HeaderValue::from_str(&format!("W/\"{v}\"")) {
            r.headers_mut().insert(header::ETAG, h);
        }
    }
    Ok(r)
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
    let cursor = get("_cursor");
    let page = snap
        .everything(
            id,
            since.as_deref(),
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
    for k in ["_since", "_type"] {
        if let Some(v) = get(k) {
            params.push((k.into(), v));
        }
    }
    let self_link = link(&path, &params, cursor.as_deref());
    let next = page.next.as_ref().map(|c| link(&path, &params, Some(c)));
    bundle(base, &page, self_link, next, None, false)
}
