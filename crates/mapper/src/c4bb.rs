//! CARIN Blue Button (C4BB) 2.1.0 resources from canonical members and claims.
//!
//! One builder per resource: Patient, Coverage, Organization, Practitioner and the four
//! ExplanationOfBenefit profiles (Professional-NonClinician, Inpatient-Institutional,
//! Outpatient-Institutional, Pharmacy, each with its non-financial `-Basis` parent when the
//! source carries no adjudication). Values the profiles require but the source does not carry
//! are marked with the `data-absent-reason` extension, never invented.
//!
//! Each resource is written as compact JSON straight into a buffer (no `serde_json::Value`
//! tree), byte for byte what serializing the equivalent tree gives, and the builder records
//! the values of the type's search parameters on the way, so that the lake neither parses nor
//! walks the JSON again.

use std::borrow::Cow;
use std::collections::HashMap;

use ingest::model::{Change, Claim, ClaimKind, ClaimLine, CoverageSpan, Member, Party, Text};

use crate::ids::{fhir_id, fhir_id_of, keyed_ref};
use crate::jw::JsonWriter;
use crate::lake::index_params;
use crate::registry::{IndexLists, IndexValue, SearchParam, ADMINISTRATIVE_GENDER};
use crate::resource::{Json, Written};
use crate::{MapError, Resource};

const C4BB: &str = "http://hl7.org/fhir/us/carin-bb";
const VERSION: &str = "2.1.0";
const DAR: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
// The adjudication systems are macros too, so that the codings a claim writes dozens of
// times can be rendered at compile time (`coding_json!`).
macro_rules! cs_adj {
    () => {
        "http://terminology.hl7.org/CodeSystem/adjudication"
    };
}
macro_rules! cs_c4bb_adj {
    () => {
        "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudication"
    };
}
macro_rules! cs_discrim {
    () => {
        "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator"
    };
}
macro_rules! cs_status {
    () => {
        "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBPayerAdjudicationStatus"
    };
}
const CS_ADJ: &str = cs_adj!();
const CS_C4BB_ADJ: &str = cs_c4bb_adj!();
const CS_DISCRIM: &str = cs_discrim!();
const CS_STATUS: &str = cs_status!();
const CS_SUPPORT: &str = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBSupportingInfoType";
const CS_IDTYPE: &str = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBIdentifierType";
const CS_V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// What [`coding`] writes before the code, for a system that is a literal.
macro_rules! coding_head {
    ($system:expr) => {
        concat!("{\"coding\":[{\"system\":\"", $system, "\",\"code\":")
    };
}

/// What [`coding`] writes after the code.
macro_rules! coding_tail {
    () => {
        "}]}"
    };
}

/// What [`coding`] writes for a system and code that are literals (neither needs escaping).
macro_rules! coding_json {
    ($system:expr, $code:literal) => {
        concat!(coding_head!($system), "\"", $code, "\"", coding_tail!())
    };
}

/// What [`money`] writes before the amount's number, and after it.
macro_rules! money_head {
    () => {
        "{\"value\":"
    };
}
macro_rules! money_tail {
    () => {
        ",\"currency\":\"USD\"}"
    };
}

/// Identifier systems by kind, loaded from `mappings/fhir/identifier-systems.toml`.
#[derive(Debug, Clone, Default)]
pub struct Systems {
    systems: HashMap<String, String>,
}

impl Systems {
    /// Parse the systems table.
    ///
    /// # Errors
    /// When the TOML is not a `[systems]` table of strings.
    pub fn parse(text: &str) -> Result<Self, MapError> {
        #[derive(serde::Deserialize)]
        struct File {
            systems: HashMap<String, String>,
        }
        let f: File = toml::from_str(text).map_err(|e| MapError::Invalid {
            field: "identifier-systems",
            message: e.to_string(),
        })?;
        Ok(Self { systems: f.systems })
    }

    /// The system URI of an identifier kind; unknown kinds get a URN of their own.
    pub fn get(&self, kind: &str) -> String {
        self.systems
            .get(kind)
            .cloned()
            .unwrap_or_else(|| format!("urn:fhirlake:identifier:{kind}"))
    }

    /// The system URI of an identifier kind, borrowed when the table has it.
    fn uri<'a>(&'a self, kind: &str) -> Cow<'a, str> {
        match self.systems.get(kind) {
            Some(s) => Cow::Borrowed(s.as_str()),
            None => Cow::Owned(format!("urn:fhirlake:identifier:{kind}")),
        }
    }
}

/// A resource being written: the JSON writer and the index values gathered on the way.
struct Doc {
    w: JsonWriter,
    meta_end: usize,
    /// The type's search parameters, in the order of `index`'s lists.
    params: &'static [&'static SearchParam],
    index: IndexLists,
}

impl Doc {
    /// Open the resource: `{"resourceType":..,"id":..,"meta":{"profile":[..]}`.
    fn new(resource_type: &str, id: &str, profile_name: &str, capacity: usize) -> Self {
        let mut w = JsonWriter::with_capacity(capacity);
        w.open();
        w.kv("resourceType", resource_type);
        w.kv("id", id);
        w.key("meta");
        w.open();
        w.key("profile");
        w.open_array();
        w.str_parts(&[C4BB, "/StructureDefinition/", profile_name, "|", VERSION]);
        w.close_array();
        let meta_end = w.len();
        w.close();
        let params = index_params(resource_type);
        Self {
            w,
            meta_end,
            params,
            // Room for one and a half values a parameter: an ExplanationOfBenefit's (eleven
            // parameters, a claim of two or three lines) without growing, and no more than a
            // few for the side products, whose rows are held and weighed by capacity.
            index: IndexLists::empty(params.len(), params.len() * 3 / 2),
        }
    }

    /// Add index values of a parameter (values of a parameter the type has no column for
    /// are dropped, as the lake would not store them).
    fn index(&mut self, code: &'static str, values: impl IntoIterator<Item = IndexValue>) {
        if let Some(i) = self.params.iter().position(|p| p.code == code) {
            self.index.extend_list(i, values);
        }
    }

    /// Close the resource.
    fn finish(mut self) -> Json {
        self.w.close();
        Json::Text(Written {
            text: self.w.finish(),
            meta_end: self.meta_end,
            index: self.index,
        })
    }
}

fn token(system: &str, code: &str) -> IndexValue {
    IndexValue::Token {
        system: system.into(),
        code: code.into(),
    }
}

/// [`token`] of a system known when compiling, which is kept without copying it.
fn static_token(system: &'static str, code: &str) -> IndexValue {
    IndexValue::Token {
        system: Text::const_new(system),
        code: code.into(),
    }
}

fn date_value(d: &str) -> IndexValue {
    IndexValue::Date {
        start: Some(d.into()),
        end: Some(d.into()),
    }
}

/// `{"coding":[{"system":..,"code":..}]}`.
fn coding(w: &mut JsonWriter, system: &str, code: &str) {
    w.wrapped_pair("coding", ("system", system), ("code", code));
}

/// [`coding`] with its system rendered ahead ([`coding_head!`]): a claim line's codes.
fn coding_at(w: &mut JsonWriter, head: &'static str, code: &str) {
    w.open_with(head);
    w.str(code);
    w.close_with(coding_tail!());
}

