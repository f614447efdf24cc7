//! Source records to FHIR R4 resources.
//!
//! `mapper` owns the FHIR side of ingest: C4BB 2.1.0 and PDex formulary resource builders,
//! code tables from `mappings/`, the search-parameter registry (what each resource is indexed
//! by), and the lake: the Parquet schema, the writer and the atomic snapshot publish.
//! It knows nothing of HTTP.

pub mod c4bb;
pub mod formulary;
pub mod ids;
pub mod jw;
pub mod lake;
pub mod pipeline;
pub mod registry;
pub mod resource;

pub use resource::{Json, Resource, Written};

/// Why a source record could not be mapped to FHIR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A value the target profile requires is absent.
    #[error("missing required value: {0}")]
    Missing(&'static str),
    /// A code the code tables do not know.
    #[error("{field}: unknown code {code:?}")]
    UnknownCode {
        /// The field.
        field: &'static str,
        /// The code.
        code: String,
    },
    /// A value is present but not usable (bad date, bad number, inconsistent record).
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}
