//! Errors: [`SmartError`] for setup and the CLI, [`AuthError`] for a refused request.
//!
//! An `AuthError` knows its HTTP status, its `WWW-Authenticate` challenge (RFC 6750) and a
//! message fit for the client: it may name a resource type or the scope that is missing, but
//! never a patient, a user, or anything from the token.

use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Failure to build or run the SMART layer (configuration, keys, discovery, signing).
#[derive(Debug, thiserror::Error)]
pub enum SmartError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A configuration file is malformed.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a secret or a member's data).
        message: String,
    },
    /// The external issuer's discovery document or JWKS could not be fetched or is unusable.
    #[error("discovery at {url}: {message}")]
    Discovery {
        /// The URL fetched.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Key generation, hashing or signing failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// The operation needs the embedded authorization server (e.g. `mint` with an external IdP).
    #[error("this needs the embedded authorization server")]
    NotEmbedded,
    /// An argument is invalid (e.g. a patient id or scope for `mint`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Why a token was refused. Used in logs (no token content) and in `error_description`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// Not a JWT, or a header/claims part that does not parse.
    Malformed,
    /// `alg` is not one of RS256, RS384, ES256, ES384 (covers `none` and HMAC).
    AlgorithmNotAllowed,
    /// No `kid`, or a `kid` not in the issuer's JWKS even after a refresh.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is in the past.
    Expired,
    /// `nbf` or `iat` is in the future.
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not include the FHIR base URL.
    WrongAudience,
    /// A required claim is missing.
    MissingClaim,
    /// The grant behind the token was revoked.
    Revoked,
}

impl TokenRejection {
    /// Short description for `error_description` and logs.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Malformed => "the access token is malformed",
            Self::AlgorithmNotAllowed => "the access token's signing algorithm is not accepted",
            Self::UnknownKey => "the access token was signed with an unknown key",
            Self::BadSignature => "the access token's signature is invalid",
            Self::Expired => "the access token has expired",
            Self::NotYetValid => "the access token is not yet valid",
            Self::WrongIssuer => "the access token was issued by an unknown issuer",
            Self::WrongAudience => "the access token is not meant for this server",
            Self::MissingClaim => "the access token lacks a required claim",
            Self::Revoked => "the access token has been revoked",
        }
    }
}

/// A refused request to member data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header (401, challenge without error code, RFC 6750 §3.1).
    #[error("authentication required: send an access token as 'Authorization: Bearer <token>'")]
    MissingToken,
    /// The `Authorization` header is not a well-formed bearer credential (400 invalid_request).
    #[error("malformed Authorization header")]
    MalformedHeader,
    /// The token is invalid (401 invalid_token).
    #[error("{}", .0.describe())]
    InvalidToken(TokenRejection),
    /// The token has no scope for the resource type (403 insufficient_scope).
    #[error("the access token has no scope to {action} {resource_type}; it needs {scope} (or the v1 form {v1_scope})")]
    InsufficientScope {
        /// `read` or `search`.
        action: &'static str,
        /// The resource type asked for.
        resource_type: String,
        /// The v2 scope that would grant it, e.g. `patient/Coverage.rs`.
        scope: String,
        /// The v1 equivalent, e.g. `patient/Coverage.read`.
        v1_scope: String,
    },
    /// The token grants patient scopes but names no patient (403).
    #[error("the access token has no patient context")]
    NoPatientContext,
}

impl AuthError {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::MalformedHeader => StatusCode::BAD_REQUEST,
            Self::InsufficientScope { .. } | Self::NoPatientContext => StatusCode::FORBIDDEN,
        }
    }

    /// The RFC 6750 `WWW-Authenticate` challenge.
    pub fn www_authenticate(&self) -> HeaderValue {
        let v = match self {
            Self::MissingToken => r#"Bearer realm="fhirlake""#.to_owned(),
            Self::MalformedHeader => {
                r#"Bearer realm="fhirlake", error="invalid_request", error_description="malformed Authorization header""#.to_owned()
            }
            Self::InvalidToken(r) => format!(
                r#"Bearer realm="fhirlake", error="invalid_token", error_description="{}""#,
                r.describe()
            ),
            Self::InsufficientScope { scope, .. } => format!(
                r#"Bearer realm="fhirlake", error="insufficient_scope", scope="{scope}""#
            ),
            Self::NoPatientContext => {
                r#"Bearer realm="fhirlake", error="insufficient_scope", error_description="no patient context""#.to_owned()
            }
        };
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    /// The FHIR `OperationOutcome.issue.code` for this refusal.
    pub fn issue_code(&self) -> &'static str {
        match self {
            Self::MissingToken | Self::InvalidToken(_) => "login",
            Self::MalformedHeader => "invalid",
            Self::InsufficientScope { .. } | Self::NoPatientContext => "forbidden",
        }
    }

    /// An OperationOutcome describing the refusal.
    pub fn operation_outcome(&self) -> serde_json::Value {
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": self.issue_code(),
                "diagnostics": self.to_string(),
            }]
        })
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.operation_outcome())).into_response();
        let h = resp.headers_mut();
        h.insert(header::WWW_AUTHENTICATE, self.www_authenticate());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json"),
        );
        resp
    }
}
