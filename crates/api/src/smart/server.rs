//! The embedded SMART authorization server (SMART App Launch 2.0, standalone patient launch).
//!
//! Routes, all under `/auth` at the server root (the issuer is `<origin>/auth`):
//!
//! | route | what |
//! |---|---|
//! | `GET/POST /auth/authorize` | authorization request → login page |
//! | `POST /auth/login` | sandbox member sign-in → consent page (+ patient picker) |
//! | `POST /auth/consent` | grant (fewer) scopes → redirect with `code` |
//! | `POST /auth/token` | `authorization_code` (PKCE S256) and `refresh_token` (rotating) |
//! | `POST /auth/revoke` | RFC 7009 revocation of a refresh or access token (the whole grant) |
//! | `GET /auth/jwks` | public signing keys |
//! | `GET /auth/.well-known/openid-configuration` | OIDC discovery |
//!
//! State (pending requests, codes, refresh tokens) lives in memory: a restart ends sessions
//! and refresh tokens but not revocations or keys, which live in the state directory.
//! Codes and refresh tokens are stored only as SHA-256 digests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::config::{hash_secret, verify_secret, ClientConfig, MemberConfig};
use super::discovery::Endpoints;
use super::keys::{digest, now, random_token, KeyStore};
use super::pages::{self, PatientChoice};
use super::scopes::{grantable, Scopes};
use super::validate::{patient_id, RevocationList};
use super::SmartError;

/// Authorization codes live this long (seconds).
pub const CODE_TTL: i64 = 120;
/// A sign-in/consent page stays usable this long (seconds).
pub const PENDING_TTL: i64 = 600;
/// Refresh tokens from `offline_access` live this long (seconds).
pub const OFFLINE_TTL: i64 = 90 * 24 * 3600;
/// Refresh tokens from `online_access` live this long (seconds).
pub const ONLINE_TTL: i64 = 12 * 3600;
const MAX_LOGIN_ATTEMPTS: u32 = 5;
/// At most this many sign-ins in progress (bounds memory against a flood of `/authorize`).
pub const MAX_PENDING: usize = 10_000;

#[derive(Clone)]
struct AuthRequest {
    client_id: String,
    redirect_uri: String,
    state: String,
    scopes: Vec<String>,
    code_challenge: Option<String>,
    nonce: Option<String>,
}

struct Pending {
    req: AuthRequest,
    user: Option<String>,
    attempts: u32,
    expires: i64,
}

struct CodeRecord {
    client_id: String,
    redirect_uri: String,
    code_challenge: Option<String>,
    user: String,
    patients: Vec<String>,
    scopes: String,
    nonce: Option<String>,
    expires: i64,
}

#[derive(Clone)]
struct RefreshRecord {
    gid: String,
    client_id: String,
    user: Option<String>,
    patients: Vec<String>,
    scopes: String,
    expires: i64,
    used: bool,
}

/// The embedded authorization server's state.
pub(crate) struct Embedded {
    pub base_url: String,
    pub endpoints: Endpoints,
    pub keys: Arc<KeyStore>,
    pub revocations: Arc<RevocationList>,
    pub clients: HashMap<String, ClientConfig>,
    pub members: HashMap<String, MemberConfig>,
    pub access_ttl: i64,
    pub leeway: u64,
    pending: Mutex<HashMap<String, Pending>>,
    codes: Mutex<HashMap<String, CodeRecord>>,
    redeemed: Mutex<HashMap<String, (String, i64)>>,
    refresh: Mutex<HashMap<String, RefreshRecord>>,
}

