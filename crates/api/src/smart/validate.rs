//! Resource-server side: turn an `Authorization: Bearer <JWT>` header into a [`Grant`].
//!
//! Checks, in order: header shape; JOSE header `alg` ∈ {RS256, RS384, ES256, ES384} (so
//! `none` and HMAC never reach a key); `kid` present and in the issuer's JWKS (one
//! rate-limited refresh on a miss); the signature; then `iss`, `aud`, `exp`, `nbf`, `iat`
//! (with leeway); for tokens of the embedded server, the revocation list by grant id.
//!
//! A token that passed is remembered ([`TokenCache`], keyed by the token text) until it
//! expires, and at most [`TOKEN_CACHE_SECS`], so later requests skip the signature check; its
//! signing key must still be in the JWKS and its grant must not be revoked on every reuse.
//! Refused tokens are never cached.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::RwLock;

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use super::error::{AuthError, TokenRejection};
use super::jwks::{JwksCache, ACCEPTED_ALGORITHMS};
use super::keys::now;
use super::scopes::Scopes;

/// What a valid token allows: who, for which patients, with which scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The client application (`client_id`, else `azp`/`cid`; `anonymous` for public data).
    pub client_id: String,
    /// The user (`fhirUser`, else `sub`), when the token names one.
    pub user: Option<String>,
    /// Patient ids the token may read: one for a member, several for a delegate.
    pub patients: Vec<String>,
    /// The granted scopes.
    pub scopes: Scopes,
}

impl Grant {
    /// The grant for public resources (formulary) requested without a token.
    pub fn anonymous() -> Self {
        Grant {
            client_id: "anonymous".into(),
            user: None,
            patients: Vec::new(),
            scopes: Scopes::default(),
        }
    }

    /// True when the scopes allow reading `resource_type` instances (`r`, v1 `read`).
    pub fn can_read(&self, resource_type: &str) -> bool {
        self.scopes.can_read(resource_type)
    }

    /// True when the scopes allow searching `resource_type` (`s`, v1 `read`).
    pub fn can_search(&self, resource_type: &str) -> bool {
        self.scopes.can_search(resource_type)
    }

    /// True when `patient_id` is one of the token's patients.
    pub fn covers_patient(&self, patient_id: &str) -> bool {
        self.patients.iter().any(|p| p == patient_id)
    }
}

/// Revoked grants of the embedded server (grant id → unix time after which the entry can be
/// forgotten because every token of the grant has expired). Persisted as NDJSON when a path
/// is given, so a restart does not bring revoked access tokens back.
pub(crate) struct RevocationList {
    path: Option<PathBuf>,
    revoked: RwLock<HashMap<String, i64>>,
}

impl RevocationList {
    pub(crate) fn open(path: Option<PathBuf>) -> Self {
        let mut revoked = HashMap::new();
        if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            let t = now();
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    if let (Some(g), Some(u)) = (v["gid"].as_str(), v["until"].as_i64()) {
                        if u > t {
                            revoked.insert(g.to_owned(), u);
                        }
                    }
                }
            }
        }
        RevocationList {
            path,
            revoked: RwLock::new(revoked),
        }
    }

    pub(crate) fn revoke(&self, gid: &str, until: i64) {
        let mut map = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        let t = now();
        map.retain(|_, u| *u > t);
        if map.insert(gid.to_owned(), until).is_none() {
            if let Some(path) = &self.path {
                use std::io::Write;
                let line = format!("{}\n", serde_json::json!({ "gid": gid, "until": until }));
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(line.as_bytes()));
                if let Err(e) = written {
                    tracing::error!(error = %e, "could not persist a revocation");
                }
            }
        }
    }

    pub(crate) fn is_revoked(&self, gid: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(gid)
    }
}

pub(crate) struct Validator {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksCache,
    pub leeway: u64,
    /// Claims naming the patient(s), first present wins.
    pub patient_claims: Vec<String>,
    /// For the embedded issuer: revoked grant ids (tokens must carry `gid`).
    pub revocations: Option<std::sync::Arc<RevocationList>>,
    /// Tokens that passed, by token text.
    pub cache: TokenCache,
}

