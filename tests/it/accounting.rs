//! Property-style tests: random mixes of good and corrupted records — the plain layout, RIF
//! beneficiaries and every RIF claim layout, 837P and 837I, formulary XML, the CMS Part D
//! formulary file, QHP drug JSON — always satisfy `read = accepted + rejected`, and every
//! corrupted record is rejected rather than lost or accepted.

use std::path::PathBuf;

use ingest::synth::Rng;
use mapper::pipeline::{run, Options};

use crate::common::root;

fn options(lake: &std::path::Path) -> Options {
    Options {
        lake: lake.to_path_buf(),
        mappings: root().join("mappings"),
        forced_mapping: None,
        progress: None,
        file_rows: None,
        buffer_bytes: None,
        memory_keys: None,
    }
}

/// Corrupt one CSV line in a way that must make its record a reject.
fn corrupt(line: &str, rng: &mut Rng, delim: char) -> String {
    let mut fields: Vec<String> = line.split(delim).map(str::to_string).collect();
    match rng.below(3) {
        0 => {
            fields.truncate(fields.len() / 2); // wrong field count
        }
        1 => {
            // a date no calendar has, in every date-looking field
            for f in fields.iter_mut() {
                if f.len() == 10 && f.as_bytes().get(4) == Some(&b'-') {
                    *f = "2024-02-31".into();
                }
                if f.len() == 11 && f.as_bytes().get(2) == Some(&b'-') {
                    *f = "31-FEB-2024".into();
                }
            }
        }
        _ => {
            fields.push("extra".into()); // an extra non-empty field
            fields.push("field".into());
        }
    }
    fields.join(&delim.to_string())
}

#[test]
fn random_corruption_never_breaks_the_accounting() {
    for seed in 1..=4u64 {
        let work = tempfile::tempdir().unwrap();
        let mut m = Vec::new();
        let mut c = Vec::new();
        ingest::synth::plain(&mut m, &mut c, 30, 3, seed).unwrap();
        let bene = ingest::synth::Template::load(
            &root().join("samples/rif/synthea-beneficiary_2021.csv"),
            b'|',
        )
        .unwrap();
        let mut b = Vec::new();
        ingest::synth::rif_beneficiaries(&bene, &mut b, 30, seed).unwrap();
        let mut rng = Rng::new(seed);
        let mut expected_rejects = 0u64;
        let mut files: Vec<PathBuf> = Vec::new();
        for (name, bytes, delim, key_col) in [
            ("claims.csv", &c, ',', 0),
            ("members.csv", &m, ',', 0),
            ("bene.txt", &b, '|', 1),
        ] {
            let text = String::from_utf8(bytes.clone()).unwrap();
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            // Corrupt whole records: for grouped claims, every line of the chosen claim ids.
            let mut bad_keys = std::collections::BTreeSet::new();
            for l in lines.iter().skip(1) {
                let key = l.split(delim).nth(key_col).unwrap_or("").to_string();
                if rng.below(5) == 0 {
                    bad_keys.insert(key);
                }
            }
            for l in lines.iter_mut().skip(1) {
                let key = l.split(delim).nth(key_col).unwrap_or("").to_string();
                if bad_keys.contains(&key) {
                    *l = corrupt(l, &mut rng, delim);
                }
            }
            expected_rejects += bad_keys.len() as u64;
            let p = work.path().join(name);
            std::fs::write(&p, lines.join("\n") + "\n").unwrap();
            files.push(p);
        }
        let report = run(&files, &options(&work.path().join("lake"))).unwrap();
        assert_eq!(
            report.records_read,
            report.accepted + report.rejected,
            "seed {seed}"
        );
        assert_eq!(
            report.rejected, expected_rejects,
            "seed {seed}: {:?}",
            report.rejects_by_reason
        );
    }
}

