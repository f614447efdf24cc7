//! FHIR search over the Parquet lake with DataFusion.
//!
//! `query` owns reading the lake: one long-lived DataFusion `SessionContext` per published
//! snapshot ([`Snapshot`]), FHIR search semantics built as DataFusion `Expr`s from the
//! registry in `mapper::registry` (request text never becomes SQL text), keyset paging with
//! integrity-protected cursors, `_include`, and `Patient/$everything` in phases. It knows
//! nothing of HTTP: the `api` crate turns requests into [`SearchRequest`]s and results into
//! Bundles.

pub mod cursor;
mod direct;
pub mod history;
pub mod params;
pub mod snapshot;

pub use params::{SearchRequest, SortKey};
pub use snapshot::{OpenOptions, Page, Snapshot};

/// Errors of the query layer, split by what the caller does about them.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A search parameter's value is malformed (HTTP 400).
    #[error("invalid value for parameter '{name}': {message}")]
    InvalidParameter {
        /// The parameter.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A parameter that is not supported, reported only under strict handling (HTTP 400).
    #[error("unsupported parameter '{0}'")]
    UnsupportedParameter(String),
    /// A paging cursor that was altered, is from another snapshot or another query (HTTP 400).
    #[error("invalid or expired paging cursor: {0}")]
    InvalidCursor(&'static str),
    /// The resource type is not served (HTTP 404).
    #[error("resource type '{0}' is not supported")]
    UnknownType(String),
    /// The lake could not be opened.
    #[error(transparent)]
    Lake(#[from] mapper::lake::LakeError),
    /// The query engine failed (HTTP 500; details go to the log only).
    #[error("query engine: {0}")]
    Engine(#[from] datafusion::error::DataFusionError),
    /// A stored resource is not valid JSON (HTTP 500).
    #[error("stored resource is not valid JSON: {0}")]
    Corrupt(String),
}