/// The data-absent-reason extension: `{"extension":[{"url":DAR,"valueCode":..}]}`.
fn absent(w: &mut JsonWriter, reason: &str) {
    w.wrapped_pair("extension", ("url", DAR), ("valueCode", reason));
}

/// `{"reference":..}`.
fn reference(w: &mut JsonWriter, r: &str) {
    w.open();
    w.kv("reference", r);
    w.close();
}

/// An identifier `{["type":coding,]"system":..,"value":..}`; its token goes to `tokens`.
fn identifier(
    w: &mut JsonWriter,
    ty: Option<(&str, &str)>,
    system: &str,
    value: &str,
    tokens: &mut Vec<IndexValue>,
) {
    w.open();
    if let Some((s, c)) = ty {
        w.key("type");
        coding(w, s, c);
    }
    w.kv("system", system);
    w.kv("value", value);
    w.close();
    tokens.push(token(system, value));
}

fn parse_amount(value: &str) -> Result<f64, MapError> {
    value.parse().map_err(|_| MapError::Invalid {
        field: "amount",
        message: format!("{value:?} is not a decimal"),
    })
}

/// `{"value":..,"currency":"USD"}` of a decimal amount.
fn money(w: &mut JsonWriter, value: &str) -> Result<(), MapError> {
    w.open_with(money_head!());
    amount_value(w, value)?;
    w.close_with(money_tail!());
    Ok(())
}

/// A number: an integer when it is whole (and not huge), else a decimal.
fn number(w: &mut JsonWriter, value: &str, field: &'static str) -> Result<(), MapError> {
    let v: f64 = value.parse().map_err(|_| MapError::Invalid {
        field,
        message: format!("{value:?} is not a number"),
    })?;
    if v.fract() == 0.0 && v.abs() < 1e15 {
        w.int(v as i64);
    } else {
        w.f64(v);
    }
    Ok(())
}

/// What a payer's Organization is keyed by: its payer id, else its name.
fn payer_key(payer: &Party) -> Option<&str> {
    payer.id.as_deref().or(payer.name.as_deref())
}

/// The payer Organization's id for a party (payer id, else its name).
pub fn payer_ref(payer: &Party) -> Option<String> {
    Some(keyed_ref("Organization", "payer", payer_key(payer)?))
}

/// What a provider is filed as: a Practitioner by identifier kind (an NPI unless the source
/// says otherwise) and value for persons, else an Organization by identifier kind and value (or
/// name). `None`: neither can be named.
fn provider_key(p: &Party) -> Option<(&'static str, &str, &str)> {
    if p.person {
        let kind = p.id_kind.as_deref().unwrap_or("npi");
        return Some(("Practitioner", kind, p.id.as_deref()?));
    }
    let key = p.id.as_deref().or(p.name.as_deref())?;
    Some(("Organization", p.id_kind.as_deref().unwrap_or("org"), key))
}

/// A provider's reference, as [`provider_key`] files it.
pub fn provider_ref(p: &Party) -> Option<String> {
    let (rtype, kind, key) = provider_key(p)?;
    Some(keyed_ref(rtype, kind, key))
}

/// The Patient id of a member id.
pub fn patient_id(member_id: &str) -> String {
    fhir_id(member_id)
}

/// The Coverage id of a member's coverage.
pub fn coverage_id(member_id: &str, key: &str) -> String {
    fhir_id_of(&[member_id, "-", key])
}

/// `"name":..` of an Organization, or `"_name"` marked absent.
fn org_name(w: &mut JsonWriter, name: Option<&str>) {
    match name {
        Some(n) => w.kv("name", n),
        None => {
            w.key("_name");
            absent(w, "unknown");
        }
    }
}

/// C4BB Organization for a payer.
pub fn payer_organization(payer: &Party, systems: &Systems) -> Option<Resource> {
    let reference = payer_ref(payer)?;
    let id = reference.trim_start_matches("Organization/").to_string();
    let mut doc = Doc::new("Organization", &id, "C4BB-Organization", 512);
    let w = &mut doc.w;
    w.key("active");
    w.bool(true);
    let mut tokens = Vec::new();
    if let Some(pid) = &payer.id {
        w.key("identifier");
        w.open_array();
        identifier(
            w,
            Some((CS_IDTYPE, "payerid")),
            &systems.uri("payerid"),
            pid,
            &mut tokens,
        );
        w.close_array();
    }
    org_name(w, payer.name.as_deref());
    doc.index("identifier", tokens);
    Some(Resource {
        resource_type: "Organization",
        id,
        patient_id: None,
        json: doc.finish(),
        deleted: false,
    })
}

fn has_address(
    lines: &[Text],
    city: Option<&str>,
    state: Option<&str>,
    postal: Option<&str>,
) -> bool {
    !lines.is_empty() || city.is_some() || state.is_some() || postal.is_some()
}

/// `"address":[{..}]` when any part is present.
fn address(
    w: &mut JsonWriter,
    lines: &[Text],
    city: Option<&str>,
    state: Option<&str>,
    postal: Option<&str>,
) {
    if !has_address(lines, city, state, postal) {
        return;
    }
    w.key("address");
    w.open_array();
    w.open();
    if !lines.is_empty() {
        w.key("line");
        w.str_array(lines);
    }
    if let Some(c) = city {
        w.kv("city", c);
    }
    if let Some(s) = state {
        w.kv("state", s);
    }
    if let Some(p) = postal {
        w.kv("postalCode", p);
    }
    w.close();
    w.close_array();
}

/// C4BB Organization or Practitioner for a provider party.
pub fn provider_resource(p: &Party, systems: &Systems) -> Option<Resource> {
    let reference = provider_ref(p)?;
    let (rtype, id) = reference.split_once('/')?;
    let practitioner = rtype == "Practitioner";
    let mut doc = if practitioner {
        Doc::new("Practitioner", id, "C4BB-Practitioner", 768)
    } else {
        Doc::new("Organization", id, "C4BB-Organization", 768)
    };
    let w = &mut doc.w;
    let has_identifier = p.id.is_some() || p.tax_id.is_some();
    let mut tokens = Vec::new();
    let identifiers = |w: &mut JsonWriter, tokens: &mut Vec<IndexValue>| {
        w.key("identifier");
        w.open_array();
        if let Some(pid) = &p.id {
            let kind = p
                .id_kind
                .as_deref()
                .unwrap_or(if practitioner { "npi" } else { "org" });
            if kind == "npi" {
                identifier(
                    w,
                    Some((CS_V2_0203, "NPI")),
                    &systems.uri("npi"),
                    pid,
                    tokens,
                );
            } else {
                identifier(w, None, &systems.uri(kind), pid, tokens);
            }
        }
        if let Some(tax) = &p.tax_id {
            identifier(
                w,
                Some((CS_V2_0203, "TAX")),
                &systems.uri("tax"),
                tax,
                tokens,
            );
        }
        w.close_array();
    };
    if practitioner {
        identifiers(w, &mut tokens);
        w.key("name");
        w.open_array();
        w.open();
        match p.name.as_deref() {
            Some(n) => {
                let (family, given) = n.split_once(", ").unwrap_or((n, ""));
                w.kv("family", family);
                if !given.is_empty() {
                    w.key("given");
                    w.open_array();
                    for g in given.split(' ').filter(|g| !g.is_empty()) {
                        w.str(g);
                    }
                    w.close_array();
                }
            }
            None => {
                w.key("_family");
                absent(w, "unknown");
            }
        }
        w.close();
        w.close_array();
    } else {
        w.key("active");
        w.bool(true);
        if has_identifier {
            identifiers(w, &mut tokens);
        }
        org_name(w, p.name.as_deref());
    }
    address(
        w,
        &p.address_lines,
        p.city.as_deref(),
        p.state.as_deref(),
        p.postal_code.as_deref(),
    );
    doc.index("identifier", tokens);
    Some(Resource {
        resource_type: if practitioner {
            "Practitioner"
        } else {
            "Organization"
        },
        id: id.to_string(),
        patient_id: None,
        json: doc.finish(),
        deleted: false,
    })
}

