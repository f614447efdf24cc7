//! CMS Part D basic drugs formulary file → PDex US Drug Formulary 2.0.1: the synthetic sample
//! (`samples/formulary/partd/`) read with `mappings/cms-partd-formulary.toml`, mapped with
//! [`map_drug`], checked with the PDex profile checks of the formulary golden tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use ingest::delimited::DelimitedReader;
use ingest::formulary::FormularyXmlReader;
use ingest::layout::Mapping;
use ingest::model::FormularyDrug;
use ingest::{Reader, SourceRecord};
use mapper::formulary::{
    cs, ext, map_drug, map_plan, PROFILE_DRUG, PROFILE_FORMULARY, PROFILE_ITEM,
};
use mapper::Resource;
use serde_json::Value;

use crate::formulary::{pdex_violations, references, valid_id};

fn root() -> PathBuf {
    crate::manifest_dir().join("../..")
}

fn drugs(rel: &str) -> Vec<FormularyDrug> {
    let mapping = Mapping::load(&root().join("mappings/cms-partd-formulary.toml")).expect("loads");
    let mut out = Vec::new();
    DelimitedReader::new(Arc::new(mapping))
        .read(&root().join(rel), &mut |i| {
            if let Ok(SourceRecord::FormularyDrug(d)) = i {
                out.push(*d);
            }
        })
        .expect("reads");
    out
}

/// Map every record; the later version of an id wins, as in the lake.
fn map_all(drugs: &[FormularyDrug]) -> BTreeMap<String, Resource> {
    let mut out = BTreeMap::new();
    for d in drugs {
        let resources = map_drug(d).unwrap_or_else(|e| panic!("{d:?}: {e}"));
        assert_eq!(resources.len(), 2, "a FormularyItem and a FormularyDrug");
        for r in resources {
            out.insert(format!("{}/{}", r.resource_type, r.id), r);
        }
    }
    out
}

fn extension<'a>(r: &'a Value, url: &str) -> Option<&'a Value> {
    r["extension"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["url"] == url))
}

