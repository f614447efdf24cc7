//! The read-only FHIR REST API and its SMART on FHIR gate.

pub mod smart;
