//! Errors as FHIR OperationOutcomes with the right HTTP status.
//!
//! A 5xx body says nothing internal; the log carries the detail (never PHI: engine errors are
//! logged by kind, not by their text, which may quote request values).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use query::QueryError;
use serde_json::json;

use crate::smart::AuthError;

/// An API error.
#[derive(Debug)]
pub enum ApiError {
    /// 400 with the FHIR issue code and a message for the client.
    BadRequest(&'static str, String),
    /// 404: unknown type or id (another member's resource reads as absent too).
    NotFound(String),
    /// 410: a resource a later run deleted, while a kept snapshot still holds it.
    Gone(String),
    /// 405: the API is read-only.
    MethodNotAllowed,
    /// 401/403 from the SMART gate.
    Auth(AuthError),
    /// 503: no snapshot is published yet.
    Unavailable,
    /// 500: logged, not described.
    Internal(&'static str),
}

/// The FHIR media type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// An OperationOutcome with one issue.
pub fn outcome(severity: &str, code: &str, text: &str) -> serde_json::Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": text }],
    })
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::InvalidParameter { .. } => ApiError::BadRequest("invalid", e.to_string()),
            QueryError::UnsupportedParameter(_) => {
                ApiError::BadRequest("not-supported", e.to_string())
            }
            QueryError::InvalidCursor(_) => ApiError::BadRequest("invalid", e.to_string()),
            QueryError::UnknownType(t) => {
                ApiError::NotFound(format!("resource type '{t}' is not supported"))
            }
            QueryError::Lake(mapper::lake::LakeError::Empty(_)) => ApiError::Unavailable,
            QueryError::Lake(_) => ApiError::Internal("lake"),
            QueryError::Engine(_) => ApiError::Internal("engine"),
            QueryError::Corrupt(_) => ApiError::Internal("corrupt resource"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Auth(e) => return e.into_response(),
            ApiError::BadRequest(code, msg) => {
                (StatusCode::BAD_REQUEST, outcome("error", code, &msg))
            }
            ApiError::NotFound(msg) => (StatusCode::NOT_FOUND, outcome("error", "not-found", &msg)),
            ApiError::Gone(msg) => (StatusCode::GONE, outcome("error", "deleted", &msg)),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                outcome("error", "not-supported", "this FHIR server is read-only"),
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                outcome("error", "transient", "no data has been published yet"),
            ),
            ApiError::Internal(kind) => {
                tracing::error!(kind, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    outcome("fatal", "exception", "internal server error"),
                )
            }
        };
        let mut r = (status, body.to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(FHIR_JSON),
        );
        if status == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, POST"));
        }
        r
    }
}