/// What [`Embedded::new`] is built from.
pub(crate) struct Parts {
    pub base_url: String,
    pub endpoints: Endpoints,
    pub keys: Arc<KeyStore>,
    pub revocations: Arc<RevocationList>,
    pub clients: HashMap<String, ClientConfig>,
    pub members: HashMap<String, MemberConfig>,
    pub access_ttl: i64,
    pub leeway: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Form or query parameters, keeping repeats (RFC 6749 forbids repeating most of them).
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(bytes: &[u8]) -> Self {
        Params(url::form_urlencoded::parse(bytes).into_owned().collect())
    }
    /// The single value of `name`; `Err` when repeated.
    fn one(&self, name: &str) -> Result<Option<&str>, String> {
        let mut it = self.0.iter().filter(|(k, _)| k == name);
        let first = it.next().map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
        if it.next().is_some() {
            return Err(format!("parameter {name} is repeated"));
        }
        Ok(first)
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An OAuth error response of the token and revocation endpoints.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    basic_challenge: bool,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        OAuthError {
            status,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        tracing::info!(error = self.error, "OAuth request refused");
        let mut resp = (
            self.status,
            Json(json!({ "error": self.error, "error_description": self.description })),
        )
            .into_response();
        no_store(resp.headers_mut());
        if self.basic_challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="fhirlake""#),
            );
        }
        resp
    }
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Redirects back to the client with `params` added to the redirect URI's query.
fn redirect_to(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    match url::Url::parse(redirect_uri) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in params {
                    q.append_pair(k, v);
                }
            }
            let mut resp = Redirect::to(u.as_str()).into_response();
            no_store(resp.headers_mut());
            resp
        }
        Err(_) => pages::error_page(
            StatusCode::BAD_REQUEST,
            "The registered redirect URI is not a valid URL.",
        ),
    }
}

fn redirect_error(
    req_redirect: &str,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Response {
    let mut p = vec![("error", error), ("error_description", description)];
    if let Some(s) = state {
        p.push(("state", s));
    }
    redirect_to(req_redirect, &p)
}

fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_secret("fhirlake-timing-equaliser").unwrap_or_default())
}

/// Verifies a secret off the async runtime (argon2 is deliberately slow).
async fn verify_blocking(secret: String, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let found = phc.is_some();
        let ok = verify_secret(&secret, phc.as_deref().unwrap_or(dummy_hash()));
        found && ok
    })
    .await
    .unwrap_or(false)
}