#[test]
fn x12_with_damaged_claims_keeps_the_accounting() {
    let work = tempfile::tempdir().unwrap();
    let mut buf = Vec::new();
    ingest::x12::generate_837(&mut buf, true, 200, 7).unwrap();
    let text = String::from_utf8(buf).unwrap();
    // Remove CLM01 (the claim id) from every 10th claim: each such claim must be a reject.
    let mut n = 0;
    let damaged: String = text
        .split_inclusive('~')
        .map(|seg| {
            let s = seg.trim_start();
            if s.starts_with("CLM") {
                n += 1;
                if n % 10 == 0 {
                    let sep = s.chars().nth(3).unwrap();
                    if let Some(rest) = s.splitn(3, sep).nth(2) {
                        return format!("CLM{sep}{sep}{rest}");
                    }
                }
            }
            seg.to_string()
        })
        .collect();
    let p = work.path().join("claims.837");
    std::fs::write(&p, damaged).unwrap();
    let report = run(&[p], &options(&work.path().join("lake"))).unwrap();
    assert_eq!(report.records_read, 200);
    assert_eq!(report.records_read, report.accepted + report.rejected);
    assert_eq!(report.rejected, 20, "{:?}", report.rejects_by_reason);
}

/// The run read `read` records, accounted for every one, and rejected exactly the `damaged`
/// ones (at least one).
fn assert_accounted(report: &mapper::pipeline::RunReport, read: u64, damaged: u64, what: &str) {
    let what = format!("{what}: {:?}", report.rejects_by_reason);
    assert_eq!(report.records_read, read, "{what}");
    assert_eq!(
        report.records_read,
        report.accepted + report.rejected,
        "{what}"
    );
    assert_eq!(report.rejected, damaged, "{what}");
    assert!(damaged > 0, "{what}");
}

#[test]
fn every_rif_claim_layout_keeps_the_accounting_under_random_corruption() {
    use ingest::synth::{rif_claims, Template, CARRIER, INPATIENT, OUTPATIENT, PDE};
    for (template, shape, key_col) in [
        ("synthea-carrier.csv", CARRIER, 2),
        ("synthea-inpatient.csv", INPATIENT, 2),
        ("synthea-outpatient.csv", OUTPATIENT, 2),
        ("synthea-pde.csv", PDE, 1),
    ] {
        for seed in 1..=2u64 {
            let work = tempfile::tempdir().unwrap();
            let t = Template::load(&root().join("samples/rif").join(template), b'|').unwrap();
            let mut bytes = Vec::new();
            rif_claims(&t, &shape, &mut bytes, 20, 60, seed).unwrap();
            let text = String::from_utf8(bytes).unwrap();
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let mut rng = Rng::new(seed * 31);
            // Corrupt whole claims: every line of the chosen claim ids.
            let key = |l: &str| l.split('|').nth(key_col).unwrap_or("").to_string();
            let mut bad = std::collections::BTreeSet::new();
            for l in lines.iter().skip(1) {
                if rng.below(4) == 0 {
                    bad.insert(key(l));
                }
            }
            let claims: std::collections::BTreeSet<String> =
                lines.iter().skip(1).map(|l| key(l)).collect();
            for l in lines.iter_mut().skip(1) {
                if bad.contains(&key(l)) {
                    *l = corrupt(l, &mut rng, '|');
                }
            }
            let p = work.path().join(template.replace(".csv", ".txt"));
            std::fs::write(&p, lines.join("\n") + "\n").unwrap();
            let report = run(&[p], &options(&work.path().join("lake"))).unwrap();
            let what = format!("{template} seed {seed}");
            assert_accounted(&report, claims.len() as u64, bad.len() as u64, &what);
        }
    }
}

/// Damage one claim of an 837 so that it must be rejected, in one of several ways; `segs`
/// are the claim's segments (terminators kept), its `CLM` first.
fn damage_claim(segs: &mut Vec<String>, how: u64, sep: char) {
    let element = |seg: &mut String, i: usize, value: &str| {
        let end = seg.trim_end().len();
        let (body, tail) = seg.split_at(end);
        let body = body.strip_suffix('~').unwrap_or(body);
        let mut els: Vec<String> = body.split(sep).map(str::to_string).collect();
        if i < els.len() {
            els[i] = value.to_string();
        }
        *seg = format!(
            "{}~{}",
            els.join(&sep.to_string()),
            tail.trim_start_matches('~')
        );
    };
    let find = |segs: &[String], id: &str| {
        segs.iter()
            .position(|s| s.trim_start().starts_with(&format!("{id}{sep}")))
    };
    match how {
        0 => element(&mut segs[0], 1, ""),       // no claim id
        1 => element(&mut segs[0], 2, "12A.50"), // a charge that is not a decimal
        2 => match find(segs, "DTP") {
            Some(i) => element(&mut segs[i], 3, "20240231"), // a day no calendar has
            None => element(&mut segs[0], 1, ""),
        },
        3 => match (find(segs, "SV1"), find(segs, "SV2")) {
            (Some(i), _) => element(&mut segs[i], 2, ""), // a line without its charge
            (None, Some(i)) => element(&mut segs[i], 3, ""),
            _ => element(&mut segs[0], 1, ""),
        },
        _ => segs.insert(1, "ZQ9*1~\n".to_string()), // a segment no 837 has
    }
}

