//! The nightly job's guarantees: crash safety, clean failures, hot reload under load, retention.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{bin, export, files_under, ingest, stable, Server};

#[test]
fn a_killed_run_leaves_the_previous_snapshot_serving_and_the_next_run_completes() {
    let work = tempfile::tempdir().unwrap();
    // A larger input so that kills land in every phase of the run.
    let x12 = work.path().join("big.837");
    let out = bin()
        .args(["generate", "--claims", "3000", "--out"])
        .arg(&x12)
        .output()
        .unwrap();
    assert!(out.status.success());
    let x12 = x12.to_str().unwrap().to_string();

    // The reference: one uninterrupted run after the base.
    let reference = tempfile::tempdir().unwrap();
    assert_eq!(ingest(reference.path(), &["samples/rif"]).0, 0);
    assert_eq!(ingest(reference.path(), &["samples/rif", &x12]).0, 0);
    let want = stable(export(reference.path()));

    let lake = tempfile::tempdir().unwrap();
    assert_eq!(ingest(lake.path(), &["samples/rif"]).0, 0);
    let base = std::fs::read_to_string(lake.path().join("CURRENT")).unwrap();
    let base_export = stable(export(lake.path()));
    // Kill runs at spread-out moments (deterministic pseudo-random delays).
    let mut seed: u64 = 0x5eed;
    for _ in 0..8 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(20 + (seed >> 33) % 600);
        let mut child = bin()
            .args(["ingest", "--lake"])
            .arg(lake.path())
            .args(["samples/rif", &x12])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let current = std::fs::read_to_string(lake.path().join("CURRENT")).unwrap();
        if current == base {
            // Still the old snapshot, whole and readable.
            assert_eq!(stable(export(lake.path())), base_export);
        } else {
            // The run finished before the kill: the new snapshot is complete.
            assert_eq!(stable(export(lake.path())), want);
        }
        // No partial snapshot is ever visible.
        for e in std::fs::read_dir(lake.path().join("snapshots"))
            .unwrap()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            assert!(
                name.starts_with(".tmp-") || e.path().join("manifest.json").is_file(),
                "{name}"
            );
        }
    }
    // The next run recovers (removes leftovers) and equals an uninterrupted run.
    assert_eq!(ingest(lake.path(), &["samples/rif", &x12]).0, 0);
    assert_eq!(stable(export(lake.path())), want);
    let leftovers = std::fs::read_dir(lake.path().join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .count();
    assert_eq!(leftovers, 0);
    // Table files and key index runs of killed runs are gone too: every one is listed by a
    // snapshot, and the current snapshot's key index agrees with its tables.
    let l = mapper::lake::Lake::new(lake.path());
    let mut listed = std::collections::BTreeSet::new();
    for name in l.list().unwrap() {
        let m = l.manifest(&name).unwrap();
        for f in m.files.values().flatten() {
            listed.insert(lake.path().join(&f.path));
        }
        for k in m.keys.values().flatten() {
            listed.insert(lake.path().join(k));
        }
    }
    let mut on_disk = std::collections::BTreeSet::new();
    for dir in ["data", "keys"] {
        for t in std::fs::read_dir(lake.path().join(dir)).unwrap().flatten() {
            for f in std::fs::read_dir(t.path()).unwrap().flatten() {
                on_disk.insert(f.path());
            }
        }
    }
    assert_eq!(on_disk, listed);
    let (checked, _) = mapper::pipeline::verify_key_index(lake.path()).unwrap();
    assert_eq!(checked as usize, want.len());
}