impl Embedded {
    pub(crate) fn new(p: Parts) -> Self {
        Embedded {
            base_url: p.base_url,
            endpoints: p.endpoints,
            keys: p.keys,
            revocations: p.revocations,
            clients: p.clients,
            members: p.members,
            access_ttl: p.access_ttl,
            leeway: p.leeway,
            pending: Mutex::new(HashMap::new()),
            codes: Mutex::new(HashMap::new()),
            redeemed: Mutex::new(HashMap::new()),
            refresh: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/auth/authorize", get(authorize_get).post(authorize_post))
            .route("/auth/login", post(login))
            .route("/auth/consent", post(consent))
            .route("/auth/token", post(token).layer(super::cors_layer()))
            .route("/auth/revoke", post(revoke).layer(super::cors_layer()))
            .route("/auth/jwks", get(jwks).layer(super::cors_layer()))
            .route(
                "/auth/.well-known/openid-configuration",
                get(openid_configuration).layer(super::cors_layer()),
            )
            .with_state(self)
    }

    /// Signs an access token for a grant.
    pub(crate) fn access_token(
        &self,
        gid: &str,
        client_id: &str,
        user: Option<&str>,
        fhir_user: Option<&str>,
        patients: &[String],
        scopes: &str,
    ) -> Result<String, SmartError> {
        let t = now();
        let mut claims = json!({
            "iss": self.endpoints.issuer,
            "aud": self.base_url,
            "client_id": client_id,
            "scope": scopes,
            "patient": patients.first(),
            "patients": patients,
            "jti": random_token(16),
            "gid": gid,
            "iat": t,
            "nbf": t,
            "exp": t + self.access_ttl,
        });
        if let Some(u) = user {
            claims["sub"] = json!(u);
        }
        if let Some(f) = fhir_user {
            claims["fhirUser"] = json!(f);
        }
        self.sign(&claims, "at+jwt")
    }

    fn sign(&self, claims: &Value, typ: &str) -> Result<String, SmartError> {
        let (kid, key) = self.keys.signer();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid);
        header.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&header, claims, &key).map_err(|e| SmartError::Crypto(e.to_string()))
    }

    fn revoke_grant(&self, gid: &str) {
        self.revocations
            .revoke(gid, now() + self.access_ttl + self.leeway as i64 + 60);
        lock(&self.refresh).retain(|_, r| r.gid != gid);
    }

    fn client_name<'a>(&'a self, c: &'a ClientConfig) -> &'a str {
        c.name.as_deref().unwrap_or(&c.client_id)
    }

    /// Issues the token response for a new or refreshed grant.
    #[allow(clippy::too_many_arguments)]
    fn token_response(
        &self,
        gid: &str,
        client_id: &str,
        user: Option<&str>,
        patients: &[String],
        scopes: &str,
        nonce: Option<&str>,
        refresh: Option<(i64, &str)>,
        with_id_token: bool,
    ) -> Result<Response, OAuthError> {
        let member = user.and_then(|u| self.members.get(u));
        let fhir_user = member.map(MemberConfig::fhir_user);
        let granted = Scopes::parse(scopes);
        let at = self
            .access_token(gid, client_id, user, fhir_user.as_deref(), patients, scopes)
            .map_err(|_| OAuthError::new("server_error", "could not sign the token"))?;
        let mut body = json!({
            "access_token": at,
            "token_type": "Bearer",
            "expires_in": self.access_ttl,
            "scope": scopes,
            "need_patient_banner": true,
        });
        if let Some(p) = patients.first() {
            body["patient"] = json!(p);
        }
        if with_id_token && granted.contains("openid") {
            if let Some(u) = user {
                let t = now();
                let mut idc = json!({
                    "iss": self.endpoints.issuer, "sub": u, "aud": client_id,
                    "iat": t, "exp": t + self.access_ttl, "auth_time": t,
                });
                if granted.contains("fhirUser") {
                    if let Some(f) = &fhir_user {
                        idc["fhirUser"] = json!(f);
                    }
                }
                if let Some(n) = nonce {
                    idc["nonce"] = json!(n);
                }
                let id = self
                    .sign(&idc, "JWT")
                    .map_err(|_| OAuthError::new("server_error", "could not sign the token"))?;
                body["id_token"] = json!(id);
            }
        }
        // A rotated refresh token keeps the scope of the one it replaces (RFC 6749 §6), even
        // when this access token was narrowed.
        if let Some((exp, refresh_scopes)) = refresh {
            let rt = random_token(32);
            let mut store = lock(&self.refresh);
            let t = now();
            store.retain(|_, r| r.expires > t);
            store.insert(
                digest(&rt),
                RefreshRecord {
                    gid: gid.to_owned(),
                    client_id: client_id.to_owned(),
                    user: user.map(str::to_owned),
                    patients: patients.to_vec(),
                    scopes: refresh_scopes.to_owned(),
                    expires: exp,
                    used: false,
                },
            );
            body["refresh_token"] = json!(rt);
        }
        let mut resp = Json(body).into_response();
        no_store(resp.headers_mut());
        Ok(resp)
    }

    /// Client authentication at the token and revocation endpoints. Returns the client, or
    /// `None` when the request names no client at all.
    async fn authenticate_client(
        &self,
        headers: &HeaderMap,
        p: &Params,
    ) -> Result<Option<&ClientConfig>, OAuthError> {
        let bad = |e: String| OAuthError::new("invalid_request", e);
        let basic = match headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            Some(v) if v.len() > 6 && v[..6].eq_ignore_ascii_case("basic ") => {
                let raw = STANDARD
                    .decode(v[6..].trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        OAuthError::new("invalid_client", "malformed Basic credentials")
                    })?;
                let (id, secret) = raw.split_once(':').ok_or_else(|| {
                    OAuthError::new("invalid_client", "malformed Basic credentials")
                })?;
                Some((form_decode(id), form_decode(secret)))
            }
            _ => None,
        };
        let body_id = p.one("client_id").map_err(bad)?;
        let body_secret = p.one("client_secret").map_err(bad)?;
        if basic.is_some() && body_secret.is_some() {
            return Err(OAuthError::new(
                "invalid_request",
                "use one client authentication method",
            ));
        }
        let (client_id, secret, used_basic) = match (&basic, body_id) {
            (Some((id, s)), b) => {
                if b.is_some_and(|b| b != id) {
                    return Err(OAuthError::new(
                        "invalid_request",
                        "client_id does not match the credentials",
                    ));
                }
                (id.clone(), Some(s.clone()), true)
            }
            (None, Some(id)) => (id.to_owned(), body_secret.map(str::to_owned), false),
            (None, None) => {
                if body_secret.is_some() {
                    return Err(OAuthError::new(
                        "invalid_request",
                        "client_secret without client_id",
                    ));
                }
                return Ok(None);
            }
        };
        let fail = || {
            let mut e = OAuthError::new("invalid_client", "client authentication failed");
            e.basic_challenge = used_basic;
            e
        };
        let Some(client) = self.clients.get(&client_id) else {
            let _ = verify_blocking(secret.unwrap_or_default(), None).await;
            return Err(fail());
        };
        match (&client.secret_hash, secret) {
            (Some(h), Some(s)) => {
                if verify_blocking(s, Some(h.clone())).await {
                    Ok(Some(client))
                } else {
                    Err(fail())
                }
            }
            (Some(_), None) => Err(fail()),
            (None, Some(_)) => Err(fail()),
            (None, None) => Ok(Some(client)),
        }
    }
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn jwks(State(s): State<Arc<Embedded>>) -> Response {
    Json(s.keys.jwks()).into_response()
}

