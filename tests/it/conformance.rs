//! Every resource produced from `samples/` meets its profile's required elements and slices,
//! and every reference resolves. (The third-party R4 structural validator runs in `.ci/run`.)

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{export, key, sample_lake};

fn codes(v: &Value) -> Vec<String> {
    v["coding"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["code"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("reference") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

fn check_eob(e: &Value) -> Result<(), String> {
    let profile = e["meta"]["profile"][0].as_str().ok_or("meta.profile")?;
    if !profile.ends_with("|2.1.0") || !profile.contains("C4BB-ExplanationOfBenefit-") {
        return Err(format!("profile {profile}"));
    }
    let basis = profile.contains("-Basis");
    let ids = e["identifier"].as_array().ok_or("identifier")?;
    if !ids
        .iter()
        .any(|i| codes(&i["type"]) == ["uc"] && i["value"].is_string())
    {
        return Err("identifier:uniqueclaimid".into());
    }
    for k in ["status", "use", "created", "outcome"] {
        if !e[k].is_string() {
            return Err(k.into());
        }
    }
    if e["use"] != "claim" {
        return Err("use".into());
    }
    for k in ["patient", "insurer", "provider"] {
        if !e[k]["reference"].is_string() {
            return Err(k.into());
        }
    }
    if !e["billablePeriod"]["start"].is_string() {
        return Err("billablePeriod.start".into());
    }
    let t = codes(&e["type"]);
    if t.is_empty() {
        return Err("type".into());
    }
    let ins = e["insurance"].as_array().ok_or("insurance")?;
    if ins.is_empty() || ins[0]["focal"] != true || !ins[0]["coverage"]["reference"].is_string() {
        return Err("insurance focal/coverage".into());
    }
    let items = e["item"].as_array().ok_or("item")?;
    if items.is_empty() {
        return Err("item".into());
    }
    let kind = profile
        .split("C4BB-ExplanationOfBenefit-")
        .nth(1)
        .unwrap_or("");
    if kind.starts_with("Inpatient") && codes(&e["subType"]) != ["inpatient"] {
        return Err("subType inpatient".into());
    }
    let si: Vec<String> = e["supportingInfo"]
        .as_array()
        .map(|a| a.iter().flat_map(|s| codes(&s["category"])).collect())
        .unwrap_or_default();
    if kind.starts_with("Inpatient") && !si.contains(&"admissionperiod".to_string()) {
        return Err("supportingInfo:admissionperiod".into());
    }
    if kind.starts_with("Pharmacy") {
        for s in ["dayssupply", "dawcode", "refillnum", "refillsauthorized"] {
            if !si.contains(&s.to_string()) {
                return Err(format!("supportingInfo:{s}"));
            }
        }
    }
    if kind.starts_with("Professional") && e["diagnosis"].as_array().is_none_or(|d| d.is_empty()) {
        return Err("diagnosis".into());
    }
    // The benefit payment status slice is required by every profile, "-Basis" included: on the
    // header of institutional and pharmacy EOBs, on each item of professional ones.
    let header: Vec<String> = e["adjudication"]
        .as_array()
        .map(|a| a.iter().flat_map(|x| codes(&x["category"])).collect())
        .unwrap_or_default();
    if !kind.starts_with("Professional") && !header.contains(&"benefitpaymentstatus".to_string()) {
        return Err("adjudication:benefitpaymentstatus".into());
    }
    if kind.starts_with("Professional") {
        for it in items {
            let cats: Vec<String> = it["adjudication"]
                .as_array()
                .map(|a| a.iter().flat_map(|x| codes(&x["category"])).collect())
                .unwrap_or_default();
            if !cats.contains(&"benefitpaymentstatus".to_string()) {
                return Err("item.adjudication:benefitpaymentstatus".into());
            }
            if !basis && cats.len() < 2 {
                return Err("item.adjudication:adjudicationamounttype".into());
            }
        }
    }
    if !basis {
        let totals = e["total"].as_array().ok_or("total")?;
        if totals.is_empty()
            || totals
                .iter()
                .any(|t| !t["amount"]["value"].is_number() || codes(&t["category"]).is_empty())
        {
            return Err("total:adjudicationamounttype".into());
        }
    }
    Ok(())
}

#[test]
fn c4bb_required_elements_and_resolvable_references() {
    let lake = sample_lake();
    let all = export(lake.path());
    let present: BTreeSet<String> = all.iter().map(key).collect();
    let mut failures = Vec::new();
    let mut eob_profiles = BTreeSet::new();
    for r in &all {
        let key = key(r);
        if r["id"].as_str().is_none_or(str::is_empty) {
            failures.push(format!("{key}: id"));
        }
        if r["meta"]["lastUpdated"].as_str().is_none() {
            failures.push(format!("{key}: meta.lastUpdated"));
        }
        // No identifier given twice (an 837's subscriber id is also the member id).
        let mut seen = BTreeSet::new();
        for i in r["identifier"].as_array().into_iter().flatten() {
            if !seen.insert((i["system"].to_string(), i["value"].to_string())) {
                failures.push(format!("{key}: identifier {} given twice", i["system"]));
            }
        }
        let result = match r["resourceType"].as_str().unwrap() {
            "ExplanationOfBenefit" => {
                eob_profiles.insert(r["meta"]["profile"][0].as_str().unwrap().to_string());
                check_eob(r)
            }
            "Patient" => {
                let mb = r["identifier"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|i| codes(&i["type"]) == ["MB"] && i["system"].is_string())
                });
                if !mb
                    || r["name"].as_array().is_none_or(|n| n.is_empty())
                    || !(r["gender"].is_string() || r["_gender"].is_object())
                {
                    Err("identifier:memberid / name / gender".into())
                } else {
                    Ok(())
                }
            }
            "Coverage" => {
                let ok = r["status"].is_string()
                    && r["subscriberId"].is_string()
                    && r["beneficiary"]["reference"].is_string()
                    && !codes(&r["relationship"]).is_empty()
                    && r["payor"].as_array().is_some_and(|p| p.len() == 1);
                if ok {
                    Ok(())
                } else {
                    Err("status/subscriberId/beneficiary/relationship/payor".into())
                }
            }
            "Organization"
                if r["meta"]["profile"][0]
                    .as_str()
                    .is_some_and(|p| p.contains("C4BB")) =>
            {
                if r["active"] == true && (r["name"].is_string() || r["_name"].is_object()) {
                    Ok(())
                } else {
                    Err("active/name".into())
                }
            }
            "Practitioner" => {
                let ok = r["identifier"].as_array().is_some_and(|a| !a.is_empty())
                    && r["name"].as_array().is_some_and(|n| !n.is_empty());
                if ok {
                    Ok(())
                } else {
                    Err("identifier/name".into())
                }
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            failures.push(format!("{key}: {e}"));
        }
        let mut rs = Vec::new();
        refs(r, &mut rs);
        for reference in rs {
            if !present.contains(&reference) {
                failures.push(format!("{key}: dangling reference {reference}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The samples exercise every EOB profile.
    for p in [
        "Professional-NonClinician|",
        "Inpatient-Institutional|",
        "Outpatient-Institutional|",
        "Pharmacy|",
    ] {
        assert!(
            eob_profiles.iter().any(|x| x.contains(p)),
            "{p} not produced: {eob_profiles:?}"
        );
    }
}

/// `expectation` of a CapabilityStatement element (SHALL, SHOULD, MAY), from its extension.
fn expectation(v: &Value) -> &str {
    v["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| {
            e["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("capabilitystatement-expectation"))
        })
        .and_then(|e| e["valueCode"].as_str())
        .unwrap_or("")
}

/// `/metadata` instantiates the C4BB 2.1.0 and PDex 2.0.1 server CapabilityStatements: every
/// resource, interaction, search parameter and `_include` they mark SHALL is declared, and
/// every SHALL search parameter is understood (it stays in the search's self link; unknown
/// parameters are dropped from it).
#[test]
fn metadata_meets_every_shall_of_the_instantiated_capability_statements() {
    let lake = sample_lake();
    let s = crate::common::Server::start(lake.path());
    let token = s.token("567834", "patient/*.rs");
    let (st, ours) = s.get("metadata", None);
    assert_eq!(st, 200);
    let instantiates: Vec<&str> = ours["instantiates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in [
        "CapabilityStatement-c4bb-carin-bb-2.1.0.json",
        "CapabilityStatement-usdf-server-formulary-2.0.1.json",
    ] {
        let path = crate::common::root().join("tests/validate/ig").join(file);
        let theirs: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let url = theirs["url"].as_str().unwrap();
        assert!(
            instantiates
                .iter()
                .any(|i| i.split('|').next() == Some(url)),
            "{url} not in instantiates: {instantiates:?}"
        );
        for r in theirs["rest"][0]["resource"].as_array().unwrap() {
            let t = r["type"].as_str().unwrap();
            let mine = ours["rest"][0]["resource"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["type"] == t);
            let Some(mine) = mine else {
                if expectation(r) == "SHALL" {
                    failures.push(format!("{url}: resource {t} missing"));
                }
                continue;
            };
            let declared = |key: &str, field: &str| -> BTreeSet<String> {
                mine[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x[field].as_str().map(String::from))
                    .collect()
            };
            let interactions = declared("interaction", "code");
            for i in r["interaction"].as_array().into_iter().flatten() {
                let code = i["code"].as_str().unwrap();
                if expectation(i) == "SHALL" && !interactions.contains(code) {
                    failures.push(format!("{url}: {t} interaction {code}"));
                }
            }
            let params = declared("searchParam", "name");
            for p in r["searchParam"].as_array().into_iter().flatten() {
                if expectation(p) != "SHALL" {
                    continue;
                }
                let name = p["name"].as_str().unwrap();
                if !params.contains(name) {
                    failures.push(format!("{url}: {t} search parameter {name}"));
                    continue;
                }
                let value = match p["type"].as_str().unwrap() {
                    "date" => "ge2000-01-01",
                    "reference" => "Patient/567834",
                    _ => "x",
                };
                let auth = (!api::smart::is_public_resource(t)).then_some(token.as_str());
                let query = format!("{t}?{name}={value}");
                let (st, b) = s.get(&query, auth);
                let understood = b["link"].as_array().into_iter().flatten().any(|l| {
                    l["relation"] == "self"
                        && l["url"]
                            .as_str()
                            .is_some_and(|u| u.contains(&format!("{name}=")))
                });
                if st != 200 || !understood {
                    failures.push(format!("{url}: {query} answered {st} {}", b["link"]));
                }
                checked += 1;
            }
            let includes: BTreeSet<String> = mine["searchInclude"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect();
            for inc in r["searchInclude"].as_array().into_iter().flatten() {
                let inc = inc.as_str().unwrap();
                // PDex 2.0.1 publishes its includes without the resource type.
                let inc = if inc.contains(':') {
                    inc.to_string()
                } else {
                    format!("{t}:{inc}")
                };
                if !includes.contains(&inc) {
                    failures.push(format!("{url}: {t} _include {inc}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 30, "only {checked} parameters checked");
}
