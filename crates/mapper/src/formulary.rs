//! Formulary records to Da Vinci PDex US Drug Formulary 2.0.1 resources.
//!
//! - [`map_drug`]: a [`FormularyDrug`] → usdf-FormularyItem (`Basic`) + usdf-FormularyDrug
//!   (`MedicationKnowledge`).
//! - [`map_plan`]: a [`FormularyPlan`] → usdf-Formulary (`InsurancePlan`) +
//!   usdf-PayerInsurancePlan (`InsurancePlan`) + the payer `Organization` and
//!   usdf-InsurancePlanLocation `Location`s it references.
//! - [`SEARCH_PARAMS`]: the IG's search parameters for those resources, with their extractors.
//!
//! Ids come from business keys ([`fhir_id`]): `formulary-{formulary id}`, `plan-{plan id}`,
//! `item-{formulary id}-{rxcui}`, `rxnorm-{rxcui}`, `payer-{payer id}`, `area-{code}`. Every
//! reference points at a resource that the same input set also produces: an item's formulary
//! is produced by the formulary's plan records (readers emit one even for a formulary no plan
//! uses), its drug by the item's own record.
//!
//! Deletes: a `DEL` drug deletes its FormularyItem only; the MedicationKnowledge is shared by
//! every formulary listing the drug and stays. A deleted plan deletes its PayerInsurancePlan
//! only; the Formulary may be used by other plans (a formulary-only record deletes the
//! Formulary).
//!
//! Not here: `meta.lastUpdated`/`versionId` (the lake writer sets them), HTTP, Parquet.

use ingest::model::{Change, FormularyDrug, FormularyPlan, TierCostShare};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::registry::{IndexValue, ParamType, SearchParam, Text};
use crate::resource::Json;
use crate::{MapError, Resource};

const VERSION: &str = "2.0.1";

/// Profile canonical of usdf-FormularyItem.
pub const PROFILE_ITEM: &str =
    "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-FormularyItem";
/// Profile canonical of usdf-FormularyDrug.
pub const PROFILE_DRUG: &str =
    "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-FormularyDrug";
/// Profile canonical of usdf-Formulary.
pub const PROFILE_FORMULARY: &str =
    "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-Formulary";
/// Profile canonical of usdf-PayerInsurancePlan.
pub const PROFILE_PLAN: &str =
    "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-PayerInsurancePlan";
/// Profile canonical of usdf-InsurancePlanLocation.
pub const PROFILE_LOCATION: &str =
    "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-InsurancePlanLocation";

/// Extension URLs (usdf-*-extension).
pub mod ext {
    /// usdf-FormularyReference-extension.
    pub const FORMULARY_REFERENCE: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-FormularyReference-extension";
    /// usdf-AvailabilityStatus-extension.
    pub const AVAILABILITY_STATUS: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-AvailabilityStatus-extension";
    /// usdf-AvailabilityPeriod-extension.
    pub const AVAILABILITY_PERIOD: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-AvailabilityPeriod-extension";
    /// usdf-PharmacyBenefitType-extension.
    pub const PHARMACY_BENEFIT_TYPE: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-PharmacyBenefitType-extension";
    /// usdf-DrugTierID-extension.
    pub const DRUG_TIER: &str =
        "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-DrugTierID-extension";
    /// usdf-PriorAuthorization-extension.
    pub const PRIOR_AUTHORIZATION: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-PriorAuthorization-extension";
    /// usdf-StepTherapyLimit-extension.
    pub const STEP_THERAPY: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-StepTherapyLimit-extension";
    /// usdf-QuantityLimit-extension.
    pub const QUANTITY_LIMIT: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-QuantityLimit-extension";
    /// usdf-QuantityLimitDetail-extension.
    pub const QUANTITY_LIMIT_DETAIL: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-QuantityLimitDetail-extension";
    /// usdf-AdditionalCoverageInformation-extension.
    pub const ADDITIONAL_COVERAGE: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition/usdf-AdditionalCoverageInformation-extension";
}

/// Code systems used.
pub mod cs {
    /// usdf-DrugTierCS.
    pub const DRUG_TIER: &str =
        "http://hl7.org/fhir/us/davinci-drug-formulary/CodeSystem/usdf-DrugTierCS-TEMPORARY-TRIAL-USE";
    /// usdf-PharmacyBenefitTypeCS.
    pub const PHARMACY_BENEFIT_TYPE: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/CodeSystem/usdf-PharmacyBenefitTypeCS-TEMPORARY-TRIAL-USE";
    /// usdf-InsuranceItemTypeCS.
    pub const ITEM_TYPE: &str =
        "http://hl7.org/fhir/us/davinci-drug-formulary/CodeSystem/usdf-InsuranceItemTypeCS";
    /// usdf-BenefitCostTypeCS.
    pub const COST_TYPE: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/CodeSystem/usdf-BenefitCostTypeCS-TEMPORARY-TRIAL-USE";
    /// usdf-CostShareOptionCS.
    pub const COST_SHARE_OPTION: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/CodeSystem/usdf-CostShareOptionCS-TEMPORARY-TRIAL-USE";
    /// usdf-PlanContactTypeCS.
    pub const PLAN_CONTACT: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/CodeSystem/usdf-PlanContactTypeCS-TEMPORARY-TRIAL-USE";
    /// HL7 contact entity type.
    pub const CONTACT_ENTITY: &str = "http://terminology.hl7.org/CodeSystem/contactentity-type";
    /// RxNorm.
    pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
    /// NDC.
    pub const NDC: &str = "http://hl7.org/fhir/sid/ndc";
    /// v3 ActCode (`DRUGPOL`).
    pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
    /// insurance-plan-type (`drug`).
    pub const PLAN_TYPE: &str = "http://terminology.hl7.org/CodeSystem/insurance-plan-type";
    /// Plan-net insurance product types (`qhp`, `mediadv`, `medid`, …).
    pub const PRODUCT_TYPE: &str =
        "http://hl7.org/fhir/us/davinci-pdex-plan-net/CodeSystem/InsuranceProductTypeCS";
}

/// `usdf-DrugTierCS` codes and displays.
pub const DRUG_TIERS: &[(&str, &str)] = &[
    ("generic", "Generic"),
    ("preferred-generic", "Preferred Generic"),
    ("non-preferred-generic", "Non-preferred Generic"),
    ("specialty", "Specialty"),
    ("brand", "Brand"),
    ("preferred-brand", "Preferred Brand"),
    ("non-preferred-brand", "Non-preferred Brand"),
    (
        "zero-cost-share-preventative",
        "Zero cost-share preventative",
    ),
    ("medical-service", "Medical Service"),
];