async fn openid_configuration(State(s): State<Arc<Embedded>>) -> Response {
    Json(s.endpoints.openid_configuration()).into_response()
}

async fn authorize_get(State(s): State<Arc<Embedded>>, RawQuery(q): RawQuery) -> Response {
    start_authorization(&s, Params::parse(q.unwrap_or_default().as_bytes()))
}

async fn authorize_post(State(s): State<Arc<Embedded>>, body: Bytes) -> Response {
    start_authorization(&s, Params::parse(&body))
}

fn start_authorization(s: &Embedded, p: Params) -> Response {
    let page_err = |m: &str| pages::error_page(StatusCode::BAD_REQUEST, m);
    // Until client and redirect URI are known good, errors are shown, never redirected.
    let client_id = match p.one("client_id") {
        Ok(Some(c)) => c,
        _ => return page_err("The request has no (or more than one) client_id."),
    };
    let Some(client) = s.clients.get(client_id) else {
        return page_err("This application is not registered with this server.");
    };
    let redirect_uri = match p.one("redirect_uri") {
        Ok(Some(r)) => r,
        _ => return page_err("The request has no (or more than one) redirect_uri."),
    };
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        return page_err("The redirect_uri is not registered for this application.");
    }
    let state = p.one("state").ok().flatten();
    let err = |e: &str, d: &str| redirect_error(redirect_uri, state, e, d);
    for name in [
        "response_type",
        "scope",
        "state",
        "aud",
        "code_challenge",
        "code_challenge_method",
        "nonce",
    ] {
        if p.one(name).is_err() {
            return err("invalid_request", &format!("parameter {name} is repeated"));
        }
    }
    if p.one("response_type").ok().flatten() != Some("code") {
        return err(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    let Some(state) = state else {
        return err("invalid_request", "state is required");
    };
    let aud = p.one("aud").ok().flatten().unwrap_or_default();
    if aud.trim_end_matches('/') != s.base_url.trim_end_matches('/') {
        return err("invalid_request", "aud must be this server's FHIR base URL");
    }
    let challenge = p.one("code_challenge").ok().flatten();
    let method = p.one("code_challenge_method").ok().flatten();
    match (challenge, method) {
        (Some(c), Some("S256")) => {
            if c.len() != 43
                || !c
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                return err(
                    "invalid_request",
                    "code_challenge must be a base64url SHA-256 digest",
                );
            }
        }
        (Some(_), _) => return err("invalid_request", "code_challenge_method must be S256"),
        (None, Some(_)) => {
            return err(
                "invalid_request",
                "code_challenge_method without code_challenge",
            )
        }
        (None, None) if !client.is_confidential() => {
            return err(
                "invalid_request",
                "PKCE (code_challenge with S256) is required for public clients",
            )
        }
        (None, None) => {}
    }
    let requested = Scopes::parse(p.one("scope").ok().flatten().unwrap_or_default());
    let scopes: Vec<String> = requested
        .iter()
        .filter(|s| grantable(s))
        .map(str::to_owned)
        .collect();
    if scopes.is_empty() {
        return err(
            "invalid_scope",
            "none of the requested scopes can be granted",
        );
    }
    let req = AuthRequest {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        state: state.to_owned(),
        scopes,
        code_challenge: challenge.map(str::to_owned),
        nonce: p.one("nonce").ok().flatten().map(str::to_owned),
    };
    let id = random_token(24);
    let t = now();
    {
        let mut pend = lock(&s.pending);
        pend.retain(|_, v| v.expires > t);
        if pend.len() >= MAX_PENDING {
            return pages::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sign-ins in progress. Try again shortly.",
            );
        }
        pend.insert(
            id.clone(),
            Pending {
                req,
                user: None,
                attempts: 0,
                expires: t + PENDING_TTL,
            },
        );
    }
    pages::login_page(&id, s.client_name(client), None)
}