/// C4BB Patient, its Coverages and their payers, from a member record.
///
/// # Errors
/// When the member has no id.
pub fn map_member(m: &Member, systems: &Systems) -> Result<Vec<Resource>, MapError> {
    if m.member_id.is_empty() {
        return Err(MapError::Missing("member_id"));
    }
    let pid = patient_id(&m.member_id);
    let mut doc = Doc::new("Patient", &pid, "C4BB-Patient", 1024);
    let w = &mut doc.w;
    let mut tokens = Vec::new();
    w.key("identifier");
    w.open_array();
    let member_system = systems.uri("member");
    identifier(
        w,
        Some((CS_V2_0203, "MB")),
        &member_system,
        &m.member_id,
        &mut tokens,
    );
    for (n, i) in m.identifiers.iter().enumerate() {
        // The type comes after system and value here (it is added to the element last).
        let system = systems.uri(&i.kind);
        // An identifier given twice (an 837's subscriber id is also the member id) is written once.
        let repeated = (system == member_system && i.value == m.member_id)
            || m.identifiers[..n]
                .iter()
                .any(|e| e.value == i.value && systems.uri(&e.kind) == system);
        if repeated {
            continue;
        }
        w.open();
        w.kv("system", &system);
        w.kv("value", &i.value);
        if i.kind == "member" || i.kind == "subscriber" {
            w.key("type");
            coding(w, CS_V2_0203, "MB");
        }
        w.close();
        tokens.push(token(&system, &i.value));
    }
    w.close_array();
    w.key("name");
    w.open_array();
    if m.family.is_none() && m.given.is_empty() {
        absent(w, "unknown");
    } else {
        w.open();
        if let Some(f) = &m.family {
            w.kv("family", f);
        }
        if !m.given.is_empty() {
            w.key("given");
            w.str_array(&m.given);
        }
        w.close();
    }
    w.close_array();
    match &m.gender {
        Some(g) => w.kv("gender", g),
        None => {
            w.key("_gender");
            absent(w, "unknown");
        }
    }
    if let Some(b) = &m.birth_date {
        w.kv("birthDate", b);
    }
    if let Some(d) = &m.death_date {
        w.kv("deceasedDateTime", d);
    }
    address(
        w,
        &m.address_lines,
        m.city.as_deref(),
        m.state.as_deref(),
        m.postal_code.as_deref(),
    );
    doc.index("identifier", tokens);
    let string = |s: &Text| IndexValue::String(s.clone());
    doc.index("name", m.family.iter().chain(&m.given).map(string));
    doc.index("family", m.family.iter().map(string));
    doc.index("given", m.given.iter().map(string));
    let gender = m.gender.as_deref();
    doc.index(
        "gender",
        gender.map(|g| static_token(ADMINISTRATIVE_GENDER, g)),
    );
    doc.index("birthdate", m.birth_date.as_deref().map(date_value));
    let deleted = m.change == Change::Delete;
    let mut out = vec![Resource {
        resource_type: "Patient",
        id: pid.clone(),
        patient_id: Some(pid),
        json: doc.finish(),
        deleted,
    }];
    for c in &m.coverages {
        out.push(map_coverage(m, c, systems)?);
        if let Some(org) = payer_organization(&c.payer, systems) {
            out.push(org);
        }
    }
    Ok(out)
}

fn map_coverage(m: &Member, c: &CoverageSpan, systems: &Systems) -> Result<Resource, MapError> {
    let pid = patient_id(&m.member_id);
    let id = coverage_id(&m.member_id, &c.key);
    let payor = payer_ref(&c.payer).ok_or(MapError::Missing("coverage payer"))?;
    let subscriber_id = c.subscriber_id.as_deref().unwrap_or(&m.member_id);
    let relationship = c.relationship.as_deref().unwrap_or("self");
    let patient_ref = format!("Patient/{pid}");
    let mut doc = Doc::new("Coverage", &id, "C4BB-Coverage", 1536);
    let w = &mut doc.w;
    let mut tokens = Vec::new();
    w.key("identifier");
    w.open_array();
    identifier(
        w,
        Some((CS_V2_0203, "MB")),
        &systems.uri("member"),
        &m.member_id,
        &mut tokens,
    );
    w.close_array();
    w.kv("status", c.status.as_deref().unwrap_or("active"));
    w.kv("subscriberId", subscriber_id);
    w.key("beneficiary");
    reference(w, &patient_ref);
    w.key("relationship");
    coding(
        w,
        "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
        relationship,
    );
    w.key("payor");
    w.open_array();
    reference(w, &payor);
    w.close_array();
    if relationship == "self" {
        w.key("subscriber");
        reference(w, &patient_ref);
    }
    if let Some(t) = &c.type_display {
        w.key("type");
        w.open();
        w.kv("text", t);
        w.close();
    }
    if c.group.is_some() || c.plan.is_some() {
        const CLASS: &str = "http://terminology.hl7.org/CodeSystem/coverage-class";
        w.key("class");
        w.open_array();
        if let Some(g) = &c.group {
            w.open();
            w.key("type");
            coding(w, CLASS, "group");
            w.kv("value", g);
            if let Some(n) = &c.group_name {
                w.kv("name", n);
            }
            w.close();
        }
        if let Some(p) = &c.plan {
            w.open();
            w.key("type");
            coding(w, CLASS, "plan");
            w.kv("value", p);
            if let Some(n) = c.plan_name.as_ref().or(c.type_display.as_ref()) {
                w.kv("name", n);
            }
            w.close();
        }
        w.close_array();
    }
    if c.start.is_some() || c.end.is_some() {
        w.key("period");
        w.open();
        if let Some(s) = &c.start {
            w.kv("start", s);
        }
        if let Some(e) = &c.end {
            w.kv("end", e);
        }
        w.close();
    }
    let patient = IndexValue::Reference(patient_ref.into());
    doc.index("patient", [patient.clone()]);
    doc.index("beneficiary", [patient]);
    doc.index("payor", [IndexValue::Reference(payor.into())]);
    doc.index("identifier", tokens);
    Ok(Resource {
        resource_type: "Coverage",
        id,
        patient_id: Some(pid),
        json: doc.finish(),
        deleted: m.change == Change::Delete,
    })
}

/// The EOB id of a claim (stable: claim kind and claim id).
pub fn eob_id(kind: ClaimKind, claim_id: &str) -> String {
    fhir_id_of(&[kind.as_str(), "-", claim_id])
}