/// `usdf-PharmacyBenefitTypeCS` codes and displays.
pub const PHARMACY_BENEFIT_TYPES: &[(&str, &str)] = &[
    ("1-month-in-retail", "1 month in network retail"),
    ("1-month-out-retail", "1 month out of network retail"),
    ("1-month-in-mail", "1 month in network mail order"),
    ("1-month-out-mail", "1 month out of network mail order"),
    ("3-month-in-retail", "3 month in network retail"),
    ("3-month-out-retail", "3 month out of network retail"),
    ("3-month-in-mail", "3 month in network mail order"),
    ("3-month-out-mail", "3 month out of network mail order"),
];

/// `usdf-CostShareOptionCS` codes and displays.
pub const COST_SHARE_OPTIONS: &[(&str, &str)] = &[
    ("after-deductible", "After Deductible"),
    ("before-deductible", "Before Deductible"),
    ("no-charge", "No Charge"),
    ("no-charge-after-deductible", "No Charge After Deductible"),
    ("charge", "Charge"),
    ("coinsurance-not-applicable", "Coinsurance Not Applicable"),
    ("copay-not-applicable", "Copay Not Applicable"),
    ("deductible-waived", "Deductible Waived"),
];

/// Codes of `CopayOptionVS` (required binding of a copay's qualifier).
pub const COPAY_OPTION_VS: &[&str] = &[
    "after-deductible",
    "before-deductible",
    "no-charge",
    "no-charge-after-deductible",
    "charge",
    "copay-not-applicable",
    "deductible-waived",
];

/// Codes of `CoinsuranceOptionVS` (required binding of a coinsurance's qualifier).
pub const COINSURANCE_OPTION_VS: &[&str] = &[
    "after-deductible",
    "no-charge",
    "no-charge-after-deductible",
    "charge",
    "coinsurance-not-applicable",
    "deductible-waived",
];

/// Plan-net `InsuranceProductTypeCS` codes fhirlake's readers produce, with displays.
pub const PRODUCT_TYPES: &[(&str, &str)] = &[
    ("qhp", "Qualified Health Plan"),
    ("mediadv", "Medicare Advantage"),
    ("medid", "Medicare Part D"),
    ("medi", "Medicaid"),
    ("commppo", "Commercial PPO"),
    ("commhmo", "Commercial HMO"),
    ("commpos", "Commercial POS"),
    ("commepo", "Commercial EPO"),
    ("commhdhp", "Commercial HDHP"),
];

/// The pharmacy benefit type given to a drug whose source names none (the fhirlake XML
/// extract and CMS Part D files carry none; the FormularyItem profile requires at least one):
/// a one-month in-network retail supply, the benefit every Part D and QHP formulary covers.
pub const DEFAULT_PHARMACY_BENEFIT_TYPE: &str = "1-month-in-retail";

fn display(table: &[(&'static str, &'static str)], code: &str) -> Option<&'static str> {
    table.iter().find(|(c, _)| *c == code).map(|(_, d)| *d)
}

fn coding(system: &str, code: &str, display: Option<&str>) -> Value {
    let mut c = Map::new();
    c.insert("system".into(), json!(system));
    c.insert("code".into(), json!(code));
    if let Some(d) = display {
        c.insert("display".into(), json!(d));
    }
    Value::Object(c)
}

fn concept(system: &str, code: &str, display: Option<&str>) -> Value {
    json!({ "coding": [coding(system, code, display)] })
}

fn meta(profile: &str) -> Value {
    json!({ "profile": [format!("{profile}|{VERSION}")] })
}

/// A FHIR id from a prefix and business-key parts: `prefix-part1-part2` when that is a valid id
/// ([A-Za-z0-9\-\.]{1,64}); otherwise `prefix-` + the first 20 hex digits of the key's SHA-256
/// (stable, and distinct keys stay distinct).
pub fn fhir_id(prefix: &str, parts: &[&str]) -> String {
    let plain = std::iter::once(prefix)
        .chain(parts.iter().copied())
        .collect::<Vec<_>>()
        .join("-");
    let ok = plain.len() <= 64
        && parts.iter().all(|p| !p.is_empty())
        && plain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        return plain;
    }
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// Id of the Formulary `InsurancePlan` of a formulary id.
pub fn formulary_id(formulary: &str) -> String {
    fhir_id("formulary", &[formulary])
}

/// Id of the PayerInsurancePlan of a plan id.
pub fn plan_id(plan: &str) -> String {
    fhir_id("plan", &[plan])
}

/// Id of the FormularyItem `Basic` of a drug on a formulary.
pub fn item_id(formulary: &str, rxnorm: &str) -> String {
    fhir_id("item", &[formulary, rxnorm])
}

/// Id of the FormularyDrug `MedicationKnowledge` of an RxCUI.
pub fn drug_id(rxnorm: &str) -> String {
    fhir_id("rxnorm", &[rxnorm])
}

fn number(field: &'static str, text: &str) -> Result<Value, MapError> {
    let n: serde_json::Number = text.trim().parse().map_err(|_| MapError::Invalid {
        field,
        message: format!("{text:?} is not a number"),
    })?;
    Ok(Value::Number(n))
}

fn period(start: Option<&str>, end: Option<&str>) -> Option<Value> {
    let mut p = Map::new();
    if let Some(s) = start {
        p.insert("start".into(), json!(s));
    }
    if let Some(e) = end {
        p.insert("end".into(), json!(e));
    }
    (!p.is_empty()).then_some(Value::Object(p))
}