const EXPIRED: &str =
    "This sign-in request has expired or was already used. Start again from the app.";

async fn login(State(s): State<Arc<Embedded>>, body: Bytes) -> Response {
    let p = Params::parse(&body);
    let (Ok(Some(rid)), Ok(username), Ok(password)) =
        (p.one("request"), p.one("username"), p.one("password"))
    else {
        return pages::error_page(StatusCode::BAD_REQUEST, "Malformed sign-in form.");
    };
    let req = {
        let pend = lock(&s.pending);
        match pend.get(rid) {
            Some(v) if v.expires > now() && v.user.is_none() => v.req.clone(),
            _ => return pages::error_page(StatusCode::BAD_REQUEST, EXPIRED),
        }
    };
    let client_name = s
        .clients
        .get(&req.client_id)
        .map(|c| s.client_name(c).to_owned())
        .unwrap_or_default();
    let member = username.and_then(|u| s.members.get(u));
    let ok = verify_blocking(
        password.unwrap_or_default().to_owned(),
        member.map(|m| m.password_hash.clone()),
    )
    .await;
    let Some(member) = member.filter(|_| ok) else {
        let mut pend = lock(&s.pending);
        let gone = match pend.get_mut(rid) {
            Some(v) => {
                v.attempts += 1;
                v.attempts >= MAX_LOGIN_ATTEMPTS
            }
            None => true,
        };
        if gone {
            pend.remove(rid);
            return pages::error_page(
                StatusCode::UNAUTHORIZED,
                "Too many failed sign-in attempts. Start again from the app.",
            );
        }
        return pages::login_page(
            rid,
            &client_name,
            Some("Unknown username or wrong password."),
        );
    };
    // A fresh id for the consent step: the login page's id stops working.
    let new_id = random_token(24);
    {
        let mut pend = lock(&s.pending);
        if pend.remove(rid).is_none() {
            return pages::error_page(StatusCode::BAD_REQUEST, EXPIRED);
        }
        pend.insert(
            new_id.clone(),
            Pending {
                req: req.clone(),
                user: Some(member.username.clone()),
                attempts: 0,
                expires: now() + PENDING_TTL,
            },
        );
    }
    consent_page_for(&new_id, &client_name, member, &req.scopes, None)
}

