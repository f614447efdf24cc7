//! The canonical source records every reader produces.
//!
//! A reader (delimited, X12 837, formulary XML, …) turns its format into these plain structs;
//! the mapper turns them into FHIR. Nothing here is FHIR: values are the source's own codes,
//! normalised only where the format is not the point (dates as ISO `YYYY-MM-DD`, decimals as
//! their source text, code translations already applied by the layout's mapping file).
//!
//! Codes that name a category of the target model (amount categories such as `submitted` or
//! `paidtoprovider`, care-team roles, supporting-info kinds) are carried as strings chosen by
//! the mapping file or the reader, so that a new category needs no new Rust.

use std::sync::Arc;

/// The text of a record's fields: codes, ids, dates, amounts and names are short, so a string
/// of up to 24 bytes is stored inline (no heap allocation); longer ones spill to the heap.
/// It dereferences to `str` and converts from `&str` and `String`.
pub type Text = compact_str::CompactString;

/// The check digit of an NPI whose first nine digits are `base`: the Luhn algorithm over the
/// number with the `80840` prefix. `None` when `base` is not nine ASCII digits.
pub fn npi_check_digit(base: &str) -> Option<u8> {
    let b = base.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // 24 is what the doubled-and-summed digits of the 80840 prefix contribute; counting from
    // the check digit, every second digit is doubled, i.e. the base's 1st, 3rd, … 9th.
    let mut sum = 24;
    for (i, &d) in b.iter().enumerate() {
        let d = u32::from(d - b'0');
        sum += match (i % 2 == 0, 2 * d) {
            (true, twice) if twice > 9 => twice - 9,
            (true, twice) => twice,
            (false, _) => d,
        };
    }
    Some(b'0' + ((10 - sum % 10) % 10) as u8)
}

/// Whether `value` is a well-formed NPI: ten digits, the last the check digit of the first nine
/// (the rule US Core's `us-core-16` and `us-core-17` enforce).
pub fn is_valid_npi(value: &str) -> bool {
    value.len() == 10
        && value.is_char_boundary(9)
        && npi_check_digit(&value[..9]) == Some(value.as_bytes()[9])
}

/// Where a record came from: enough for an operator to find the bytes again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// The source file, as given on the command line.
    pub file: Arc<str>,
    /// 1-based line number of the record's first line (delimited and XML sources).
    pub line: u64,
    /// 0-based byte offset of the record's first byte in the file.
    pub byte_offset: u64,
    /// 1-based X12 segment number within the file, for X12 sources.
    pub segment: Option<u64>,
    /// The X12 loop (e.g. `2300`) or XML element path the record was in.
    pub context: Option<Text>,
}

/// What the source says should happen to the record's business key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Change {
    /// A new record, or a newer version of an existing one (RIF INSERT/UPDATE, 837 frequency 1).
    #[default]
    Upsert,
    /// A replacement of an earlier version (837 frequency 7).
    Replace,
    /// The earlier version is voided/cancelled (837 frequency 8): kept, marked cancelled.
    Cancel,
    /// The record must be removed (formulary DEL).
    Delete,
}

/// One record, ready for the mapper.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceRecord {
    /// A member with their coverages.
    Member(Box<Member>),
    /// A claim of any kind, with its lines.
    Claim(Box<Claim>),
    /// One drug on one formulary (formulary extracts).
    FormularyDrug(Box<FormularyDrug>),
    /// A plan and the formulary it uses (formulary extracts).
    FormularyPlan(Box<FormularyPlan>),
}

/// An identifier with a short, mapping-defined kind (`member`, `mbi`, `hicn`, `npi`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident {
    /// The identifier kind, as named in the mapping (the mapper turns it into a system URI).
    pub kind: Text,
    /// The identifier's value.
    pub value: Text,
}

/// A member (beneficiary, subscriber or dependent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Member {
    /// The payer's stable member key (the business key of the Patient).
    pub member_id: Text,
    /// Further identifiers (MBI, HICN, subscriber id, …).
    pub identifiers: Vec<Ident>,
    /// Family name.
    pub family: Option<Text>,
    /// Given names, in order.
    pub given: Vec<Text>,
    /// Administrative gender, already translated to `male`, `female`, `other` or `unknown`.
    pub gender: Option<Text>,
    /// Birth date, ISO `YYYY-MM-DD`.
    pub birth_date: Option<Text>,
    /// Death date, ISO `YYYY-MM-DD`.
    pub death_date: Option<Text>,
    /// Address lines.
    pub address_lines: Vec<Text>,
    /// City.
    pub city: Option<Text>,
    /// State or province code.
    pub state: Option<Text>,
    /// Postal code.
    pub postal_code: Option<Text>,
    /// Coverages the member holds.
    pub coverages: Vec<CoverageSpan>,
    /// What to do with the record.
    pub change: Change,
    /// Where it came from.
    pub position: Position,
}

