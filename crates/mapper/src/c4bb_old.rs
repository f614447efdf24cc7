//! The previous C4BB builders (`serde_json::Value` trees), kept while the direct writer is
//! checked against them. CARIN Blue Button (C4BB) 2.1.0 resources from canonical members and claims.
//!
//! One builder per resource: Patient, Coverage, Organization, Practitioner and the four
//! ExplanationOfBenefit profiles (Professional-NonClinician, Inpatient-Institutional,
//! Outpatient-Institutional, Pharmacy, each with its non-financial `-Basis` parent when the
//! source carries no adjudication). Values the profiles require but the source does not carry
//! are marked with the `data-absent-reason` extension, never invented.

use std::collections::HashMap;

use ingest::model::{Change, Claim, ClaimKind, ClaimLine, CoverageSpan, Member, Party};
use serde_json::{json, Map, Value};

use crate::c4bb::Systems;
use crate::ids::{fhir_id, org_id, practitioner_id};
use crate::resource::Json;
use crate::{MapError, Resource};

const C4BB: &str = "http://hl7.org/fhir/us/carin-bb";
const VERSION: &str = "2.1.0";
const DAR: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
const CS_ADJ: &str = "http://terminology.hl7.org/CodeSystem/adjudication";
const CS_C4BB_ADJ: &str = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudication";
const CS_DISCRIM: &str = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator";
const CS_STATUS: &str = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBPayerAdjudicationStatus";
const CS_SUPPORT: &str = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBSupportingInfoType";
const CS_IDTYPE: &str = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBIdentifierType";
const CS_V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

fn profile(name: &str) -> Value {
    json!([format!("{C4BB}/StructureDefinition/{name}|{VERSION}")])
}

fn coding(system: &str, code: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code }] })
}

fn absent(reason: &str) -> Value {
    json!({ "extension": [{ "url": DAR, "valueCode": reason }] })
}

fn money(value: &str) -> Result<Value, MapError> {
    let v: f64 = value.parse().map_err(|_| MapError::Invalid {
        field: "amount",
        message: format!("{value:?} is not a decimal"),
    })?;
    Ok(json!({ "value": v, "currency": "USD" }))
}

fn number(value: &str, field: &'static str) -> Result<Value, MapError> {
    let v: f64 = value.parse().map_err(|_| MapError::Invalid {
        field,
        message: format!("{value:?} is not a number"),
    })?;
    Ok(if v.fract() == 0.0 && v.abs() < 1e15 {
        json!(v as i64)
    } else {
        json!(v)
    })
}

/// The payer Organization's id for a party (payer id, else its name).
pub fn payer_ref(payer: &Party) -> Option<String> {
    let key = payer.id.as_deref().or(payer.name.as_deref())?;
    Some(format!("Organization/{}", org_id("payer", key)))
}

/// A provider's reference: Practitioner for persons with an NPI, else Organization.
pub fn provider_ref(p: &Party) -> Option<String> {
    if p.person {
        let npi = p.id.as_deref()?;
        return Some(format!("Practitioner/{}", practitioner_id(npi)));
    }
    let key = p.id.as_deref().or(p.name.as_deref())?;
    let kind = p.id_kind.as_deref().unwrap_or("org");
    Some(format!("Organization/{}", org_id(kind, key)))
}

/// The Patient id of a member id.
pub fn patient_id(member_id: &str) -> String {
    fhir_id(member_id)
}

/// The Coverage id of a member's coverage.
pub fn coverage_id(member_id: &str, key: &str) -> String {
    fhir_id(&format!("{member_id}-{key}"))
}

/// C4BB Organization for a payer.
pub fn payer_organization(payer: &Party, systems: &Systems) -> Option<Resource> {
    let reference = payer_ref(payer)?;
    let id = reference.trim_start_matches("Organization/").to_string();
    let mut identifier = Vec::new();
    if let Some(pid) = &payer.id {
        identifier.push(json!({
            "type": coding(CS_IDTYPE, "payerid"),
            "system": systems.get("payerid"),
            "value": pid,
        }));
    }
    let mut org = json!({
        "resourceType": "Organization",
        "id": id,
        "meta": { "profile": profile("C4BB-Organization") },
        "active": true,
    });
    if !identifier.is_empty() {
        org["identifier"] = Value::Array(identifier);
    }
    set_name(&mut org, payer.name.as_deref());
    Some(Resource {
        resource_type: "Organization",
        id,
        patient_id: None,
        json: Json::Tree(org),
        deleted: false,
    })
}

fn set_name(org: &mut Value, name: Option<&str>) {
    match name {
        Some(n) => org["name"] = json!(n),
        None => org["_name"] = absent("unknown"),
    }
}

fn address(
    lines: &[ingest::model::Text],
    city: Option<&str>,
    state: Option<&str>,
    postal: Option<&str>,
) -> Option<Value> {
    let mut a = Map::new();
    if !lines.is_empty() {
        a.insert("line".into(), json!(lines));
    }
    if let Some(c) = city {
        a.insert("city".into(), json!(c));
    }
    if let Some(s) = state {
        a.insert("state".into(), json!(s));
    }
    if let Some(p) = postal {
        a.insert("postalCode".into(), json!(p));
    }
    (!a.is_empty()).then_some(Value::Object(a))
}