/// How long a validated token is remembered at most, in seconds.
pub(crate) const TOKEN_CACHE_SECS: i64 = 60;

/// How many validated tokens are remembered at most.
const TOKEN_CACHE_ENTRIES: usize = 4096;

/// What is remembered of a validated token.
#[derive(Clone)]
struct Validated {
    grant: Grant,
    /// Unix time until which it may be reused.
    until: i64,
    /// Its grant id (checked against revocations on every use).
    gid: Option<String>,
    /// Its signing key (which must still be in the JWKS on every use).
    kid: String,
}

/// Validated tokens, by token text.
#[derive(Default)]
pub(crate) struct TokenCache {
    map: RwLock<HashMap<String, Validated>>,
}

impl TokenCache {
    fn get(&self, token: &str, now: i64) -> Option<Validated> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(token).filter(|v| now < v.until).cloned()
    }

    fn put(&self, token: &str, v: Validated, now: i64) {
        let until = v.until;
        if until <= now {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= TOKEN_CACHE_ENTRIES {
            map.retain(|_, v| v.until > now);
            if map.len() >= TOKEN_CACHE_ENTRIES {
                map.clear();
            }
        }
        map.insert(token.to_owned(), v);
    }
}

/// Extracts the bearer token from the headers.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::MissingToken);
    };
    if values.next().is_some() {
        return Err(AuthError::MalformedHeader);
    }
    let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MissingToken);
    }
    let token = token.trim();
    let token68 = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if token.is_empty() || !token.chars().all(token68) {
        return Err(AuthError::MalformedHeader);
    }
    Ok(token)
}

impl Validator {
    /// Validate a token, reusing an earlier validation of the same token while it lasts.
    pub(crate) async fn validate(&self, token: &str) -> Result<Grant, AuthError> {
        let t = now();
        // A remembered token is reused only while its key is still published; otherwise it
        // goes through the full check again (and fails it as the uncached path would).
        if let Some(v) = self.cache.get(token, t) {
            if self.jwks.get(&v.kid).await.is_some() {
                if let (Some(rev), Some(gid)) = (&self.revocations, v.gid.as_deref()) {
                    if rev.is_revoked(gid) {
                        tracing::info!(
                            reason = TokenRejection::Revoked.describe(),
                            "access token refused"
                        );
                        return Err(AuthError::InvalidToken(TokenRejection::Revoked));
                    }
                }
                return Ok(v.grant);
            }
        }
        let (grant, exp, gid, kid) = self.validate_uncached(token).await?;
        let v = Validated {
            grant: grant.clone(),
            until: exp.min(t + TOKEN_CACHE_SECS),
            gid,
            kid,
        };
        self.cache.put(token, v, t);
        Ok(grant)
    }

