//! Rejects: records that could not be read or mapped, kept with everything needed to fix them.

use crate::model::Position;

/// The stage at which a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The bytes could not be read as the format (syntax, encoding, envelope).
    Parse,
    /// The record was read but violates the layout's rules (missing key, bad date, …).
    Validate,
    /// The record could not be turned into FHIR.
    Map,
}

impl Stage {
    /// Stable lower-case name, as written to the rejects file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Validate => "validate",
            Self::Map => "map",
        }
    }
}

/// Why a record was rejected: a fixed list, so that reports can be summed and alerted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A delimited row whose field count differs from the header's.
    FieldCount,
    /// A row or element that is not well-formed (quoting, escapes, XML syntax).
    Malformed,
    /// A required value (business key, member id, …) is missing.
    MissingValue,
    /// A date that does not parse with the layout's formats.
    BadDate,
    /// A number that does not parse.
    BadNumber,
    /// A code that the layout's code tables do not know.
    UnknownCode,
    /// Bytes that are not valid in the declared encoding.
    Encoding,
    /// An X12 interchange/group/transaction envelope error (ISA/GS/ST/SE/GE/IEA).
    Envelope,
    /// An X12 segment that is malformed or out of place.
    Segment,
    /// A business rule the schema cannot express (e.g. a quantity limit without its flag).
    Rule,
    /// A record of a kind the layout does not handle.
    Unsupported,
}

impl Reason {
    /// Every reason, in report order.
    pub const ALL: [Reason; 11] = [
        Self::FieldCount,
        Self::Malformed,
        Self::MissingValue,
        Self::BadDate,
        Self::BadNumber,
        Self::UnknownCode,
        Self::Encoding,
        Self::Envelope,
        Self::Segment,
        Self::Rule,
        Self::Unsupported,
    ];

    /// Stable snake_case code, as written to the rejects file and the run report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FieldCount => "field_count",
            Self::Malformed => "malformed",
            Self::MissingValue => "missing_value",
            Self::BadDate => "bad_date",
            Self::BadNumber => "bad_number",
            Self::UnknownCode => "unknown_code",
            Self::Encoding => "encoding",
            Self::Envelope => "envelope",
            Self::Segment => "segment",
            Self::Rule => "rule",
            Self::Unsupported => "unsupported",
        }
    }
}

/// A rejected record.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Where the record is.
    pub position: Position,
    /// When it failed.
    pub stage: Stage,
    /// Why, as a fixed code.
    pub reason: Reason,
    /// Why, for a person.
    pub message: String,
    /// The raw record (row, rows of a claim, X12 segments, XML element), lossy UTF-8.
    pub raw: String,
}

impl Reject {
    /// A reject with the given parts.
    pub fn new(
        position: Position,
        stage: Stage,
        reason: Reason,
        message: impl Into<String>,
        raw: impl Into<String>,
    ) -> Self {
        Self {
            position,
            stage,
            reason,
            message: message.into(),
            raw: raw.into(),
        }
    }
}

/// Something a reader noticed about a file as a whole that is not one record's fault
/// (an X12 control-count mismatch, a formulary trailer count that disagrees). Reported in the
/// run summary; the records themselves are still accepted or rejected one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Where.
    pub position: Position,
    /// What, for a person.
    pub message: String,
}
