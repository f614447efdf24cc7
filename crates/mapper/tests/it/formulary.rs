//! Formulary golden tests: reference extracts in, PDex US Drug Formulary 2.0.1 JSON out.
//!
//! Inputs are the ingest fixtures (`crates/ingest/tests/fixtures/formulary`). Outputs live in
//! `tests/golden/formulary/`: `<set>.json` (the resources, last version per id, in first-seen
//! order) and `<set>.summary.txt` (ids, deletes, rejects, notices and search-index values).
//! `BLESS=1 cargo test …` rewrites them; review the diff.
//!
//! Every produced resource is also checked against the PDex profiles' required elements,
//! slices and extensions ([`pdex_violations`]), and every reference must resolve within the set.
//! `meta.lastUpdated` (1..1 in every profile) is the lake writer's job and is not checked here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use ingest::formulary::{FormularyXmlReader, QhpReader};
use ingest::{Reader, SourceRecord};
use mapper::formulary::{self as f, cs, ext, map_drug, map_plan, SEARCH_PARAMS};
use mapper::registry::IndexValue;
use mapper::Resource;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    crate::manifest_dir()
        .join("../ingest/tests/fixtures/formulary")
        .join(name)
}

fn golden_dir() -> PathBuf {
    crate::manifest_dir().join("tests/golden/formulary")
}

#[derive(Default)]
struct Set {
    /// (type/id) → (resource, deleted), in first-seen order.
    order: Vec<String>,
    latest: BTreeMap<String, Resource>,
    log: String,
}

impl Set {
    fn read(&mut self, reader: &dyn Reader, file: &str) {
        let mut items = Vec::new();
        let summary = reader
            .read(&fixture(file), &mut |i| items.push(i))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        writeln!(self.log, "## {file}").ok();
        for item in items {
            let mapped = match item {
                Ok(SourceRecord::FormularyDrug(d)) => map_drug(&d),
                Ok(SourceRecord::FormularyPlan(p)) => map_plan(&p),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(r) => {
                    writeln!(
                        self.log,
                        "reject {} line {} {}: {}",
                        r.reason.as_str(),
                        r.position.line,
                        r.position.context.as_deref().unwrap_or(""),
                        r.message
                    )
                    .ok();
                    continue;
                }
            };
            match mapped {
                Ok(resources) => {
                    for r in resources {
                        let key = format!("{}/{}", r.resource_type, r.id);
                        if !self.latest.contains_key(&key) {
                            self.order.push(key.clone());
                        }
                        self.latest.insert(key, r);
                    }
                }
                Err(e) => {
                    writeln!(self.log, "map error: {e}").ok();
                }
            }
        }
        for n in &summary.notices {
            writeln!(
                self.log,
                "notice line {} {}: {}",
                n.position.line,
                n.position.context.as_deref().unwrap_or(""),
                n.message
            )
            .ok();
        }
    }

    fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.order.iter().map(|k| &self.latest[k])
    }

    fn summary(&self) -> String {
        let mut s = self.log.clone();
        writeln!(s, "## resources").ok();
        for r in self.resources() {
            let profile = r.json.as_tree().expect("a tree")["meta"]["profile"][0]
                .as_str()
                .unwrap_or("(no profile)");
            let profile = profile.rsplit('/').next().unwrap_or(profile);
            writeln!(
                s,
                "{}/{}{} {}",
                r.resource_type,
                r.id,
                if r.deleted { " DELETED" } else { "" },
                profile
            )
            .ok();
            for p in SEARCH_PARAMS
                .iter()
                .filter(|p| p.resource == r.resource_type)
            {
                let values: Vec<String> = (p.extract)(r.json.as_tree().expect("a tree"))
                    .iter()
                    .map(show)
                    .collect();
                if !values.is_empty() {
                    writeln!(s, "  {} = {}", p.code, values.join(", ")).ok();
                }
            }
        }
        s
    }
}