/// One coverage held by a member (e.g. Medicare Part A, a commercial medical plan).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CoverageSpan {
    /// Short key unique within the member (e.g. `part-a`); part of the Coverage's business key.
    pub key: Text,
    /// Coverage type code (e.g. the X12 insurance type or a payer plan type).
    pub type_code: Option<Text>,
    /// Human-readable type, e.g. `Medicare Part A`.
    pub type_display: Option<Text>,
    /// Subscriber id on the card.
    pub subscriber_id: Option<Text>,
    /// Relationship of the member to the subscriber (`self`, `spouse`, `child`, …).
    pub relationship: Option<Text>,
    /// Group number / id.
    pub group: Option<Text>,
    /// Group name.
    pub group_name: Option<Text>,
    /// Plan id.
    pub plan: Option<Text>,
    /// Plan name.
    pub plan_name: Option<Text>,
    /// Start of the coverage period, ISO date.
    pub start: Option<Text>,
    /// End of the coverage period, ISO date.
    pub end: Option<Text>,
    /// `active` or `cancelled` (translated by the mapping).
    pub status: Option<Text>,
    /// The payer (insurer) of this coverage.
    pub payer: Party,
}

/// An organization or person that a record names (payer, provider).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Party {
    /// Identifier of the party: an NPI for providers, a payer id for payers.
    pub id: Option<Text>,
    /// The kind of `id` (`npi`, `payerid`, `tax`, `cms-provider-number`, …).
    pub id_kind: Option<Text>,
    /// Name (organization name, or `Family, Given` of a person).
    pub name: Option<Text>,
    /// Whether the party is a person (Practitioner) rather than an organization.
    pub person: bool,
    /// Tax id, if given.
    pub tax_id: Option<Text>,
    /// Address lines.
    pub address_lines: Vec<Text>,
    /// City.
    pub city: Option<Text>,
    /// State.
    pub state: Option<Text>,
    /// Postal code.
    pub postal_code: Option<Text>,
}

/// The kind of claim, which picks the C4BB EOB profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClaimKind {
    /// Professional / non-clinician (carrier, 837P).
    Professional,
    /// Inpatient institutional (837I inpatient type of bill, RIF inpatient).
    Inpatient,
    /// Outpatient institutional.
    Outpatient,
    /// Pharmacy (PDE, NCPDP-like).
    Pharmacy,
}

impl ClaimKind {
    /// Parse the lower-case name used in mapping files.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "professional" => Self::Professional,
            "inpatient" => Self::Inpatient,
            "outpatient" => Self::Outpatient,
            "pharmacy" => Self::Pharmacy,
            _ => return None,
        })
    }

    /// The lower-case name used in mapping files and resource ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Professional => "professional",
            Self::Inpatient => "inpatient",
            Self::Outpatient => "outpatient",
            Self::Pharmacy => "pharmacy",
        }
    }
}

