//! A SMART sandbox on loopback for third-party client tests (npm `fhirclient`, Inferno …):
//! the embedded authorization server plus a stand-in FHIR endpoint that answers every
//! member-data read or search with placeholder resources for the token's patients, through
//! the real gate, and writes the access audit log.
//!
//! `cargo run -p api --example sandbox -- DIR REDIRECT_URI [PORT]`
//!
//! Writes `DIR/clients.toml` (public client `fhirclient-test`, confidential client
//! `conf-test` / secret `conf-secret`, both with REDIRECT_URI) and `DIR/members.toml`
//! (`alice`/`alice-pw` for patient `pat-sbx-1`; `dora`/`dora-pw`, delegate for `pat-sbx-2`
//! and `pat-sbx-3`) unless they exist, keeps keys in `DIR/state`, audits to
//! `DIR/audit.ndjson`, and prints `LISTENING=<origin>` once it serves `<origin>/fhir`.

use std::path::PathBuf;
use std::sync::Arc;

use api::smart::audit::{AuditEvent, AuditSink};
use api::smart::config::hash_secret;
use api::smart::{cors_layer, AuthConfig, Interaction, Smart};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Clone)]
struct App {
    smart: Smart,
    audit: Arc<AuditSink>,
    base: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, redirect, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: sandbox DIR REDIRECT_URI [PORT]");
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;
    let clients = dir.join("clients.toml");
    if !clients.exists() {
        std::fs::write(
            &clients,
            format!(
                "[[client]]\nclient_id = \"fhirclient-test\"\nname = \"fhirclient test app\"\nredirect_uris = [\"{redirect}\"]\n\n\
                 [[client]]\nclient_id = \"conf-test\"\nredirect_uris = [\"{redirect}\"]\nsecret_hash = \"{}\"\n",
                hash_secret("conf-secret")?
            ),
        )?;
    }
    let members = dir.join("members.toml");
    if !members.exists() {
        std::fs::write(
            &members,
            format!(
                "[[member]]\nusername = \"alice\"\npassword_hash = \"{}\"\npatients = [\"pat-sbx-1\"]\n\n\
                 [[member]]\nusername = \"dora\"\npassword_hash = \"{}\"\nfhir_user = \"RelatedPerson/dora\"\npatients = [\"pat-sbx-2\", \"pat-sbx-3\"]\n",
                hash_secret("alice-pw")?,
                hash_secret("dora-pw")?
            ),
        )?;
    }
    let port: u16 = rest.first().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let origin = format!("http://{}", listener.local_addr()?);
    let base = format!("{origin}/fhir");
    let smart = Smart::new(AuthConfig::embedded(
        dir.join("state"),
        clients,
        members,
        &base,
    ))
    .await?;
    let app = App {
        smart: smart.clone(),
        audit: Arc::new(AuditSink::file(&dir.join("audit.ndjson"))?),
        base,
    };
    let fhir = Router::new()
        .route("/fhir/.well-known/smart-configuration", get(smart_config))
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/{rt}", get(search))
        .route("/fhir/{rt}/{id}", get(read))
        .layer(cors_layer())
        .with_state(app);
    println!("LISTENING={origin}");
    axum::serve(listener, smart.router().merge(fhir)).await?;
    Ok(())
}

async fn smart_config(State(app): State<App>) -> Json<Value> {
    Json(app.smart.smart_configuration())
}

async fn metadata(State(app): State<App>) -> Json<Value> {
    Json(json!({
        "resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
        "format": ["json"], "date": "2026-01-01",
        "rest": [{ "mode": "server", "security": app.smart.rest_security() }],
    }))
}

fn resource(rt: &str, patient: &str) -> Value {
    if rt == "Patient" {
        json!({ "resourceType": "Patient", "id": patient })
    } else {
        json!({ "resourceType": rt, "id": format!("{rt}-{patient}"), "patient": { "reference": format!("Patient/{patient}") } })
    }
}

async fn search(State(app): State<App>, Path(rt): Path<String>, headers: HeaderMap) -> Response {
    let grant = match app
        .smart
        .authorize_interaction(&headers, &rt, Interaction::Search)
        .await
    {
        Ok(g) => g,
        Err(e) => {
            let _ = app.audit.record(&AuditEvent::denied(&rt, &e));
            return e.into_response();
        }
    };
    let entries: Vec<Value> = grant
        .patients
        .iter()
        .map(|p| json!({ "fullUrl": format!("{}/{rt}/{}", app.base, resource(&rt, p)["id"].as_str().unwrap_or_default()), "resource": resource(&rt, p) }))
        .collect();
    let _ = app
        .audit
        .record(&AuditEvent::success(&grant, &rt, entries.len() as u64));
    Json(json!({ "resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries })).into_response()
}

async fn read(
    State(app): State<App>,
    Path((rt, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let grant = match app
        .smart
        .authorize_interaction(&headers, &rt, Interaction::Read)
        .await
    {
        Ok(g) => g,
        Err(e) => {
            let _ = app.audit.record(&AuditEvent::denied(&rt, &e));
            return e.into_response();
        }
    };
    match grant
        .patients
        .iter()
        .find(|p| resource(&rt, p)["id"] == id.as_str())
    {
        Some(p) => {
            let _ = app.audit.record(&AuditEvent::success(&grant, &rt, 1));
            Json(resource(&rt, p)).into_response()
        }
        None => {
            let _ = app.audit.record(&AuditEvent::success(&grant, &rt, 0));
            (
                axum::http::StatusCode::NOT_FOUND,
                Json(json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error", "code": "not-found", "diagnostics": "no such resource" }] })),
            )
                .into_response()
        }
    }
}