fn consent_page_for(
    id: &str,
    client_name: &str,
    m: &MemberConfig,
    scopes: &[String],
    error: Option<&str>,
) -> Response {
    let choices: Vec<PatientChoice> = m
        .patients
        .iter()
        .map(|p| PatientChoice {
            id: p.clone(),
            label: m
                .patient_labels
                .get(p)
                .cloned()
                .unwrap_or_else(|| format!("Patient {p}")),
        })
        .collect();
    let name = m.display_name.as_deref().unwrap_or(&m.username);
    pages::consent_page(id, client_name, name, scopes, &choices, error)
}

async fn consent(State(s): State<Arc<Embedded>>, body: Bytes) -> Response {
    let p = Params::parse(&body);
    let Ok(Some(rid)) = p.one("request") else {
        return pages::error_page(StatusCode::BAD_REQUEST, "Malformed consent form.");
    };
    let Some(pending) = lock(&s.pending).remove(rid).filter(|v| v.expires > now()) else {
        return pages::error_page(StatusCode::BAD_REQUEST, EXPIRED);
    };
    let Some(member) = pending.user.as_deref().and_then(|u| s.members.get(u)) else {
        return pages::error_page(StatusCode::BAD_REQUEST, EXPIRED);
    };
    let req = pending.req;
    if p.one("decision").ok().flatten() != Some("allow") {
        return redirect_error(
            &req.redirect_uri,
            Some(&req.state),
            "access_denied",
            "the user denied the request",
        );
    }
    let ticked = p.all("scope");
    let granted: Vec<&str> = req
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| ticked.contains(s))
        .collect();
    let picked = p.all("patient");
    let patients: Vec<String> = member
        .patients
        .iter()
        .filter(|id| picked.contains(&id.as_str()))
        .cloned()
        .collect();
    if patients.is_empty() || granted.is_empty() {
        let client_name = s
            .clients
            .get(&req.client_id)
            .map(|c| s.client_name(c).to_owned())
            .unwrap_or_default();
        let new_id = random_token(24);
        let msg = if patients.is_empty() {
            "Choose at least one member."
        } else {
            "Grant at least one permission, or deny."
        };
        let resp = consent_page_for(&new_id, &client_name, member, &req.scopes, Some(msg));
        lock(&s.pending).insert(
            new_id,
            Pending {
                req,
                user: pending.user,
                attempts: 0,
                expires: now() + PENDING_TTL,
            },
        );
        return resp;
    }
    let code = random_token(32);
    let t = now();
    {
        let mut codes = lock(&s.codes);
        codes.retain(|_, c| c.expires > t);
        codes.insert(
            digest(&code),
            CodeRecord {
                client_id: req.client_id.clone(),
                redirect_uri: req.redirect_uri.clone(),
                code_challenge: req.code_challenge.clone(),
                user: member.username.clone(),
                patients,
                scopes: granted.join(" "),
                nonce: req.nonce.clone(),
                expires: t + CODE_TTL,
            },
        );
    }
    redirect_to(&req.redirect_uri, &[("code", &code), ("state", &req.state)])
}

