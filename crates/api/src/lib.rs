//! The read-only FHIR REST API and its SMART on FHIR gate.
//!
//! `api` is the only crate that knows HTTP. It serves, under a base path (default `/fhir`):
//! `metadata` (a CapabilityStatement generated from the search registry),
//! `.well-known/smart-configuration`, read, search (GET and POST `_search`) and
//! `Patient/{id}/$everything`; errors are OperationOutcomes. Every route that returns member
//! data passes the SMART gate ([`smart::Smart`]): the token's scopes must cover the type, and
//! every query is confined to the token's patients. Formulary resources are public.
//!
//! The server answers each request from one snapshot and swaps in a newly published snapshot
//! without restarting ([`App::reload`]).

pub mod capability;
pub mod fhir;
pub mod outcome;
pub mod smart;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use mapper::lake::Lake;
use query::params::Limits;
use query::Snapshot;

use crate::smart::audit::AuditSink;
use crate::smart::Smart;

/// How the server runs.
#[derive(Clone)]
pub struct Settings {
    /// The lake to serve.
    pub lake: Lake,
    /// The public FHIR base URL (e.g. `http://127.0.0.1:8080/fhir`).
    pub base_url: String,
    /// The base path the FHIR routes are mounted at (e.g. `/fhir`).
    pub base_path: String,
    /// `_count` default and maximum.
    pub limits: Limits,
    /// The SMART layer; `None` only when the operator explicitly disabled auth.
    pub smart: Option<Smart>,
    /// Where member-data accesses are audited.
    pub audit: Option<Arc<AuditSink>>,
    /// How often to look for a newly published snapshot.
    pub reload_every: Duration,
}

/// The shared application state.
pub struct App {
    settings: Settings,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    secret: [u8; 32],
}

impl App {
    /// Build the application; opens the current snapshot if there is one.
    ///
    /// # Errors
    /// When the snapshot exists but cannot be opened.
    pub async fn new(settings: Settings) -> Result<Arc<Self>, query::QueryError> {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| query::QueryError::InvalidCursor("no randomness for the cursor key"))?;
        let app = Arc::new(Self {
            settings,
            snapshot: RwLock::new(None),
            secret,
        });
        app.reload().await?;
        Ok(app)
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The snapshot requests are answered from now.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.read().ok().and_then(|s| s.clone())
    }

    /// Open the lake's current snapshot if it is not the one being served. In-flight
    /// requests keep the snapshot they started with.
    ///
    /// # Errors
    /// When the new snapshot cannot be opened (the old one keeps serving).
    pub async fn reload(&self) -> Result<bool, query::QueryError> {
        let current = self.settings.lake.current_name()?;
        let serving = self.snapshot().map(|s| s.name.clone());
        if current.is_none() || current == serving {
            return Ok(false);
        }
        let snap = Arc::new(Snapshot::open(&self.settings.lake).await?);
        if let Ok(mut w) = self.snapshot.write() {
            *w = Some(snap);
        }
        Ok(true)
    }

    /// The key that signs paging cursors.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// The full router: FHIR routes under the base path, plus the authorization server's routes.
pub fn router(app: Arc<App>) -> Router {
    let base = app.settings.base_path.trim_end_matches('/').to_string();
    let fhir = fhir::routes(app.clone());
    let mut r = if base.is_empty() {
        fhir
    } else {
        Router::new().nest(&base, fhir)
    };
    if let Some(s) = &app.settings.smart {
        r = r.merge(s.router());
    }
    r.fallback(fhir::not_found)
}

/// Serve on `listener` until `shutdown` resolves; reloads snapshots in the background.
///
/// # Errors
/// On listener errors.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let reloader = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(app.settings.reload_every);
            loop {
                tick.tick().await;
                match app.reload().await {
                    Ok(true) => tracing::info!("serving a newly published snapshot"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "could not open the new snapshot; the old one keeps serving")
                    }
                }
            }
        })
    };
    let r = router(app);
    let result = axum::serve(
        listener,
        r.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    reloader.abort();
    result
}