/// A claim of any kind with its lines.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claim {
    /// The claim kind; `None` only while a reader is still assembling it.
    pub kind: Option<ClaimKind>,
    /// The payer's claim id (the business key together with `kind`).
    pub claim_id: Text,
    /// The member the claim is for (links to `Member::member_id`).
    pub member_id: Text,
    /// Key of the member's coverage the claim was paid under (`CoverageSpan::key`).
    pub coverage_key: Option<Text>,
    /// Identifiers of the member as they appear on the claim (subscriber id, …).
    pub member_identifiers: Vec<Ident>,
    /// The member as described by the claim itself (837 subscriber/patient loops).
    pub member: Option<Box<Member>>,
    /// Further claim identifiers (e.g. a patient account number, a payer claim control number).
    pub identifiers: Vec<Ident>,
    /// What the record does to an earlier version of the claim.
    pub change: Change,
    /// The source's own claim type code (e.g. NCH claim type `71`), if any.
    pub type_code: Option<Text>,
    /// Institutional type of bill (facility type + classification + frequency), e.g. `111`.
    pub type_of_bill: Option<Text>,
    /// First date of service, ISO.
    pub from: Option<Text>,
    /// Last date of service, ISO.
    pub thru: Option<Text>,
    /// The date the claim was created/processed, ISO.
    pub created: Option<Text>,
    /// The date the payer received the claim, ISO.
    pub received: Option<Text>,
    /// The payer paying the claim.
    pub payer: Party,
    /// Billing provider.
    pub billing: Option<Party>,
    /// Service facility.
    pub facility: Option<Party>,
    /// Care team: C4BB care-team role code (`rendering`, `attending`, …) and the provider.
    pub care_team: Vec<(Text, Party)>,
    /// Diagnoses in order.
    pub diagnoses: Vec<Diagnosis>,
    /// Procedures in order.
    pub procedures: Vec<Procedure>,
    /// Claim-level supporting information: C4BB supporting-info code and its value.
    pub supporting: Vec<Supporting>,
    /// Claim-level amounts (C4BB/HL7 adjudication category code and decimal text).
    pub amounts: Vec<Amount>,
    /// Claim-level adjustments (CAS group, reason, amount).
    pub adjustments: Vec<Adjustment>,
    /// Whether the source carries payer adjudication (picks the C4BB profile vs its `-Basis`).
    pub adjudicated: bool,
    /// Payer benefit payment status code (`paid`, `denied`, `partiallypaid`), if known.
    pub payment_status: Option<Text>,
    /// Network status of the billing provider (`innetwork`, `outofnetwork`), if known.
    pub network_status: Option<Text>,
    /// The lines.
    pub lines: Vec<ClaimLine>,
    /// Where the claim (its first record) came from.
    pub position: Position,
}

/// A diagnosis on a claim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnosis {
    /// The code, without the dot (as claims carry it).
    pub code: Text,
    /// ICD revision: `10` or `9`.
    pub icd_version: u8,
    /// Diagnosis type code (`principal`, `admitting`, `secondary`, `externalcauseofinjury`, `patientreasonforvisit`, `other`).
    pub kind: Text,
    /// Present-on-admission indicator (`Y`, `N`, `U`, `W`, `1`).
    pub poa: Option<Text>,
}

/// A procedure on a claim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Procedure {
    /// ICD-10-PCS (or ICD-9 volume 3) code.
    pub code: Text,
    /// ICD revision: `10` or `9`.
    pub icd_version: u8,
    /// `principal` or `other`.
    pub kind: Text,
    /// Date performed, ISO.
    pub date: Option<Text>,
}

/// A supporting-information entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Supporting {
    /// C4BB supporting-info type code (`dayssupply`, `typeofbill`, `admissionperiod`, …).
    pub category: Text,
    /// The value: a code, a number, or for periods `start/end` (ISO dates).
    pub value: Text,
}

/// An amount with its adjudication category.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Amount {
    /// Category code (HL7 adjudication or C4BB adjudication: `submitted`, `paidtoprovider`, …).
    pub category: Text,
    /// The decimal as text (kept exact).
    pub value: Text,
}

/// A claim adjustment (X12 CAS, or an RIF reason code).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Adjustment {
    /// Group code (`CO`, `PR`, `OA`, `PI`, `CR`).
    pub group: Option<Text>,
    /// Reason code (CARC).
    pub reason: Text,
    /// Decimal text, if any.
    pub amount: Option<Text>,
}

/// One claim line (service line, revenue center line, or the drug of a pharmacy claim).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClaimLine {
    /// Line number in the source (1-based).
    pub number: u32,
    /// Procedure / service code (HCPCS/CPT) or, for pharmacy, empty.
    pub service_code: Option<Text>,
    /// Modifiers.
    pub modifiers: Vec<Text>,
    /// Revenue center code (institutional).
    pub revenue_code: Option<Text>,
    /// NDC of a drug.
    pub ndc: Option<Text>,
    /// Quantity (units, days, …) as decimal text.
    pub quantity: Option<Text>,
    /// First date of service, ISO.
    pub from: Option<Text>,
    /// Last date of service, ISO.
    pub thru: Option<Text>,
    /// CMS place-of-service code.
    pub place_of_service: Option<Text>,
    /// Rendering provider of this line.
    pub rendering: Option<Party>,
    /// Diagnosis pointers (1-based indexes into the claim's diagnoses).
    pub diagnosis_pointers: Vec<u32>,
    /// Amounts of the line.
    pub amounts: Vec<Amount>,
    /// Adjustments of the line.
    pub adjustments: Vec<Adjustment>,
    /// Payment status of the line, if known.
    pub payment_status: Option<Text>,
}