fn profile_name(kind: ClaimKind, adjudicated: bool) -> &'static str {
    match (kind, adjudicated) {
        (ClaimKind::Professional, true) => "C4BB-ExplanationOfBenefit-Professional-NonClinician",
        (ClaimKind::Inpatient, true) => "C4BB-ExplanationOfBenefit-Inpatient-Institutional",
        (ClaimKind::Outpatient, true) => "C4BB-ExplanationOfBenefit-Outpatient-Institutional",
        (ClaimKind::Pharmacy, true) => "C4BB-ExplanationOfBenefit-Pharmacy",
        (ClaimKind::Professional, false) => {
            "C4BB-ExplanationOfBenefit-Professional-NonClinician-Basis"
        }
        (ClaimKind::Inpatient, false) => "C4BB-ExplanationOfBenefit-Inpatient-Institutional-Basis",
        (ClaimKind::Outpatient, false) => {
            "C4BB-ExplanationOfBenefit-Outpatient-Institutional-Basis"
        }
        (ClaimKind::Pharmacy, false) => "C4BB-ExplanationOfBenefit-Pharmacy-Basis",
    }
}

/// What [`amount_adjudication`] writes up to the value, for a category that is a literal.
macro_rules! amount_head {
    ($system:expr, $code:literal) => {
        concat!(
            "{\"category\":",
            coding_json!($system, $code),
            ",\"amount\":",
            money_head!()
        )
    };
}

/// An adjudication amount, `{"category":coding,"amount":Money}`, its value written by
/// `value`. The category is an HL7 adjudication or C4BB adjudication code; those the
/// mappings use are rendered ahead with the text around them (several per claim line).
fn amount_adjudication(
    w: &mut JsonWriter,
    code: &str,
    value: impl FnOnce(&mut JsonWriter) -> Result<(), MapError>,
) -> Result<(), MapError> {
    let head = match code {
        "submitted" => amount_head!(cs_adj!(), "submitted"),
        "copay" => amount_head!(cs_adj!(), "copay"),
        "eligible" => amount_head!(cs_adj!(), "eligible"),
        "deductible" => amount_head!(cs_adj!(), "deductible"),
        "benefit" => amount_head!(cs_adj!(), "benefit"),
        "coinsurance" => amount_head!(cs_c4bb_adj!(), "coinsurance"),
        "noncovered" => amount_head!(cs_c4bb_adj!(), "noncovered"),
        "priorpayerpaid" => amount_head!(cs_c4bb_adj!(), "priorpayerpaid"),
        "paidbypatient" => amount_head!(cs_c4bb_adj!(), "paidbypatient"),
        "paidtopatient" => amount_head!(cs_c4bb_adj!(), "paidtopatient"),
        "paidtoprovider" => amount_head!(cs_c4bb_adj!(), "paidtoprovider"),
        "drugcost" => amount_head!(cs_c4bb_adj!(), "drugcost"),
        _ => {
            w.open();
            w.key("category");
            coding(w, amount_category_system(code), code);
            w.key("amount");
            w.open_with(money_head!());
            value(w)?;
            w.close_with(money_tail!());
            w.close();
            return Ok(());
        }
    };
    w.open_with(head);
    value(w)?;
    w.close_with(concat!(money_tail!(), "}"));
    Ok(())
}

/// Write a decimal amount as a JSON number.
fn amount_value(w: &mut JsonWriter, value: &str) -> Result<(), MapError> {
    if !w.plain_decimal(value) {
        w.f64(parse_amount(value)?);
    }
    Ok(())
}

/// The system of an adjudication amount category.
fn amount_category_system(code: &str) -> &'static str {
    match code {
        "submitted" | "copay" | "eligible" | "deductible" | "benefit" => CS_ADJ,
        _ => CS_C4BB_ADJ,
    }
}

/// The system and code of a diagnosis type for a claim kind.
fn diagnosis_type(kind: ClaimKind, code: &str) -> (&'static str, &'static str) {
    let code = match (kind, code) {
        (_, "principal") => "principal",
        (ClaimKind::Inpatient, "admitting") => "admitting",
        (ClaimKind::Professional, _) => "secondary",
        (ClaimKind::Outpatient, "patientreasonforvisit") => "patientreasonforvisit",
        (_, "externalcauseofinjury") => "externalcauseofinjury",
        _ => "other",
    };
    let system = if matches!(code, "principal" | "admitting") {
        "http://terminology.hl7.org/CodeSystem/ex-diagnosistype"
    } else {
        "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBClaimDiagnosisType"
    };
    (system, code)
}

/// ICD-10-CM / ICD-9-CM codes are written with their dot (claims carry them without).
fn dotted(code: &str, icd9: bool) -> Cow<'_, str> {
    if code.contains('.') {
        return Cow::Borrowed(code);
    }
    let split = if icd9 && code.starts_with('E') { 4 } else { 3 };
    if code.len() > split && code.is_char_boundary(split) {
        Cow::Owned(format!("{}.{}", &code[..split], &code[split..]))
    } else {
        Cow::Borrowed(code)
    }
}

/// The system of a care team role allowed for a claim kind, `None` when not allowed.
fn care_team_role(kind: ClaimKind, role: &str) -> Option<&'static str> {
    let allowed: &[&str] = match kind {
        ClaimKind::Professional => &[
            "rendering",
            "purchasedservice",
            "referring",
            "primary",
            "supervisor",
        ],
        ClaimKind::Pharmacy => &["prescribing", "primary"],
        _ => &[
            "attending",
            "referring",
            "operating",
            "otheroperating",
            "rendering",
            "primary",
        ],
    };
    if !allowed.contains(&role) {
        return None;
    }
    Some(if matches!(role, "primary" | "supervisor") {
        "http://terminology.hl7.org/CodeSystem/claimcareteamrole"
    } else {
        "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBClaimCareTeamRole"
    })
}

/// Write the supporting-info value member for a C4BB supporting-info category.
fn supporting_value(w: &mut JsonWriter, category: &str, value: &str) -> Result<(), MapError> {
    let code_system = match category {
        "admissionperiod" => {
            let (s, e) = value.split_once('/').unwrap_or((value, ""));
            w.key("timingPeriod");
            w.open();
            if !s.is_empty() {
                w.kv("start", s);
            }
            if !e.is_empty() {
                w.kv("end", e);
            }
            w.close();
            return Ok(());
        }
        "clmrecvddate" => {
            w.kv("timingDate", value);
            return Ok(());
        }
        "typeofbill" => "https://www.nubc.org/CodeSystem/TypeOfBill",
        "pointoforigin" => "https://www.nubc.org/CodeSystem/PointOfOrigin",
        "admtype" => "https://www.nubc.org/CodeSystem/PriorityTypeOfAdmitOrVisit",
        "discharge-status" => "https://www.nubc.org/CodeSystem/PatDischargeStatus",
        "drg" => "https://www.cms.gov/Medicare/Medicare-Fee-for-Service-Payment/AcuteInpatientPPS/MS-DRG-Classifications-and-Software",
        "dawcode" => "http://terminology.hl7.org/CodeSystem/NCPDPDispensedAsWrittenOrProductSelectionCode",
        "compoundcode" => "http://terminology.hl7.org/CodeSystem/NCPDPCompoundCode",
        "brandgenericindicator" => "http://terminology.hl7.org/CodeSystem/NCPDPBrandGenericIndicator",
        "rxorigincode" => "http://terminology.hl7.org/CodeSystem/NCPDPPrescriptionOriginCode",
        "dayssupply" | "refillnum" | "refillsauthorized" => {
            w.key("valueQuantity");
            w.open();
            w.key("value");
            number(w, value, "supportingInfo quantity")?;
            w.close();
            return Ok(());
        }
        _ => {
            w.kv("valueString", value);
            return Ok(());
        }
    };
    w.key("code");
    coding(w, code_system, value);
    Ok(())
}

