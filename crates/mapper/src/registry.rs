//! The search-parameter registry: every FHIR search parameter fhirlake supports, declared once.
//!
//! Each entry says which resource type it belongs to, its code and FHIR type, the lake column
//! that holds its index values, and how to extract those values from a resource's JSON.
//! The lake writer uses `extract` to fill the columns; the query crate builds DataFusion
//! expressions from `kind` and `column`; the CapabilityStatement lists exactly these entries.

use serde_json::Value;

/// FHIR search parameter types supported by the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// token: `[system]|[code]` pairs.
    Token,
    /// string: case- and accent-insensitive starts-with, `:exact`, `:contains`.
    String,
    /// date: a period `[start, end]` per value.
    Date,
    /// reference: `Type/id`.
    Reference,
}

impl ParamType {
    /// FHIR's name for the type (as in a CapabilityStatement).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::String => "string",
            Self::Date => "date",
            Self::Reference => "reference",
        }
    }
}

/// One value a resource is indexed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexValue {
    /// A token; `system` is empty when the source has none.
    Token {
        /// Code system URI (or identifier system).
        system: String,
        /// Code (or identifier value).
        code: String,
    },
    /// A string as it appears in the resource.
    String(String),
    /// A reference, always `Type/id`.
    Reference(String),
    /// A date or period, as ISO 8601 text (partial dates allowed); `end` is `None` for an open period.
    Date {
        /// Start (inclusive).
        start: Option<String>,
        /// End (inclusive).
        end: Option<String>,
    },
}

/// A declared search parameter.
#[derive(Debug, Clone, Copy)]
pub struct SearchParam {
    /// Resource type it applies to.
    pub resource: &'static str,
    /// The parameter code as used in URLs (e.g. `service-date`).
    pub code: &'static str,
    /// Its FHIR type.
    pub kind: ParamType,
    /// Canonical URL of its SearchParameter definition.
    pub definition: &'static str,
    /// Resource types a reference parameter may point to (for `_include`).
    pub targets: &'static [&'static str],
    /// Extracts the index values from a resource.
    pub extract: fn(&Value) -> Vec<IndexValue>,
}

impl SearchParam {
    /// The lake column stem for this parameter (`service-date` → `sp_service_date`).
    pub fn column(&self) -> String {
        format!("sp_{}", self.code.replace('-', "_"))
    }
}