/// C4BB Organization or Practitioner for a provider party.
pub fn provider_resource(p: &Party, systems: &Systems) -> Option<Resource> {
    let reference = provider_ref(p)?;
    let (rtype, id) = reference.split_once('/')?;
    let mut identifier = Vec::new();
    if let Some(pid) = &p.id {
        let kind = p.id_kind.as_deref().unwrap_or("org");
        if kind == "npi" {
            identifier.push(json!({
                "type": coding(CS_V2_0203, "NPI"),
                "system": systems.get("npi"),
                "value": pid,
            }));
        } else {
            identifier.push(json!({ "system": systems.get(kind), "value": pid }));
        }
    }
    if let Some(tax) = &p.tax_id {
        identifier.push(json!({
            "type": coding(CS_V2_0203, "TAX"),
            "system": systems.get("tax"),
            "value": tax,
        }));
    }
    let addr = address(
        &p.address_lines,
        p.city.as_deref(),
        p.state.as_deref(),
        p.postal_code.as_deref(),
    );
    let json = if rtype == "Practitioner" {
        let name = match p.name.as_deref() {
            Some(n) => {
                let (family, given) = n.split_once(", ").unwrap_or((n, ""));
                let mut name = json!({ "family": family });
                if !given.is_empty() {
                    name["given"] = json!(given
                        .split(' ')
                        .filter(|g| !g.is_empty())
                        .collect::<Vec<_>>());
                }
                name
            }
            None => json!({ "_family": absent("unknown") }),
        };
        let mut r = json!({
            "resourceType": "Practitioner",
            "id": id,
            "meta": { "profile": profile("C4BB-Practitioner") },
            "identifier": identifier,
            "name": [name],
        });
        if let Some(a) = addr {
            r["address"] = json!([a]);
        }
        r
    } else {
        let mut r = json!({
            "resourceType": "Organization",
            "id": id,
            "meta": { "profile": profile("C4BB-Organization") },
            "active": true,
        });
        if !identifier.is_empty() {
            r["identifier"] = Value::Array(identifier);
        }
        set_name(&mut r, p.name.as_deref());
        if let Some(a) = addr {
            r["address"] = json!([a]);
        }
        r
    };
    Some(Resource {
        resource_type: if rtype == "Practitioner" {
            "Practitioner"
        } else {
            "Organization"
        },
        id: id.to_string(),
        patient_id: None,
        json: Json::Tree(json),
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
    let mut identifier = vec![json!({
        "type": coding(CS_V2_0203, "MB"),
        "system": systems.get("member"),
        "value": m.member_id,
    })];
    for i in &m.identifiers {
        let mut ident = json!({ "system": systems.get(&i.kind), "value": i.value });
        if i.kind == "member" || i.kind == "subscriber" {
            ident["type"] = coding(CS_V2_0203, "MB");
        }
        identifier.push(ident);
    }
    let name = if m.family.is_none() && m.given.is_empty() {
        json!({ "extension": [{ "url": DAR, "valueCode": "unknown" }] })
    } else {
        let mut n = Map::new();
        if let Some(f) = &m.family {
            n.insert("family".into(), json!(f));
        }
        if !m.given.is_empty() {
            n.insert("given".into(), json!(m.given));
        }
        Value::Object(n)
    };
    let mut patient = json!({
        "resourceType": "Patient",
        "id": pid,
        "meta": { "profile": profile("C4BB-Patient") },
        "identifier": identifier,
        "name": [name],
    });
    match &m.gender {
        Some(g) => patient["gender"] = json!(g),
        None => patient["_gender"] = absent("unknown"),
    }
    if let Some(b) = &m.birth_date {
        patient["birthDate"] = json!(b);
    }
    if let Some(d) = &m.death_date {
        patient["deceasedDateTime"] = json!(d);
    }
    if let Some(a) = address(
        &m.address_lines,
        m.city.as_deref(),
        m.state.as_deref(),
        m.postal_code.as_deref(),
    ) {
        patient["address"] = json!([a]);
    }
    let deleted = m.change == Change::Delete;
    let mut out = vec![Resource {
        resource_type: "Patient",
        id: pid.clone(),
        patient_id: Some(pid.clone()),
        json: Json::Tree(patient),
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
    let subscriber_id = c
        .subscriber_id
        .clone()
        .unwrap_or_else(|| m.member_id.clone());
    let relationship = c.relationship.as_deref().unwrap_or("self");
    let mut cov = json!({
        "resourceType": "Coverage",
        "id": id,
        "meta": { "profile": profile("C4BB-Coverage") },
        "identifier": [{
            "type": coding(CS_V2_0203, "MB"),
            "system": systems.get("member"),
            "value": m.member_id,
        }],
        "status": c.status.as_deref().unwrap_or("active"),
        "subscriberId": subscriber_id,
        "beneficiary": { "reference": format!("Patient/{pid}") },
        "relationship": coding("http://terminology.hl7.org/CodeSystem/subscriber-relationship", relationship),
        "payor": [{ "reference": payor }],
    });
    if relationship == "self" {
        cov["subscriber"] = json!({ "reference": format!("Patient/{pid}") });
    }
    if let Some(t) = &c.type_display {
        cov["type"] = json!({ "text": t });
    }
    let mut class = Vec::new();
    if let Some(g) = &c.group {
        let mut e = json!({ "type": coding("http://terminology.hl7.org/CodeSystem/coverage-class", "group"), "value": g });
        if let Some(n) = &c.group_name {
            e["name"] = json!(n);
        }
        class.push(e);
    }
    if let Some(p) = &c.plan {
        let mut e = json!({ "type": coding("http://terminology.hl7.org/CodeSystem/coverage-class", "plan"), "value": p });
        if let Some(n) = c.plan_name.as_ref().or(c.type_display.as_ref()) {
            e["name"] = json!(n);
        }
        class.push(e);
    }
    if !class.is_empty() {
        cov["class"] = Value::Array(class);
    }
    let mut period = Map::new();
    if let Some(s) = &c.start {
        period.insert("start".into(), json!(s));
    }
    if let Some(e) = &c.end {
        period.insert("end".into(), json!(e));
    }
    if !period.is_empty() {
        cov["period"] = Value::Object(period);
    }
    Ok(Resource {
        resource_type: "Coverage",
        id,
        patient_id: Some(pid),
        json: Json::Tree(cov),
        deleted: m.change == Change::Delete,
    })
}

/// The EOB id of a claim (stable: claim kind and claim id).
pub fn eob_id(kind: ClaimKind, claim_id: &str) -> String {
    fhir_id(&format!("{}-{claim_id}", kind.as_str()))
}

fn profile_name(kind: ClaimKind, adjudicated: bool) -> String {
    let base = match kind {
        ClaimKind::Professional => "C4BB-ExplanationOfBenefit-Professional-NonClinician",
        ClaimKind::Inpatient => "C4BB-ExplanationOfBenefit-Inpatient-Institutional",
        ClaimKind::Outpatient => "C4BB-ExplanationOfBenefit-Outpatient-Institutional",
        ClaimKind::Pharmacy => "C4BB-ExplanationOfBenefit-Pharmacy",
    };
    if adjudicated {
        base.to_string()
    } else {
        format!("{base}-Basis")
    }
}

/// The coding of an adjudication amount category (HL7 adjudication or C4BB adjudication).
fn amount_category(code: &str) -> Value {
    let system = match code {
        "submitted" | "copay" | "eligible" | "deductible" | "benefit" => CS_ADJ,
        _ => CS_C4BB_ADJ,
    };
    coding(system, code)
}

fn diagnosis_type(kind: ClaimKind, code: &str) -> Value {
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
    json!([coding(system, code)])
}

/// ICD-10-CM / ICD-9-CM codes are written with their dot (claims carry them without).
fn dotted(code: &str, icd9: bool) -> String {
    if code.contains('.') {
        return code.to_string();
    }
    let split = if icd9 && code.starts_with('E') { 4 } else { 3 };
    if code.len() > split && code.is_char_boundary(split) {
        format!("{}.{}", &code[..split], &code[split..])
    } else {
        code.to_string()
    }
}

fn care_team_role(kind: ClaimKind, role: &str) -> Option<Value> {
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
    let system = if matches!(role, "primary" | "supervisor") {
        "http://terminology.hl7.org/CodeSystem/claimcareteamrole"
    } else {
        "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBClaimCareTeamRole"
    };
    Some(coding(system, role))
}

/// The supporting-info value for a C4BB supporting-info category.
fn supporting_value(category: &str, value: &str) -> Result<(&'static str, Value), MapError> {
    let code = |system: &str| ("code", coding(system, value));
    Ok(match category {
        "admissionperiod" => {
            let (s, e) = value.split_once('/').unwrap_or((value, ""));
            let mut p = Map::new();
            if !s.is_empty() {
                p.insert("start".into(), json!(s));
            }
            if !e.is_empty() {
                p.insert("end".into(), json!(e));
            }
            ("timingPeriod", Value::Object(p))
        }
        "clmrecvddate" => ("timingDate", json!(value)),
        "typeofbill" => code("https://www.nubc.org/CodeSystem/TypeOfBill"),
        "pointoforigin" => code("https://www.nubc.org/CodeSystem/PointOfOrigin"),
        "admtype" => code("https://www.nubc.org/CodeSystem/PriorityTypeOfAdmitOrVisit"),
        "discharge-status" => code("https://www.nubc.org/CodeSystem/PatDischargeStatus"),
        "drg" => code("https://www.cms.gov/Medicare/Medicare-Fee-for-Service-Payment/AcuteInpatientPPS/MS-DRG-Classifications-and-Software"),
        "dawcode" => code("http://terminology.hl7.org/CodeSystem/NCPDPDispensedAsWrittenOrProductSelectionCode"),
        "compoundcode" => code("http://terminology.hl7.org/CodeSystem/NCPDPCompoundCode"),
        "brandgenericindicator" => code("http://terminology.hl7.org/CodeSystem/NCPDPBrandGenericIndicator"),
        "rxorigincode" => code("http://terminology.hl7.org/CodeSystem/NCPDPPrescriptionOriginCode"),
        "dayssupply" | "refillnum" | "refillsauthorized" => {
            ("valueQuantity", json!({ "value": number(value, "supportingInfo quantity")? }))
        }
        "medicalrecordnumber" | "patientaccountnumber" => ("valueString", json!(value)),
        _ => ("valueString", json!(value)),
    })
}

/// Map a claim to its C4BB ExplanationOfBenefit and the Organizations/Practitioners it
/// references. When the claim carries its member (X12), the Patient and Coverage come too.
///
/// # Errors
/// When the claim lacks what every EOB needs (kind, claim id, member, service start, provider).
pub fn map_claim(c: &Claim, systems: &Systems) -> Result<Vec<Resource>, MapError> {
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
        out.extend(map_member(member, systems)?);
    }
    let insurer = payer_ref(&c.payer).ok_or(MapError::Missing("payer"))?;
    if let Some(org) = payer_organization(&c.payer, systems) {
        out.push(org);
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
        out.extend(provider_resource(p, systems));
    }

    let mut identifier = vec![json!({
        "type": coding(CS_IDTYPE, "uc"),
        "system": systems.get("claim"),
        "value": format!("{}-{}", kind.as_str(), c.claim_id),
    })];
    for i in &c.identifiers {
        identifier.push(json!({ "system": systems.get(&i.kind), "value": i.value }));
    }

    let (claim_type, sub_type) = match kind {
        ClaimKind::Professional => ("professional", None),
        ClaimKind::Inpatient => ("institutional", Some("inpatient")),
        ClaimKind::Outpatient => ("institutional", Some("outpatient")),
        ClaimKind::Pharmacy => ("pharmacy", None),
    };
    let mut billable = json!({ "start": start });
    if let Some(t) = c.thru.as_deref().or(c.from.as_deref()) {
        billable["end"] = json!(t);
    }
    let coverage_key = c.coverage_key.clone().or_else(|| {
        c.member
            .as_ref()
            .and_then(|m| m.coverages.first().map(|cv| cv.key.clone()))
    });
    let coverage = coverage_key
        .map(|k| coverage_id(&c.member_id, &k))
        .ok_or(MapError::Missing("coverage (claim's coverage key)"))?;

    let mut eob = json!({
        "resourceType": "ExplanationOfBenefit",
        "id": id,
        "meta": { "profile": profile(&profile_name(kind, c.adjudicated)) },
        "identifier": identifier,
        "status": if c.change == Change::Cancel { "cancelled" } else { "active" },
        "type": coding("http://terminology.hl7.org/CodeSystem/claim-type", claim_type),
        "use": "claim",
        "patient": { "reference": format!("Patient/{pid}") },
        "billablePeriod": billable,
        "created": c.created.as_deref().or(c.thru.as_deref()).unwrap_or(start),
        "insurer": { "reference": insurer },
        "provider": { "reference": provider },
        "outcome": if c.adjudicated { "complete" } else { "queued" },
        "insurance": [{ "focal": true, "coverage": { "reference": format!("Coverage/{coverage}") } }],
    });
    if let Some(s) = sub_type {
        eob["subType"] = coding(
            "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBInstitutionalClaimSubType",
            s,
        );
    }

    // Care team: claim-level roles, then each line's rendering provider.
    let mut care_team: Vec<Value> = Vec::new();
    let mut team_index: HashMap<(String, String), u32> = HashMap::new();
    let mut add_team = |role: &str, p: &Party, out: &mut Vec<Resource>| -> Option<u32> {
        let reference = provider_ref(p)?;
        let role_cc = care_team_role(kind, role)?;
        let key = (reference.clone(), role.to_string());
        if let Some(seq) = team_index.get(&key) {
            return Some(*seq);
        }
        let seq = care_team.len() as u32 + 1;
        care_team.push(
            json!({ "sequence": seq, "provider": { "reference": reference }, "role": role_cc }),
        );
        team_index.insert(key, seq);
        out.extend(provider_resource(p, systems));
        Some(seq)
    };
    for (role, p) in &c.care_team {
        add_team(role, p, &mut out);
    }
    let mut line_team: Vec<Option<u32>> = Vec::new();
    for l in &c.lines {
        line_team.push(
            l.rendering
                .as_ref()
                .and_then(|p| add_team("rendering", p, &mut out)),
        );
    }
    if !care_team.is_empty() {
        eob["careTeam"] = Value::Array(care_team);
    }

    // Supporting info (plus the slices the pharmacy profile requires).
    let mut supporting: Vec<Value> = Vec::new();
    let mut seen = Vec::new();
    for s in &c.supporting {
        let (key, value) = supporting_value(&s.category, &s.value)?;
        seen.push(s.category.clone());
        let mut e = json!({ "sequence": supporting.len() + 1, "category": coding(CS_SUPPORT, &s.category) });
        e[key] = value;
        supporting.push(e);
    }
    if let Some(r) = &c.received {
        if !seen.iter().any(|s| s == "clmrecvddate") {
            supporting.push(json!({
                "sequence": supporting.len() + 1,
                "category": coding(CS_SUPPORT, "clmrecvddate"),
                "timingDate": r,
            }));
        }
    }
    if kind == ClaimKind::Pharmacy {
        for required in ["dayssupply", "dawcode", "refillnum", "refillsauthorized"] {
            if !seen.iter().any(|s| s == required) {
                let mut e = json!({ "sequence": supporting.len() + 1, "category": coding(CS_SUPPORT, required) });
                if required == "dawcode" {
                    e["code"] = absent("unknown");
                } else {
                    e["valueQuantity"] = absent("unknown");
                }
                supporting.push(e);
            }
        }
    }
    if kind == ClaimKind::Inpatient && !seen.iter().any(|s| s == "admissionperiod") {
        let mut p = json!({ "start": start });
        if let Some(t) = &c.thru {
            p["end"] = json!(t);
        }
        supporting.push(json!({
            "sequence": supporting.len() + 1,
            "category": coding(CS_SUPPORT, "admissionperiod"),
            "timingPeriod": p,
        }));
    }
    if !supporting.is_empty() {
        eob["supportingInfo"] = Value::Array(supporting);
    }

    // Diagnoses and procedures.
    let diagnoses: Vec<Value> = c
        .diagnoses
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let icd9 = d.icd_version == 9;
            let system = if icd9 { "http://hl7.org/fhir/sid/icd-9-cm" } else { "http://hl7.org/fhir/sid/icd-10-cm" };
            let mut e = json!({
                "sequence": i + 1,
                "diagnosisCodeableConcept": coding(system, &dotted(&d.code, icd9)),
                "type": diagnosis_type(kind, &d.kind),
            });
            if kind == ClaimKind::Inpatient {
                if let Some(poa) = &d.poa {
                    e["onAdmission"] = coding(
                        "https://www.cms.gov/Medicare/Medicare-Fee-for-Service-Payment/HospitalAcqCond/Coding",
                        poa,
                    );
                }
            }
            e
        })
        .collect();
    if !diagnoses.is_empty() && kind != ClaimKind::Pharmacy {
        eob["diagnosis"] = Value::Array(diagnoses);
    } else if kind == ClaimKind::Professional {
        return Err(MapError::Missing(
            "diagnosis (professional claims need one)",
        ));
    }
    let procedures: Vec<Value> = c
        .procedures
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let system = if p.icd_version == 9 { "http://www.cms.gov/Medicare/Coding/ICD9" } else { "http://www.cms.gov/Medicare/Coding/ICD10" };
            let mut e = json!({
                "sequence": i + 1,
                "type": [coding("http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBClaimProcedureType", &p.kind)],
                "procedureCodeableConcept": coding(system, &p.code),
            });
            if let Some(d) = &p.date {
                e["date"] = json!(d);
            }
            e
        })
        .collect();
    if !procedures.is_empty() && matches!(kind, ClaimKind::Inpatient | ClaimKind::Outpatient) {
        eob["procedure"] = Value::Array(procedures);
    }

    // Items.
    let network = c.network_status.as_deref().unwrap_or("other");
    let mut items = Vec::new();
    for (i, l) in c.lines.iter().enumerate() {
        items.push(map_line(
            kind,
            c,
            l,
            i,
            line_team.get(i).copied().flatten(),
            network,
        )?);
    }
    if items.is_empty() {
        return Err(MapError::Missing("claim lines"));
    }
    eob["item"] = Value::Array(items);

    // Header adjudication and totals.
    if c.adjudicated {
        let mut adjudication = Vec::new();
        if matches!(
            kind,
            ClaimKind::Inpatient | ClaimKind::Outpatient | ClaimKind::Pharmacy
        ) {
            adjudication.push(json!({
                "category": coding(CS_DISCRIM, "benefitpaymentstatus"),
                "reason": coding(CS_STATUS, network),
            }));
        }
        if let Some(ns) = &c.network_status {
            adjudication.push(json!({
                "category": coding(CS_DISCRIM, "billingnetworkstatus"),
                "reason": coding(CS_STATUS, ns),
            }));
        }
        for a in &c.adjustments {
            adjudication.push(adjustment(a)?);
        }
        if !adjudication.is_empty() {
            eob["adjudication"] = Value::Array(adjudication);
        }
        eob["total"] = Value::Array(totals(c)?);
        if let Some(ps) = &c.payment_status {
            let mut payment = json!({ "type": coding(CS_STATUS, ps) });
            if let Some(paid) = c
                .amounts
                .iter()
                .find(|a| a.category == "paidtoprovider" || a.category == "benefit")
            {
                payment["amount"] = money(&paid.value)?;
            }
            eob["payment"] = payment;
        }
    }

    out.push(Resource {
        resource_type: "ExplanationOfBenefit",
        id,
        patient_id: Some(pid),
        json: Json::Tree(eob),
        deleted: false,
    });
    Ok(out)
}