/// Map one drug-on-a-formulary record.
///
/// Returns the FormularyItem then the FormularyDrug; for a `Delete`, only the FormularyItem,
/// marked deleted (see the module docs).
///
/// # Errors
/// [`MapError::Missing`] without an RxCUI, a formulary id or (unless deleted) a drug tier;
/// [`MapError::UnknownCode`] for a tier or pharmacy benefit type outside the PDex code
/// systems; [`MapError::Invalid`] for a quantity-limit number that is not one.
pub fn map_drug(d: &FormularyDrug) -> Result<Vec<Resource>, MapError> {
    if d.rxnorm.trim().is_empty() {
        return Err(MapError::Missing("rxnorm"));
    }
    if d.formulary_id.trim().is_empty() {
        return Err(MapError::Missing("formulary_id"));
    }
    let item_id = item_id(&d.formulary_id, &d.rxnorm);
    let drug_id = drug_id(&d.rxnorm);
    let formulary_ref = format!("InsurancePlan/{}", formulary_id(&d.formulary_id));
    let deleted = d.change == Change::Delete;
    let mut extensions = vec![
        json!({ "url": ext::FORMULARY_REFERENCE, "valueReference": { "reference": formulary_ref } }),
        json!({ "url": ext::AVAILABILITY_STATUS, "valueCode": if deleted { "retired" } else { "active" } }),
    ];
    if let Some(p) = period(d.effective_start.as_deref(), d.effective_end.as_deref()) {
        extensions.push(json!({ "url": ext::AVAILABILITY_PERIOD, "valuePeriod": p }));
    }
    let code = concept(cs::ITEM_TYPE, "formulary-item", Some("Formulary Item"));
    let subject = json!({ "reference": format!("MedicationKnowledge/{drug_id}") });
    if deleted {
        // A tombstone: the lake removes the item; only its identity matters.
        let json = json!({
            "resourceType": "Basic",
            "id": item_id,
            "meta": meta(PROFILE_ITEM),
            "extension": extensions,
            "code": code,
            "subject": subject,
        });
        return Ok(vec![Resource {
            resource_type: "Basic",
            id: item_id,
            patient_id: None,
            json: Json::Tree(json),
            deleted: true,
        }]);
    }
    let defaults = [DEFAULT_PHARMACY_BENEFIT_TYPE.to_string()];
    let pharmacy: &[String] = if d.pharmacy_benefit_types.is_empty() {
        &defaults
    } else {
        &d.pharmacy_benefit_types
    };
    for p in pharmacy {
        let Some(disp) = display(PHARMACY_BENEFIT_TYPES, p) else {
            return Err(MapError::UnknownCode {
                field: "pharmacy_benefit_types",
                code: p.clone(),
            });
        };
        extensions.push(json!({
            "url": ext::PHARMACY_BENEFIT_TYPE,
            "valueCodeableConcept": concept(cs::PHARMACY_BENEFIT_TYPE, p, Some(disp)),
        }));
    }
    let tier = d.tier.as_deref().ok_or(MapError::Missing("tier"))?;
    let tier_display = display(DRUG_TIERS, tier).ok_or_else(|| MapError::UnknownCode {
        field: "tier",
        code: tier.to_string(),
    })?;
    extensions.push(json!({
        "url": ext::DRUG_TIER,
        "valueCodeableConcept": concept(cs::DRUG_TIER, tier, Some(tier_display)),
    }));
    if let Some(b) = d.prior_auth {
        extensions.push(json!({ "url": ext::PRIOR_AUTHORIZATION, "valueBoolean": b }));
    }
    if let Some(b) = d.step_therapy {
        extensions.push(json!({ "url": ext::STEP_THERAPY, "valueBoolean": b }));
    }
    if let Some(b) = d.quantity_limit {
        extensions.push(json!({ "url": ext::QUANTITY_LIMIT, "valueBoolean": b }));
    }
    if let Some(detail) = quantity_limit_detail(d)? {
        extensions.push(detail);
    }
    if let Some(text) = additional_coverage(d) {
        extensions.push(json!({ "url": ext::ADDITIONAL_COVERAGE, "valueMarkdown": text }));
    }
    let item = json!({
        "resourceType": "Basic",
        "id": item_id,
        "meta": meta(PROFILE_ITEM),
        "extension": extensions,
        "code": code,
        "subject": subject,
    });

    let mut codings = vec![coding(cs::RXNORM, &d.rxnorm, d.drug_name.as_deref())];
    for ndc in &d.ndcs {
        codings.push(coding(cs::NDC, ndc, None));
    }
    let mut drug = Map::new();
    drug.insert("resourceType".into(), json!("MedicationKnowledge"));
    drug.insert("id".into(), json!(drug_id));
    drug.insert("meta".into(), meta(PROFILE_DRUG));
    drug.insert("code".into(), json!({ "coding": codings }));
    drug.insert("status".into(), json!("active"));
    if let Some(form) = d.dose_form.as_deref().filter(|f| !f.trim().is_empty()) {
        drug.insert("doseForm".into(), json!({ "text": form }));
    }
    Ok(vec![
        Resource {
            resource_type: "Basic",
            id: item_id,
            patient_id: None,
            json: Json::Tree(item),
            deleted: false,
        },
        Resource {
            resource_type: "MedicationKnowledge",
            id: drug_id,
            patient_id: None,
            json: Json::Tree(Value::Object(drug)),
            deleted: false,
        },
    ])
}

/// usdf-QuantityLimitDetail from the amount, days and type of a quantity limit.
fn quantity_limit_detail(d: &FormularyDrug) -> Result<Option<Value>, MapError> {
    if d.quantity_limit != Some(true) {
        return Ok(None);
    }
    let (amount, days) = (
        d.quantity_limit_amount.as_deref(),
        d.quantity_limit_days.as_deref(),
    );
    if amount.is_none() && days.is_none() {
        return Ok(None);
    }
    let mut parts = Vec::new();
    let daily = d.quantity_limit_type.as_deref() == Some("DAILY");
    let description = match (amount, days, daily) {
        (Some(a), _, true) => format!("At most {a} per day"),
        (Some(a), Some(n), false) => format!("At most {a} per {n} days"),
        (Some(a), None, false) => format!("At most {a}"),
        (None, Some(n), _) => format!("Limited to {n} days"),
        (None, None, _) => unreachable!("checked above"),
    };
    parts.push(json!({ "url": "Description", "valueString": description }));
    match (amount, days, daily) {
        (Some(a), _, true) => {
            parts.push(json!({ "url": "MaximumDaily", "valueQuantity": { "value": number("quantity_limit_amount", a)? } }));
        }
        (Some(a), Some(n), false) => {
            // Timing.repeat.count is a positiveInt: only whole amounts fit a rolling limit;
            // the description carries the others.
            if let Ok(count) = a.trim().parse::<u32>() {
                if count > 0 {
                    parts.push(json!({
                        "url": "Rolling",
                        "valueTiming": { "repeat": {
                            "count": count,
                            "period": number("quantity_limit_days", n)?,
                            "periodUnit": "d",
                        } },
                    }));
                }
            }
        }
        _ => {}
    }
    Ok(Some(
        json!({ "url": ext::QUANTITY_LIMIT_DETAIL, "extension": parts }),
    ))
}

