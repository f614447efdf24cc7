//! Property-style tests: random mixes of good and corrupted records, in every delimited layout
//! and in X12, always satisfy `read = accepted + rejected`, and every corrupted record is
//! rejected rather than lost or accepted.

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