/// Open the `supportingInfo` array before its first element, and count the elements.
fn open_supporting(w: &mut JsonWriter, sequence: &mut usize) {
    if *sequence == 0 {
        w.key("supportingInfo");
        w.open_array();
    }
    *sequence += 1;
}

/// The start of a supporting-info element: `{"sequence":n,"category":coding`.
fn supporting_head(w: &mut JsonWriter, sequence: usize, category: &str) {
    w.open();
    w.key("sequence");
    w.uint(sequence as u64);
    w.key("category");
    coding(w, CS_SUPPORT, category);
}

/// Map a claim to its C4BB ExplanationOfBenefit and the Organizations/Practitioners it
/// references. When the claim carries its member (X12), the Patient and Coverage come too.
///
/// # Errors
/// When the claim lacks what every EOB needs (kind, claim id, member, service start, provider).
pub fn map_claim(c: &Claim, systems: &Systems) -> Result<Vec<Resource>, MapError> {
    map_claim_with(c, systems, &mut |_| true)
}

/// The buffer an EOB's JSON is written into: an estimate of its size from what the claim
/// holds, so that the text is written in one go. A buffer that has to grow copies the
/// document, and the doubled buffer counts against the run's row budget while it is held.
///
/// The bytes per entry come from the EOBs of the sample and generated claims of every layout
/// (a least-squares fit, rounded up): they fill 60 to 87 % of their buffer (RIF carrier and
/// plain CSV claims about 82 %), and `eob_fits_its_first_buffer` checks that none outgrows it.
pub fn eob_capacity(c: &Claim) -> usize {
    let lines = c.lines.len();
    let line_amounts: usize = c.lines.iter().map(|l| l.amounts.len()).sum();
    let line_adjustments: usize = c.lines.iter().map(|l| l.adjustments.len()).sum();
    let modifiers: usize = c.lines.iter().map(|l| l.modifiers.len()).sum();
    // Totals, payment and each line's payment status come with adjudication; without it, the
    // benefit payment status alone (on the header or on each line).
    let adjudication = if c.adjudicated {
        1280 + 768 * lines
    } else {
        256 * (lines + 1)
    };
    1024 + 64 * (c.identifiers.len() + c.amounts.len())
        + 384 * (c.diagnoses.len() + c.care_team.len())
        + 320 * (c.supporting.len() + c.procedures.len())
        + 512 * (c.adjustments.len() + line_adjustments)
        + 192 * lines
        + 160 * (line_amounts + modifiers)
        + adjudication
}

