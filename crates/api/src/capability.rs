//! The CapabilityStatement, generated from the search registry so that `/metadata` can never
//! claim what the code does not do.

use mapper::registry::{self, ParamType};
use serde_json::{json, Value};

use crate::App;

const C4BB: &str = "http://hl7.org/fhir/us/carin-bb/StructureDefinition";
const USDF: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition";

/// The profiles served for a type.
fn profiles(resource_type: &str) -> Vec<String> {
    let c = |n: &str| format!("{C4BB}/{n}|2.1.0");
    let u = |n: &str| format!("{USDF}/{n}|2.0.1");
    match resource_type {
        "Patient" => vec![c("C4BB-Patient")],
        "Coverage" => vec![c("C4BB-Coverage")],
        "Organization" => vec![c("C4BB-Organization")],
        "Practitioner" => vec![c("C4BB-Practitioner")],
        "ExplanationOfBenefit" => [
            "C4BB-ExplanationOfBenefit-Inpatient-Institutional",
            "C4BB-ExplanationOfBenefit-Outpatient-Institutional",
            "C4BB-ExplanationOfBenefit-Pharmacy",
            "C4BB-ExplanationOfBenefit-Professional-NonClinician",
            "C4BB-ExplanationOfBenefit-Inpatient-Institutional-Basis",
            "C4BB-ExplanationOfBenefit-Outpatient-Institutional-Basis",
            "C4BB-ExplanationOfBenefit-Pharmacy-Basis",
            "C4BB-ExplanationOfBenefit-Professional-NonClinician-Basis",
        ]
        .iter()
        .map(|n| c(n))
        .collect(),
        "InsurancePlan" => vec![u("usdf-PayerInsurancePlan"), u("usdf-Formulary")],
        "Basic" => vec![u("usdf-FormularyItem")],
        "MedicationKnowledge" => vec![u("usdf-FormularyDrug")],
        "Location" => vec![u("usdf-InsurancePlanLocation")],
        _ => Vec::new(),
    }
}

/// The CapabilityStatement of this server.
pub fn capability_statement(app: &App) -> Value {
    let mut resources = Vec::new();
    for t in registry::resource_types() {
        let params: Vec<Value> = registry::for_type(t)
            .map(|p| json!({ "name": p.code, "definition": p.definition, "type": p.kind.as_str() }))
            .collect();
        let mut includes: Vec<String> = registry::for_type(t)
            .filter(|p| p.kind == ParamType::Reference && !p.targets.is_empty())
            .map(|p| format!("{t}:{}", p.code))
            .collect();
        if !includes.is_empty() {
            includes.push(format!("{t}:*"));
        }
        let mut r = json!({
            "type": t,
            "supportedProfile": profiles(t),
            "interaction": [
                { "code": "read" },
                { "code": "vread" },
                { "code": "history-instance" },
                { "code": "search-type" }
            ],
            "versioning": "versioned",
            "readHistory": true,
            "conditionalRead": "full-support",
            "searchParam": params,
        });
        if !includes.is_empty() {
            r["searchInclude"] = json!(includes);
        }
        if crate::smart::is_public_resource(t) {
            r["documentation"] = json!("Public drug formulary data: readable without a token.");
        } else {
            r["documentation"] = json!("Member data: needs a SMART token with a scope for this type; results are confined to the token's patients.");
        }
        if t == "Patient" {
            r["operation"] = json!([{
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                "documentation": "The member's Patient, Coverage, ExplanationOfBenefit and the Organizations and Practitioners they reference, one resource type per phase; follow the next link. Supports _since, _type, _count.",
            }]);
        }
        resources.push(r);
    }
    let mut rest = json!({
        "mode": "server",
        "documentation": "Read-only: create, update, patch and delete answer 405.",
        "resource": resources,
    });
    if let Some(s) = &app.settings().smart {
        rest["security"] = s.rest_security();
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": { "name": "fhirlake", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "fhirlake: payer data as C4BB 2.1.0 and PDex US Drug Formulary 2.0.1 resources",
            "url": app.settings().base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "instantiates": [
            "http://hl7.org/fhir/us/carin-bb/CapabilityStatement/c4bb|2.1.0",
            "http://hl7.org/fhir/us/davinci-drug-formulary/CapabilityStatement/usdf-server|2.0.1",
        ],
        "rest": [rest],
    })
}
