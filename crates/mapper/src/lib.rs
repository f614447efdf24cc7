//! Source records to FHIR R4 resources.
//!
//! `mapper` owns the FHIR side of ingest: C4BB 2.1.0 and PDex formulary resource builders,
//! code tables from `mappings/`, the search-parameter registry (what each resource is indexed
//! by), and the lake: the Parquet schema, the writer and the atomic snapshot publish.
//! It knows nothing of HTTP.

pub mod resource;

pub use resource::Resource;
