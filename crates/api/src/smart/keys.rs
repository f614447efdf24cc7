//! The embedded authorization server's signing keys: ES256 (P-256) key pairs generated on
//! first start, persisted in the state directory, rotatable. The newest key signs; older
//! public keys stay in the JWKS for [`RETIRED_KEY_TTL`] so tokens they signed keep working.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::SmartError;

/// How long a replaced key's public half stays published: longer than any token it signed.
pub const RETIRED_KEY_TTL: i64 = 24 * 3600;

const FILE_NAME: &str = "signing-keys.json";

#[derive(Serialize, Deserialize, Clone)]
struct StoredKey {
    kid: String,
    alg: String,
    /// PKCS#8 DER, base64.
    pkcs8: String,
    /// Unix seconds.
    created: i64,
    /// Unix seconds when a newer key replaced it.
    #[serde(default)]
    retired: Option<i64>,
}

#[derive(Serialize, Deserialize, Default)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

struct LoadedKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

/// The persisted key set. Cheap to read; rotation and reload take the write lock briefly.
pub(crate) struct KeyStore {
    path: PathBuf,
    keys: RwLock<Vec<LoadedKey>>,
}

impl KeyStore {
    /// Opens `state_dir/signing-keys.json`, generating a first key if there is none.
    pub(crate) fn open(state_dir: &Path) -> Result<Self, SmartError> {
        std::fs::create_dir_all(state_dir).map_err(|source| SmartError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
        let store = KeyStore {
            path: state_dir.join(FILE_NAME),
            keys: RwLock::new(Vec::new()),
        };
        let mut file = store.read_file()?;
        if file.keys.is_empty() {
            file.keys.push(generate()?);
            store.write_file(&file)?;
        }
        store.install(&file)?;
        Ok(store)
    }

    /// Re-reads the key file (another process may have rotated it).
    pub(crate) fn reload(&self) -> Result<(), SmartError> {
        let file = self.read_file()?;
        if !file.keys.is_empty() {
            self.install(&file)?;
        }
        Ok(())
    }

    /// Generates a new signing key, retires the current one and drops keys retired longer
    /// than [`RETIRED_KEY_TTL`] ago. Returns the new `kid`.
    pub(crate) fn rotate(&self) -> Result<String, SmartError> {
        let mut file = self.read_file()?;
        let now = now();
        for k in &mut file.keys {
            k.retired.get_or_insert(now);
        }
        file.keys
            .retain(|k| k.retired.is_some_and(|r| now - r < RETIRED_KEY_TTL));
        let key = generate()?;
        let kid = key.kid.clone();
        file.keys.push(key);
        self.write_file(&file)?;
        self.install(&file)?;
        Ok(kid)
    }

    /// The current signing key and its `kid`.
    pub(crate) fn signer(&self) -> (String, EncodingKey) {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let k = keys.last().expect("key store is never empty");
        (k.kid.clone(), k.encoding.clone())
    }

    /// The public JWKS document.
    pub(crate) fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// The public key for `kid`, if published.
    pub(crate) fn decoding_key(&self, kid: &str) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let k = keys.iter().find(|k| k.kid == kid)?;
        DecodingKey::from_ec_components(k.jwk["x"].as_str()?, k.jwk["y"].as_str()?).ok()
    }

    fn install(&self, file: &KeyFile) -> Result<(), SmartError> {
        let mut loaded = Vec::with_capacity(file.keys.len());
        for k in &file.keys {
            if k.alg != "ES256" {
                return Err(SmartError::Crypto(format!(
                    "unsupported signing key alg {}",
                    k.alg
                )));
            }
            let der = STANDARD
                .decode(&k.pkcs8)
                .map_err(|e| SmartError::Crypto(e.to_string()))?;
            let (jwk, _) = public_jwk(&der)?;
            loaded.push(LoadedKey {
                kid: k.kid.clone(),
                encoding: EncodingKey::from_ec_der(&der),
                jwk,
            });
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    fn read_file(&self) -> Result<KeyFile, SmartError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SmartError::Config {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
            Err(source) => Err(SmartError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Writes through a temp file and a rename, owner-readable only.
    fn write_file(&self, file: &KeyFile) -> Result<(), SmartError> {
        let tmp = self.path.with_extension("json.tmp");
        let io = |source| SmartError::Io {
            path: tmp.clone(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        let bytes = serde_json::to_vec_pretty(file).expect("key file serializes");
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(|source| SmartError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn generate() -> Result<StoredKey, SmartError> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| SmartError::Crypto("P-256 key generation failed".into()))?;
    let (_, kid) = public_jwk(doc.as_ref())?;
    Ok(StoredKey {
        kid,
        alg: "ES256".into(),
        pkcs8: STANDARD.encode(doc.as_ref()),
        created: now(),
        retired: None,
    })
}

/// The public JWK of a P-256 PKCS#8 key and its RFC 7638 thumbprint (used as `kid`).
fn public_jwk(pkcs8: &[u8]) -> Result<(Value, String), SmartError> {
    let rng = SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
        .map_err(|_| SmartError::Crypto("stored signing key is not a P-256 PKCS#8 key".into()))?;
    let point = pair.public_key().as_ref();
    let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    let jwk = json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig", "alg": "ES256" });
    Ok((jwk, kid))
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A random URL-safe string of `bytes` random bytes (codes, tokens, ids).
pub(crate) fn random_token(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("system randomness");
    URL_SAFE_NO_PAD.encode(buf)
}

/// SHA-256 of a secret, base64url; how codes and refresh tokens are stored.
pub(crate) fn digest(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_rotates_keeping_old_public_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = KeyStore::open(dir.path()).unwrap();
        let (kid1, _) = a.signer();
        let b = KeyStore::open(dir.path()).unwrap();
        assert_eq!(b.signer().0, kid1, "key survives a restart");
        let kid2 = b.rotate().unwrap();
        assert_ne!(kid1, kid2);
        assert_eq!(b.signer().0, kid2);
        let kids: Vec<_> = b.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, vec![kid1.clone(), kid2.clone()]);
        a.reload().unwrap();
        assert_eq!(
            a.signer().0,
            kid2,
            "reload picks up a rotation by another process"
        );
        assert!(a.decoding_key(&kid1).is_some());
    }
}
