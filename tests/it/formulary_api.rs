//! The public drug-formulary API: typical questions, one request each, checked against an
//! independent reading of the exported resources.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{bin, export, exported_ids, ids, ingest, Server};

const USDF: &str = "http://hl7.org/fhir/us/davinci-drug-formulary/StructureDefinition";

fn ext<'a>(r: &'a Value, name: &str) -> Option<&'a Value> {
    r["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == format!("{USDF}/{name}"))
}

#[test]
fn formulary_questions_answer_in_one_request() {
    let work = tempfile::tempdir().unwrap();
    let extract = work.path().join("formulary.xml");
    crate::common::succeed(
        bin()
            .args(["generate", "--formularies", "3", "--drugs", "40", "--out"])
            .arg(&extract),
    );
    let lake = work.path().join("lake");
    let (code, log) = ingest(&lake, &[extract.to_str().unwrap(), "samples/formulary"]);
    assert_eq!(code, 0, "{log}");
    let all = export(&lake);
    let items: Vec<&Value> = all
        .iter()
        .filter(|r| r["resourceType"] == "Basic")
        .collect();
    assert!(items.len() >= 100, "{} items", items.len());
    let s = Server::start(&lake);

    // Pick a formulary and a drug on it from the data itself.
    let item = items[7];
    let formulary = ext(item, "usdf-FormularyReference-extension").unwrap()["valueReference"]
        ["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let drug = item["subject"]["reference"].as_str().unwrap().to_string();
    let tier = ext(item, "usdf-DrugTierID-extension").unwrap()["valueCodeableConcept"]["coding"][0]
        ["code"]
        .as_str()
        .unwrap()
        .to_string();

    // 1. Which tier is drug X on formulary F? (no token: formulary data is public)
    let (st, b) = s.get(&format!("Basic?formulary={formulary}&subject={drug}"), None);
    assert_eq!(st, 200, "{b}");
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{b}");
    let got = ext(&entries[0]["resource"], "usdf-DrugTierID-extension").unwrap()
        ["valueCodeableConcept"]["coding"][0]["code"]
        .as_str()
        .unwrap();
    assert_eq!(got, tier);

    // 2. Drugs on formulary F needing prior authorization (with the drugs included).
    let want: BTreeSet<String> = items
        .iter()
        .filter(|i| {
            ext(i, "usdf-FormularyReference-extension").unwrap()["valueReference"]["reference"]
                == formulary.as_str()
        })
        .filter(|i| {
            ext(i, "usdf-PriorAuthorization-extension").is_some_and(|e| e["valueBoolean"] == true)
        })
        .map(|i| format!("Basic/{}", i["id"].as_str().unwrap()))
        .collect();
    assert!(
        !want.is_empty(),
        "the generated extract has prior-authorization drugs"
    );
    let mut got = BTreeSet::new();
    let mut included = BTreeSet::new();
    let mut url = format!(
        "Basic?formulary={formulary}&prior-authorization=true&_include=Basic:subject&_count=50"
    );
    loop {
        let (st, b) = s.get(&url, None);
        assert_eq!(st, 200, "{b}");
        got.extend(ids(&b, "match"));
        included.extend(ids(&b, "include"));
        match crate::common::next(&b) {
            Some(n) => url = n,
            None => break,
        }
    }
    assert_eq!(got, want);
    assert!(
        included
            .iter()
            .all(|i| i.starts_with("MedicationKnowledge/"))
            && !included.is_empty()
    );

    // 3. Which plans use formulary F?
    let plans: BTreeSet<String> = all
        .iter()
        .filter(|r| r["resourceType"] == "InsurancePlan")
        .filter(|r| {
            r.to_string()
                .contains(&format!("\"reference\":\"{formulary}\""))
                && r["id"].as_str() != formulary.strip_prefix("InsurancePlan/")
        })
        .map(|r| format!("InsurancePlan/{}", r["id"].as_str().unwrap()))
        .collect();
    let (st, b) = s.get(
        &format!("InsurancePlan?formulary-coverage={formulary}"),
        None,
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(ids(&b, "match").into_iter().collect::<BTreeSet<_>>(), plans);

    // String search: case- and accent-insensitive starts-with, :exact, :contains.
    let (_, b) = s.get("MedicationKnowledge?drug-name=acetaminophen", None);
    assert_eq!(ids(&b, "match"), vec!["MedicationKnowledge/rxnorm-209459"]);
    let (_, b) = s.get("MedicationKnowledge?drug-name:contains=zithro", None);
    assert_eq!(ids(&b, "match"), vec!["MedicationKnowledge/rxnorm-248656"]);
    let (_, b) = s.get("MedicationKnowledge?drug-name:exact=acetaminophen", None);
    assert!(ids(&b, "match").is_empty());

    // 4. Where is a plan offered? Its service area is public usdf-InsurancePlanLocations
    //    (samples/formulary/partd: S9999-001 in ME and NH, H9998-002 in ME).
    let (st, b) = s.get("Location?address-state=NH", None);
    assert_eq!(st, 200, "{b}");
    assert_eq!(ids(&b, "match"), vec!["Location/area-NH"]);
    assert_eq!(b["entry"][0]["resource"]["address"]["state"], "NH");
    let (st, b) = s.get(
        "InsurancePlan?coverage-area=Location/area-ME&_include=InsurancePlan:coverage-area",
        None,
    );
    assert_eq!(st, 200, "{b}");
    let matched: BTreeSet<String> = ids(&b, "match").into_iter().collect();
    assert_eq!(
        matched,
        BTreeSet::from([
            "InsurancePlan/plan-H9998-002-000".to_string(),
            "InsurancePlan/plan-S9999-001-000".to_string()
        ])
    );
    let included: BTreeSet<String> = ids(&b, "include").into_iter().collect();
    assert_eq!(
        included,
        BTreeSet::from([
            "Location/area-ME".to_string(),
            "Location/area-NH".to_string()
        ])
    );
    let (st, cs) = s.get("metadata", None);
    assert_eq!(st, 200);
    let location = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Location")
        .expect("Location in the CapabilityStatement");
    let params: BTreeSet<&str> = location["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "_id",
        "_lastUpdated",
        "address",
        "address-city",
        "address-state",
        "address-postalcode",
    ] {
        assert!(params.contains(p), "Location search parameter {p}");
    }

    // Member data stays gated on the same server.
    let (st, _) = s.get("ExplanationOfBenefit", None);
    assert_eq!(st, 401);
}

#[test]
fn a_full_extract_replaces_its_formularies() {
    let work = tempfile::tempdir().unwrap();
    let gen = |drugs: &str, name: &str| {
        let p = work.path().join(name);
        let out = bin()
            .args(["generate", "--formularies", "2", "--drugs", drugs, "--out"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(out.status.success());
        p.to_str().unwrap().to_string()
    };
    let big = gen("30", "f30.xml");
    let small = gen("10", "f10.xml");
    let lake = work.path().join("lake");
    let items = |lake: &std::path::Path| -> BTreeSet<String> {
        exported_ids(lake, "Basic").into_iter().collect()
    };
    assert_eq!(ingest(&lake, &[&big]).0, 0);
    let before = items(&lake);
    assert_eq!(ingest(&lake, &[&small]).0, 0);
    let after = items(&lake);
    // Exactly the items of the latest FULL extract remain: the same as a fresh lake of it.
    assert!(
        after.len() < before.len(),
        "{} -> {}",
        before.len(),
        after.len()
    );
    let lake2 = work.path().join("lake2");
    assert_eq!(ingest(&lake2, &[&small]).0, 0);
    assert_eq!(items(&lake2), after);
    // The removed items are tombstones in the key index; the big extract again brings them
    // back, and the index agrees with the tables at every step.
    mapper::pipeline::verify_key_index(&lake).unwrap();
    assert_eq!(ingest(&lake, &[&big]).0, 0);
    assert_eq!(items(&lake), before);
    let (checked, _) = mapper::pipeline::verify_key_index(&lake).unwrap();
    let l = mapper::lake::Lake::new(&lake);
    let m = l.manifest(&l.current_name().unwrap().unwrap()).unwrap();
    assert_eq!(checked, m.counts.values().sum::<u64>());
}