/// Side products a claim is about to yield, and what they are built from: the same input
/// always gives the same resources.
#[derive(Debug, Clone, Copy)]
pub enum Side<'a> {
    /// The payer's Organization.
    Payer(&'a Party),
    /// A provider's Organization or Practitioner (billing, facility, care team).
    Provider(&'a Party),
    /// The member the claim carries (X12): their Patient, Coverages and the Coverages' payer
    /// Organizations.
    Member(&'a Member),
}

impl Side<'_> {
    /// The types of the resources it yields, in order (what `map_claim` would add).
    pub fn resource_types(&self, out: &mut Vec<&'static str>) {
        match self {
            Self::Payer(p) => {
                if payer_key(p).is_some() {
                    out.push("Organization");
                }
            }
            Self::Provider(p) => out.extend(provider_key(p).map(|(rtype, ..)| rtype)),
            Self::Member(m) => {
                out.push("Patient");
                for c in &m.coverages {
                    out.push("Coverage");
                    Self::Payer(&c.payer).resource_types(out);
                }
            }
        }
    }
}

/// [`map_claim`], asking `build` before each side product whether to build it at all. Claims
/// name the same payer, providers and (in X12) members over and over; the ingest pipeline
/// answers `false` for an input it has already built in the run, which gives what building
/// it again and dropping the duplicate would give, without the cost.
///
/// # Errors
/// As [`map_claim`].
pub fn map_claim_with(
    c: &Claim,
    systems: &Systems,
    build: &mut dyn FnMut(Side<'_>) -> bool,
) -> Result<Vec<Resource>, MapError> {
    let kind = c.kind.ok_or(MapError::Missing("claim kind"))?;
    if c.claim_id.is_empty() {
        return Err(MapError::Missing("claim_id"));
    }
    if c.member_id.is_empty() {
        return Err(MapError::Missing("member_id"));
    }
    let start = c
        .from
        .as_deref()
        .or_else(|| c.lines.iter().find_map(|l| l.from.as_deref()))
        .ok_or(MapError::Missing("billablePeriod.start (claim from date)"))?;
    let pid = patient_id(&c.member_id);
    let id = eob_id(kind, &c.claim_id);
    let mut out: Vec<Resource> = Vec::new();

    if let Some(member) = &c.member {
        if build(Side::Member(member)) {
            out.extend(map_member(member, systems)?);
        }
    }
    let insurer = payer_ref(&c.payer).ok_or(MapError::Missing("payer"))?;
    if build(Side::Payer(&c.payer)) {
        out.extend(payer_organization(&c.payer, systems));
    }
    let provider_party = c
        .billing
        .as_ref()
        .or(c.facility.as_ref())
        .ok_or(MapError::Missing("billing provider"))?;
    let provider = provider_ref(provider_party).ok_or(MapError::Missing("billing provider id"))?;
    for p in [c.billing.as_ref(), c.facility.as_ref()]
        .into_iter()
        .flatten()
    {
        if build(Side::Provider(p)) {
            out.extend(provider_resource(p, systems));
        }
    }

    let coverage_key = c.coverage_key.as_deref().or_else(|| {
        c.member
            .as_ref()
            .and_then(|m| m.coverages.first().map(|cv| cv.key.as_str()))
    });
    let coverage = coverage_key
        .map(|k| coverage_id(&c.member_id, k))
        .ok_or(MapError::Missing("coverage (claim's coverage key)"))?;

    let (claim_type, sub_type) = match kind {
        ClaimKind::Professional => ("professional", None),
        ClaimKind::Inpatient => ("institutional", Some("inpatient")),
        ClaimKind::Outpatient => ("institutional", Some("outpatient")),
        ClaimKind::Pharmacy => ("pharmacy", None),
    };
    let billable_end = c.thru.as_deref().or(c.from.as_deref());
    let patient_ref = ["Patient/", &pid].concat();
    let coverage_ref = ["Coverage/", &coverage].concat();

    let mut doc = Doc::new(
        "ExplanationOfBenefit",
        &id,
        profile_name(kind, c.adjudicated),
        eob_capacity(c),
    );
    let w = &mut doc.w;
    let mut identifier_tokens = Vec::with_capacity(1 + c.identifiers.len());
    w.key("identifier");
    w.open_array();
    {
        let system = systems.uri("claim");
        w.open();
        w.key("type");
        coding(w, CS_IDTYPE, "uc");
        w.kv("system", &system);
        let value = [kind.as_str(), "-", &c.claim_id].concat();
        w.kv("value", &value);
        w.close();
        identifier_tokens.push(IndexValue::Token {
            system: system.into(),
            code: value.into(),
        });
    }
    for i in &c.identifiers {
        identifier(
            w,
            None,
            &systems.uri(&i.kind),
            &i.value,
            &mut identifier_tokens,
        );
    }
    w.close_array();
    w.kv(
        "status",
        if c.change == Change::Cancel {
            "cancelled"
        } else {
            "active"
        },
    );
    const CLAIM_TYPE: &str = "http://terminology.hl7.org/CodeSystem/claim-type";
    w.key("type");
    coding(w, CLAIM_TYPE, claim_type);
    w.kv("use", "claim");
    w.key("patient");
    reference(w, &patient_ref);
    w.key("billablePeriod");
    w.open();
    w.kv("start", start);
    if let Some(t) = billable_end {
        w.kv("end", t);
    }
    w.close();
    w.kv(
        "created",
        c.created.as_deref().or(c.thru.as_deref()).unwrap_or(start),
    );
    w.key("insurer");
    reference(w, &insurer);
    w.key("provider");
    reference(w, &provider);
    w.kv("outcome", if c.adjudicated { "complete" } else { "queued" });
    w.key("insurance");
    w.open_array();
    w.open();
    w.key("focal");
    w.bool(true);
    w.key("coverage");
    reference(w, &coverage_ref);
    w.close();
    w.close_array();
    if let Some(s) = sub_type {
        w.key("subType");
        coding(
            w,
            "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBInstitutionalClaimSubType",
            s,
        );
    }

    // Care team: claim-level roles, then each line's rendering provider.
    struct TeamMember<'a> {
        reference: String,
        role: &'a str,
        system: &'static str,
    }
    let mut care_team: Vec<TeamMember<'_>> = Vec::new();
    let mut add_team = |role: &'static str, p: &Party, out: &mut Vec<Resource>| -> Option<u32> {
        let reference = provider_ref(p)?;
        let system = care_team_role(kind, role)?;
        if let Some(i) = care_team
            .iter()
            .position(|m| m.role == role && m.reference == reference)
        {
            return Some(i as u32 + 1);
        }
        care_team.push(TeamMember {
            reference,
            role,
            system,
        });
        if build(Side::Provider(p)) {
            out.extend(provider_resource(p, systems));
        }
        Some(care_team.len() as u32)
    };
    for (role, p) in &c.care_team {
        // Roles are matched against the static list, so the static string can stand in.
        if let Some(r) = static_role(role) {
            add_team(r, p, &mut out);
        }
    }
    let mut line_team: Vec<Option<u32>> = Vec::with_capacity(c.lines.len());
    for l in &c.lines {
        line_team.push(
            l.rendering
                .as_ref()
                .and_then(|p| add_team("rendering", p, &mut out)),
        );
    }
    let w = &mut doc.w;
    let mut team_refs = Vec::with_capacity(care_team.len());
    if !care_team.is_empty() {
        w.key("careTeam");
        w.open_array();
        for (i, m) in care_team.into_iter().enumerate() {
            w.open();
            w.key("sequence");
            w.uint(i as u64 + 1);
            w.key("provider");
            reference(w, &m.reference);
            w.key("role");
            coding(w, m.system, m.role);
            w.close();
            team_refs.push(IndexValue::Reference(m.reference.into()));
        }
        w.close_array();
    }

    // Supporting info (plus the slices the pharmacy profile requires).
    let mut sequence = 0usize;
    let seen = |cat: &str| c.supporting.iter().any(|s| s.category == cat);
    for s in &c.supporting {
        open_supporting(w, &mut sequence);
        supporting_head(w, sequence, &s.category);
        supporting_value(w, &s.category, &s.value)?;
        w.close();
    }
    if let Some(r) = &c.received {
        if !seen("clmrecvddate") {
            open_supporting(w, &mut sequence);
            supporting_head(w, sequence, "clmrecvddate");
            w.kv("timingDate", r);
            w.close();
        }
    }
    if kind == ClaimKind::Pharmacy {
        for required in ["dayssupply", "dawcode", "refillnum", "refillsauthorized"] {
            if !seen(required) {
                open_supporting(w, &mut sequence);
                supporting_head(w, sequence, required);
                w.key(if required == "dawcode" {
                    "code"
                } else {
                    "valueQuantity"
                });
                absent(w, "unknown");
                w.close();
            }
        }
    }
    if kind == ClaimKind::Inpatient && !seen("admissionperiod") {
        open_supporting(w, &mut sequence);
        supporting_head(w, sequence, "admissionperiod");
        w.key("timingPeriod");
        w.open();
        w.kv("start", start);
        if let Some(t) = &c.thru {
            w.kv("end", t);
        }
        w.close();
        w.close();
    }
    if sequence > 0 {
        w.close_array();
    }

    // Diagnoses and procedures.
    if !c.diagnoses.is_empty() && kind != ClaimKind::Pharmacy {
        w.key("diagnosis");
        w.open_array();
        for (i, d) in c.diagnoses.iter().enumerate() {
            let icd9 = d.icd_version == 9;
            let head = if icd9 {
                coding_head!("http://hl7.org/fhir/sid/icd-9-cm")
            } else {
                coding_head!("http://hl7.org/fhir/sid/icd-10-cm")
            };
            w.open();
            w.key("sequence");
            w.uint(i as u64 + 1);
            w.key("diagnosisCodeableConcept");
            coding_at(w, head, &dotted(&d.code, icd9));
            w.key("type");
            w.open_array();
            let (ts, tc) = diagnosis_type(kind, &d.kind);
            coding(w, ts, tc);
            w.close_array();
            if kind == ClaimKind::Inpatient {
                if let Some(poa) = &d.poa {
                    w.key("onAdmission");
                    coding(
                        w,
                        "https://www.cms.gov/Medicare/Medicare-Fee-for-Service-Payment/HospitalAcqCond/Coding",
                        poa,
                    );
                }
            }
            w.close();
        }
        w.close_array();
    } else if kind == ClaimKind::Professional {
        return Err(MapError::Missing(
            "diagnosis (professional claims need one)",
        ));
    }
    if !c.procedures.is_empty() && matches!(kind, ClaimKind::Inpatient | ClaimKind::Outpatient) {
        w.key("procedure");
        w.open_array();
        for (i, p) in c.procedures.iter().enumerate() {
            let system = if p.icd_version == 9 {
                "http://www.cms.gov/Medicare/Coding/ICD9"
            } else {
                "http://www.cms.gov/Medicare/Coding/ICD10"
            };
            w.open();
            w.key("sequence");
            w.uint(i as u64 + 1);
            w.key("type");
            w.open_array();
            coding(
                w,
                "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBClaimProcedureType",
                &p.kind,
            );
            w.close_array();
            w.key("procedureCodeableConcept");
            coding(w, system, &p.code);
            if let Some(d) = &p.date {
                w.kv("date", d);
            }
            w.close();
        }
        w.close_array();
    }

    // Items.
    if c.lines.is_empty() {
        return Err(MapError::Missing("claim lines"));
    }
    let network = c.network_status.as_deref().unwrap_or("other");
    let mut served_dates: Vec<&str> = Vec::new();
    let mut served_periods: Vec<(&str, &str)> = Vec::new();
    w.key("item");
    w.open_array();
    for (i, l) in c.lines.iter().enumerate() {
        let served = map_line(
            w,
            kind,
            c,
            l,
            i,
            line_team.get(i).copied().flatten(),
            network,
        )?;
        match served {
            Served::Date(d) => served_dates.push(d),
            Served::Period(f, t) => served_periods.push((f, t)),
            Served::None => {}
        }
    }
    w.close_array();

    // Header adjudication and totals. The institutional and pharmacy profiles, their
    // "-Basis" (non-financial) ones included, require the benefit payment status slice of the
    // header adjudication; the professional ones require it on each item (see `map_line`).
    let header_status = matches!(
        kind,
        ClaimKind::Inpatient | ClaimKind::Outpatient | ClaimKind::Pharmacy
    );
    let mut any = false;
    let mut open_adj = |w: &mut JsonWriter| {
        if !any {
            w.key("adjudication");
            w.open_array();
            any = true;
        }
    };
    if header_status {
        open_adj(w);
        status_adjudication(w, "benefitpaymentstatus", network);
    }
    if c.adjudicated {
        if let Some(ns) = &c.network_status {
            open_adj(w);
            status_adjudication(w, "billingnetworkstatus", ns);
        }
        for a in &c.adjustments {
            open_adj(w);
            adjustment(w, a)?;
        }
    }
    if any {
        w.close_array();
    }
    if c.adjudicated {
        let sums = totals(c)?;
        w.key("total");
        w.open_array();
        for (cat, v) in sums {
            amount_adjudication(w, cat, |w| {
                w.f64((v * 100.0).round() / 100.0);
                Ok(())
            })?;
        }
        w.close_array();
        if let Some(ps) = &c.payment_status {
            w.key("payment");
            w.open();
            w.key("type");
            status_coding(w, ps);
            if let Some(paid) = c
                .amounts
                .iter()
                .find(|a| a.category == "paidtoprovider" || a.category == "benefit")
            {
                w.key("amount");
                money(w, &paid.value)?;
            }
            w.close();
        }
    }

    // Index values, as the registry's extractors would find them in this JSON.
    let service_date = std::iter::once(IndexValue::Date {
        start: Some(start.into()),
        end: billable_end.map(Text::from),
    })
    .chain(served_dates.iter().map(|d| date_value(d)))
    .chain(served_periods.iter().map(|(f, t)| IndexValue::Date {
        start: Some((*f).into()),
        end: Some((*t).into()),
    }));
    // Start dates, a run of equal ones written once.
    let mut last = None;
    let service_start = std::iter::once(start)
        .chain(served_dates.iter().copied())
        .chain(served_periods.iter().map(|p| p.0))
        .filter(|d| last.replace(*d) != Some(*d))
        .map(date_value);
    doc.index("patient", [IndexValue::Reference(patient_ref.into())]);
    doc.index("type", [static_token(CLAIM_TYPE, claim_type)]);
    doc.index("identifier", identifier_tokens);
    doc.index("service-date", service_date);
    doc.index("service-start-date", service_start);
    doc.index("billable-period-start", [date_value(start)]);
    doc.index("provider", [IndexValue::Reference(provider.into())]);
    doc.index("care-team", team_refs);
    doc.index("coverage", [IndexValue::Reference(coverage_ref.into())]);
    doc.index("insurer", [IndexValue::Reference(insurer.into())]);

    out.push(Resource {
        resource_type: "ExplanationOfBenefit",
        id,
        patient_id: Some(pid),
        json: doc.finish(),
        deleted: false,
    });
    Ok(out)
}