/// Coverage notes with no element of their own (CMS excluded-drug, capped benefit,
/// negotiated-drug and indication-based coverage flags), as markdown.
fn additional_coverage(d: &FormularyDrug) -> Option<String> {
    let mut lines = Vec::new();
    if d.selected_drug == Some(true) {
        lines.push("- Selected drug of the Medicare Drug Price Negotiation Program.".to_string());
    }
    if d.excluded_drug == Some(true) {
        lines.push(
            "- Excluded from the basic Part D benefit; covered as a supplemental benefit."
                .to_string(),
        );
    }
    if d.capped_benefit == Some(true) {
        lines.push("- Capped benefit.".to_string());
    }
    if !d.indications.is_empty() {
        lines.push(format!("- Covered for: {}.", d.indications.join("; ")));
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// Map one plan record.
///
/// Returns the Formulary `InsurancePlan` first, then (unless the record stands for a
/// formulary alone, `plan_id` empty) the PayerInsurancePlan, the payer `Organization` when the
/// source identifies it, and one `Location` per coverage area.
///
/// The PayerInsurancePlan claims its profile only when the source gives cost sharing: the
/// profile requires `plan.specificCost.benefit.cost` with a qualifier, and fhirlake does not
/// invent costs. Without it (the fhirlake XML extract carries none) the resource is a plain
/// R4 InsurancePlan with the same coverage, formulary link and drug plan type.
///
/// # Errors
/// [`MapError::Missing`] without a formulary id, or a plan type for a plan;
/// [`MapError::UnknownCode`] for a tier, pharmacy type or cost-share option outside the PDex
/// code systems; [`MapError::Invalid`] for an amount that is not a number.
pub fn map_plan(p: &FormularyPlan) -> Result<Vec<Resource>, MapError> {
    if p.formulary_id.trim().is_empty() {
        return Err(MapError::Missing("formulary_id"));
    }
    let fid = formulary_id(&p.formulary_id);
    let deleted = p.change == Change::Delete;
    let standalone = p.plan_id.trim().is_empty();
    let mut formulary = Map::new();
    formulary.insert("resourceType".into(), json!("InsurancePlan"));
    formulary.insert("id".into(), json!(fid));
    formulary.insert("meta".into(), meta(PROFILE_FORMULARY));
    formulary.insert("identifier".into(), json!([{ "value": p.formulary_id }]));
    formulary.insert(
        "status".into(),
        json!(if deleted && standalone {
            "retired"
        } else {
            "active"
        }),
    );
    formulary.insert(
        "type".into(),
        json!([concept(cs::ACT_CODE, "DRUGPOL", Some("drug policy"))]),
    );
    if let Some(n) = &p.formulary_name {
        formulary.insert("name".into(), json!(n));
    }
    if let Some(per) = period(p.period_start.as_deref(), p.period_end.as_deref()) {
        formulary.insert("period".into(), per);
    }
    // Non-cost plan information: which tiers the formulary has, per pharmacy benefit type.
    let tier_types = specific_costs(&p.tiers, false)?;
    if !tier_types.is_empty() {
        formulary.insert(
            "plan".into(),
            json!([{
                "type": concept(cs::PLAN_TYPE, "drug", Some("Drug")),
                "specificCost": tier_types,
            }]),
        );
    }
    let mut out = vec![Resource {
        resource_type: "InsurancePlan",
        id: fid.clone(),
        patient_id: None,
        json: Json::Tree(Value::Object(formulary)),
        deleted: deleted && standalone,
    }];
    if standalone {
        return Ok(out);
    }

    let pid = plan_id(&p.plan_id);
    let product = p
        .plan_type
        .as_deref()
        .ok_or(MapError::Missing("plan_type"))?;
    let product_display = display(PRODUCT_TYPES, product).ok_or_else(|| MapError::UnknownCode {
        field: "plan_type",
        code: product.to_string(),
    })?;
    let costs = specific_costs(&p.tiers, true)?;
    let mut plan = Map::new();
    plan.insert("resourceType".into(), json!("InsurancePlan"));
    plan.insert("id".into(), json!(pid));
    if !costs.is_empty() {
        plan.insert("meta".into(), meta(PROFILE_PLAN));
    }
    plan.insert("identifier".into(), json!([{ "value": p.plan_id }]));
    plan.insert(
        "status".into(),
        json!(if deleted { "retired" } else { "active" }),
    );
    plan.insert(
        "type".into(),
        json!([concept(cs::PRODUCT_TYPE, product, Some(product_display))]),
    );
    if let Some(n) = &p.plan_name {
        plan.insert("name".into(), json!(n));
    }
    if let Some(per) = period(p.period_start.as_deref(), p.period_end.as_deref()) {
        plan.insert("period".into(), per);
    }
    let mut extra = Vec::new();
    if let Some(payer_id) = p.payer.id.as_deref().filter(|s| !s.trim().is_empty()) {
        let oid = fhir_id("payer", &[payer_id]);
        let mut org = Map::new();
        org.insert("resourceType".into(), json!("Organization"));
        org.insert("id".into(), json!(oid));
        let kind = match p.payer.id_kind.as_deref() {
            Some("hios-issuer") => Some("HIOS issuer id"),
            Some("cms-contract") => Some("CMS contract id"),
            _ => None,
        };
        let mut ident = Map::new();
        if let Some(k) = kind {
            ident.insert("type".into(), json!({ "text": k }));
        }
        ident.insert("value".into(), json!(payer_id));
        org.insert("identifier".into(), json!([ident]));
        org.insert("active".into(), json!(true));
        org.insert(
            "type".into(),
            json!([concept(
                "http://terminology.hl7.org/CodeSystem/organization-type",
                "pay",
                Some("Payer")
            )]),
        );
        if let Some(n) = &p.payer.name {
            org.insert("name".into(), json!(n));
        }
        let reference = json!({ "reference": format!("Organization/{oid}") });
        plan.insert("ownedBy".into(), reference.clone());
        plan.insert("administeredBy".into(), reference);
        extra.push(Resource {
            resource_type: "Organization",
            id: oid,
            patient_id: None,
            json: Json::Tree(Value::Object(org)),
            deleted: false,
        });
    }
    if !p.coverage_areas.is_empty() {
        let mut refs = Vec::new();
        for area in &p.coverage_areas {
            let lid = fhir_id("area", &[area]);
            let mut loc = Map::new();
            loc.insert("resourceType".into(), json!("Location"));
            loc.insert("id".into(), json!(lid));
            loc.insert("meta".into(), meta(PROFILE_LOCATION));
            loc.insert("name".into(), json!(area));
            if area.len() == 2 && area.bytes().all(|b| b.is_ascii_uppercase()) {
                loc.insert("address".into(), json!({ "state": area, "country": "US" }));
            }
            refs.push(json!({ "reference": format!("Location/{lid}") }));
            extra.push(Resource {
                resource_type: "Location",
                id: lid,
                patient_id: None,
                json: Json::Tree(Value::Object(loc)),
                deleted: false,
            });
        }
        plan.insert("coverageArea".into(), Value::Array(refs));
    }
    if !p.contacts.is_empty() {
        let contacts: Vec<Value> = p
            .contacts
            .iter()
            .map(|c| {
                let purpose = match c.purpose.as_str() {
                    "MARKETING" => concept(
                        cs::PLAN_CONTACT,
                        "MARKETING",
                        Some("Plan Marketing Information"),
                    ),
                    "SUMMARY" => concept(
                        cs::PLAN_CONTACT,
                        "SUMMARY",
                        Some("Plan Summary Information"),
                    ),
                    "FORMULARY" => concept(
                        cs::PLAN_CONTACT,
                        "FORMULARY",
                        Some("Plan Formulary Information"),
                    ),
                    other => concept(cs::CONTACT_ENTITY, other, None),
                };
                json!({ "purpose": purpose, "telecom": [{ "system": c.system, "value": c.value }] })
            })
            .collect();
        plan.insert("contact".into(), Value::Array(contacts));
    }
    plan.insert(
        "coverage".into(),
        json!([{
            "extension": [{ "url": ext::FORMULARY_REFERENCE, "valueReference": { "reference": format!("InsurancePlan/{fid}") } }],
            "type": concept(cs::ACT_CODE, "DRUGPOL", Some("drug policy")),
            "benefit": [{ "type": concept(cs::PLAN_TYPE, "drug", Some("Drug")) }],
        }]),
    );
    let mut drug_plan = Map::new();
    drug_plan.insert("type".into(), concept(cs::PLAN_TYPE, "drug", Some("Drug")));
    if !costs.is_empty() {
        drug_plan.insert("specificCost".into(), Value::Array(costs));
    }
    plan.insert("plan".into(), json!([drug_plan]));
    out.push(Resource {
        resource_type: "InsurancePlan",
        id: pid,
        patient_id: None,
        json: Json::Tree(Value::Object(plan)),
        deleted,
    });
    if !deleted {
        out.extend(extra);
    }
    Ok(out)
}

/// `plan.specificCost` entries grouped by pharmacy benefit type, in source order. With
/// `with_costs`, only tiers with a copay or coinsurance (and those costs); without, every
/// tier as a benefit type only (the Formulary's non-cost plan information).
fn specific_costs(tiers: &[TierCostShare], with_costs: bool) -> Result<Vec<Value>, MapError> {
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for t in tiers {
        let tier_display = display(DRUG_TIERS, &t.tier).ok_or_else(|| MapError::UnknownCode {
            field: "tiers.tier",
            code: t.tier.clone(),
        })?;
        let pharmacy = t
            .pharmacy_type
            .clone()
            .unwrap_or_else(|| DEFAULT_PHARMACY_BENEFIT_TYPE.to_string());
        if display(PHARMACY_BENEFIT_TYPES, &pharmacy).is_none() {
            return Err(MapError::UnknownCode {
                field: "tiers.pharmacy_type",
                code: pharmacy,
            });
        }
        let mut benefit = Map::new();
        benefit.insert(
            "type".into(),
            concept(cs::DRUG_TIER, &t.tier, Some(tier_display)),
        );
        if with_costs {
            let mut cost = Vec::new();
            if let (Some(amount), Some(opt)) = (&t.copay, &t.copay_option) {
                cost.push(cost_entry(
                    "copay",
                    "Copay",
                    opt,
                    COPAY_OPTION_VS,
                    json!({
                        "value": number("tiers.copay", amount)?,
                        "unit": "$",
                        "system": "urn:iso:std:iso:4217",
                        "code": "USD",
                    }),
                )?);
            }
            if let (Some(rate), Some(opt)) = (&t.coinsurance, &t.coinsurance_option) {
                cost.push(cost_entry(
                    "coinsurance",
                    "Coinsurance",
                    opt,
                    COINSURANCE_OPTION_VS,
                    json!({
                        "value": number("tiers.coinsurance", rate)?,
                        "unit": "%",
                        "system": "http://unitsofmeasure.org",
                        "code": "%",
                    }),
                )?);
            }
            if cost.is_empty() {
                continue;
            }
            benefit.insert("cost".into(), Value::Array(cost));
        }
        let benefit = Value::Object(benefit);
        match groups.iter_mut().find(|(p, _)| *p == pharmacy) {
            Some((_, list)) => {
                if !list.contains(&benefit) {
                    list.push(benefit);
                }
            }
            None => groups.push((pharmacy, vec![benefit])),
        }
    }
    Ok(groups
        .into_iter()
        .map(|(pharmacy, benefits)| {
            let disp = display(PHARMACY_BENEFIT_TYPES, &pharmacy);
            json!({
                "category": concept(cs::PHARMACY_BENEFIT_TYPE, &pharmacy, disp),
                "benefit": benefits,
            })
        })
        .collect())
}

fn cost_entry(
    code: &str,
    disp: &str,
    option: &str,
    allowed: &[&str],
    value: Value,
) -> Result<Value, MapError> {
    if !allowed.contains(&option) {
        return Err(MapError::UnknownCode {
            field: "tiers.cost_option",
            code: option.to_string(),
        });
    }
    Ok(json!({
        "type": concept(cs::COST_TYPE, code, Some(disp)),
        "qualifiers": [concept(cs::COST_SHARE_OPTION, option, display(COST_SHARE_OPTIONS, option))],
        "value": value,
    }))
}

// ---------------------------------------------------------------------------------------------
// Search parameters

/// The IG canonical of a SearchParameter id. Every formulary parameter fhirlake indexes,
/// including those named like base R4 ones (`status`, `code`, `identifier`), has its own IG
/// definition (conformance/SearchParameter-*.json), so that is the definition cited.
macro_rules! canon {
    ($id:literal) => {
        concat!(
            "http://hl7.org/fhir/us/davinci-drug-formulary/SearchParameter/",
            $id
        )
    };
}

/// The PDex formulary search parameters, declared once (see the crate's registry).
pub const SEARCH_PARAMS: &[SearchParam] = &[
    sp(
        "InsurancePlan",
        "identifier",
        ParamType::Token,
        canon!("InsurancePlan-identifier"),
        &[],
        sp_identifier,
    ),
    sp(
        "InsurancePlan",
        "status",
        ParamType::Token,
        canon!("InsurancePlan-status"),
        &[],
        sp_plan_status,
    ),
    sp(
        "InsurancePlan",
        "period",
        ParamType::Date,
        canon!("InsurancePlan-period"),
        &[],
        sp_plan_period,
    ),
    sp(
        "InsurancePlan",
        "type",
        ParamType::Token,
        canon!("InsurancePlan-type"),
        &[],
        sp_plan_type,
    ),
    sp(
        "InsurancePlan",
        "name",
        ParamType::String,
        canon!("InsurancePlan-name"),
        &[],
        sp_plan_name,
    ),
    sp(
        "InsurancePlan",
        "coverage-type",
        ParamType::Token,
        canon!("InsurancePlan-coverage-type"),
        &[],
        sp_coverage_type,
    ),
    sp(
        "InsurancePlan",
        "formulary-coverage",
        ParamType::Reference,
        canon!("InsurancePlan-formulary-coverage"),
        &["InsurancePlan"],
        sp_formulary_coverage,
    ),
    sp(
        "InsurancePlan",
        "coverage-area",
        ParamType::Reference,
        canon!("InsurancePlan-coverage-area"),
        &["Location"],
        sp_coverage_area,
    ),
    sp(
        "Basic",
        "code",
        ParamType::Token,
        canon!("Basic-code"),
        &[],
        sp_basic_code,
    ),
    sp(
        "Basic",
        "subject",
        ParamType::Reference,
        canon!("Basic-subject"),
        &["MedicationKnowledge"],
        sp_basic_subject,
    ),
    sp(
        "Basic",
        "status",
        ParamType::Token,
        canon!("Basic-status"),
        &[],
        sp_basic_status,
    ),
    sp(
        "Basic",
        "period",
        ParamType::Date,
        canon!("Basic-period"),
        &[],
        sp_basic_period,
    ),
    sp(
        "Basic",
        "formulary",
        ParamType::Reference,
        canon!("Basic-formulary"),
        &["InsurancePlan"],
        sp_basic_formulary,
    ),
    sp(
        "Basic",
        "pharmacy-benefit-type",
        ParamType::Token,
        canon!("Basic-pharmacy-benefit-type"),
        &[],
        sp_basic_pharmacy,
    ),
    sp(
        "Basic",
        "drug-tier",
        ParamType::Token,
        canon!("Basic-drug-tier"),
        &[],
        sp_basic_tier,
    ),
    sp(
        "MedicationKnowledge",
        "status",
        ParamType::Token,
        canon!("MedicationKnowledge-status"),
        &[],
        sp_mk_status,
    ),
    sp(
        "MedicationKnowledge",
        "code",
        ParamType::Token,
        canon!("MedicationKnowledge-code"),
        &[],
        sp_mk_code,
    ),
    sp(
        "MedicationKnowledge",
        "drug-name",
        ParamType::String,
        canon!("MedicationKnowledge-drug-name"),
        &[],
        sp_mk_name,
    ),
    sp(
        "MedicationKnowledge",
        "doseform",
        ParamType::Token,
        canon!("MedicationKnowledge-doseform"),
        &[],
        sp_mk_doseform,
    ),
];

const fn sp(
    resource: &'static str,
    code: &'static str,
    kind: ParamType,
    definition: &'static str,
    targets: &'static [&'static str],
    extract: fn(&Value) -> Vec<IndexValue>,
) -> SearchParam {
    SearchParam {
        resource,
        code,
        kind,
        definition,
        targets,
        extract,
    }
}

fn as_array(v: Option<&Value>) -> &[Value] {
    match v {
        Some(Value::Array(a)) => a,
        _ => &[],
    }
}

fn concept_tokens(cc: &Value, out: &mut Vec<IndexValue>) {
    for c in as_array(cc.get("coding")) {
        if let Some(code) = c.get("code").and_then(Value::as_str) {
            out.push(IndexValue::Token {
                system: c
                    .get("system")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                code: code.into(),
            });
        }
    }
}

fn code_token(v: Option<&Value>) -> Vec<IndexValue> {
    v.and_then(Value::as_str)
        .map(|c| {
            vec![IndexValue::Token {
                system: Text::default(),
                code: c.into(),
            }]
        })
        .unwrap_or_default()
}

fn period_value(p: &Value) -> Option<IndexValue> {
    let start = p.get("start").and_then(Value::as_str).map(Text::from);
    let end = p.get("end").and_then(Value::as_str).map(Text::from);
    (start.is_some() || end.is_some()).then_some(IndexValue::Date { start, end })
}

fn reference(r: &Value) -> Option<IndexValue> {
    r.get("reference")
        .and_then(Value::as_str)
        .map(|s| IndexValue::Reference(s.into()))
}

/// Values of the extensions with `url` (the IG expressions' `extension.where(url=…).value`).
fn extension_values<'a>(parent: &'a Value, url: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    as_array(parent.get("extension"))
        .iter()
        .filter(move |e| e.get("url").and_then(Value::as_str) == Some(url))
}

