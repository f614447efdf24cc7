//! SMART on FHIR security: the resource-server gate and an embedded authorization server.
//!
//! What this module owns:
//! - validating bearer JWTs (JWKS with `kid` rotation, RS256/RS384/ES256/ES384 only, `iss`,
//!   `aud`, `exp`/`nbf`/`iat`, revocation) and turning them into a [`Grant`];
//! - SMART v1 and v2 scopes ([`scopes`]) and the 401/403 answers ([`AuthError`]);
//! - discovery: `/.well-known/smart-configuration` and the CapabilityStatement's
//!   `rest.security` ([`Smart::smart_configuration`], [`Smart::rest_security`]);
//! - the embedded SMART App Launch 2.0 authorization server ([`server`], routes under `/auth`);
//! - the access audit log ([`audit`]) and the CORS policy ([`cors_layer`]).
//!
//! What it does not own: routing FHIR requests, confining queries to the patient
//! compartment (the caller does that with [`Grant::patients`]), writing audit events (the
//! caller knows the count), or serving `/metadata` and `/.well-known/smart-configuration`
//! (the caller mounts the JSON these functions return).
//!
//! Nothing here logs a token, a patient id or a user name.

pub mod audit;
pub mod config;
pub mod discovery;
mod error;
mod jwks;
mod keys;
pub mod pages;
pub mod scopes;
pub mod server;
mod validate;

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, Method};
use axum::Router;
use serde_json::Value;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::{AuthConfig, IssuerMode};
pub use discovery::Endpoints;
pub use error::{AuthError, SmartError, TokenRejection};
pub use jwks::ACCEPTED_ALGORITHMS;
pub use scopes::Scopes;
pub use validate::{patient_id, Grant};

use jwks::{JwksCache, KeySource};
use keys::KeyStore;
use validate::{bearer, RevocationList, Validator};

/// Resource types served without a token: the PDex drug formulary holds no member data.
pub const PUBLIC_RESOURCE_TYPES: &[&str] = mapper::registry::FORMULARY_RESOURCE_TYPES;

/// True when `resource_type` is public (formulary).
pub fn is_public_resource(resource_type: &str) -> bool {
    PUBLIC_RESOURCE_TYPES.contains(&resource_type)
}

/// The interaction a request performs, for scope checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// `GET [type]/[id]` (`r`).
    Read,
    /// `GET [type]?…`, `POST [type]/_search`, `$everything` (`s`).
    Search,
    /// Either read or search is enough (coarse check).
    Any,
}

/// The SMART layer: validator, discovery and (in embedded mode) the authorization server.
/// Cheap to clone.
#[derive(Clone)]
pub struct Smart {
    inner: Arc<Inner>,
}

struct Inner {
    validator: Validator,
    endpoints: Endpoints,
    embedded: Option<Arc<server::Embedded>>,
}