async fn token(State(s): State<Arc<Embedded>>, headers: HeaderMap, body: Bytes) -> Response {
    match token_inner(&s, &headers, Params::parse(&body)).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn token_inner(s: &Embedded, headers: &HeaderMap, p: Params) -> Result<Response, OAuthError> {
    let bad = |e: String| OAuthError::new("invalid_request", e);
    let client = s.authenticate_client(headers, &p).await?;
    match p.one("grant_type").map_err(bad)? {
        Some("authorization_code") => {
            let Some(client) = client else {
                return Err(OAuthError::new("invalid_request", "client_id is required"));
            };
            let code = p
                .one("code")
                .map_err(bad)?
                .ok_or_else(|| bad("code is required".into()))?;
            let key = digest(code);
            // Any redemption attempt consumes the code.
            let rec = lock(&s.codes).remove(&key);
            let Some(rec) = rec else {
                // A replayed code revokes what it produced (RFC 6749 §4.1.2).
                let prior = lock(&s.redeemed).get(&key).map(|(g, _)| g.clone());
                if let Some(gid) = prior {
                    s.revoke_grant(&gid);
                }
                return Err(OAuthError::new(
                    "invalid_grant",
                    "the code is invalid, expired or already used",
                ));
            };
            if rec.expires <= now() {
                return Err(OAuthError::new(
                    "invalid_grant",
                    "the code is invalid, expired or already used",
                ));
            }
            if rec.client_id != client.client_id {
                return Err(OAuthError::new(
                    "invalid_grant",
                    "the code was issued to another client",
                ));
            }
            if p.one("redirect_uri").map_err(bad)? != Some(rec.redirect_uri.as_str()) {
                return Err(OAuthError::new(
                    "invalid_grant",
                    "redirect_uri does not match the authorization request",
                ));
            }
            let verifier = p.one("code_verifier").map_err(bad)?;
            match (&rec.code_challenge, verifier) {
                (Some(ch), Some(v)) => {
                    let ok_len = (43..=128).contains(&v.len());
                    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes()));
                    if !ok_len || !ring_eq(computed.as_bytes(), ch.as_bytes()) {
                        return Err(OAuthError::new(
                            "invalid_grant",
                            "code_verifier does not match code_challenge",
                        ));
                    }
                }
                (Some(_), None) => {
                    return Err(OAuthError::new(
                        "invalid_grant",
                        "code_verifier is required",
                    ))
                }
                (None, Some(_)) => {
                    return Err(OAuthError::new(
                        "invalid_grant",
                        "no code_challenge was sent",
                    ))
                }
                (None, None) => {}
            }
            let gid = random_token(16);
            {
                let mut red = lock(&s.redeemed);
                let t = now();
                red.retain(|_, (_, exp)| *exp > t);
                red.insert(key, (gid.clone(), t + 3600));
            }
            let scopes = Scopes::parse(&rec.scopes);
            let refresh_expires = if scopes.contains("offline_access") {
                Some(now() + OFFLINE_TTL)
            } else if scopes.contains("online_access") {
                Some(now() + ONLINE_TTL)
            } else {
                None
            };
            tracing::info!(client = %client.client_id, "authorization code redeemed");
            s.token_response(
                &gid,
                &client.client_id,
                Some(&rec.user),
                &rec.patients,
                &rec.scopes,
                rec.nonce.as_deref(),
                refresh_expires.map(|e| (e, rec.scopes.as_str())),
                true,
            )
        }
        Some("refresh_token") => {
            let rt = p
                .one("refresh_token")
                .map_err(bad)?
                .ok_or_else(|| bad("refresh_token is required".into()))?;
            let key = digest(rt);
            let asked = p.one("scope").map_err(bad)?.map(Scopes::parse);
            let invalid = || {
                OAuthError::new(
                    "invalid_grant",
                    "the refresh token is invalid, expired or revoked",
                )
            };
            let rec = {
                let mut store = lock(&s.refresh);
                let Some(rec) = store.get_mut(&key) else {
                    return Err(invalid());
                };
                let snapshot = rec.clone();
                if !snapshot.used && snapshot.expires > now() {
                    // Only the right client may use it; check before consuming.
                    let owner = s.clients.get(&snapshot.client_id);
                    let owner_confidential = owner.is_some_and(ClientConfig::is_confidential);
                    match client {
                        Some(c) if c.client_id != snapshot.client_id => return Err(invalid()),
                        None if owner_confidential => {
                            return Err(OAuthError::new(
                                "invalid_client",
                                "client authentication required",
                            ))
                        }
                        _ => {}
                    }
                    // A refresh may narrow the scope, never widen it; a refused request
                    // does not consume the token.
                    if let Some(a) = &asked {
                        let had = Scopes::parse(&snapshot.scopes);
                        if a.is_empty() || a.iter().any(|x| !had.contains(x)) {
                            return Err(OAuthError::new(
                                "invalid_scope",
                                "a refresh cannot add scopes",
                            ));
                        }
                    }
                    rec.used = true;
                }
                snapshot
            };
            if rec.used {
                tracing::warn!("refresh token reuse detected; revoking the grant");
                s.revoke_grant(&rec.gid);
                return Err(invalid());
            }
            if rec.expires <= now() || s.revocations.is_revoked(&rec.gid) {
                return Err(invalid());
            }
            let scopes = asked.map_or_else(|| rec.scopes.clone(), |a| a.to_string());
            s.token_response(
                &rec.gid,
                &rec.client_id,
                rec.user.as_deref(),
                &rec.patients,
                &scopes,
                None,
                Some((rec.expires, rec.scopes.as_str())),
                false,
            )
        }
        Some(_) => Err(OAuthError::new(
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        )),
        None => Err(bad("grant_type is required".into())),
    }
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 7009: revokes the grant behind a refresh or access token. Answers 200 for unknown
/// tokens too, so it reveals nothing.
async fn revoke(State(s): State<Arc<Embedded>>, headers: HeaderMap, body: Bytes) -> Response {
    let p = Params::parse(&body);
    let client = match s.authenticate_client(&headers, &p).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let token = match p.one("token") {
        Ok(Some(t)) => t,
        _ => return OAuthError::new("invalid_request", "token is required").into_response(),
    };
    let allowed = |owner: &str| match client {
        Some(c) => c.client_id == owner,
        None => !s
            .clients
            .get(owner)
            .is_some_and(ClientConfig::is_confidential),
    };
    let refresh = lock(&s.refresh)
        .get(&digest(token))
        .map(|r| (r.gid.clone(), r.client_id.clone()));
    let target = match refresh {
        Some(found) => Some(found),
        None => access_token_grant(&s, token),
    };
    if let Some((gid, owner)) = target {
        if allowed(&owner) {
            s.revoke_grant(&gid);
            tracing::info!("grant revoked");
        }
    }
    let mut resp = StatusCode::OK.into_response();
    no_store(resp.headers_mut());
    resp
}

/// The (grant id, client id) of an access token this server signed, expired or not.
fn access_token_grant(s: &Embedded, token: &str) -> Option<(String, String)> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let key = s.keys.decoding_key(header.kid.as_deref()?)?;
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.validate_aud = false;
    v.set_issuer(&[&s.endpoints.issuer]);
    v.required_spec_claims.clear();
    let c = jsonwebtoken::decode::<Value>(token, &key, &v).ok()?.claims;
    Some((
        c["gid"].as_str()?.to_owned(),
        c["client_id"].as_str()?.to_owned(),
    ))
}

/// For `mint`: checks the patient id and scopes of a CLI-issued token.
pub(crate) fn mint_args(patient: &str, scopes: &str) -> Result<(String, String), SmartError> {
    let id = patient_id(patient)
        .ok_or_else(|| SmartError::InvalidArgument("patient id is not a FHIR id".into()))?;
    let sc = Scopes::parse(scopes);
    if !sc.has_patient_scope() {
        return Err(SmartError::InvalidArgument(
            "scopes name no patient/ resource scope".into(),
        ));
    }
    Ok((id.to_owned(), sc.to_string()))
}