#[test]
fn x12_with_randomly_damaged_claims_keeps_the_accounting() {
    for (professional, seed) in [(true, 3u64), (false, 5), (true, 11), (false, 13)] {
        let work = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        ingest::x12::generate_837(&mut buf, professional, 150, seed).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let mut rng = Rng::new(seed);
        let sep = text.chars().nth(3).unwrap();
        // Cut the file into the part before each claim and the claims (up to the next HL,
        // CLM or SE), damage a random quarter of the claims, and put it back together.
        let mut out = String::new();
        let mut claim: Vec<String> = Vec::new();
        let (mut claims, mut damaged) = (0u64, 0u64);
        let mut flush = |claim: &mut Vec<String>, out: &mut String, rng: &mut Rng| {
            if claim.is_empty() {
                return;
            }
            if rng.below(4) == 0 {
                damage_claim(claim, rng.below(5), sep);
                damaged += 1;
            }
            out.push_str(&claim.concat());
            claim.clear();
        };
        for seg in text.split_inclusive('~') {
            let s = seg.trim_start();
            if s.starts_with("CLM") {
                flush(&mut claim, &mut out, &mut rng);
                claims += 1;
                claim.push(seg.to_string());
            } else if ["HL", "SE"]
                .iter()
                .any(|id| s.starts_with(&format!("{id}{sep}")))
            {
                flush(&mut claim, &mut out, &mut rng);
                out.push_str(seg);
            } else if claim.is_empty() {
                out.push_str(seg);
            } else {
                claim.push(seg.to_string());
            }
        }
        flush(&mut claim, &mut out, &mut rng);
        let p = work.path().join("claims.837");
        std::fs::write(&p, out).unwrap();
        let report = run(&[p], &options(&work.path().join("lake"))).unwrap();
        let kind = if professional { "837P" } else { "837I" };
        assert_accounted(&report, claims, damaged, &format!("{kind} seed {seed}"));
    }
}

/// Damage one `<Drug>` element (its text, from `<Drug` to `</Drug>`) so that the drug must be
/// rejected, in one of several ways.
fn damage_drug(drug: &str, how: u64) -> String {
    let set = |tag: &str, value: &str| -> Option<String> {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let a = drug.find(&open)? + open.len();
        let b = a + drug[a..].find(&close)?;
        Some(format!("{}{value}{}", &drug[..a], &drug[b..]))
    };
    let damaged = match how {
        0 => set("TierLevelValue", "9"), // a tier the formulary does not define
        1 => set("RxCUI", ""),           // no RxNorm code
        2 => match set("QuantityLimitAmount", "") {
            Some(d) => Some(d), // a quantity limit without its amount
            None => set("QuantityLimitYN", "N").map(|d| {
                d.replace(
                    "</DrugName>",
                    "</DrugName>\n      <QuantityLimitDays>30</QuantityLimitDays>",
                )
            }),
        },
        _ => Some(drug.replace("</DrugName>", "</DrugName>\n      <Rebate>12</Rebate>")), // foreign
    };
    damaged.unwrap_or_else(|| drug.replace("<RxCUI>", "<RxCUI>x"))
}

#[test]
fn formulary_extracts_with_randomly_damaged_drugs_keep_the_accounting() {
    for seed in [2u64, 7, 19] {
        let work = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        ingest::formulary::generate_extract(&mut buf, 3, 40, seed).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let mut rng = Rng::new(seed);
        let (mut out, mut rest) = (String::new(), text.as_str());
        let (mut drugs, mut damaged) = (0u64, 0u64);
        while let Some(a) = rest.find("<Drug ") {
            let b = a + rest[a..].find("</Drug>").unwrap() + "</Drug>".len();
            out.push_str(&rest[..a]);
            let drug = &rest[a..b];
            drugs += 1;
            if rng.below(4) == 0 {
                out.push_str(&damage_drug(drug, rng.below(4)));
                damaged += 1;
            } else {
                out.push_str(drug);
            }
            rest = &rest[b..];
        }
        out.push_str(rest);
        let p = work.path().join("formulary.xml");
        std::fs::write(&p, out).unwrap();
        let report = run(&[p], &options(&work.path().join("lake"))).unwrap();
        // Each formulary's two plans are records too.
        assert_accounted(&report, drugs + 3 * 2, damaged, &format!("seed {seed}"));
    }
}