fn sp_identifier(r: &Value) -> Vec<IndexValue> {
    as_array(r.get("identifier"))
        .iter()
        .filter_map(|i| {
            let code = i.get("value").and_then(Value::as_str)?;
            Some(IndexValue::Token {
                system: i
                    .get("system")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                code: code.into(),
            })
        })
        .collect()
}

fn sp_plan_status(r: &Value) -> Vec<IndexValue> {
    code_token(r.get("status"))
}

fn sp_plan_period(r: &Value) -> Vec<IndexValue> {
    r.get("period").and_then(period_value).into_iter().collect()
}

fn sp_plan_type(r: &Value) -> Vec<IndexValue> {
    let mut out = Vec::new();
    for t in as_array(r.get("type")) {
        concept_tokens(t, &mut out);
    }
    out
}

fn sp_plan_name(r: &Value) -> Vec<IndexValue> {
    let mut out: Vec<IndexValue> = r
        .get("name")
        .and_then(Value::as_str)
        .map(|n| IndexValue::String(n.into()))
        .into_iter()
        .collect();
    for a in as_array(r.get("alias")) {
        if let Some(s) = a.as_str() {
            out.push(IndexValue::String(s.into()));
        }
    }
    out
}

fn sp_coverage_type(r: &Value) -> Vec<IndexValue> {
    let mut out = Vec::new();
    for c in as_array(r.get("coverage")) {
        if let Some(t) = c.get("type") {
            concept_tokens(t, &mut out);
        }
    }
    out
}