impl Smart {
    /// Builds the SMART layer. Embedded mode loads clients and members, and opens (or
    /// creates) the signing keys in the state directory. External mode fetches the issuer's
    /// OpenID configuration and JWKS.
    ///
    /// # Errors
    /// Unreadable or malformed configuration files, an unusable state directory, an invalid
    /// base URL, or (external) an issuer whose discovery document cannot be fetched, names
    /// another issuer, or uses plain HTTP off loopback.
    pub async fn new(config: AuthConfig) -> Result<Self, SmartError> {
        let leeway = config.leeway_secs;
        let inner = match &config.mode {
            IssuerMode::Embedded {
                state_dir,
                clients_file,
                members_file,
                base_url,
            } => {
                let clients = config::load_clients(clients_file)?;
                let members = config::load_members(members_file)?;
                let url = url::Url::parse(base_url)
                    .map_err(|e| SmartError::InvalidArgument(format!("base_url: {e}")))?;
                let base_url = base_url.trim_end_matches('/').to_owned();
                let auth_base = format!("{}/auth", url.origin().ascii_serialization());
                let endpoints = Endpoints::embedded(&auth_base);
                let keys = Arc::new(KeyStore::open(state_dir)?);
                let revocations =
                    Arc::new(RevocationList::open(Some(state_dir.join("revoked.ndjson"))));
                let jwks = JwksCache::new(
                    KeySource::Local(keys.clone()),
                    config.jwks_refresh_min_interval,
                    config.jwks_max_age,
                )
                .await;
                let validator = Validator {
                    issuer: auth_base.clone(),
                    audience: base_url.clone(),
                    jwks,
                    leeway,
                    patient_claims: vec!["patients".into(), "patient".into()],
                    revocations: Some(revocations.clone()),
                    cache: Default::default(),
                };
                let embedded = server::Embedded::new(server::Parts {
                    base_url,
                    endpoints: endpoints.clone(),
                    keys,
                    revocations,
                    clients,
                    members,
                    access_ttl: config.access_token_ttl.as_secs() as i64,
                    leeway,
                });
                Inner {
                    validator,
                    endpoints,
                    embedded: Some(Arc::new(embedded)),
                }
            }
            IssuerMode::External {
                issuer,
                audience,
                patient_claim,
            } => {
                let http = reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| SmartError::Crypto(e.to_string()))?;
                let issuer = issuer.trim_end_matches('/').to_owned();
                let disco_url = format!("{issuer}/.well-known/openid-configuration");
                require_secure(&disco_url)?;
                let doc = jwks::fetch_json(&http, &disco_url).await?;
                let doc_issuer = doc
                    .get("issuer")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if doc_issuer.trim_end_matches('/') != issuer {
                    return Err(SmartError::Discovery {
                        url: disco_url,
                        message: "the document names another issuer".into(),
                    });
                }
                let jwks_uri = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                require_secure(&jwks_uri)?;
                let endpoints = Endpoints::external(&doc, doc_issuer, &jwks_uri);
                let jwks = JwksCache::new(
                    KeySource::Remote {
                        uri: jwks_uri,
                        http,
                    },
                    config.jwks_refresh_min_interval,
                    config.jwks_max_age,
                )
                .await;
                let validator = Validator {
                    issuer: doc_issuer.to_owned(),
                    audience: audience.clone(),
                    jwks,
                    leeway,
                    patient_claims: vec![patient_claim.clone()],
                    revocations: None,
                    cache: Default::default(),
                };
                Inner {
                    validator,
                    endpoints,
                    embedded: None,
                }
            }
        };
        Ok(Smart {
            inner: Arc::new(inner),
        })
    }

    /// The embedded authorization server's routes (under `/auth`, see [`server`]), to be
    /// merged at the server root. Empty for an external issuer. Its JSON endpoints already
    /// carry the CORS layer.
    pub fn router(&self) -> Router {
        match &self.inner.embedded {
            Some(e) => e.clone().router(),
            None => Router::new(),
        }
    }

    /// The `/.well-known/smart-configuration` document.
    pub fn smart_configuration(&self) -> Value {
        self.inner.endpoints.smart_configuration()
    }

    /// The CapabilityStatement's `rest[0].security` element.
    pub fn rest_security(&self) -> Value {
        self.inner.endpoints.rest_security()
    }

    /// The endpoints and capabilities in force.
    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    /// Checks the request's bearer token and that it may read or search `resource_type`.
    /// Public (formulary) types need no token and yield [`Grant::anonymous`].
    ///
    /// # Errors
    /// [`AuthError`]: 401 for a missing or invalid token, 400 for a malformed header, 403
    /// when no scope covers the type or the token has no patient.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        resource_type: &str,
    ) -> Result<Grant, AuthError> {
        self.authorize_interaction(headers, resource_type, Interaction::Any)
            .await
    }

    /// Like [`Smart::authorize`], checking a specific interaction (`r` for read, `s` for search).
    ///
    /// # Errors
    /// As [`Smart::authorize`].
    pub async fn authorize_interaction(
        &self,
        headers: &HeaderMap,
        resource_type: &str,
        interaction: Interaction,
    ) -> Result<Grant, AuthError> {
        if is_public_resource(resource_type) {
            return Ok(Grant::anonymous());
        }
        let token = bearer(headers)?;
        let grant = self.inner.validator.validate(token).await?;
        let ok = match interaction {
            Interaction::Read => grant.can_read(resource_type),
            Interaction::Search => grant.can_search(resource_type),
            Interaction::Any => grant.can_read(resource_type) || grant.can_search(resource_type),
        };
        if !ok {
            let t = if scopes::is_resource_type(resource_type) {
                resource_type
            } else {
                "*"
            };
            let (action, letters) = match interaction {
                Interaction::Read => ("read", "r"),
                Interaction::Search => ("search", "s"),
                Interaction::Any => ("read", "rs"),
            };
            return Err(AuthError::InsufficientScope {
                action,
                resource_type: t.to_owned(),
                scope: format!("patient/{t}.{letters}"),
                v1_scope: format!("patient/{t}.read"),
            });
        }
        if grant.patients.is_empty() {
            return Err(AuthError::NoPatientContext);
        }
        Ok(grant)
    }

    /// Validates a bearer token without a scope check (e.g. for `$everything`, which checks
    /// each type itself).
    ///
    /// # Errors
    /// 401/400 as [`Smart::authorize`].
    pub async fn validate(&self, headers: &HeaderMap) -> Result<Grant, AuthError> {
        let token = bearer(headers)?;
        self.inner.validator.validate(token).await
    }

    /// Signs an access token with the embedded key, for `fhirlake token --patient ID`.
    /// `scopes` is space-separated and must contain a `patient/` scope.
    ///
    /// # Errors
    /// [`SmartError::NotEmbedded`] with an external issuer; [`SmartError::InvalidArgument`]
    /// for a bad patient id or scope list; a signing failure.
    pub fn mint(&self, patient: &str, scopes: &str, client_id: &str) -> Result<String, SmartError> {
        let e = self
            .inner
            .embedded
            .as_ref()
            .ok_or(SmartError::NotEmbedded)?;
        let (patient, scopes) = server::mint_args(patient, scopes)?;
        let gid = format!("cli-{}", keys::random_token(12));
        e.access_token(&gid, client_id, None, None, &[patient], &scopes)
    }

    /// Rotates the embedded signing key (old public keys stay in the JWKS while tokens they
    /// signed may live). Returns the new `kid`.
    ///
    /// # Errors
    /// [`SmartError::NotEmbedded`] with an external issuer; the key file cannot be written.
    pub fn rotate_signing_key(&self) -> Result<String, SmartError> {
        let e = self
            .inner
            .embedded
            .as_ref()
            .ok_or(SmartError::NotEmbedded)?;
        e.keys.rotate()
    }

    /// How many times the JWKS was (re)loaded; for tests and metrics.
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner.validator.jwks.fetch_count()
    }
}

