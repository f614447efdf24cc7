//! Ingest runs: accounting, rejects, golden output, idempotency.

use std::collections::BTreeMap;

use std::process::Command;

use serde_json::Value;

use crate::common::{bin, export, exported_ids, ingest, key, root, stable, succeed};

/// A file of the lake's current snapshot, as text.
fn snapshot_file(lake: &std::path::Path, name: &str) -> String {
    let current = std::fs::read_to_string(lake.join("CURRENT")).unwrap();
    std::fs::read_to_string(lake.join("snapshots").join(current.trim()).join(name)).unwrap()
}

fn rejects(lake: &std::path::Path) -> Vec<Value> {
    snapshot_file(lake, "rejects.ndjson")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn broken_rows_become_rejects_and_the_run_goes_on() {
    let lake = tempfile::tempdir().unwrap();
    let (code, out) = ingest(
        lake.path(),
        &[
            "tests/fixtures/broken-claims.csv",
            "samples/plain/members.csv",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("total"), "{out}");
    let rej = rejects(lake.path());
    let by_line: BTreeMap<u64, (String, String)> = rej
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                (
                    r["reason"].as_str().unwrap().to_string(),
                    r["stage"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    let expect = |line: u64, reason: &str| {
        assert_eq!(
            by_line.get(&line).map(|r| r.0.as_str()),
            Some(reason),
            "line {line}: {by_line:?}"
        );
    };
    expect(3, "bad_date");
    expect(4, "bad_number");
    expect(5, "field_count");
    expect(6, "missing_value");
    expect(7, "unknown_code");
    expect(8, "missing_value");
    assert_eq!(by_line[&8].1, "map");
    assert_eq!(rej.len(), 6);
    for r in &rej {
        assert!(r["file"].as_str().unwrap().ends_with("broken-claims.csv"));
        assert!(
            r["raw"].as_str().unwrap().contains("B-"),
            "raw record kept: {r}"
        );
    }
    // Good claims of the same file are in the lake: read = accepted + rejected.
    let eobs = exported_ids(lake.path(), "ExplanationOfBenefit");
    assert_eq!(eobs, vec!["professional-B-1", "professional-B-8"]);
    let report: Value = serde_json::from_str(&snapshot_file(lake.path(), "report.json")).unwrap();
    let claims = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["layout"] == "plain-claims")
        .unwrap();
    assert_eq!(
        (
            claims["records_read"].as_u64(),
            claims["accepted"].as_u64(),
            claims["rejected"].as_u64()
        ),
        (Some(8), Some(2), Some(6))
    );
    assert_eq!(
        report["records_read"],
        report["accepted"].as_u64().unwrap() + report["rejected"].as_u64().unwrap()
    );

    // A reject-rate threshold makes the exit status non-zero for schedulers.
    let out = crate::common::bin()
        .args(["ingest", "--max-reject-rate", "0.1", "--lake"])
        .arg(lake.path())
        .arg("tests/fixtures/broken-claims.csv")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

/// A line far longer than any record (17 MiB with no line end) is one reject with its line,
/// read past without being held, and every claim around it is ingested as from the clean file.
/// Providers without a valid NPI (an "NPI" that fails the NPI check, or a practitioner named
/// by another kind of id) are counted per file in the run report and on the terminal, once
/// each, in the file that first names them.
#[test]
fn the_run_report_counts_providers_without_a_valid_npi() {
    let lake = tempfile::tempdir().unwrap();
    let (code, out) = ingest(
        lake.path(),
        &["samples/plain/claims.csv", "samples/rif/synthea-pde.csv"],
    );
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&snapshot_file(lake.path(), "report.json")).unwrap();
    let source = |layout: &str| {
        report["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["layout"] == layout)
            .unwrap()
            .clone()
    };
    // samples/plain's NPIs are valid.
    assert_eq!(source("plain-claims")["invalid_npis"], 0);
    // The Synthea PDE rows name pharmacies 220135 and PCP257488 and a prescriber 9999999499,
    // among others, as NPIs (qualifier 01).
    let pde = source("cms-rif-pde");
    assert_eq!(pde["invalid_npis"], 4, "{pde}");
    let examples: Vec<&str> = pde["invalid_npi_examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(examples.len(), 3);
    for e in &examples {
        assert!(!ingest::model::is_valid_npi(e), "{e}");
    }
    assert!(
        out.contains("data quality: 4 provider(s) without a valid NPI"),
        "{out}"
    );

    // A practitioner an 837 names by another kind of id (NM108 24, a tax id) is filed under
    // that kind and counted too: C4BB-Practitioner requires an NPI. The same file with a valid
    // NPI there counts one fewer.
    let sample =
        std::fs::read_to_string(root().join("samples/x12/zx12_837i_cob_line_adjudication.x12"))
            .unwrap();
    let rendering = "NM1*82*1*DAVIDSON*MICHELLE*S***XX*9995553336";
    let mut counts = Vec::new();
    for (name, qualifier) in [("npi", "XX"), ("tax", "24")] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{name}.x12"));
        let nm1 = format!("NM1*82*1*DAVIDSON*MICHELLE*S***{qualifier}*1234567893");
        std::fs::write(&file, sample.replace(rendering, &nm1)).unwrap();
        let lake = dir.path().join("lake");
        let (code, out) = ingest(&lake, &[file.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
        let practitioners = exported_ids(&lake, "Practitioner");
        assert!(
            practitioners.contains(&format!("{name}-1234567893")),
            "{practitioners:?}"
        );
        let report: Value = serde_json::from_str(&snapshot_file(&lake, "report.json")).unwrap();
        counts.push(report["sources"][0]["invalid_npis"].as_u64().unwrap());
    }
    assert_eq!(counts[1], counts[0] + 1, "{counts:?}");
}

#[test]
fn an_oversized_line_is_one_reject_and_the_rest_of_the_file_reads() {
    let clean = std::fs::read_to_string(root().join("samples/plain/claims.csv")).unwrap();
    let mut lines: Vec<&str> = clean.lines().collect();
    let huge = "9".repeat(17 << 20);
    lines.insert(3, &huge);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("claims.csv");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let eobs = |lake: &std::path::Path| exported_ids(lake, "ExplanationOfBenefit");
    let (with_huge, without) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (code, out) = ingest(with_huge.path(), &[file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = ingest(without.path(), &["samples/plain/claims.csv"]);
    assert_eq!(code, 0, "{out}");
    let rej = rejects(with_huge.path());
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0]["reason"], "malformed");
    assert_eq!(rej[0]["line"], 4);
    assert!(rej[0]["message"]
        .as_str()
        .unwrap()
        .contains("longer than 16 MiB"));
    let got = eobs(with_huge.path());
    assert!(!got.is_empty());
    assert_eq!(got, eobs(without.path()));
}

#[test]
fn an_unknown_layout_fails_the_run_cleanly() {
    let lake = tempfile::tempdir().unwrap();
    let f = lake.path().join("mystery.csv");
    std::fs::write(&f, "a,b,c\n1,2,3\n").unwrap();
    let (code, out) = ingest(lake.path(), &[f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("matches no mapping file"), "{out}");
    assert!(!lake.path().join("CURRENT").exists(), "nothing published");
}

#[test]
fn golden_rif_and_plain_samples() {
    for (name, input) in [("rif", "samples/rif"), ("plain", "samples/plain")] {
        let lake = tempfile::tempdir().unwrap();
        let (code, out) = ingest(lake.path(), &[input]);
        assert_eq!(code, 0, "{out}");
        let got = stable(export(lake.path()))
            .iter()
            .map(|r| serde_json::to_string_pretty(r).unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        let path = root().join("tests/golden").join(format!("{name}.json"));
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            got == want,
            "{name}: output differs from {} (review, then rerun with BLESS=1)",
            path.display()
        );
    }
}

#[test]
fn providers_of_rejected_claims_still_come_from_the_claims_that_map() {
    // Forty claims that read but fail to map (no diagnosis) name the same providers as the
    // one good claim after them. A side product is built once per run, but a rejected claim's
    // never reaches the lake, so the good claim must still yield the providers.
    let fixture = std::fs::read_to_string(root().join("tests/fixtures/broken-claims.csv")).unwrap();
    let mut lines = fixture.lines();
    let header = lines.next().unwrap();
    let row = |id: &str| {
        lines
            .clone()
            .find(|l| l.starts_with(id))
            .unwrap()
            .to_string()
    };
    let (unmappable, good) = (row("B-7,"), row("B-1,"));
    let mut csv = format!("{header}\n");
    for i in 0..40 {
        csv.push_str(&unmappable.replacen("B-7,", &format!("R-{i},"), 1));
        csv.push('\n');
    }
    csv.push_str(&good);
    csv.push('\n');
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claims.csv");
    std::fs::write(&path, csv).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let (code, out) = ingest(lake.path(), &[path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(rejects(lake.path()).len(), 40);
    let ids: Vec<String> = export(lake.path()).iter().map(key).collect();
    for want in [
        "ExplanationOfBenefit/professional-B-1",
        "Organization/npi-1487654323",
        "Practitioner/npi-1234567893",
    ] {
        assert!(ids.iter().any(|i| i == want), "{want} not in {ids:?}");
    }
}

#[test]
fn running_the_same_input_twice_changes_nothing() {
    let lake = tempfile::tempdir().unwrap();
    let (code, _) = ingest(lake.path(), &["samples/rif"]);
    assert_eq!(code, 0);
    let first = export(lake.path());
    let (code, _) = ingest(lake.path(), &["samples/rif"]);
    assert_eq!(code, 0);
    let second = export(lake.path());
    assert_eq!(
        first, second,
        "same content, same versionId and lastUpdated"
    );
    let out = crate::common::bin()
        .args(["snapshots", "--lake"])
        .arg(lake.path())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.lines().count(), 2, "{listing}");
    assert!(listing.lines().nth(1).unwrap().starts_with('*'));
}

#[test]
fn x12_replacements_and_voids_keep_one_current_version_per_claim() {
    let lake = tempfile::tempdir().unwrap();
    let original =
        std::fs::read_to_string(root().join("samples/x12/lfh_837p_example1.837")).unwrap();
    assert!(original.contains("11:B:1"));
    let eob = |lake: &std::path::Path| -> Vec<Value> {
        export(lake)
            .into_iter()
            .filter(|r| r["resourceType"] == "ExplanationOfBenefit")
            .collect()
    };
    let (code, out) = ingest(lake.path(), &["samples/x12/lfh_837p_example1.837"]);
    assert_eq!(code, 0, "{out}");
    let first = eob(lake.path());
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["status"], "active");
    let id = first[0]["id"].clone();

    // Frequency 7: a replacement with another diagnosis supersedes the claim (same id, version 2).
    let replaced = original
        .replace("11:B:1", "11:B:7")
        .replacen("BF:V7389", "BF:V7281", 1);
    let p = lake.path().join("replacement.837");
    std::fs::write(&p, &replaced).unwrap();
    assert_eq!(ingest(lake.path(), &[p.to_str().unwrap()]).0, 0);
    let second = eob(lake.path());
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["id"], id);
    assert_eq!(second[0]["meta"]["versionId"], "2");
    assert_eq!(second[0]["status"], "active");

    // Frequency 8: the void cancels it; the lake still holds one version, marked cancelled.
    let void = original.replace("11:B:1", "11:B:8");
    let p = lake.path().join("void.837");
    std::fs::write(&p, &void).unwrap();
    assert_eq!(ingest(lake.path(), &[p.to_str().unwrap()]).0, 0);
    let third = eob(lake.path());
    assert_eq!(third.len(), 1);
    assert_eq!(third[0]["status"], "cancelled");
    assert_eq!(third[0]["meta"]["versionId"], "3");
}

/// The sources of a run's report, without their timings.
fn sources_without_times(lake: &std::path::Path) -> Vec<Value> {
    let report: Value = serde_json::from_str(&snapshot_file(lake, "report.json")).unwrap();
    let mut sources = report["sources"].as_array().unwrap().clone();
    for s in &mut sources {
        let s = s.as_object_mut().unwrap();
        s.retain(|k, _| !k.contains("seconds") && !k.contains("per_second"));
    }
    sources
}

#[test]
fn many_small_x12_files_read_side_by_side_give_the_lake_of_a_sequential_run() {
    let dir = tempfile::tempdir().unwrap();
    let original =
        std::fs::read_to_string(root().join("samples/x12/lfh_837p_example1.837")).unwrap();
    // The claim, its replacement and its void in three of the files, many small files between
    // them, and a broken file: a run takes them in name order whatever reads them.
    std::fs::write(dir.path().join("00-claim.837"), &original).unwrap();
    for i in 1..=18u64 {
        let out = dir.path().join(format!("{i:02}-gen.837"));
        let mut args = vec![
            "generate".to_string(),
            "--out".into(),
            out.display().to_string(),
            "--claims".into(),
            (40 + i).to_string(),
            "--seed".into(),
            i.to_string(),
        ];
        if i % 3 == 0 {
            args.push("--institutional".into());
        }
        succeed(bin().args(&args));
    }
    std::fs::write(
        dir.path().join("09-replacement.837"),
        original
            .replace("11:B:1", "11:B:7")
            .replacen("BF:V7389", "BF:V7281", 1),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("12-broken.837"),
        &original[..original.len() / 2],
    )
    .unwrap();
    std::fs::write(
        dir.path().join("19-void.837"),
        original.replace("11:B:1", "11:B:8"),
    )
    .unwrap();
    let input = dir.path().to_str().unwrap();

    let run = |threads: &str| {
        let lake = tempfile::tempdir().unwrap();
        succeed(bin().env("RAYON_NUM_THREADS", threads).args([
            "ingest",
            "--lake",
            lake.path().to_str().unwrap(),
            input,
        ]));
        lake
    };
    let (one, two) = (run("1"), run("2"));
    let (a, b) = (stable(export(one.path())), stable(export(two.path())));
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the lakes of 1 and 2 threads differ");
    let (ra, rb) = (
        sources_without_times(one.path()),
        sources_without_times(two.path()),
    );
    assert_eq!(ra, rb, "the per-file reports differ");
    assert_eq!(ra.len(), 22);
    let broken = ra
        .iter()
        .find(|s| s["file"].as_str().unwrap().ends_with("12-broken.837"))
        .unwrap();
    assert_eq!(broken["accepted"], 0);
    assert!(broken["rejected"].as_u64().unwrap() >= 1, "{broken}");
    let generated: u64 = (1..=18u64).map(|i| 40 + i).sum();
    let eobs: Vec<&Value> = b
        .iter()
        .filter(|r| r["resourceType"] == "ExplanationOfBenefit")
        .collect();
    assert_eq!(eobs.len() as u64, generated + 1);
    // The void came last: the claim is cancelled, in the version of its replacement's file
    // order (original, replacement, void).
    let claim: Vec<&&Value> = eobs
        .iter()
        .filter(|r| !r["id"].as_str().unwrap().contains("-G"))
        .collect();
    assert_eq!(claim.len(), 1, "{claim:?}");
    assert_eq!(claim[0]["status"], "cancelled");
}

/// The summary on the terminal tells, per source, what `report.json` holds; off a terminal the
/// progress is JSON log lines (one per file at least, its last with `done`), on a terminal it is
/// a bar per file; and neither names a member, a claim or a person.
#[test]
fn the_run_tells_its_progress_and_summary_without_naming_anyone() {
    let lake = tempfile::tempdir().unwrap();
    let out = bin()
        .env("FHIRLAKE_LOG", "info")
        .args(["ingest", "--lake"])
        .arg(lake.path())
        .args(["samples/plain", "tests/fixtures/broken-claims.csv"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    let report: Value = serde_json::from_str(&snapshot_file(lake.path(), "report.json")).unwrap();

    // The summary: a row per source with the report's numbers, then its resources and rejects.
    for s in report["sources"].as_array().unwrap() {
        let file = s["file"].as_str().unwrap();
        let name = std::path::Path::new(file)
            .file_name()
            .unwrap()
            .to_string_lossy();
        let label = format!("{name} [{}]", s["layout"].as_str().unwrap());
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no row for {label}: {stdout}"));
        let cells: Vec<&str> = row[label.len()..].split_whitespace().collect();
        let n = |k: &str| s[k].as_u64().unwrap().to_string();
        let mb = format!("{:.1}", s["bytes"].as_f64().unwrap() / 1e6);
        let want = [
            n("records_read"),
            n("accepted"),
            n("rejected"),
            n("updates"),
            n("cancels"),
            mb,
        ];
        assert_eq!(cells[..6], want, "{row}");
        let seconds: f64 = cells[6].parse().unwrap();
        assert!(
            (seconds - s["seconds"].as_f64().unwrap()).abs() < 0.006,
            "{row}"
        );
        let resources: Vec<String> = (s["resources"].as_object().unwrap().iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert!(stdout.contains(&format!("{row}\n    resources: {}\n", resources.join(", "))));
        let reasons = s["rejects_by_reason"].as_object().unwrap();
        if !reasons.is_empty() {
            let reasons: Vec<String> = reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
            assert!(stdout.contains(&format!("    rejects: {}\n", reasons.join(", "))));
        }
    }
    let total = stdout.lines().find(|l| l.starts_with("total ")).unwrap();
    let cells: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(cells[1..4], ["18", "12", "6"], "{total}");

    // Off a terminal: JSON lines, a `done` one per file with all its bytes and records.
    let mut done = BTreeMap::new();
    for line in stderr.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        let f = &v["fields"];
        if f["message"] == "ingest progress" && f["done"] == true {
            assert_eq!(f["bytes"], f["total_bytes"], "{line}");
            done.insert(
                f["file"].as_str().unwrap().to_string(),
                f["records"].clone(),
            );
        }
    }
    for s in report["sources"].as_array().unwrap() {
        assert_eq!(
            done[s["file"].as_str().unwrap()],
            s["records_read"],
            "{stderr}"
        );
    }

    // On a terminal (a pseudo-terminal from util-linux `script`): a bar per file.
    let cmd = format!(
        "{} ingest --lake {} samples/plain",
        env!("CARGO_BIN_EXE_fhirlake"),
        lake.path().display()
    );
    let tty = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .current_dir(root())
        .env("FHIRLAKE_LOG", "info")
        .output();
    let screen = match tty {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        _ => {
            eprintln!("SKIPPED the terminal part: no `script` to give fhirlake a terminal");
            String::new()
        }
    };
    if !screen.is_empty() {
        for bar in ["members.csv", "4 records", "864 B/864 B", "eta"] {
            assert!(screen.contains(bar), "{bar} not in {screen}");
        }
        assert!(!screen.contains("\"ingest progress\""), "{screen}");
    }

    // Nobody is named: no member id, claim id or name of the inputs in the logs or on screen.
    let words = |s: &str| -> std::collections::HashSet<String> {
        s.split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
            .map(str::to_string)
            .collect()
    };
    let said: std::collections::HashSet<String> = words(&stderr)
        .union(&words(&stdout))
        .cloned()
        .chain(words(&screen))
        .collect();
    for r in export(lake.path()) {
        if matches!(
            r["resourceType"].as_str(),
            Some("Patient" | "ExplanationOfBenefit")
        ) {
            let id = r["id"].as_str().unwrap();
            assert!(!said.contains(id), "{id} is named");
        }
        for n in r["name"].as_array().into_iter().flatten() {
            if let Some(family) = n["family"].as_str() {
                assert!(!said.contains(family), "{family} is named");
            }
        }
    }
}