#[test]
fn unreadable_input_fails_the_run_and_leaves_the_lake_as_it_was() {
    let lake = tempfile::tempdir().unwrap();
    assert_eq!(ingest(lake.path(), &["samples/plain"]).0, 0);
    let before = std::fs::read_to_string(lake.path().join("CURRENT")).unwrap();
    let before_files = files_under(lake.path());
    let (code, out) = ingest(lake.path(), &["samples/plain", "no/such/file.csv"]);
    assert_eq!(code, 1);
    let said = format!(
        "fhirlake: the run failed; nothing was published, {} is still the current snapshot: ",
        before.trim()
    );
    assert!(
        out.starts_with(&said) && out.contains("no/such/file.csv"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(lake.path().join("CURRENT")).unwrap(),
        before
    );
    assert_eq!(files_under(lake.path()), before_files);
}

#[test]
fn the_server_picks_up_new_snapshots_under_load_without_failing_a_request() {
    let lake = tempfile::tempdir().unwrap();
    assert_eq!(ingest(lake.path(), &["samples/rif"]).0, 0);
    let s = Server::start(lake.path());
    let t = s.token("567834", "patient/*.rs");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let url = format!(
                "{}/ExplanationOfBenefit?patient=567834&_include=ExplanationOfBenefit:insurer",
                s.base
            );
            let t = t.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                let mut n = 0;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    let r = c.get(&url).bearer_auth(&t).send().unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    let b: Value = r.json().unwrap();
                    let entries = b["entry"].as_array().unwrap();
                    let matches = entries
                        .iter()
                        .filter(|e| e["search"]["mode"] == "match")
                        .count();
                    // Every response is whole: John's four claims and their insurer.
                    assert_eq!(matches, 4, "{b}");
                    assert_eq!(b["total"], 4);
                    assert_eq!(entries.len(), 5);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let first = std::fs::read_to_string(lake.path().join("CURRENT")).unwrap();
    for _ in 0..3 {
        assert_eq!(ingest(lake.path(), &["samples/rif", "samples/plain"]).0, 0);
    }
    let last = std::fs::read_to_string(lake.path().join("CURRENT")).unwrap();
    assert_ne!(first, last);
    // The server serves the newest snapshot within its reload interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, b) = s.get("Patient/M1001", Some(&s.token("M1001", "patient/*.rs")));
        if st == 200 {
            assert_eq!(b["name"][0]["family"], "Núñez");
            break;
        }
        assert!(Instant::now() < deadline, "new snapshot not picked up");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: usize = loaders.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(total > 10, "only {total} requests ran");
}

#[test]
fn snapshots_are_listed_rolled_back_and_pruned() {
    let lake = tempfile::tempdir().unwrap();
    assert_eq!(ingest(lake.path(), &["samples/rif"]).0, 0);
    let first = std::fs::read_to_string(lake.path().join("CURRENT")).unwrap();
    assert_eq!(ingest(lake.path(), &["samples/plain"]).0, 0);
    assert_eq!(ingest(lake.path(), &["samples/plain"]).0, 0);
    let list = |lake: &std::path::Path| {
        let out = bin()
            .args(["snapshots", "--lake"])
            .arg(lake)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(list(lake.path()).lines().count(), 3);
    // Roll back to the first: the plain members are gone again.
    let out = bin()
        .args(["snapshots", "--lake"])
        .arg(lake.path())
        .args(["--rollback", first.trim()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!export(lake.path()).iter().any(|r| r["id"] == "M1001"));
    // Keep one: the current (rolled-back) snapshot survives even though it is the oldest.
    let out = bin()
        .args(["snapshots", "--lake"])
        .arg(lake.path())
        .args(["--keep", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let l = list(lake.path());
    assert!(l.contains(first.trim()), "{l}");
    assert_eq!(l.lines().count(), 2, "newest and current kept: {l}");

    // The current snapshot's key index agrees with its tables; a changed byte in it is found.
    let verify = || {
        bin()
            .args(["snapshots", "--verify", "--lake"])
            .arg(lake.path())
            .output()
            .unwrap()
    };
    let out = verify();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("agrees with its tables"), "{said}");
    let all = export(lake.path());
    let rows = all.len();
    assert!(said.contains(&format!(": {rows} rows")), "{said}");
    let l = mapper::lake::Lake::new(lake.path());
    let m = l.manifest(first.trim()).unwrap();
    // Two types damaged: both are reported and marked.
    for t in ["Patient", "ExplanationOfBenefit"] {
        let run = lake.path().join(&m.keys[t][0]);
        let mut bytes = std::fs::read(&run).unwrap();
        bytes[32] ^= 1; // the first entry's version
        std::fs::write(&run, bytes).unwrap();
    }
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("disagrees") && err.contains("Patient: ") && err.contains("checksum"),
        "{err}"
    );
    // No id in the message (ids may name members), as a reference or as a word of its own.
    let words: std::collections::HashSet<&str> = err
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .collect();
    for r in &all {
        let id = r["id"].as_str().unwrap();
        assert!(!words.contains(id), "{id} in {err}");
    }
    assert!(err.contains("ExplanationOfBenefit: "), "{err}");
    // It leaves word for the next run, which rebuilds those indexes and takes the word back.
    for t in ["Patient", "ExplanationOfBenefit"] {
        let said = format!("the next run that touches {t} rebuilds");
        assert!(err.contains(&said), "{err}");
        assert!(l.rebuild_marker(t).exists(), "{t}");
    }
    let (code, said) = ingest(lake.path(), &["samples/rif"]);
    assert_eq!(code, 0);
    let built = said
        .lines()
        .find(|l| l.starts_with("key index built"))
        .unwrap_or_default();
    assert!(
        built.contains("Patient") && built.contains("ExplanationOfBenefit"),
        "{said}"
    );
    for t in ["Patient", "ExplanationOfBenefit"] {
        assert!(!l.rebuild_marker(t).exists(), "{t}");
    }
    assert!(verify().status.success());
}
