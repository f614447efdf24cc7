//! Configuration of the SMART layer: where tokens come from ([`AuthConfig`]), and the
//! embedded authorization server's registered clients and sandbox members (TOML files).
//!
//! Secrets never appear in clear in these files: member passwords and client secrets are
//! stored as argon2 PHC strings, produced by [`hash_secret`] (the CLI's `hash-secret`).
//!
//! ```toml
//! # clients.toml
//! [[client]]
//! client_id = "growth-chart"            # public client: PKCE S256 required
//! name = "Growth Chart"
//! redirect_uris = ["https://app.example/callback"]   # exact match
//!
//! [[client]]
//! client_id = "claims-viewer"           # confidential: client_secret_basic or _post
//! redirect_uris = ["https://viewer.example/cb"]
//! secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//!
//! # members.toml
//! [[member]]
//! username = "alice"
//! password_hash = "$argon2id$v=19$..."
//! patients = ["123"]                    # fhirUser defaults to Patient/123
//!
//! [[member]]
//! username = "dora"                     # a delegate: the consent page shows a patient picker
//! password_hash = "$argon2id$v=19$..."
//! fhir_user = "RelatedPerson/9"
//! patients = ["456", "789"]
//! patient_labels = { "456" = "Sam", "789" = "Kim" }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use serde::Deserialize;

use super::SmartError;

/// Where access tokens are issued, and how the resource server checks them.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Embedded authorization server or external identity provider.
    pub mode: IssuerMode,
    /// Allowed clock skew for `exp`, `nbf` and `iat`, in seconds (default 60).
    pub leeway_secs: u64,
    /// Minimum time between two JWKS refreshes triggered by an unknown `kid` (default 60 s).
    pub jwks_refresh_min_interval: Duration,
    /// Cached JWKS keys older than this are reloaded on the next token (default 1 h), so a
    /// key withdrawn by the issuer stops being trusted.
    pub jwks_max_age: Duration,
    /// Access token lifetime of the embedded server (default 3600 s).
    pub access_token_ttl: Duration,
}

/// The two ways fhirlake gets its tokens.
#[derive(Debug, Clone)]
pub enum IssuerMode {
    /// fhirlake's own SMART authorization server (sandbox, tests, small deployments).
    Embedded {
        /// Directory holding the signing keys and the revocation list; created if missing.
        state_dir: PathBuf,
        /// TOML file of registered clients (`[[client]]` tables).
        clients_file: PathBuf,
        /// TOML file of sandbox members (`[[member]]` tables).
        members_file: PathBuf,
        /// The FHIR base URL, e.g. `https://api.example.org/fhir`. Tokens carry it as `aud`;
        /// the authorization server lives at `<origin>/auth` and that is the token `iss`.
        base_url: String,
    },
    /// A payer's OpenID Connect provider.
    External {
        /// Issuer URL; its `/.well-known/openid-configuration` names the JWKS.
        issuer: String,
        /// Expected `aud` of access tokens, normally the FHIR base URL.
        audience: String,
        /// Claim naming the patient(s) a token is for: a string or an array of strings,
        /// each a bare id, `Patient/<id>` or an absolute `.../Patient/<id>` URL.
        patient_claim: String,
    },
}

impl AuthConfig {
    /// An embedded-server configuration with default lifetimes.
    pub fn embedded(
        state_dir: impl Into<PathBuf>,
        clients_file: impl Into<PathBuf>,
        members_file: impl Into<PathBuf>,
        base_url: impl Into<String>,
    ) -> Self {
        Self::with_mode(IssuerMode::Embedded {
            state_dir: state_dir.into(),
            clients_file: clients_file.into(),
            members_file: members_file.into(),
            base_url: base_url.into(),
        })
    }

    /// An external-IdP configuration with default lifetimes.
    pub fn external(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        patient_claim: impl Into<String>,
    ) -> Self {
        Self::with_mode(IssuerMode::External {
            issuer: issuer.into(),
            audience: audience.into(),
            patient_claim: patient_claim.into(),
        })
    }