/// Refuses plain HTTP except to loopback (test IdPs).
fn require_secure(u: &str) -> Result<(), SmartError> {
    let parsed = url::Url::parse(u).map_err(|e| SmartError::Discovery {
        url: u.to_owned(),
        message: e.to_string(),
    })?;
    let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback) {
        Ok(())
    } else {
        Err(SmartError::Discovery {
            url: u.to_owned(),
            message: "must use https".into(),
        })
    }
}

/// CORS for browser apps: any origin, no credentials (tokens travel in `Authorization`),
/// GET/POST/OPTIONS, request headers Authorization, Content-Type, Accept, Prefer and the
/// conditional-read ones (If-None-Match, If-Modified-Since); exposes
/// `Location`, `ETag`, `Content-Location` and `WWW-Authenticate`.
pub fn cors_layer() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            HeaderName::from_static("authorization"),
            HeaderName::from_static("content-type"),
            HeaderName::from_static("accept"),
            HeaderName::from_static("prefer"),
            HeaderName::from_static("if-none-match"),
            HeaderName::from_static("if-modified-since"),
        ])
        .expose_headers([
            HeaderName::from_static("location"),
            HeaderName::from_static("etag"),
            HeaderName::from_static("content-location"),
            HeaderName::from_static("www-authenticate"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}