/// One drug on one formulary.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FormularyDrug {
    /// The formulary's id (business key part 1).
    pub formulary_id: String,
    /// Formulary name, if the source gives it.
    pub formulary_name: Option<String>,
    /// RxNorm concept id (business key part 2).
    pub rxnorm: String,
    /// Drug name.
    pub drug_name: Option<String>,
    /// NDCs known for the drug.
    pub ndcs: Vec<String>,
    /// Dose form (text or code).
    pub dose_form: Option<String>,
    /// Drug tier code (PDex drug-tier code, e.g. `generic`, `preferred-brand`).
    pub tier: Option<String>,
    /// Pharmacy benefit type (PDex code, e.g. `1-month-in-retail`).
    pub pharmacy_benefit_types: Vec<String>,
    /// Prior authorization required.
    pub prior_auth: Option<bool>,
    /// Step therapy required.
    pub step_therapy: Option<bool>,
    /// Quantity limit applies.
    pub quantity_limit: Option<bool>,
    /// Quantity-limit amount (only when `quantity_limit`).
    pub quantity_limit_amount: Option<String>,
    /// Quantity-limit days (only when `quantity_limit`).
    pub quantity_limit_days: Option<String>,
    /// Quantity-limit type: `DAILY` (amount per day) or `OVER_TIME` (amount per `days`).
    pub quantity_limit_type: Option<String>,
    /// Availability period start, ISO.
    pub effective_start: Option<String>,
    /// Availability period end, ISO.
    pub effective_end: Option<String>,
    /// Formulary version (CMS `FORMULARY_VERSION`).
    pub formulary_version: Option<String>,
    /// Contract (plan) year, `YYYY` (CMS `CONTRACT_YEAR`).
    pub contract_year: Option<String>,
    /// Selected drug of the Medicare Drug Price Negotiation Program (CMS `SELECTED_DRUG_YN`).
    pub selected_drug: Option<bool>,
    /// Excluded from the basic benefit, covered as a supplemental benefit (excluded-drugs file).
    pub excluded_drug: Option<bool>,
    /// Capped benefit (CMS excluded-drugs `CAPPED_BENEFIT_YN`).
    pub capped_benefit: Option<bool>,
    /// Diseases the drug is covered for only (CMS indication-based coverage `DISEASE`).
    pub indications: Vec<String>,
    /// What to do with the record.
    pub change: Change,
    /// Where it came from.
    pub position: Position,
}

/// A plan and the formulary it uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FormularyPlan {
    /// The plan id (business key). Empty when the source lists a formulary that no plan uses
    /// (yet): the record then stands for the formulary alone.
    pub plan_id: String,
    /// Plan name.
    pub plan_name: Option<String>,
    /// Plan type / marketing type.
    pub plan_type: Option<String>,
    /// The formulary's id.
    pub formulary_id: String,
    /// Formulary name.
    pub formulary_name: Option<String>,
    /// The plan's payer (owner).
    pub payer: Party,
    /// Tiers with cost sharing: (tier code, pharmacy type, copay text, coinsurance text).
    pub tiers: Vec<TierCostShare>,
    /// Coverage area (state codes, service area ids).
    pub coverage_areas: Vec<String>,
    /// Period start, ISO.
    pub period_start: Option<String>,
    /// Period end, ISO.
    pub period_end: Option<String>,
    /// Contacts and links of the plan (marketing, summary, formulary pages, e-mail).
    pub contacts: Vec<PlanContact>,
    /// What to do with the record.
    pub change: Change,
    /// Where it came from.
    pub position: Position,
}

/// A contact point of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanContact {
    /// Purpose: `MARKETING`, `SUMMARY`, `FORMULARY` (PDex plan contact types) or `PATINF`.
    pub purpose: String,
    /// `url`, `email` or `phone`.
    pub system: String,
    /// The URL, address or number.
    pub value: String,
}

/// Cost sharing of one drug tier in a plan.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TierCostShare {
    /// PDex drug tier code.
    pub tier: String,
    /// PDex pharmacy benefit type code.
    pub pharmacy_type: Option<String>,
    /// Copay amount as decimal text.
    pub copay: Option<String>,
    /// Copay option code (PDex copay-option).
    pub copay_option: Option<String>,
    /// Coinsurance rate as a percentage, decimal text (`10` for 10 %; readers convert rates).
    pub coinsurance: Option<String>,
    /// Coinsurance option code.
    pub coinsurance_option: Option<String>,
    /// Whether the tier is available by mail order.
    pub mail_order: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_npis_are_told_apart() {
        for bad in [
            "1234567890",
            "123456789",
            "12345678931",
            "PCP2574881",
            "",
            "220008",
        ] {
            assert!(!is_valid_npi(bad), "{bad}");
        }
        assert!(is_valid_npi("1234567893"));
    }
}