    fn with_mode(mode: IssuerMode) -> Self {
        Self {
            mode,
            leeway_secs: 60,
            jwks_refresh_min_interval: Duration::from_secs(60),
            jwks_max_age: super::jwks::MAX_KEY_AGE,
            access_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// A client application registered with the embedded authorization server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The OAuth `client_id`.
    pub client_id: String,
    /// Name shown on the consent page.
    #[serde(default)]
    pub name: Option<String>,
    /// Redirect URIs, matched exactly (no prefix or pattern matching).
    pub redirect_uris: Vec<String>,
    /// argon2 hash of the client secret; present for confidential clients, absent for public.
    #[serde(default)]
    pub secret_hash: Option<String>,
}

impl ClientConfig {
    /// True when the client authenticates with a secret.
    pub fn is_confidential(&self) -> bool {
        self.secret_hash.is_some()
    }
}

/// A sandbox member account (or a delegate with access to several members).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Login name.
    pub username: String,
    /// argon2 hash of the password.
    pub password_hash: String,
    /// Display name on the login and consent pages.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Patient ids this user may share: their own and those they are a delegate for.
    pub patients: Vec<String>,
    /// The user's own FHIR resource (`fhirUser`), e.g. `Patient/123` or `RelatedPerson/9`.
    /// Defaults to `Patient/<first patient>`.
    #[serde(default)]
    pub fhir_user: Option<String>,
    /// Display labels for the patients on the picker, by patient id.
    #[serde(default)]
    pub patient_labels: HashMap<String, String>,
}

impl MemberConfig {
    /// The `fhirUser` value for this user.
    pub fn fhir_user(&self) -> String {
        self.fhir_user.clone().unwrap_or_else(|| {
            format!(
                "Patient/{}",
                self.patients.first().map(String::as_str).unwrap_or("")
            )
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    client: Vec<ClientConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersFile {
    #[serde(default)]
    member: Vec<MemberConfig>,
}

/// Reads the registered clients.
///
/// # Errors
/// The file cannot be read, is not valid TOML of the expected shape, registers a client twice,
/// or has a client without redirect URI.
pub fn load_clients(path: &Path) -> Result<HashMap<String, ClientConfig>, SmartError> {
    let text = read(path)?;
    let file: ClientsFile = toml::from_str(&text).map_err(|e| SmartError::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for c in file.client {
        if c.redirect_uris.is_empty() {
            return Err(config_err(
                path,
                format!("client {} has no redirect_uris", c.client_id),
            ));
        }
        if let Some(h) = &c.secret_hash {
            PasswordHash::new(h).map_err(|_| {
                config_err(
                    path,
                    format!("client {}: secret_hash is not a PHC string", c.client_id),
                )
            })?;
        }
        let id = c.client_id.clone();
        if out.insert(id.clone(), c).is_some() {
            return Err(config_err(path, format!("client {id} registered twice")));
        }
    }
    Ok(out)
}

/// Reads the sandbox members.
///
/// # Errors
/// The file cannot be read or parsed, a username repeats, or a password hash is malformed.
pub fn load_members(path: &Path) -> Result<HashMap<String, MemberConfig>, SmartError> {
    let text = read(path)?;
    let file: MembersFile = toml::from_str(&text).map_err(|e| SmartError::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for (i, m) in file.member.into_iter().enumerate() {
        // Messages name the entry by position: usernames and patient ids stay out of logs.
        PasswordHash::new(&m.password_hash).map_err(|_| {
            config_err(
                path,
                format!("member #{}: password_hash is not a PHC string", i + 1),
            )
        })?;
        if m.patients.is_empty() {
            return Err(config_err(
                path,
                format!("member #{} has no patients", i + 1),
            ));
        }
        if out.insert(m.username.clone(), m).is_some() {
            return Err(config_err(
                path,
                format!("member #{}: username repeats", i + 1),
            ));
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, SmartError> {
    std::fs::read_to_string(path).map_err(|source| SmartError::Io {
        path: path.to_owned(),
        source,
    })
}

fn config_err(path: &Path, message: String) -> SmartError {
    SmartError::Config {
        path: path.to_owned(),
        message,
    }
}

/// Hashes a password or client secret with argon2id (random salt) into a PHC string for the
/// members or clients file.
///
/// # Errors
/// Only if argon2 rejects its own default parameters, which does not happen in practice.
pub fn hash_secret(secret: &str) -> Result<String, SmartError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| SmartError::Crypto(e.to_string()))
}

/// Checks a secret against a PHC hash in constant time; false on any mismatch or bad hash.
pub fn verify_secret(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}