fn adjustment(a: &ingest::model::Adjustment) -> Result<Value, MapError> {
    let mut e = json!({
        "category": coding(CS_DISCRIM, "adjustmentreason"),
        "reason": coding("https://x12.org/codes/claim-adjustment-reason-codes", &a.reason),
    });
    if let Some(amount) = &a.amount {
        e["amount"] = money(amount)?;
    }
    Ok(e)
}

/// Claim totals: the claim-level amounts, else the sum of the lines' amounts per category.
fn totals(c: &Claim) -> Result<Vec<Value>, MapError> {
    let mut sums: Vec<(String, f64)> = Vec::new();
    let mut add = |cat: &str, v: &str| -> Result<(), MapError> {
        let x: f64 = v.parse().map_err(|_| MapError::Invalid {
            field: "amount",
            message: format!("{v:?} is not a decimal"),
        })?;
        match sums.iter_mut().find(|(c, _)| c == cat) {
            Some((_, s)) => *s += x,
            None => sums.push((cat.to_string(), x)),
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
    Ok(sums
        .into_iter()
        .map(|(cat, v)| {
            json!({
                "category": amount_category(&cat),
                "amount": { "value": (v * 100.0).round() / 100.0, "currency": "USD" },
            })
        })
        .collect())
}

fn map_line(
    kind: ClaimKind,
    c: &Claim,
    l: &ClaimLine,
    index: usize,
    team: Option<u32>,
    network: &str,
) -> Result<Value, MapError> {
    let product = match (kind, l.ndc.as_deref(), l.service_code.as_deref()) {
        (ClaimKind::Pharmacy, Some(ndc), _) => coding("http://hl7.org/fhir/sid/ndc", ndc),
        (ClaimKind::Pharmacy, None, _) => absent("unknown"),
        (_, _, Some(code)) => {
            let cpt = code.len() == 5 && code.bytes().take(4).all(|b| b.is_ascii_digit());
            let system = if cpt {
                "http://www.ama-assn.org/go/cpt"
            } else {
                "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
            };
            coding(system, code)
        }
        (_, _, None) => coding(
            "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "not-applicable",
        ),
    };
    let mut item = json!({ "sequence": index + 1, "productOrService": product });
    if l.number as usize != index + 1 {
        // Keep the source's own line number visible.
        item["extension"] = json!([{ "url": "https://fhirlake.example.org/fhir/StructureDefinition/source-line-number", "valueUnsignedInt": l.number }]);
    }
    if let Some(t) = team {
        item["careTeamSequence"] = json!([t]);
    }
    if let Some(rev) = &l.revenue_code {
        item["revenue"] = coding("https://www.nubc.org/CodeSystem/RevenueCodes", rev);
    } else if kind == ClaimKind::Inpatient {
        item["revenue"] = absent("unknown");
    }
    if !l.modifiers.is_empty() {
        item["modifier"] = Value::Array(
            l.modifiers
                .iter()
                .map(|m| {
                    coding(
                        "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
                        m,
                    )
                })
                .collect(),
        );
    }
    let from = l.from.as_deref().or(c.from.as_deref());
    let thru = l
        .thru
        .as_deref()
        .or(l.from.as_deref())
        .or(c.thru.as_deref());
    match (from, thru) {
        (Some(f), Some(t)) if f != t => item["servicedPeriod"] = json!({ "start": f, "end": t }),
        (Some(f), _) => item["servicedDate"] = json!(f),
        _ => {}
    }
    if kind == ClaimKind::Professional {
        match &l.place_of_service {
            Some(pos) => {
                item["locationCodeableConcept"] = coding(
                    "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set",
                    pos,
                )
            }
            None => item["locationCodeableConcept"] = absent("unknown"),
        }
    }
    if let Some(q) = &l.quantity {
        item["quantity"] = json!({ "value": number(q, "item.quantity")? });
    }
    if !l.diagnosis_pointers.is_empty() && kind != ClaimKind::Pharmacy {
        item["diagnosisSequence"] = json!(l.diagnosis_pointers);
    }
    if c.adjudicated {
        let mut adj = Vec::new();
        if matches!(kind, ClaimKind::Professional) {
            adj.push(json!({
                "category": coding(CS_DISCRIM, "benefitpaymentstatus"),
                "reason": coding(CS_STATUS, network),
            }));
        }
        for a in &l.amounts {
            adj.push(
                json!({ "category": amount_category(&a.category), "amount": money(&a.value)? }),
            );
        }
        for a in &l.adjustments {
            adj.push(adjustment(a)?);
        }
        if !adj.is_empty() {
            item["adjudication"] = Value::Array(adj);
        }
    }
    Ok(item)
}

#[cfg(test)]
mod tests {
    //! The direct writer against these tree builders: same bytes, hash, meta slot and index
    //! values for every sample record, generated records and mutations of them.

    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use ingest::detect::{detect, Format};
    use ingest::layout::Mapping;
    use ingest::model::{Adjustment, Amount, ClaimKind, Ident, Party, Supporting};
    use ingest::{Reader, SourceRecord};

    use crate::c4bb::Systems;
    use crate::lake::Prepared;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn read(path: &Path, mappings: &[Arc<Mapping>]) -> Vec<SourceRecord> {
        let reader: Box<dyn Reader> = match detect(path, mappings) {
            Ok(Format::Delimited(m)) => Box::new(ingest::delimited::DelimitedReader::new(m)),
            Ok(Format::X12) => Box::new(ingest::x12::X12Reader::new()),
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        let _ = reader.read(path, &mut |i| {
            if let Ok(r) = i {
                out.push(r);
            }
        });
        out
    }

    fn compare(
        label: &str,
        old: Result<Vec<crate::Resource>, crate::MapError>,
        new: Result<Vec<crate::Resource>, crate::MapError>,
    ) -> usize {
        match (old, new) {
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "{label}: errors differ");
                0
            }
            (Ok(a), Ok(b)) => {
                assert_eq!(a.len(), b.len(), "{label}: resource count");
                for (a, b) in a.into_iter().zip(b) {
                    assert!(matches!(b.json, crate::Json::Text(_)), "{label}: written");
                    assert_eq!(
                        (a.resource_type, &a.id, &a.patient_id, a.deleted),
                        (b.resource_type, &b.id, &b.patient_id, b.deleted),
                        "{label}"
                    );
                    let (pa, pb) = (Prepared::new(a), Prepared::new(b));
                    assert_eq!(pa.text, pb.text, "{label}: text of {}", pa.id);
                    assert_eq!(pa.content_hash, pb.content_hash, "{label}");
                    assert_eq!(pa.stamped(3, "T"), pb.stamped(3, "T"), "{label}: stamps");
                    assert_eq!(pa.index, pb.index, "{label}: index of {}", pa.id);
                }
                1
            }
            (a, b) => panic!("{label}: {a:?} vs {b:?}"),
        }
    }

    fn check(label: &str, r: &SourceRecord, systems: &Systems) -> usize {
        match r {
            SourceRecord::Claim(c) => compare(
                label,
                super::map_claim(c, systems),
                crate::c4bb::map_claim(c, systems),
            ),
            SourceRecord::Member(m) => compare(
                label,
                super::map_member(m, systems),
                crate::c4bb::map_member(m, systems),
            ),
            _ => 0,
        }
    }

    fn mutations(c: &ingest::model::Claim) -> Vec<ingest::model::Claim> {
        let mut out = Vec::new();
        let party = |person: bool, id: Option<&str>, name: Option<&str>| Party {
            id: id.map(Into::into),
            id_kind: Some(if person { "npi" } else { "tax" }.into()),
            name: name.map(Into::into),
            person,
            tax_id: Some("12-3\"45".into()),
            address_lines: vec!["1 \"Main\"\\St\n".into(), "Apt\t2".into()],
            city: Some("Zürich".into()),
            state: None,
            postal_code: Some("0\u{1}1".into()),
        };
        for kind in [
            ClaimKind::Professional,
            ClaimKind::Inpatient,
            ClaimKind::Outpatient,
            ClaimKind::Pharmacy,
        ] {
            for adjudicated in [false, true] {
                let mut m = c.clone();
                m.kind = Some(kind);
                m.adjudicated = adjudicated;
                out.push(m.clone());
                m.network_status = Some("innetwork".into());
                m.payment_status = Some("paid".into());
                m.received = Some("2020-02-02".into());
                m.created = None;
                m.change = ingest::model::Change::Cancel;
                m.adjustments.push(Adjustment {
                    group: None,
                    reason: "45".into(),
                    amount: Some("12.345".into()),
                });
                m.adjustments.push(Adjustment {
                    group: None,
                    reason: "2".into(),
                    amount: None,
                });
                m.amounts.push(Amount {
                    category: "benefit".into(),
                    value: "100.1".into(),
                });
                m.amounts.push(Amount {
                    category: "paidtoprovider".into(),
                    value: "0.30000000000000004".into(),
                });
                m.identifiers.push(Ident {
                    kind: "mbi".into(),
                    value: "1EG4\"TE5MK73".into(),
                });
                m.care_team.push((
                    "attending".into(),
                    party(true, Some("111"), Some("Doe, Jane  Q")),
                ));
                m.care_team
                    .push(("primary".into(), party(false, Some("222"), None)));
                m.care_team
                    .push(("supervisor".into(), party(true, Some("333"), None)));
                m.care_team
                    .push(("prescribing".into(), party(true, Some("444"), Some("Solo"))));
                m.care_team
                    .push(("bogus".into(), party(true, Some("555"), Some("X, "))));
                m.care_team
                    .push(("primary".into(), party(false, Some("222"), None)));
                m.billing = Some(party(false, None, Some("Clinic \"A\"")));
                for cat in [
                    "admissionperiod",
                    "clmrecvddate",
                    "typeofbill",
                    "drg",
                    "dayssupply",
                    "refillnum",
                    "other",
                ] {
                    let value = match cat {
                        "admissionperiod" => "2020-01-01/",
                        "dayssupply" => "30",
                        "refillnum" => "2.5",
                        _ => "1\u{1f}x",
                    };
                    m.supporting.push(Supporting {
                        category: cat.into(),
                        value: value.into(),
                    });
                }
                for (i, l) in m.lines.iter_mut().enumerate() {
                    l.number += i as u32 * 2;
                    l.quantity = Some(["1", "2.50", "1e20", "-0"][i % 4].into());
                    l.modifiers = vec!["25".into(), "\"x\"".into()];
                    l.diagnosis_pointers = vec![1, 2];
                    l.revenue_code = (i % 2 == 0).then(|| "0450".into());
                    l.ndc = (i % 3 == 0).then(|| "00071015523".into());
                    l.place_of_service = (i % 2 == 1).then(|| "11".into());
                    l.thru = Some("2021-12-31".into());
                    l.rendering = Some(party(i % 2 == 0, Some(&format!("9{i}")), Some("Roe, Al")));
                    l.adjustments.push(Adjustment {
                        group: None,
                        reason: "1".into(),
                        amount: Some("-3".into()),
                    });
                    l.amounts.push(Amount {
                        category: "submitted".into(),
                        value: "1e400".into(),
                    });
                    l.amounts.push(Amount {
                        category: "coinsurance".into(),
                        value: "NaN".into(),
                    });
                }
                out.push(m.clone());
                // Error paths, one at a time.
                let mut e = m.clone();
                e.diagnoses.clear();
                out.push(e);
                let mut e = m.clone();
                e.lines.clear();
                out.push(e);
                let mut e = m.clone();
                if let Some(l) = e.lines.last_mut() {
                    l.quantity = Some("many".into());
                }
                out.push(e);
                let mut e = m.clone();
                e.amounts.push(Amount {
                    category: "benefit".into(),
                    value: "$1".into(),
                });
                out.push(e);
                let mut e = m.clone();
                e.amounts.clear();
                for l in &mut e.lines {
                    l.amounts.clear();
                }
                out.push(e);
                let mut e = m.clone();
                e.supporting.push(Supporting {
                    category: "refillsauthorized".into(),
                    value: "n/a".into(),
                });
                out.push(e);
                let mut e = m.clone();
                e.adjustments.push(Adjustment {
                    group: None,
                    reason: "3".into(),
                    amount: Some("".into()),
                });
                out.push(e);
                let mut e = m.clone();
                e.from = None;
                e.coverage_key = None;
                out.push(e);
                let mut e = m;
                e.billing = None;
                e.facility = None;
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn direct_writer_matches_the_tree_builders() {
        let root = root();
        let mappings: Vec<Arc<Mapping>> = Mapping::load_dir(&root.join("mappings"))
            .expect("mappings")
            .into_iter()
            .map(Arc::new)
            .collect();
        let systems = Systems::parse(
            &std::fs::read_to_string(root.join("mappings/fhir/identifier-systems.toml"))
                .expect("systems"),
        )
        .expect("systems");
        let mut files: Vec<PathBuf> = Vec::new();
        for dir in ["samples/rif", "samples/plain", "samples/x12"] {
            for e in std::fs::read_dir(root.join(dir))
                .expect("samples")
                .flatten()
            {
                files.push(e.path());
            }
        }
        // Generated extracts too (what the benchmark ingests).
        let tmp = tempfile::tempdir().expect("tmp");
        let create = |p: &Path| std::io::BufWriter::new(std::fs::File::create(p).expect("create"));
        let bene = ingest::synth::Template::load(
            &root.join("samples/rif/synthea-beneficiary_2021.csv"),
            b'|',
        )
        .expect("t");
        let carrier =
            ingest::synth::Template::load(&root.join("samples/rif/synthea-carrier.csv"), b'|')
                .expect("t");
        let p = |n: &str| tmp.path().join(n);
        ingest::synth::rif_beneficiaries(&bene, &mut create(&p("beneficiaries.txt")), 200, 7)
            .expect("gen");
        ingest::synth::rif_carrier(&carrier, &mut create(&p("carrier.txt")), 200, 5, 7)
            .expect("gen");
        ingest::synth::plain(
            &mut create(&p("members.csv")),
            &mut create(&p("claims.csv")),
            200,
            5,
            7,
        )
        .expect("gen");
        for n in [
            "beneficiaries.txt",
            "carrier.txt",
            "members.csv",
            "claims.csv",
        ] {
            files.push(p(n));
        }
        let mut x12 = create(&p("gen.837"));
        ingest::x12::generate_837(&mut x12, true, 300, 3).expect("gen");
        drop(x12);
        let mut x12 = create(&p("gen.837i"));
        ingest::x12::generate_837(&mut x12, false, 300, 4).expect("gen");
        drop(x12);
        files.push(p("gen.837"));
        files.push(p("gen.837i"));
        files.sort();
        let (mut records, mut mapped, mut mutated) = (0, 0, 0);
        for f in &files {
            for (i, r) in read(f, &mappings).iter().enumerate() {
                let label = format!("{} #{i}", f.display());
                records += 1;
                mapped += check(&label, r, &systems);
                if let SourceRecord::Claim(c) = r {
                    if i % 7 == 0 {
                        for (j, m) in mutations(c).into_iter().enumerate() {
                            mutated += check(
                                &format!("{label} mutation {j}"),
                                &SourceRecord::Claim(Box::new(m)),
                                &systems,
                            );
                        }
                    }
                }
            }
        }
        assert!(
            records > 3000 && mapped > 3000 && mutated > 10_000,
            "{records} {mapped} {mutated}"
        );
    }
}
