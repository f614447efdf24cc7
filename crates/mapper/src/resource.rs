//! A mapped FHIR resource, ready for the lake.

use serde_json::Value;

/// One FHIR resource produced by the mapper.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// FHIR resource type, e.g. `ExplanationOfBenefit`.
    pub resource_type: &'static str,
    /// Logical id, derived from the business key (stable across runs).
    pub id: String,
    /// The member whose compartment this resource is in (`Patient.id`), if any.
    pub patient_id: Option<String>,
    /// The resource as FHIR JSON. `meta.lastUpdated` and `meta.versionId` are set by the lake
    /// writer; everything else (including `meta.profile`) by the mapper.
    pub json: Value,
    /// Whether the resource was cancelled/deleted by its source (kept for history, see lake).
    pub deleted: bool,
}