/// The static name of a care team role, when it is one a profile allows.
fn static_role(role: &str) -> Option<&'static str> {
    const ROLES: [&str; 9] = [
        "rendering",
        "purchasedservice",
        "referring",
        "primary",
        "supervisor",
        "prescribing",
        "attending",
        "operating",
        "otheroperating",
    ];
    ROLES.iter().copied().find(|r| *r == role)
}

/// `{"category":..,"reason":..}` of a C4BB payer adjudication status.
fn status_adjudication(w: &mut JsonWriter, category: &str, status: &str) {
    w.open();
    w.key("category");
    match category {
        "benefitpaymentstatus" => w.raw(coding_json!(cs_discrim!(), "benefitpaymentstatus")),
        "billingnetworkstatus" => w.raw(coding_json!(cs_discrim!(), "billingnetworkstatus")),
        _ => coding(w, CS_DISCRIM, category),
    }
    w.key("reason");
    status_coding(w, status);
    w.close();
}

/// A C4BB payer adjudication status coding; the codes of the code system rendered ahead.
fn status_coding(w: &mut JsonWriter, status: &str) {
    let rendered = match status {
        "innetwork" => coding_json!(cs_status!(), "innetwork"),
        "outofnetwork" => coding_json!(cs_status!(), "outofnetwork"),
        "other" => coding_json!(cs_status!(), "other"),
        "contracted" => coding_json!(cs_status!(), "contracted"),
        "noncontracted" => coding_json!(cs_status!(), "noncontracted"),
        "paid" => coding_json!(cs_status!(), "paid"),
        "denied" => coding_json!(cs_status!(), "denied"),
        "partiallypaid" => coding_json!(cs_status!(), "partiallypaid"),
        _ => return coding(w, CS_STATUS, status),
    };
    w.raw(rendered);
}

fn adjustment(w: &mut JsonWriter, a: &ingest::model::Adjustment) -> Result<(), MapError> {
    w.open();
    w.key("category");
    w.raw(coding_json!(cs_discrim!(), "adjustmentreason"));
    w.key("reason");
    coding(
        w,
        "https://x12.org/codes/claim-adjustment-reason-codes",
        &a.reason,
    );
    if let Some(amount) = &a.amount {
        w.key("amount");
        money(w, amount)?;
    }
    w.close();
    Ok(())
}

/// Claim totals: the claim-level amounts, else the sum of the lines' amounts per category.
fn totals<'c>(c: &'c Claim) -> Result<Vec<(&'c str, f64)>, MapError> {
    // Room for the usual categories (a carrier claim has eight or nine).
    let mut sums: Vec<(&'c str, f64)> = Vec::with_capacity(12);
    let mut add = |cat: &'c str, v: &str| -> Result<(), MapError> {
        let x = parse_amount(v)?;
        match sums.iter_mut().find(|(c, _)| *c == cat) {
            Some((_, s)) => *s += x,
            None => sums.push((cat, x)),
        }
        Ok(())
    };
    if c.amounts.is_empty() {
        for l in &c.lines {
            for a in &l.amounts {
                add(&a.category, &a.value)?;
            }
        }
    } else {
        for a in &c.amounts {
            add(&a.category, &a.value)?;
        }
    }
    if sums.is_empty() {
        return Err(MapError::Missing("total amounts of an adjudicated claim"));
    }
    Ok(sums)
}

/// When an item was served, for the index.
enum Served<'a> {
    Date(&'a str),
    Period(&'a str, &'a str),
    None,
}

