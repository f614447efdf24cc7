//! Drug-formulary extracts: fhirlake's formulary XML and the CMS QHP machine-readable JSON.
//!
//! This module owns reading formulary sources into [`FormularyDrug`](crate::model::FormularyDrug)
//! and [`FormularyPlan`](crate::model::FormularyPlan) records:
//! - [`FormularyXmlReader`]: the `urn:example:payer:formulary-extract:1` XML extract, streamed
//!   with quick-xml (memory holds one `Drug` element, never the document). It enforces the
//!   co-constraints the XSD header lists but XSD 1.0 cannot express.
//! - [`QhpReader`]: CMS QHP `drugs.json` / `plans.json` (JSON arrays, streamed item by item).
//! - [`sniff_xml`] / [`sniff_qhp`]: recognise both by content; [`extract_kind`] tells a FULL
//!   extract from a DELTA one.
//! - [`generate_extract`]: a deterministic generator of large XML extracts for benchmarks.
//!
//! Source vocabularies are translated here to the codes the model documents (PDex drug-tier and
//! pharmacy-benefit-type codes, plan-net product types); turning records into FHIR is the
//! `mapper` crate's job.
//!
//! The CMS Part D pipe-delimited formulary files are not read here: the generic delimited
//! reader and a mapping file fill the same records.

mod generate;
mod qhp;
mod xml;

pub use generate::generate_extract;
pub use qhp::{sniff_qhp, QhpKind, QhpReader};
pub use xml::{extract_kind, sniff_xml, ExtractKind, FormularyXmlReader, NAMESPACE};

/// QHP / extract drug-tier labels (upper-case, as CMS files write them) and the PDex drug-tier
/// code (`usdf-DrugTierCS`) each stands for.
pub const TIER_LABELS: &[(&str, &str)] = &[
    ("GENERIC", "generic"),
    ("PREFERRED-GENERIC", "preferred-generic"),
    ("NON-PREFERRED-GENERIC", "non-preferred-generic"),
    ("SPECIALTY", "specialty"),
    ("BRAND", "brand"),
    ("PREFERRED-BRAND", "preferred-brand"),
    ("NON-PREFERRED-BRAND", "non-preferred-brand"),
    ("ZERO-COST-SHARE-PREVENTIVE", "zero-cost-share-preventative"),
    (
        "ZERO-COST-SHARE-PREVENTATIVE",
        "zero-cost-share-preventative",
    ),
    ("MEDICAL-SERVICE", "medical-service"),
];

/// Pharmacy types (QHP `pharmacy_type`) that are PDex pharmacy-benefit-type codes once
/// lower-cased.
pub const PHARMACY_TYPES: &[&str] = &[
    "1-MONTH-IN-RETAIL",
    "1-MONTH-OUT-RETAIL",
    "1-MONTH-IN-MAIL",
    "1-MONTH-OUT-MAIL",
    "3-MONTH-IN-RETAIL",
    "3-MONTH-OUT-RETAIL",
    "3-MONTH-IN-MAIL",
    "3-MONTH-OUT-MAIL",
];

/// Copay options valid for a copay (PDex `CopayOptionVS`), upper-case as in QHP files.
pub const COPAY_OPTIONS: &[&str] = &[
    "AFTER-DEDUCTIBLE",
    "BEFORE-DEDUCTIBLE",
    "NO-CHARGE",
    "NO-CHARGE-AFTER-DEDUCTIBLE",
    "CHARGE",
    "COPAY-NOT-APPLICABLE",
    "DEDUCTIBLE-WAIVED",
];

/// Coinsurance options valid for a coinsurance (PDex `CoinsuranceOptionVS`), upper-case.
pub const COINSURANCE_OPTIONS: &[&str] = &[
    "AFTER-DEDUCTIBLE",
    "NO-CHARGE",
    "NO-CHARGE-AFTER-DEDUCTIBLE",
    "CHARGE",
    "COINSURANCE-NOT-APPLICABLE",
    "DEDUCTIBLE-WAIVED",
];

/// The PDex drug-tier code for a source tier label (case-insensitive), if it is one.
pub fn tier_code(label: &str) -> Option<&'static str> {
    let label = label.trim();
    TIER_LABELS
        .iter()
        .find(|(l, _)| l.eq_ignore_ascii_case(label))
        .map(|(_, code)| *code)
}

/// The PDex pharmacy-benefit-type code for a source pharmacy type, if it is one.
pub fn pharmacy_type_code(label: &str) -> Option<String> {
    let label = label.trim();
    PHARMACY_TYPES
        .iter()
        .find(|l| l.eq_ignore_ascii_case(label))
        .map(|l| l.to_ascii_lowercase())
}

/// USPS codes of the states, the District of Columbia and the territories a plan's service
/// area can name.
const US_STATES: [&str; 56] = [
    "AK", "AL", "AR", "AS", "AZ", "CA", "CO", "CT", "DC", "DE", "FL", "GA", "GU", "HI", "IA", "ID",
    "IL", "IN", "KS", "KY", "LA", "MA", "MD", "ME", "MI", "MN", "MO", "MP", "MS", "MT", "NC", "ND",
    "NE", "NH", "NJ", "NM", "NV", "NY", "OH", "OK", "OR", "PA", "PR", "RI", "SC", "SD", "TN", "TX",
    "UT", "VA", "VI", "VT", "WA", "WI", "WV", "WY",
];

/// Whether `code` is the USPS code of a state, DC or a territory.
pub fn is_us_state(code: &str) -> bool {
    US_STATES.contains(&code)
}

/// The state a HIOS plan id was issued in: its sixth and seventh characters (after the
/// five-digit issuer id), when they are a USPS state code.
pub fn hios_state(plan_id: &str) -> Option<&str> {
    plan_id.get(5..7).filter(|s| is_us_state(s))
}

/// Multiply a decimal text by 100 without going through floating point (`0.1` → `10`).
pub(crate) fn rate_to_percent(rate: &str) -> Option<String> {
    let rate = rate.trim();
    let (neg, digits) = match rate.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rate),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut frac = frac.to_string();
    while frac.len() < 2 {
        frac.push('0');
    }
    let (moved, rest) = frac.split_at(2);
    let mut int = format!("{int}{moved}").trim_start_matches('0').to_string();
    if int.is_empty() {
        int.push('0');
    }
    let rest = rest.trim_end_matches('0');
    let mut out = if rest.is_empty() {
        int
    } else {
        format!("{int}.{rest}")
    };
    if neg && out != "0" {
        out.insert(0, '-');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_translate_case_insensitively() {
        assert_eq!(tier_code("preferred-brand"), Some("preferred-brand"));
        assert_eq!(
            tier_code("ZERO-COST-SHARE-PREVENTIVE"),
            Some("zero-cost-share-preventative")
        );
        assert_eq!(tier_code("PREFERRED"), None);
        assert_eq!(
            pharmacy_type_code("3-month-in-mail").as_deref(),
            Some("3-month-in-mail")
        );
        assert_eq!(pharmacy_type_code("RETAIL"), None);
    }

    #[test]
    fn rates_become_percentages_exactly() {
        assert_eq!(rate_to_percent("0.1").as_deref(), Some("10"));
        assert_eq!(rate_to_percent("0.20").as_deref(), Some("20"));
        assert_eq!(rate_to_percent("0.125").as_deref(), Some("12.5"));
        assert_eq!(rate_to_percent("1").as_deref(), Some("100"));
        assert_eq!(rate_to_percent("0.0").as_deref(), Some("0"));
        assert_eq!(rate_to_percent("abc"), None);
    }
}