fn sp_formulary_coverage(r: &Value) -> Vec<IndexValue> {
    as_array(r.get("coverage"))
        .iter()
        .flat_map(|c| extension_values(c, ext::FORMULARY_REFERENCE))
        .filter_map(|e| e.get("valueReference").and_then(reference))
        .collect()
}

fn sp_coverage_area(r: &Value) -> Vec<IndexValue> {
    as_array(r.get("coverageArea"))
        .iter()
        .filter_map(reference)
        .collect()
}

fn sp_basic_code(r: &Value) -> Vec<IndexValue> {
    let mut out = Vec::new();
    if let Some(c) = r.get("code") {
        concept_tokens(c, &mut out);
    }
    out
}

fn sp_basic_subject(r: &Value) -> Vec<IndexValue> {
    r.get("subject").and_then(reference).into_iter().collect()
}

fn sp_basic_status(r: &Value) -> Vec<IndexValue> {
    extension_values(r, ext::AVAILABILITY_STATUS)
        .flat_map(|e| code_token(e.get("valueCode")))
        .collect()
}

fn sp_basic_period(r: &Value) -> Vec<IndexValue> {
    extension_values(r, ext::AVAILABILITY_PERIOD)
        .filter_map(|e| e.get("valuePeriod").and_then(period_value))
        .collect()
}