#[test]
fn sample_maps_to_valid_pdex_items_and_drugs() {
    let drugs = drugs("samples/formulary/partd/basic-formulary.txt");
    assert_eq!(drugs.len(), 12);
    let set = map_all(&drugs);
    // 12 items (6 drugs on each of 2 formularies), 6 drugs shared by both formularies
    assert_eq!(set.keys().filter(|k| k.starts_with("Basic/")).count(), 12);
    assert_eq!(
        set.keys()
            .filter(|k| k.starts_with("MedicationKnowledge/"))
            .count(),
        6
    );
    let mut problems = Vec::new();
    let mut unresolved = std::collections::BTreeSet::new();
    for (key, r) in &set {
        assert!(valid_id(&r.id), "{key}");
        assert!(r.patient_id.is_none() && !r.deleted);
        let profile = r.json.as_tree().expect("a tree")["meta"]["profile"][0]
            .as_str()
            .unwrap_or("");
        let expected = match r.resource_type {
            "Basic" => PROFILE_ITEM,
            _ => PROFILE_DRUG,
        };
        assert_eq!(profile, format!("{expected}|2.0.1"), "{key}");
        for p in pdex_violations(r.json.as_tree().expect("a tree")) {
            problems.push(format!("{key}: {p}"));
        }
        let mut refs = Vec::new();
        references(r.json.as_tree().expect("a tree"), &mut refs);
        for target in refs {
            if !set.contains_key(&target) {
                unresolved.insert(target);
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The basic file has no plan information: the usdf-Formulary InsurancePlans come from the
    // PUF's plan information file (no mapping yet; the sample gives them as an XML extract).
    // Every other reference resolves within the set.
    assert_eq!(
        unresolved.into_iter().collect::<Vec<_>>(),
        [
            "InsurancePlan/formulary-00099901",
            "InsurancePlan/formulary-00099902"
        ]
    );
    let mut plans = Vec::new();
    let summary = FormularyXmlReader::new()
        .read(
            &root().join("samples/formulary/partd/plan-formularies.xml"),
            &mut |i| match i {
                Ok(SourceRecord::FormularyPlan(p)) => plans.push(*p),
                other => panic!("unexpected {other:?}"),
            },
        )
        .expect("reads");
    assert!(summary.notices.is_empty(), "{:?}", summary.notices);
    let mut with_plans = set.clone();
    for p in &plans {
        for r in map_plan(p).unwrap_or_else(|e| panic!("{p:?}: {e}")) {
            for v in pdex_violations(r.json.as_tree().expect("a tree")) {
                problems.push(format!("{}/{}: {v}", r.resource_type, r.id));
            }
            with_plans.insert(format!("{}/{}", r.resource_type, r.id), r);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for (key, r) in &with_plans {
        let mut refs = Vec::new();
        references(r.json.as_tree().expect("a tree"), &mut refs);
        for target in refs {
            assert!(with_plans.contains_key(&target), "{key}: {target}");
        }
    }
    for f in ["00099901", "00099902"] {
        let formulary = with_plans[&format!("InsurancePlan/formulary-{f}")]
            .json
            .as_tree()
            .expect("a tree");
        assert_eq!(
            formulary["meta"]["profile"][0],
            format!("{PROFILE_FORMULARY}|2.0.1")
        );
    }

    let item = set["Basic/item-00099901-248656"]
        .json
        .as_tree()
        .expect("a tree");
    assert_eq!(
        item["subject"]["reference"],
        "MedicationKnowledge/rxnorm-248656"
    );
    let tier = extension(item, ext::DRUG_TIER).expect("tier");
    assert_eq!(
        tier["valueCodeableConcept"]["coding"][0],
        serde_json::json!({ "system": cs::DRUG_TIER, "code": "preferred-generic", "display": "Preferred Generic" })
    );
    let pbt = extension(item, ext::PHARMACY_BENEFIT_TYPE).expect("pharmacy benefit type");
    assert_eq!(
        pbt["valueCodeableConcept"]["coding"][0]["code"],
        "1-month-in-retail"
    );
    assert_eq!(
        extension(item, ext::QUANTITY_LIMIT).expect("ql")["valueBoolean"],
        true
    );
    assert_eq!(
        extension(item, ext::PRIOR_AUTHORIZATION).expect("pa")["valueBoolean"],
        false
    );
    let detail = extension(item, ext::QUANTITY_LIMIT_DETAIL).expect("detail");
    assert_eq!(
        detail["extension"][0]["valueString"],
        "At most 6 per 30 days"
    );
    assert_eq!(
        detail["extension"][1]["valueTiming"]["repeat"],
        serde_json::json!({ "count": 6, "period": 30, "periodUnit": "d" })
    );
    assert!(extension(item, ext::ADDITIONAL_COVERAGE).is_none());

    // a fractional amount cannot be a Timing count: the description alone carries it
    let frac = set["Basic/item-00099902-1049640"]
        .json
        .as_tree()
        .expect("a tree");
    let detail = extension(frac, ext::QUANTITY_LIMIT_DETAIL).expect("detail");
    assert_eq!(
        detail["extension"],
        serde_json::json!([{ "url": "Description", "valueString": "At most 120.5 per 30 days" }])
    );

    // no quantity limit: no detail
    let levlen = set["Basic/item-00099901-753532"]
        .json
        .as_tree()
        .expect("a tree");
    assert!(extension(levlen, ext::QUANTITY_LIMIT_DETAIL).is_none());
    assert_eq!(
        extension(levlen, ext::QUANTITY_LIMIT).expect("ql")["valueBoolean"],
        false
    );

    // SELECTED_DRUG_YN = Y
    let selected = set["Basic/item-00099901-1000091"]
        .json
        .as_tree()
        .expect("a tree");
    assert_eq!(
        extension(selected, ext::ADDITIONAL_COVERAGE).expect("note")["valueMarkdown"],
        "- Selected drug of the Medicare Drug Price Negotiation Program."
    );
    assert_eq!(
        extension(
            set["Basic/item-00099902-753532"]
                .json
                .as_tree()
                .expect("a tree"),
            ext::DRUG_TIER
        )
        .expect("tier")["valueCodeableConcept"]["coding"][0]["code"],
        "zero-cost-share-preventative"
    );

    let mk = set["MedicationKnowledge/rxnorm-248656"]
        .json
        .as_tree()
        .expect("a tree");
    assert_eq!(
        mk["code"]["coding"],
        serde_json::json!([
            { "system": cs::RXNORM, "code": "248656" },
            { "system": cs::NDC, "code": "99999000001" }
        ])
    );
    assert_eq!(mk["status"], "active");
}

#[test]
fn broken_fixture_good_rows_map() {
    let drugs = drugs("tests/fixtures/partd-broken.txt");
    let ids: Vec<String> = map_all(&drugs).into_keys().collect();
    assert_eq!(
        ids,
        [
            "Basic/item-00099901-1000091",
            "Basic/item-00099901-248656",
            "MedicationKnowledge/rxnorm-1000091",
            "MedicationKnowledge/rxnorm-248656",
        ]
    );
}