    /// The full check; returns the grant, the token's `exp` and its grant id.
    async fn validate_uncached(
        &self,
        token: &str,
    ) -> Result<(Grant, i64, Option<String>, String), AuthError> {
        let reject = |r: TokenRejection| {
            tracing::info!(reason = r.describe(), "access token refused");
            AuthError::InvalidToken(r)
        };
        let mut parts = token.split('.');
        let (Some(h), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(reject(TokenRejection::Malformed));
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| reject(TokenRejection::Malformed))?;
        let alg = ACCEPTED_ALGORITHMS
            .iter()
            .copied()
            .find(|a| header["alg"].as_str() == Some(alg_name(*a)))
            .ok_or_else(|| reject(TokenRejection::AlgorithmNotAllowed))?;
        let kid = header["kid"]
            .as_str()
            .ok_or_else(|| reject(TokenRejection::UnknownKey))?;
        let key = self
            .jwks
            .get(kid)
            .await
            .ok_or_else(|| reject(TokenRejection::UnknownKey))?;
        if !key.algorithms.contains(&alg) {
            return Err(reject(TokenRejection::AlgorithmNotAllowed));
        }

        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        let aud = self.audience.trim_end_matches('/');
        v.set_audience(&[aud.to_owned(), format!("{aud}/")]);
        v.required_spec_claims =
            HashSet::from(["exp".to_owned(), "iss".to_owned(), "aud".to_owned()]);
        let claims = jsonwebtoken::decode::<Value>(token, &key.key, &v)
            .map_err(|e| {
                reject(match e.kind() {
                    ErrorKind::ExpiredSignature => TokenRejection::Expired,
                    ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
                    ErrorKind::InvalidIssuer => TokenRejection::WrongIssuer,
                    ErrorKind::InvalidAudience => TokenRejection::WrongAudience,
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_) => TokenRejection::BadSignature,
                    ErrorKind::MissingRequiredClaim(_) => TokenRejection::MissingClaim,
                    ErrorKind::InvalidAlgorithm => TokenRejection::AlgorithmNotAllowed,
                    _ => TokenRejection::Malformed,
                })
            })?
            .claims;
        if claims["iat"]
            .as_i64()
            .is_some_and(|iat| iat > now() + self.leeway as i64)
        {
            return Err(reject(TokenRejection::NotYetValid));
        }
        if let Some(rev) = &self.revocations {
            let gid = claims["gid"]
                .as_str()
                .ok_or_else(|| reject(TokenRejection::MissingClaim))?;
            if rev.is_revoked(gid) {
                return Err(reject(TokenRejection::Revoked));
            }
        }
        let exp = claims["exp"].as_i64().unwrap_or(0);
        let gid = claims["gid"].as_str().map(str::to_owned);
        Ok((self.grant_from_claims(&claims), exp, gid, kid.to_owned()))
    }

    fn grant_from_claims(&self, c: &Value) -> Grant {
        let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
        let client_id = s("client_id")
            .or_else(|| s("azp"))
            .or_else(|| s("cid"))
            .unwrap_or_else(|| "unknown".into());
        let user = s("fhirUser").or_else(|| s("sub"));
        let mut patients: Vec<String> = Vec::new();
        if let Some(v) = self
            .patient_claims
            .iter()
            .find_map(|k| c.get(k.as_str()).filter(|v| !v.is_null()))
        {
            let mut push = |x: &Value| {
                if let Some(id) = x.as_str().and_then(patient_id) {
                    if !patients.iter().any(|p| p == id) {
                        patients.push(id.to_owned());
                    }
                }
            };
            match v {
                Value::Array(a) => a.iter().for_each(&mut push),
                other => push(other),
            }
        }
        let scopes = match c.get("scope").or_else(|| c.get("scp")) {
            Some(Value::String(s)) => Scopes::parse(s),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Scopes::default(),
        };
        Grant {
            client_id,
            user,
            patients,
            scopes,
        }
    }
}

/// The patient id in `123`, `Patient/123` or `https://…/Patient/123`; `None` for references to
/// other resource types or ids that are not FHIR ids.
pub fn patient_id(v: &str) -> Option<&str> {
    let id = match v.rfind('/') {
        None => v,
        Some(i) => {
            let before = &v[..i];
            if before != "Patient" && !before.ends_with("/Patient") {
                return None;
            }
            &v[i + 1..]
        }
    };
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    ok.then_some(id)
}

pub(crate) fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        _ => "unsupported",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_ids_from_claims() {
        assert_eq!(patient_id("123"), Some("123"));
        assert_eq!(patient_id("Patient/abc-1"), Some("abc-1"));
        assert_eq!(patient_id("https://x.org/fhir/Patient/9"), Some("9"));
        assert_eq!(patient_id("RelatedPerson/9"), None);
        assert_eq!(patient_id("Patient/"), None);
        assert_eq!(patient_id("a b"), None);
    }

    #[test]
    fn bearer_header_shapes() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Err(AuthError::MissingToken));
        h.insert(header::AUTHORIZATION, "Basic Zm9vOmJhcg==".parse().unwrap());
        assert_eq!(bearer(&h), Err(AuthError::MissingToken));
        h.insert(header::AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(bearer(&h), Err(AuthError::MalformedHeader));
        h.insert(header::AUTHORIZATION, "Bearer a,b".parse().unwrap());
        assert_eq!(bearer(&h), Err(AuthError::MalformedHeader));
        h.insert(header::AUTHORIZATION, "bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer(&h), Ok("abc.def.ghi"));
    }
}