fn sp_basic_formulary(r: &Value) -> Vec<IndexValue> {
    extension_values(r, ext::FORMULARY_REFERENCE)
        .filter_map(|e| e.get("valueReference").and_then(reference))
        .collect()
}

fn concept_extension_tokens(r: &Value, url: &str) -> Vec<IndexValue> {
    let mut out = Vec::new();
    for e in extension_values(r, url) {
        if let Some(cc) = e.get("valueCodeableConcept") {
            concept_tokens(cc, &mut out);
        }
    }
    out
}

fn sp_basic_pharmacy(r: &Value) -> Vec<IndexValue> {
    concept_extension_tokens(r, ext::PHARMACY_BENEFIT_TYPE)
}

fn sp_basic_tier(r: &Value) -> Vec<IndexValue> {
    concept_extension_tokens(r, ext::DRUG_TIER)
}

fn sp_mk_status(r: &Value) -> Vec<IndexValue> {
    code_token(r.get("status"))
}

fn sp_mk_code(r: &Value) -> Vec<IndexValue> {
    let mut out = Vec::new();
    if let Some(c) = r.get("code") {
        concept_tokens(c, &mut out);
    }
    out
}

fn sp_mk_name(r: &Value) -> Vec<IndexValue> {
    let mut out = Vec::new();
    if let Some(c) = r.get("code") {
        for coding in as_array(c.get("coding")) {
            if let Some(d) = coding.get("display").and_then(Value::as_str) {
                out.push(IndexValue::String(d.into()));
            }
        }
    }
    for s in as_array(r.get("synonym")) {
        if let Some(s) = s.as_str() {
            out.push(IndexValue::String(s.into()));
        }
    }
    out
}

