//! A mapped FHIR resource, ready for the lake.

use serde_json::Value;

use crate::registry::IndexLists;

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
    pub json: Json,
    /// Whether the resource was cancelled/deleted by its source (kept for history, see lake).
    pub deleted: bool,
}

/// A resource's JSON: a tree, or compact text written directly by its builder.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// A `serde_json` tree; the lake serializes it and extracts its index values with the
    /// search registry's extractors.
    Tree(Value),
    /// Compact JSON written without a tree (the C4BB builders), with its index values.
    Text(Written),
}

/// Compact JSON text written by a builder, exactly as `serde_json` would serialize the
/// equivalent tree, together with what the lake would otherwise extract from that tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The JSON (no `meta.versionId`/`meta.lastUpdated`).
    pub text: String,
    /// Byte offset of the `}` that closes the non-empty `meta` object.
    pub meta_end: usize,
    /// Index values, a list per search parameter of the resource's type in
    /// [`crate::lake::index_params`] order.
    pub index: IndexLists,
}

impl Json {
    /// The tree, for resources built as one (formulary resources).
    pub fn as_tree(&self) -> Option<&Value> {
        match self {
            Self::Tree(v) => Some(v),
            Self::Text(_) => None,
        }
    }

    /// The JSON as a tree (parsed back from the text for written resources; for tests and
    /// callers off the hot path).
    pub fn to_value(&self) -> Value {
        match self {
            Self::Tree(v) => v.clone(),
            Self::Text(w) => serde_json::from_str(&w.text).unwrap_or(Value::Null),
        }
    }
}
