//! Public keys for token validation, by `kid`: fetched from an issuer's JWKS URL or read from
//! the embedded key store. A token with an unknown `kid` triggers one refresh, at most once
//! per configured interval, so a key rotation at the issuer works without a restart while a
//! flood of made-up `kid`s cannot turn into a flood of fetches. Keys are also reloaded once
//! they are older than a maximum age (default [`MAX_KEY_AGE`]), so a key the issuer withdrew stops being trusted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::keys::KeyStore;
use super::SmartError;

/// Algorithms fhirlake accepts on access tokens. No `none`, no HMAC, no PSS/EdDSA.
pub const ACCEPTED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Default maximum age of cached keys; older keys are reloaded on the next token.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(3600);

/// A verification key and the algorithms it may be used with.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

pub(crate) enum KeySource {
    Remote { uri: String, http: reqwest::Client },
    Local(Arc<KeyStore>),
}

pub(crate) struct JwksCache {
    source: KeySource,
    keys: RwLock<HashMap<String, VerifyKey>>,
    last_forced: Mutex<Option<Instant>>,
    /// When the keys were last (re)loaded or a reload was last attempted.
    loaded_at: Mutex<Instant>,
    min_interval: Duration,
    max_age: Duration,
    fetches: AtomicU64,
}

impl JwksCache {
    /// Builds the cache and loads the keys once. A failed first load of a remote JWKS is
    /// logged and retried on the first token.
    pub(crate) async fn new(source: KeySource, min_interval: Duration, max_age: Duration) -> Self {
        let cache = JwksCache {
            source,
            keys: RwLock::new(HashMap::new()),
            last_forced: Mutex::new(None),
            loaded_at: Mutex::new(Instant::now()),
            min_interval,
            max_age,
            fetches: AtomicU64::new(0),
        };
        if let Err(e) = cache.refresh().await {
            tracing::warn!(error = %e, "initial JWKS load failed; will retry on demand");
        }
        cache
    }

    /// The key for `kid`, refreshing once (rate-limited) when it is unknown.
    pub(crate) async fn get(&self, kid: &str) -> Option<VerifyKey> {
        if self.claim_periodic_reload() {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "periodic JWKS reload failed; keeping the cached keys");
            }
        }
        if let Some(k) = self.lookup(kid) {
            return Some(k);
        }
        if !self.may_force_refresh() {
            tracing::debug!("unknown kid; JWKS refresh suppressed by rate limit");
            return None;
        }
        tracing::info!("unknown kid; refreshing JWKS");
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "JWKS refresh failed");
        }
        self.lookup(kid)
    }

    /// How many times keys were (re)loaded; for tests and metrics.
    pub(crate) fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn lookup(&self, kid: &str) -> Option<VerifyKey> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    /// True for exactly one caller once the keys are older than the maximum age.
    fn claim_periodic_reload(&self) -> bool {
        let mut at = self.loaded_at.lock().unwrap_or_else(|e| e.into_inner());
        if at.elapsed() < self.max_age {
            return false;
        }
        *at = Instant::now();
        true
    }

    fn may_force_refresh(&self) -> bool {
        let mut last = self.last_forced.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.min_interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    async fn refresh(&self) -> Result<(), SmartError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let doc = match &self.source {
            KeySource::Remote { uri, http } => fetch_json(http, uri).await?,
            KeySource::Local(store) => {
                store.reload()?;
                store.jwks()
            }
        };
        if !doc.get("keys").is_some_and(Value::is_array) {
            return Err(SmartError::Discovery {
                url: "jwks_uri".into(),
                message: "the JWKS has no keys array".into(),
            });
        }
        let parsed = parse_jwks(&doc);
        *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = parsed;
        Ok(())
    }
}

/// GETs a JSON document (discovery, JWKS) with a short timeout.
pub(crate) async fn fetch_json(http: &reqwest::Client, uri: &str) -> Result<Value, SmartError> {
    let fail = |message: String| SmartError::Discovery {
        url: uri.to_owned(),
        message,
    };
    let resp = http
        .get(uri)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    resp.json::<Value>().await.map_err(|e| fail(e.to_string()))
}

/// Turns a JWKS document into verification keys by `kid`. Keys that are not signature keys,
/// have no `kid`, are symmetric (`oct`), RSA under 2048 bits, or on an unsupported curve are
/// skipped, so they can never verify a token.
pub(crate) fn parse_jwks(doc: &Value) -> HashMap<String, VerifyKey> {
    let mut out = HashMap::new();
    let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
        return out;
    };
    for jwk in keys {
        let s = |k: &str| jwk.get(k).and_then(Value::as_str);
        let Some(kid) = s("kid") else { continue };
        if s("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let (key, mut algs) = match (s("kty"), s("crv")) {
            (Some("RSA"), _) => {
                let (Some(n), Some(e)) = (s("n"), s("e")) else {
                    continue;
                };
                let bits = URL_SAFE_NO_PAD
                    .decode(n.trim_end_matches('='))
                    .map(|b| b.len() * 8)
                    .unwrap_or(0);
                if bits < 2048 {
                    continue;
                }
                let Ok(key) = DecodingKey::from_rsa_components(n, e) else {
                    continue;
                };
                (key, vec![Algorithm::RS256, Algorithm::RS384])
            }
            (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
                let (Some(x), Some(y)) = (s("x"), s("y")) else {
                    continue;
                };
                let Ok(key) = DecodingKey::from_ec_components(x, y) else {
                    continue;
                };
                (
                    key,
                    vec![if crv == "P-256" {
                        Algorithm::ES256
                    } else {
                        Algorithm::ES384
                    }],
                )
            }
            _ => continue,
        };
        if let Some(alg) = s("alg") {
            algs.retain(|a| format!("{a:?}") == alg);
        }
        if !algs.is_empty() {
            out.insert(
                kid.to_owned(),
                VerifyKey {
                    key,
                    algorithms: algs,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn symmetric_and_small_keys_are_skipped() {
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AA"},
        ]});
        assert!(parse_jwks(&doc).is_empty());
    }
}