fn sp_mk_doseform(r: &Value) -> Vec<IndexValue> {
    let mut out = Vec::new();
    if let Some(c) = r.get("doseForm") {
        concept_tokens(c, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingest::model::{Party, PlanContact};

    fn drug() -> FormularyDrug {
        FormularyDrug {
            formulary_id: "00099999".into(),
            rxnorm: "248656".into(),
            drug_name: Some("Azithromycin 500 MG Oral Tablet".into()),
            ndcs: vec!["99999000001".into()],
            dose_form: Some("Oral Tablet".into()),
            tier: Some("preferred-generic".into()),
            pharmacy_benefit_types: vec!["1-month-in-retail".into(), "3-month-in-mail".into()],
            prior_auth: Some(false),
            step_therapy: Some(true),
            quantity_limit: Some(true),
            quantity_limit_amount: Some("6".into()),
            quantity_limit_days: Some("30".into()),
            effective_start: Some("2026-01-01".into()),
            effective_end: Some("2026-12-31".into()),
            ..FormularyDrug::default()
        }
    }

    fn plan() -> FormularyPlan {
        FormularyPlan {
            plan_id: "12345XX9876543".into(),
            plan_name: Some("Gold".into()),
            plan_type: Some("qhp".into()),
            formulary_id: "12345XX9876543".into(),
            payer: Party {
                id: Some("12345".into()),
                id_kind: Some("hios-issuer".into()),
                ..Party::default()
            },
            tiers: vec![TierCostShare {
                tier: "generic".into(),
                pharmacy_type: Some("1-month-in-retail".into()),
                copay: Some("20.0".into()),
                copay_option: Some("after-deductible".into()),
                coinsurance: Some("10".into()),
                coinsurance_option: Some("charge".into()),
                mail_order: Some(true),
            }],
            coverage_areas: vec!["CT".into()],
            period_start: Some("2020-01-01".into()),
            period_end: Some("2020-12-31".into()),
            contacts: vec![PlanContact {
                purpose: "SUMMARY".into(),
                system: "url".into(),
                value: "https://example.org/s".into(),
            }],
            ..FormularyPlan::default()
        }
    }

    fn param(resource: &str, code: &str) -> &'static SearchParam {
        SEARCH_PARAMS
            .iter()
            .find(|p| p.resource == resource && p.code == code)
            .unwrap_or_else(|| panic!("{resource}.{code}"))
    }

    fn tok(system: &str, code: &str) -> IndexValue {
        IndexValue::Token {
            system: system.into(),
            code: code.into(),
        }
    }

    #[test]
    fn ids_are_stable_and_fhir_safe() {
        assert_eq!(item_id("00099999", "248656"), "item-00099999-248656");
        assert_eq!(plan_id("H9999-001-000"), "plan-H9999-001-000");
        let hashed = fhir_id("item", &["ABC/ü", "1"]);
        assert!(
            hashed.starts_with("item-") && hashed.len() == 25,
            "{hashed}"
        );
        assert_eq!(hashed, fhir_id("item", &["ABC/ü", "1"]));
        assert_ne!(fhir_id("x", &["a b", "c"]), fhir_id("x", &["a", "b c"]));
        let long = "9".repeat(80);
        assert!(fhir_id("plan", &[&long]).len() <= 64);
    }

    #[test]
    fn every_param_cites_an_ig_definition_and_is_unique() {
        for (i, p) in SEARCH_PARAMS.iter().enumerate() {
            assert!(p
                .definition
                .starts_with("http://hl7.org/fhir/us/davinci-drug-formulary/SearchParameter/"));
            assert!(p
                .definition
                .ends_with(&format!("{}-{}", p.resource, p.code)));
            assert_eq!(p.kind == ParamType::Reference, !p.targets.is_empty());
            assert!(!SEARCH_PARAMS[..i]
                .iter()
                .any(|q| q.resource == p.resource && q.code == p.code));
        }
        assert_eq!(SEARCH_PARAMS.len(), 19);
    }

    #[test]
    fn basic_extractors() {
        let out = map_drug(&drug()).expect("maps");
        let item = &out[0].json.to_value();
        let get = |code: &str| (param("Basic", code).extract)(item);
        assert_eq!(get("code"), [tok(cs::ITEM_TYPE, "formulary-item")]);
        assert_eq!(
            get("subject"),
            [IndexValue::Reference(
                "MedicationKnowledge/rxnorm-248656".into()
            )]
        );
        assert_eq!(get("status"), [tok("", "active")]);
        assert_eq!(
            get("period"),
            [IndexValue::Date {
                start: Some("2026-01-01".into()),
                end: Some("2026-12-31".into())
            }]
        );
        assert_eq!(
            get("formulary"),
            [IndexValue::Reference(
                "InsurancePlan/formulary-00099999".into()
            )]
        );
        assert_eq!(
            get("pharmacy-benefit-type"),
            [
                tok(cs::PHARMACY_BENEFIT_TYPE, "1-month-in-retail"),
                tok(cs::PHARMACY_BENEFIT_TYPE, "3-month-in-mail")
            ]
        );
        assert_eq!(get("drug-tier"), [tok(cs::DRUG_TIER, "preferred-generic")]);
    }

    #[test]
    fn medication_knowledge_extractors() {
        let out = map_drug(&drug()).expect("maps");
        let mk = &out[1].json.to_value();
        let get = |code: &str| (param("MedicationKnowledge", code).extract)(mk);
        assert_eq!(get("status"), [tok("", "active")]);
        assert_eq!(
            get("code"),
            [tok(cs::RXNORM, "248656"), tok(cs::NDC, "99999000001")]
        );
        assert_eq!(
            get("drug-name"),
            [IndexValue::String("Azithromycin 500 MG Oral Tablet".into())]
        );
        // a text-only dose form has no token
        assert!(get("doseform").is_empty());
        let coded =
            json!({ "doseForm": { "coding": [{ "system": cs::RXNORM, "code": "317541" }] } });
        assert_eq!(
            (param("MedicationKnowledge", "doseform").extract)(&coded),
            [tok(cs::RXNORM, "317541")]
        );
    }

    #[test]
    fn insurance_plan_extractors() {
        let out = map_plan(&plan()).expect("maps");
        let kinds: Vec<_> = out
            .iter()
            .map(|r| format!("{}/{}", r.resource_type, r.id))
            .collect();
        assert_eq!(
            kinds,
            [
                "InsurancePlan/formulary-12345XX9876543",
                "InsurancePlan/plan-12345XX9876543",
                "Organization/payer-12345",
                "Location/area-CT"
            ]
        );
        let formulary = &out[0].json.to_value();
        let payer_plan = &out[1].json.to_value();
        let get = |code: &str, r: &Value| (param("InsurancePlan", code).extract)(r);
        assert_eq!(get("identifier", payer_plan), [tok("", "12345XX9876543")]);
        assert_eq!(get("status", formulary), [tok("", "active")]);
        assert_eq!(
            get("period", payer_plan),
            [IndexValue::Date {
                start: Some("2020-01-01".into()),
                end: Some("2020-12-31".into())
            }]
        );
        assert_eq!(get("type", formulary), [tok(cs::ACT_CODE, "DRUGPOL")]);
        assert_eq!(get("type", payer_plan), [tok(cs::PRODUCT_TYPE, "qhp")]);
        assert_eq!(get("name", payer_plan), [IndexValue::String("Gold".into())]);
        assert!(get("name", formulary).is_empty());
        assert_eq!(
            get("coverage-type", payer_plan),
            [tok(cs::ACT_CODE, "DRUGPOL")]
        );
        assert_eq!(
            get("formulary-coverage", payer_plan),
            [IndexValue::Reference(
                "InsurancePlan/formulary-12345XX9876543".into()
            )]
        );
        assert!(get("formulary-coverage", formulary).is_empty());
        assert_eq!(
            get("coverage-area", payer_plan),
            [IndexValue::Reference("Location/area-CT".into())]
        );
        // cost sharing as the profile wants it
        let cost = &payer_plan["plan"][0]["specificCost"][0]["benefit"][0]["cost"];
        assert_eq!(
            cost[0]["value"],
            json!({"value": 20.0, "unit": "$", "system": "urn:iso:std:iso:4217", "code": "USD"})
        );
        assert_eq!(cost[1]["value"]["value"], json!(10));
        assert_eq!(cost[1]["qualifiers"][0]["coding"][0]["code"], "charge");
        assert_eq!(
            payer_plan["meta"]["profile"][0],
            format!("{PROFILE_PLAN}|2.0.1")
        );
    }

    #[test]
    fn deletes_and_missing_values() {
        let mut d = drug();
        d.change = Change::Delete;
        d.tier = None;
        let out = map_drug(&d).expect("maps");
        assert_eq!(out.len(), 1);
        assert!(out[0].deleted && out[0].resource_type == "Basic");
        d.change = Change::Upsert;
        assert_eq!(map_drug(&d), Err(MapError::Missing("tier")));
        d.tier = Some("gold".into());
        assert!(matches!(
            map_drug(&d),
            Err(MapError::UnknownCode { field: "tier", .. })
        ));
        let mut p = plan();
        p.tiers[0].coinsurance_option = Some("before-deductible".into());
        assert!(matches!(map_plan(&p), Err(MapError::UnknownCode { .. })));
        let mut p = plan();
        p.tiers.clear();
        let out = map_plan(&p).expect("maps");
        assert!(
            out[1].json.to_value().get("meta").is_none(),
            "no cost sharing: no profile claim"
        );
        p.plan_id.clear();
        assert_eq!(map_plan(&p).expect("maps").len(), 1);
    }

    #[test]
    fn quantity_limit_detail() {
        let out = map_drug(&drug()).expect("maps");
        let detail = out[0].json.to_value()["extension"]
            .as_array()
            .expect("extensions")
            .iter()
            .find(|e| e["url"] == ext::QUANTITY_LIMIT_DETAIL)
            .expect("detail")
            .clone();
        assert_eq!(
            detail["extension"][0]["valueString"],
            "At most 6 per 30 days"
        );
        assert_eq!(
            detail["extension"][1]["valueTiming"]["repeat"],
            json!({"count": 6, "period": 30, "periodUnit": "d"})
        );
    }
}