fn map_line<'a>(
    w: &mut JsonWriter,
    kind: ClaimKind,
    c: &'a Claim,
    l: &'a ClaimLine,
    index: usize,
    team: Option<u32>,
    network: &str,
) -> Result<Served<'a>, MapError> {
    w.open();
    w.key("sequence");
    w.uint(index as u64 + 1);
    w.key("productOrService");
    match (kind, l.ndc.as_deref(), l.service_code.as_deref()) {
        (ClaimKind::Pharmacy, Some(ndc), _) => {
            coding_at(w, coding_head!("http://hl7.org/fhir/sid/ndc"), ndc)
        }
        (ClaimKind::Pharmacy, None, _) => absent(w, "unknown"),
        (_, _, Some(code)) => {
            let cpt = code.len() == 5 && code.bytes().take(4).all(|b| b.is_ascii_digit());
            let head = if cpt {
                coding_head!("http://www.ama-assn.org/go/cpt")
            } else {
                coding_head!("https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets")
            };
            coding_at(w, head, code)
        }
        (_, _, None) => coding(
            w,
            "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "not-applicable",
        ),
    }
    if l.number as usize != index + 1 {
        // Keep the source's own line number visible.
        w.key("extension");
        w.open_array();
        w.open();
        w.kv(
            "url",
            "https://fhirlake.example.org/fhir/StructureDefinition/source-line-number",
        );
        w.key("valueUnsignedInt");
        w.uint(u64::from(l.number));
        w.close();
        w.close_array();
    }
    if let Some(t) = team {
        w.key("careTeamSequence");
        w.open_array();
        w.uint(u64::from(t));
        w.close_array();
    }
    if let Some(rev) = &l.revenue_code {
        w.key("revenue");
        coding_at(
            w,
            coding_head!("https://www.nubc.org/CodeSystem/RevenueCodes"),
            rev,
        );
    } else if kind == ClaimKind::Inpatient {
        w.key("revenue");
        absent(w, "unknown");
    }
    if !l.modifiers.is_empty() {
        w.key("modifier");
        w.open_array();
        for m in &l.modifiers {
            coding_at(
                w,
                coding_head!("https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"),
                m,
            );
        }
        w.close_array();
    }
    let from = l.from.as_deref().or(c.from.as_deref());
    let thru = l
        .thru
        .as_deref()
        .or(l.from.as_deref())
        .or(c.thru.as_deref());
    let served = match (from, thru) {
        (Some(f), Some(t)) if f != t => {
            w.key("servicedPeriod");
            w.open();
            w.kv("start", f);
            w.kv("end", t);
            w.close();
            Served::Period(f, t)
        }
        (Some(f), _) => {
            w.kv("servicedDate", f);
            Served::Date(f)
        }
        _ => Served::None,
    };
    if kind == ClaimKind::Professional {
        w.key("locationCodeableConcept");
        match &l.place_of_service {
            Some(pos) => coding_at(
                w,
                coding_head!(
                    "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"
                ),
                pos,
            ),
            None => absent(w, "unknown"),
        }
    }
    if let Some(q) = &l.quantity {
        w.key("quantity");
        w.open();
        w.key("value");
        number(w, q, "item.quantity")?;
        w.close();
    }
    if !l.diagnosis_pointers.is_empty() && kind != ClaimKind::Pharmacy {
        w.key("diagnosisSequence");
        w.open_array();
        for p in &l.diagnosis_pointers {
            w.uint(u64::from(*p));
        }
        w.close_array();
    }
    // A professional item carries the benefit payment status under every profile, "-Basis"
    // included; amounts and adjustments come only with the source's adjudication.
    let professional = matches!(kind, ClaimKind::Professional);
    let adjudicated = c.adjudicated && (!l.amounts.is_empty() || !l.adjustments.is_empty());
    if professional || adjudicated {
        w.key("adjudication");
        w.open_array();
        if professional {
            status_adjudication(w, "benefitpaymentstatus", network);
        }
        if c.adjudicated {
            for a in &l.amounts {
                amount_adjudication(w, &a.category, |w| amount_value(w, &a.value))?;
            }
            for a in &l.adjustments {
                adjustment(w, a)?;
            }
        }
        w.close_array();
    }
    w.close();
    Ok(served)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_codings_are_the_written_ones() {
        let written = |f: &dyn Fn(&mut JsonWriter)| {
            let mut w = JsonWriter::default();
            f(&mut w);
            w.finish()
        };
        let categories = [
            "submitted",
            "copay",
            "eligible",
            "deductible",
            "benefit",
            "coinsurance",
            "noncovered",
            "priorpayerpaid",
            "paidbypatient",
            "paidtopatient",
            "paidtoprovider",
            "drugcost",
            "memberliability",
            "odd\"code",
        ];
        for code in categories {
            for amount in ["12.50", "-0.5", "1e3"] {
                assert_eq!(
                    written(
                        &|w| amount_adjudication(w, code, |w| amount_value(w, amount)).unwrap()
                    ),
                    written(&|w| {
                        w.open();
                        w.key("category");
                        coding(w, amount_category_system(code), code);
                        w.key("amount");
                        money(w, amount).unwrap();
                        w.close();
                    }),
                    "{code} {amount}"
                );
            }
        }
        let statuses = [
            "innetwork",
            "outofnetwork",
            "other",
            "contracted",
            "noncontracted",
            "paid",
            "denied",
            "partiallypaid",
            "unknown\\",
        ];
        for status in statuses {
            assert_eq!(
                written(&|w| status_coding(w, status)),
                written(&|w| coding(w, CS_STATUS, status)),
                "{status}"
            );
            for category in ["benefitpaymentstatus", "billingnetworkstatus", "other"] {
                assert_eq!(
                    written(&|w| status_adjudication(w, category, status)),
                    written(&|w| {
                        w.open();
                        w.key("category");
                        coding(w, CS_DISCRIM, category);
                        w.key("reason");
                        coding(w, CS_STATUS, status);
                        w.close();
                    }),
                    "{category} {status}"
                );
            }
        }
        for code in ["99213", "a\"b", "tab\t"] {
            assert_eq!(
                written(&|w| coding_at(w, coding_head!("http://x.org/cs"), code)),
                written(&|w| coding(w, "http://x.org/cs", code)),
            );
        }
        assert_eq!(
            coding_json!(cs_discrim!(), "adjustmentreason"),
            written(&|w| coding(w, CS_DISCRIM, "adjustmentreason"))
        );
        for (amount, json) in [
            ("12.50", r#"{"value":12.5,"currency":"USD"}"#),
            ("1e3", r#"{"value":1000.0,"currency":"USD"}"#),
        ] {
            assert_eq!(written(&|w| money(w, amount).unwrap()), json);
        }
    }

    #[test]
    fn icd_codes_get_their_dot() {
        assert_eq!(dotted("A0223", false), "A02.23");
        assert_eq!(dotted("A02", false), "A02");
        assert_eq!(dotted("E8889", true), "E888.9");
        assert_eq!(dotted("25000", true), "250.00");
        assert_eq!(dotted("S06.0X1A", false), "S06.0X1A");
    }

    #[test]
    fn diagnosis_types_follow_each_profile() {
        let t = |k, c| diagnosis_type(k, c).1.to_string();
        assert_eq!(t(ClaimKind::Professional, "other"), "secondary");
        assert_eq!(t(ClaimKind::Inpatient, "secondary"), "other");
        assert_eq!(t(ClaimKind::Inpatient, "admitting"), "admitting");
        assert_eq!(t(ClaimKind::Outpatient, "admitting"), "other");
        assert_eq!(
            t(ClaimKind::Outpatient, "patientreasonforvisit"),
            "patientreasonforvisit"
        );
    }
}