fn show(v: &IndexValue) -> String {
    match v {
        IndexValue::Token { system, code } if system.is_empty() => code.to_string(),
        IndexValue::Token { system, code } => {
            format!("{}|{code}", system.rsplit('/').next().unwrap_or(system))
        }
        IndexValue::String(s) => format!("{s:?}"),
        IndexValue::Reference(r) => r.to_string(),
        IndexValue::Date { start, end } => format!(
            "[{}, {}]",
            start.as_deref().unwrap_or(""),
            end.as_deref().unwrap_or("")
        ),
    }
}

fn compare_or_bless(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(golden_dir()).expect("golden dir");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with BLESS=1", path.display()));
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from the golden file at line {}: rerun with BLESS=1 and review the diff\nexpected: {:?}\nactual:   {:?}",
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

fn check_set(set: &Set, golden: &str) {
    let mut problems = Vec::new();
    for r in set.resources() {
        assert_eq!(
            r.json.as_tree().expect("a tree")["resourceType"],
            r.resource_type
        );
        assert_eq!(r.json.as_tree().expect("a tree")["id"], r.id.as_str());
        assert!(r.patient_id.is_none(), "formulary data is public");
        assert!(
            r.json.as_tree().expect("a tree")["meta"]
                .get("lastUpdated")
                .is_none(),
            "the lake sets lastUpdated"
        );
        assert!(valid_id(&r.id), "{}", r.id);
        if !r.deleted {
            for p in pdex_violations(r.json.as_tree().expect("a tree")) {
                problems.push(format!("{}/{}: {p}", r.resource_type, r.id));
            }
            let mut refs = Vec::new();
            references(r.json.as_tree().expect("a tree"), &mut refs);
            for target in refs {
                if !set.latest.contains_key(&target) {
                    problems.push(format!(
                        "{}/{}: unresolved reference {target}",
                        r.resource_type, r.id
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let array: Vec<&Value> = set.resources().filter_map(|r| r.json.as_tree()).collect();
    let json = serde_json::to_string_pretty(&array).expect("json") + "\n";
    compare_or_bless(&format!("{golden}.json"), &json);
    compare_or_bless(&format!("{golden}.summary.txt"), &set.summary());
}

pub(crate) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub(crate) fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "reference" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    references(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

#[test]
fn xml_example_to_pdex() {
    let mut set = Set::default();
    set.read(&FormularyXmlReader::new(), "formulary-extract-example.xml");
    let ids: Vec<&str> = set.order.iter().map(String::as_str).collect();
    assert!(ids.contains(&"Basic/item-00099999-197511"));
    assert!(set.latest["Basic/item-00099999-197511"].deleted);
    assert!(!set.latest.contains_key("MedicationKnowledge/rxnorm-197511"));
    assert!(ids.contains(&"InsurancePlan/formulary-00099999"));
    assert!(ids.contains(&"InsurancePlan/plan-H9999-001-000"));
    check_set(&set, "xml-example");
}

#[test]
fn qhp_samples_to_pdex() {
    let mut set = Set::default();
    set.read(&QhpReader::new(), "qhp_plans.json");
    let joined = QhpReader::with_plans(&fixture("qhp_plans.json")).expect("plans");
    set.read(&joined, "qhp_drugs-1.json");
    set.read(&joined, "qhp_drugs-2.json");
    // drugs-2 lists 209459 again (as Lialda, BRAND): the later record wins, as in the lake
    let item = set.latest["Basic/item-12345XX9876543-209459"]
        .json
        .as_tree()
        .expect("a tree");
    let tier = item["extension"]
        .as_array()
        .expect("ext")
        .iter()
        .find(|e| e["url"] == ext::DRUG_TIER)
        .expect("tier");
    assert_eq!(tier["valueCodeableConcept"]["coding"][0]["code"], "brand");
    check_set(&set, "qhp");
}

// ---------------------------------------------------------------------------------------------
// PDex US Drug Formulary 2.0.1 required elements, slices and extensions
// (profiles/*.md in the IG reference; cardinalities restated here).

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn has_coding(cc: &Value, system: &str, code: &str) -> bool {
    arr(&cc["coding"])
        .iter()
        .any(|c| c["system"] == system && c["code"] == code)
}

fn codes_in(cc: &Value, system: &str, allowed: &[&str]) -> bool {
    let codings: Vec<&Value> = arr(&cc["coding"])
        .iter()
        .filter(|c| c["system"] == system)
        .collect();
    !codings.is_empty()
        && codings
            .iter()
            .all(|c| c["code"].as_str().is_some_and(|x| allowed.contains(&x)))
}

fn count(ext_list: &Value, url: &str) -> usize {
    arr(ext_list).iter().filter(|e| e["url"] == url).count()
}

fn card(out: &mut Vec<String>, what: &str, n: usize, min: usize, max: usize) {
    if n < min || n > max {
        out.push(format!(
            "{what}: {n} (want {min}..{})",
            if max == usize::MAX {
                "*".into()
            } else {
                max.to_string()
            }
        ));
    }
}

const STAR: usize = usize::MAX;
const PUBLICATION_STATUS: &[&str] = &["draft", "active", "retired", "unknown"];

fn tier_codes() -> Vec<&'static str> {
    f::DRUG_TIERS.iter().map(|(c, _)| *c).collect()
}

fn pharmacy_codes() -> Vec<&'static str> {
    f::PHARMACY_BENEFIT_TYPES.iter().map(|(c, _)| *c).collect()
}

/// Violations of the PDex profile the resource claims in `meta.profile` (none claimed: none).
pub(crate) fn pdex_violations(r: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let profile = r["meta"]["profile"][0].as_str().unwrap_or("");
    if !profile.is_empty() && !profile.ends_with("|2.0.1") {
        out.push(format!("profile not versioned: {profile}"));
    }
    let profile = profile.split('|').next().unwrap_or("");
    match profile {
        f::PROFILE_ITEM => formulary_item(r, &mut out),
        f::PROFILE_DRUG => formulary_drug(r, &mut out),
        f::PROFILE_FORMULARY => formulary(r, &mut out),
        f::PROFILE_PLAN => payer_plan(r, &mut out),
        f::PROFILE_LOCATION => {
            if r["resourceType"] != "Location" {
                out.push("not a Location".into());
            }
        }
        "" => {}
        other => out.push(format!("unexpected profile {other}")),
    }
    out
}

fn formulary_item(r: &Value, out: &mut Vec<String>) {
    let e = &r["extension"];
    card(out, "extension", arr(e).len(), 4, STAR);
    card(
        out,
        "FormularyReference",
        count(e, ext::FORMULARY_REFERENCE),
        1,
        1,
    );
    card(
        out,
        "AvailabilityStatus",
        count(e, ext::AVAILABILITY_STATUS),
        1,
        1,
    );
    card(
        out,
        "AvailabilityPeriod",
        count(e, ext::AVAILABILITY_PERIOD),
        0,
        1,
    );
    card(
        out,
        "PharmacyBenefitType",
        count(e, ext::PHARMACY_BENEFIT_TYPE),
        1,
        STAR,
    );
    card(out, "DrugTierID", count(e, ext::DRUG_TIER), 1, 1);
    card(
        out,
        "PriorAuthorization",
        count(e, ext::PRIOR_AUTHORIZATION),
        0,
        1,
    );
    card(out, "StepTherapyLimit", count(e, ext::STEP_THERAPY), 0, 1);
    card(out, "QuantityLimit", count(e, ext::QUANTITY_LIMIT), 0, 1);
    card(
        out,
        "QuantityLimitDetail",
        count(e, ext::QUANTITY_LIMIT_DETAIL),
        0,
        1,
    );
    card(
        out,
        "AdditionalCoverageInformation",
        count(e, ext::ADDITIONAL_COVERAGE),
        0,
        1,
    );
    for x in arr(e) {
        let url = x["url"].as_str().unwrap_or("");
        let ok = match url {
            ext::FORMULARY_REFERENCE => x["valueReference"]["reference"]
                .as_str()
                .is_some_and(|s| s.starts_with("InsurancePlan/")),
            ext::AVAILABILITY_STATUS => x["valueCode"]
                .as_str()
                .is_some_and(|c| PUBLICATION_STATUS.contains(&c)),
            ext::AVAILABILITY_PERIOD => x["valuePeriod"].is_object(),
            ext::PHARMACY_BENEFIT_TYPE => codes_in(
                &x["valueCodeableConcept"],
                cs::PHARMACY_BENEFIT_TYPE,
                &pharmacy_codes(),
            ),
            ext::DRUG_TIER => codes_in(&x["valueCodeableConcept"], cs::DRUG_TIER, &tier_codes()),
            ext::PRIOR_AUTHORIZATION | ext::STEP_THERAPY | ext::QUANTITY_LIMIT => {
                x["valueBoolean"].is_boolean()
            }
            ext::QUANTITY_LIMIT_DETAIL => {
                let subs = arr(&x["extension"]);
                !subs.is_empty()
                    && x.get("valueString").is_none()
                    && subs.iter().all(|s| match s["url"].as_str() {
                        Some("Description") => s["valueString"].is_string(),
                        Some("Rolling") => {
                            let rep = &s["valueTiming"]["repeat"];
                            rep["count"].is_u64() && rep["period"].is_number()
                        }
                        Some("MaximumDaily") => s["valueQuantity"]["value"].is_number(),
                        Some("DaysSupply") => s["valueTiming"]["repeat"]["count"].is_u64(),
                        _ => false,
                    })
            }
            ext::ADDITIONAL_COVERAGE => x["valueMarkdown"].is_string(),
            _ => true,
        };
        if !ok {
            out.push(format!("bad extension value: {x}"));
        }
    }
    if !has_coding(&r["code"], cs::ITEM_TYPE, "formulary-item") {
        out.push("code is not usdf-InsuranceItemTypeCS#formulary-item".into());
    }
    if !r["subject"]["reference"]
        .as_str()
        .is_some_and(|s| s.starts_with("MedicationKnowledge/"))
    {
        out.push("subject must reference a FormularyDrug".into());
    }
}

fn formulary_drug(r: &Value, out: &mut Vec<String>) {
    let rx: Vec<&Value> = arr(&r["code"]["coding"])
        .iter()
        .filter(|c| c["system"] == cs::RXNORM && c["code"].is_string())
        .collect();
    card(out, "code.coding:semantic-drug", rx.len(), 1, STAR);
    if !r["status"]
        .as_str()
        .is_some_and(|s| ["active", "inactive", "entered-in-error"].contains(&s))
    {
        out.push("status 1..1 (medicationknowledge-status)".into());
    }
}

fn insurance_plan_common(r: &Value, out: &mut Vec<String>) {
    card(out, "identifier", arr(&r["identifier"]).len(), 1, STAR);
    if !r["status"]
        .as_str()
        .is_some_and(|s| PUBLICATION_STATUS.contains(&s))
    {
        out.push("status 1..1 (publication-status)".into());
    }
    card(out, "type", arr(&r["type"]).len(), 1, 1);
}

fn formulary(r: &Value, out: &mut Vec<String>) {
    insurance_plan_common(r, out);
    if !has_coding(&r["type"][0], cs::ACT_CODE, "DRUGPOL") {
        out.push("type must be v3-ActCode#DRUGPOL".into());
    }
    card(out, "plan", arr(&r["plan"]).len(), 0, 1);
    for p in arr(&r["plan"]) {
        if !has_coding(&p["type"], cs::PLAN_TYPE, "drug") {
            out.push("plan.type must be insurance-plan-type#drug".into());
        }
        for sc in arr(&p["specificCost"]) {
            if sc["category"].is_null() {
                out.push("plan.specificCost.category 1..1".into());
            }
            for b in arr(&sc["benefit"]) {
                if b["type"].is_null() {
                    out.push("plan.specificCost.benefit.type 1..1".into());
                }
            }
        }
    }
}

fn payer_plan(r: &Value, out: &mut Vec<String>) {
    insurance_plan_common(r, out);
    let drug_coverage: Vec<&Value> = arr(&r["coverage"])
        .iter()
        .filter(|c| has_coding(&c["type"], cs::ACT_CODE, "DRUGPOL"))
        .collect();
    card(out, "coverage", arr(&r["coverage"]).len(), 1, STAR);
    card(out, "coverage:drug-coverage", drug_coverage.len(), 1, STAR);
    for c in drug_coverage {
        card(
            out,
            "drug-coverage FormularyReference",
            count(&c["extension"], ext::FORMULARY_REFERENCE),
            1,
            STAR,
        );
        let drug_plan = arr(&c["benefit"])
            .iter()
            .filter(|b| has_coding(&b["type"], cs::PLAN_TYPE, "drug"))
            .count();
        card(out, "coverage.benefit:drug-plan", drug_plan, 1, STAR);
    }
    let drug_plans: Vec<&Value> = arr(&r["plan"])
        .iter()
        .filter(|p| has_coding(&p["type"], cs::PLAN_TYPE, "drug"))
        .collect();
    card(out, "plan:drug-plan", drug_plans.len(), 1, STAR);
    for p in drug_plans {
        card(
            out,
            "drug-plan.specificCost",
            arr(&p["specificCost"]).len(),
            1,
            STAR,
        );
        for sc in arr(&p["specificCost"]) {
            if sc["category"].is_null() {
                out.push("specificCost.category 1..1".into());
            }
            card(
                out,
                "specificCost.benefit",
                arr(&sc["benefit"]).len(),
                1,
                STAR,
            );
            for b in arr(&sc["benefit"]) {
                if !codes_in(&b["type"], cs::DRUG_TIER, &tier_codes()) {
                    out.push(format!("benefit.type not a DrugTierCS code: {}", b["type"]));
                }
                card(out, "benefit.cost", arr(&b["cost"]).len(), 1, STAR);
                let mut copays = 0;
                let mut coins = 0;
                for cost in arr(&b["cost"]) {
                    card(out, "cost.qualifiers", arr(&cost["qualifiers"]).len(), 1, 1);
                    let q = &cost["qualifiers"][0];
                    if has_coding(&cost["type"], cs::COST_TYPE, "copay") {
                        copays += 1;
                        if !codes_in(q, cs::COST_SHARE_OPTION, f::COPAY_OPTION_VS) {
                            out.push(format!("copay qualifier outside CopayOptionVS: {q}"));
                        }
                        if !cost["value"]["value"].is_number() {
                            out.push("copay.value.value 1..1".into());
                        }
                        if cost["value"]["system"] != "urn:iso:std:iso:4217"
                            || cost["value"]["code"] != "USD"
                        {
                            out.push("copay value must be USD (urn:iso:std:iso:4217)".into());
                        }
                    } else if has_coding(&cost["type"], cs::COST_TYPE, "coinsurance") {
                        coins += 1;
                        if !codes_in(q, cs::COST_SHARE_OPTION, f::COINSURANCE_OPTION_VS) {
                            out.push(format!(
                                "coinsurance qualifier outside CoinsuranceOptionVS: {q}"
                            ));
                        }
                        if cost["value"]["system"] != "http://unitsofmeasure.org"
                            || cost["value"]["code"] != "%"
                        {
                            out.push("coinsurance value must be UCUM %".into());
                        }
                    }
                }
                card(out, "cost:copay", copays, 0, 1);
                card(out, "cost:coinsurance", coins, 0, 1);
            }
        }
    }
}

#[test]
fn the_pdex_check_catches_what_it_should() {
    let good = serde_json::json!({
        "resourceType": "Basic",
        "meta": { "profile": [format!("{}|2.0.1", f::PROFILE_ITEM)] },
        "extension": [],
        "code": { "coding": [{ "system": cs::ITEM_TYPE, "code": "formulary-item" }] },
        "subject": { "reference": "InsurancePlan/x" },
    });
    let v = pdex_violations(&good);
    for expected in [
        "extension: 0",
        "FormularyReference: 0",
        "DrugTierID: 0",
        "subject must reference",
    ] {
        assert!(
            v.iter().any(|m| m.starts_with(expected)),
            "{expected} in {v:?}"
        );
    }
}