#[test]
fn partd_formulary_files_with_random_damage_keep_the_accounting() {
    for seed in [4u64, 9] {
        let work = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(seed);
        let yn = |rng: &mut Rng| if rng.below(2) == 0 { "Y" } else { "N" };
        let mut lines = vec![
            "FORMULARY_ID|FORMULARY_VERSION|CONTRACT_YEAR|RXCUI|NDC|TIER_LEVEL_VALUE|QUANTITY_LIMIT_YN|QUANTITY_LIMIT_AMOUNT|QUANTITY_LIMIT_DAYS|PRIOR_AUTHORIZATION_YN|STEP_THERAPY_YN|SELECTED_DRUG_YN".to_string(),
        ];
        let (mut drugs, mut damaged) = (0u64, 0u64);
        for n in 0..80u64 {
            let limit = rng.below(4) == 0;
            let mut fields = vec![
                format!("000{}", 99901 + n % 2),
                "13".into(),
                "2026".into(),
                (200_000 + n).to_string(),
                format!("{:011}", 99_999_000_000 + n),
                (1 + rng.below(7)).to_string(),
                if limit { "Y" } else { "N" }.into(),
                if limit { "30".into() } else { String::new() },
                if limit { "30".into() } else { String::new() },
                yn(&mut rng).into(),
                yn(&mut rng).into(),
                yn(&mut rng).into(),
            ];
            drugs += 1;
            if rng.below(4) == 0 {
                damaged += 1;
                match rng.below(4) {
                    0 => fields.truncate(6),         // wrong field count
                    1 => fields[5] = "8".into(),     // a tier with no meaning
                    2 => fields[9] = "MAYBE".into(), // a flag that is neither Y nor N
                    _ => fields[3] = String::new(),  // no RxNorm code
                }
            }
            lines.push(fields.join("|"));
        }
        let p = work.path().join("basic-formulary.txt");
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        let report = run(&[p], &options(&work.path().join("lake"))).unwrap();
        assert_accounted(&report, drugs, damaged, &format!("Part D seed {seed}"));
    }
}

#[test]
fn qhp_drug_files_with_random_damage_keep_the_accounting() {
    use serde_json::{json, Value};
    for seed in [6u64, 15] {
        let work = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(seed);
        let tiers = [
            "GENERIC",
            "PREFERRED-BRAND",
            "NON-PREFERRED-BRAND",
            "SPECIALTY",
        ];
        let (mut entries, mut damaged) = (0u64, 0u64);
        let mut drugs = Vec::new();
        for n in 0..50u64 {
            // A record is one drug on one plan; a drug without an RxNorm code rejects on each.
            let bad_drug = rng.below(10) == 0;
            let mut plans = Vec::new();
            for p in 0..1 + rng.below(3) {
                let mut plan = json!({
                    "plan_id_type": "HIOS-PLAN-ID",
                    "plan_id": format!("12345XX98765{:02}", 40 + p),
                    "drug_tier": rng.pick(&tiers),
                    "prior_authorization": rng.below(2) == 0,
                    "step_therapy": false,
                    "quantity_limit": false,
                    "years": [2026],
                });
                entries += 1;
                if bad_drug {
                    damaged += 1;
                } else if rng.below(4) == 0 {
                    damaged += 1;
                    match rng.below(3) {
                        0 => plan["drug_tier"] = json!("GOLD-STAR"), // no such tier
                        1 => plan["plan_id"] = json!(""),            // no plan
                        _ => plan["step_therapy"] = json!("yes"),    // not a boolean
                    }
                }
                plans.push(plan);
            }
            let rxnorm: Value = if bad_drug {
                json!("RX-12")
            } else {
                json!((300_000 + n).to_string())
            };
            drugs.push(
                json!({"rxnorm_id": rxnorm, "drug_name": format!("drug {n}"), "plans": plans}),
            );
        }
        let p = work.path().join("drugs.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&drugs).unwrap()).unwrap();
        let report = run(&[p], &options(&work.path().join("lake"))).unwrap();
        assert_accounted(&report, entries, damaged, &format!("QHP seed {seed}"));
    }
}
