//! Streaming readers for a payer's extracts.
//!
//! `ingest` owns the formats: delimited files described by mapping files (CMS CCW RIF, plain
//! CSV), X12 837P/837I, and formulary extracts. Every reader streams its input and yields
//! canonical [`model::SourceRecord`]s or [`reject::Reject`]s with the record's position; it
//! never stops at a bad record and never drops one. `ingest` knows nothing of FHIR: turning
//! records into resources is the `mapper` crate's job.

pub mod delimited;
pub mod detect;
pub mod formulary;
pub mod layout;
pub mod model;
pub mod reject;
mod split;
pub mod synth;
pub mod x12;

use std::path::Path;

pub use model::{Position, SourceRecord};
pub use reject::{Notice, Reason, Reject, Stage};

/// One item a reader yields: a record, or the reject that stands for it.
pub type Item = Result<SourceRecord, Reject>;

/// What a reader reports about a whole file once it has read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSummary {
    /// Bytes read.
    pub bytes: u64,
    /// Physical units read below the record level (rows, segments, elements), for throughput.
    pub units: u64,
    /// File-level observations (envelope count mismatches, trailer mismatches).
    pub notices: Vec<Notice>,
}

/// A format reader.
///
/// Invariants every implementation keeps:
/// - it streams: memory does not grow with the file's size (only with one record's size);
/// - every record in the input reaches `emit` exactly once, as `Ok` or as `Err(Reject)` —
///   a bad record never stops the file and is never silently skipped;
/// - it never panics, whatever the bytes.
pub trait Reader {
    /// Read `path`, calling `emit` for each record or reject in file order.
    ///
    /// # Errors
    /// Only when the file as a whole cannot be read (I/O errors); record-level problems are
    /// rejects, not errors.
    fn read(&self, path: &Path, emit: &mut dyn FnMut(Item)) -> Result<FileSummary, Error>;
}

/// Errors that stop a whole file (never a single record's fault).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A mapping file is invalid.
    #[error("mapping {path}: {message}")]
    Mapping {
        /// The mapping file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// No reader recognises the file.
    #[error("{path}: {message}")]
    UnknownFormat {
        /// The file.
        path: String,
        /// Why nothing matched.
        message: String,
    },
}
