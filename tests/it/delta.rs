//! Incremental runs against a lake of many table files: a delta writes only what it touches,
//! a record repeated within a run keeps only its last version even when the first one was
//! already written out, and pruning leaves exactly the files the kept snapshots list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mapper::lake::Lake;
use mapper::pipeline::{run, Options};
use serde_json::Value;

use crate::common::{first_line_billed, root};

fn options(lake: &Path, file_rows: usize) -> Options {
    Options {
        lake: lake.to_path_buf(),
        mappings: root().join("mappings"),
        forced_mapping: None,
        progress: None,
        file_rows: Some(file_rows),
        buffer_bytes: None,
        // A handful of keys per type in memory: every run's keys go to disk in many sorted
        // runs (merged as they pile up), the path a run of millions of resources takes.
        memory_keys: Some(7),
    }
}

/// Generated plain members and claims (deterministic), as (members, claims) paths.
fn generated(dir: &Path, members: usize, claims_per_member: usize) -> (PathBuf, PathBuf) {
    let (m, c) = (dir.join("members.csv"), dir.join("claims.csv"));
    let mut mo = std::fs::File::create(&m).unwrap();
    let mut co = std::fs::File::create(&c).unwrap();
    ingest::synth::plain(&mut mo, &mut co, members, claims_per_member, 7).unwrap();
    (m, c)
}

/// The files of a type in the current snapshot, relative to the lake root, with their rows.
fn files(lake: &Path, t: &str) -> BTreeMap<String, u64> {
    let l = Lake::new(lake);
    let m = l.manifest(&l.current_name().unwrap().unwrap()).unwrap();
    m.files
        .get(t)
        .map(|fs| fs.iter().map(|f| (f.path.clone(), f.rows)).collect())
        .unwrap_or_default()
}

/// Call `f(type, row)` for every row of the current snapshot.
fn for_each_row(lake: &Path, mut f: impl FnMut(&'static str, mapper::lake::Row)) {
    let l = Lake::new(lake);
    let dir = l.current().unwrap();
    for t in mapper::registry::resource_types() {
        for file in Lake::table_files(&dir, t).unwrap() {
            for r in mapper::lake::read_rows(&file).unwrap() {
                f(t, r);
            }
        }
    }
}

/// Every resource of the current snapshot, by `Type/id`.
fn resources(lake: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for_each_row(lake, |t, r| {
        let v: Value = serde_json::from_str(&r.resource).unwrap();
        assert!(
            out.insert(format!("{t}/{}", r.id), v).is_none(),
            "{t}/{} twice",
            r.id
        );
    });
    out
}

/// The rows of one claim (all its lines) in a plain claims file, and the header.
fn claim_lines(claims: &Path, claim_id: &str) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(claims).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let rows = lines
        .filter(|l| l.split(',').next() == Some(claim_id))
        .map(str::to_string)
        .collect();
    (header, rows)
}

/// Every claim id of a plain claims file, once each, in file order.
fn claim_ids(claims: &Path) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for l in std::fs::read_to_string(claims).unwrap().lines().skip(1) {
        let id = l.split(',').next().unwrap();
        if ids.last().map(String::as_str) != Some(id) {
            ids.push(id.to_string());
        }
    }
    ids
}

/// A claim's lines sent again as an adjustment billing `amount`.
fn adjusted(lines: &[String], amount: &str) -> Vec<String> {
    let adjust = |l: &String| with_billed(&l.replace(",ORIGINAL,", ",ADJUSTED,"), amount);
    lines.iter().map(adjust).collect()
}

/// A claim's lines sent again as a void.
fn voided(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.replace(",ORIGINAL,", ",VOID,"))
        .collect()
}

/// A claim's lines under the claim id `to` instead of `from`.
fn renamed(lines: &[String], from: &str, to: &str) -> Vec<String> {
    let (from, to) = (format!("{from},"), format!("{to},"));
    lines.iter().map(|l| l.replacen(&from, &to, 1)).collect()
}

/// A delta file at `path`: `header`, then `lines`.
fn write_delta(path: PathBuf, header: &str, lines: &[String]) -> PathBuf {
    let mut text = format!("{header}\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Change a claim line's billed amount (column 24, after the quoted names are accounted for
/// by replacing the last numeric amount pattern we wrote ourselves).
fn with_billed(line: &str, amount: &str) -> String {
    let mut fields = split_csv(line);
    let billed = 23; // billed_amount
    fields[billed] = amount.to_string();
    fields
        .iter()
        .map(|f| {
            if f.contains(',') {
                format!("\"{f}\"")
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[test]
fn a_delta_run_writes_only_the_rows_and_files_it_touches() {
    let work = tempfile::tempdir().unwrap();
    let (members, claims) = generated(work.path(), 60, 10);
    let lake = work.path().join("lake");
    let base = run(&[members, claims.clone()], &options(&lake, 100)).unwrap();
    let eobs = base.tables["ExplanationOfBenefit"];
    assert!(eobs > 500, "{eobs}");
    let before = files(&lake, "ExplanationOfBenefit");
    assert!(before.len() >= 6, "many files: {before:?}");
    let before_resources = resources(&lake);

    // The delta: one claim adjusted (new billed amount), one brand-new claim.
    let id = claim_ids(&claims)[0].clone();
    let (header, lines) = claim_lines(&claims, &id);
    let new_id = "P-DELTA-1";
    let mut sent = adjusted(&lines, "4321.00");
    sent.extend(renamed(&lines, &id, new_id));
    let delta = write_delta(work.path().join("delta.csv"), &header, &sent);
    let report = run(&[delta], &options(&lake, 100)).unwrap();

    let stats = report.merge["ExplanationOfBenefit"];
    assert_eq!((stats.created, stats.updated, stats.deleted), (1, 1, 0));
    assert_eq!(report.tables["ExplanationOfBenefit"], eobs + 1);

    // Every earlier file but the one that held the adjusted claim is shared as it was; the
    // run wrote one file with its two rows and one copy of the touched file minus one row.
    let after = files(&lake, "ExplanationOfBenefit");
    let kept: BTreeSet<&String> = after.keys().filter(|p| before.contains_key(*p)).collect();
    let gone: Vec<&String> = before.keys().filter(|p| !after.contains_key(*p)).collect();
    let added: Vec<(&String, &u64)> = after
        .iter()
        .filter(|(p, _)| !before.contains_key(*p))
        .collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(kept.len(), before.len() - 1);
    let mut added_rows: Vec<u64> = added.iter().map(|(_, r)| **r).collect();
    added_rows.sort();
    assert_eq!(added_rows, vec![2, before[gone[0]] - 1]);

    // The content: the adjusted claim has version 2 and the new amount; the new claim is
    // there at version 1; every other resource is byte-for-byte what it was.
    let after_resources = resources(&lake);
    let eob_id = |claim: &str| {
        after_resources
            .keys()
            .find(|k| k.starts_with("ExplanationOfBenefit/") && k.ends_with(claim))
            .unwrap()
            .clone()
    };
    let changed = &after_resources[&eob_id(&id)];
    assert_eq!(changed["meta"]["versionId"], "2");
    assert_eq!(first_line_billed(changed), 4321.0);
    assert_eq!(after_resources[&eob_id(new_id)]["meta"]["versionId"], "1");
    for (k, v) in &before_resources {
        if *k != eob_id(&id) {
            assert_eq!(&after_resources[k], v, "{k} changed");
        }
    }

    // Pruning to one snapshot leaves exactly the files it lists.
    Lake::new(&lake).prune(1).unwrap();
    let mut on_disk = BTreeSet::new();
    for t in std::fs::read_dir(lake.join("data")).unwrap().flatten() {
        for f in std::fs::read_dir(t.path()).unwrap().flatten() {
            on_disk.insert(f.path().strip_prefix(&lake).unwrap().display().to_string());
        }
    }
    let l = Lake::new(&lake);
    let m = l.manifest(&l.current_name().unwrap().unwrap()).unwrap();
    let listed: BTreeSet<String> = m.files.values().flatten().map(|f| f.path.clone()).collect();
    assert_eq!(on_disk, listed);
    assert_eq!(resources(&lake), after_resources);
}

#[test]
fn a_claim_repeated_later_in_a_run_keeps_only_its_last_version() {
    let work = tempfile::tempdir().unwrap();
    let (members, claims) = generated(work.path(), 40, 10);
    let id = claim_ids(&claims)[0].clone();
    let (_, lines) = claim_lines(&claims, &id);
    // The same claim again at the end of the file, adjusted: by then its first version has
    // long been written out to a table file (20 rows per file).
    let mut text = std::fs::read_to_string(&claims).unwrap();
    for l in &lines {
        text.push_str(&with_billed(
            &l.replace(",ORIGINAL,", ",ADJUSTED,"),
            "99.99",
        ));
        text.push('\n');
    }
    std::fs::write(&claims, text).unwrap();
    let lake = work.path().join("lake");
    let report = run(&[members, claims.clone()], &options(&lake, 20)).unwrap();
    assert!(files(&lake, "ExplanationOfBenefit").len() > 10);

    let all = resources(&lake);
    let matching: Vec<&Value> = all
        .iter()
        .filter(|(k, _)| k.starts_with("ExplanationOfBenefit/") && k.ends_with(&id))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(matching.len(), 1);
    assert_eq!(first_line_billed(matching[0]), 99.99);
    assert_eq!(matching[0]["meta"]["versionId"], "1");
    let eobs = all
        .keys()
        .filter(|k| k.starts_with("ExplanationOfBenefit/"))
        .count() as u64;
    assert_eq!(report.tables["ExplanationOfBenefit"], eobs);
    assert_eq!(report.merge["ExplanationOfBenefit"].created, eobs);

    // The same input again changes nothing and writes no file.
    let before = files(&lake, "ExplanationOfBenefit");
    let again = run(
        &[work.path().join("members.csv"), claims],
        &options(&lake, 20),
    )
    .unwrap();
    assert_eq!(again.merge["ExplanationOfBenefit"].unchanged, eobs);
    assert_eq!(again.merge["ExplanationOfBenefit"].created, 0);
    assert_eq!(again.merge["ExplanationOfBenefit"].updated, 0);
    assert_eq!(files(&lake, "ExplanationOfBenefit"), before);
    assert_eq!(resources(&lake), all);
}

/// Rewrite every table file of the current snapshot in place with `content_hash` set by
/// `hash` from the stored JSON without its stamps (what the hash covers), and drop the key
/// index from its manifest (the earlier versions wrote none).
fn rehash(lake: &Path, hash: impl Fn(&str) -> u128) {
    let l = Lake::new(lake);
    let dir = l.current().unwrap();
    let manifest = dir.join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert!(m.as_object_mut().unwrap().remove("keys").is_some());
    for files in m["files"].as_object_mut().unwrap().values_mut() {
        for f in files.as_array_mut().unwrap() {
            f.as_object_mut().unwrap().remove("number");
        }
    }
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    for t in mapper::registry::resource_types() {
        for f in Lake::table_files(&dir, t).unwrap() {
            let rows = mapper::lake::read_rows(&f).unwrap();
            let stamp = rows[0].last_updated;
            let new: Vec<mapper::lake::NewRow> = rows
                .into_iter()
                .map(|r| {
                    assert_eq!(r.last_updated, stamp);
                    let mut json: Value = serde_json::from_str(&r.resource).unwrap();
                    let meta = json["meta"].as_object_mut().unwrap();
                    meta.remove("versionId");
                    meta.remove("lastUpdated");
                    let mut prepared = mapper::lake::Prepared::new(mapper::Resource {
                        resource_type: t,
                        id: r.id,
                        patient_id: r.patient_id,
                        json: mapper::Json::Tree(json),
                        deleted: false,
                    });
                    let stored = format!("{:032x}", mapper::lake::hash_text(&prepared.text));
                    assert_eq!(r.content_hash, stored);
                    prepared.content_hash = hash(&prepared.text);
                    mapper::lake::NewRow {
                        prepared,
                        version_id: r.version_id,
                    }
                })
                .collect();
            mapper::lake::write_file(&f, t, new, stamp).unwrap();
        }
    }
}

/// Every row's `(Type/id, version_id, content_hash)`.
fn versions(lake: &Path) -> BTreeMap<String, (i64, String)> {
    let mut out = BTreeMap::new();
    for_each_row(lake, |t, r| {
        out.insert(format!("{t}/{}", r.id), (r.version_id, r.content_hash));
    });
    out
}

#[test]
fn a_lake_with_the_earlier_sha256_content_hashes_does_not_re_version_on_upgrade() {
    let work = tempfile::tempdir().unwrap();
    let (members, claims) = generated(work.path(), 20, 5);
    let inputs = [members, claims];
    let count = |lake: &Path| versions(lake).len() as u64;

    // A lake as an earlier version wrote it: the same rows, SHA-256 content hashes.
    let lake = work.path().join("lake");
    run(&inputs, &options(&lake, 50)).unwrap();
    rehash(&lake, mapper::lake::legacy_hash);
    let before = versions(&lake);
    assert!(before.values().all(|(v, _)| *v == 1));
    let report = run(&inputs, &options(&lake, 50)).unwrap();
    let unchanged: u64 = report.merge.values().map(|s| s.unchanged).sum();
    let updated: u64 = report.merge.values().map(|s| s.updated).sum();
    assert_eq!(updated, 0, "{:?}", report.merge);
    assert!(unchanged > 100 && unchanged <= count(&lake), "{unchanged}");
    assert_eq!(versions(&lake), before, "rows kept as they were");
    // The run built the key index the earlier lake lacked, and says so.
    assert!(
        report.merge.values().all(|s| s.key_index_built),
        "{:?}",
        report.merge
    );
    let (checked, runs) = mapper::pipeline::verify_key_index(&lake).unwrap();
    assert_eq!((checked, runs), (count(&lake), 1));

    // The control: hashes that match neither scheme make every primary resource a new version.
    let other = work.path().join("other");
    run(&inputs, &options(&other, 50)).unwrap();
    rehash(&other, |_| 0);
    let report = run(&inputs, &options(&other, 50)).unwrap();
    let updated: u64 = report.merge.values().map(|s| s.updated).sum();
    assert_eq!(updated, unchanged, "{:?}", report.merge);
    assert!(versions(&other).values().any(|(v, _)| *v == 2));
}

/// Every resource of the current snapshot without the stamp a run sets (`meta.lastUpdated`).
fn unstamped(lake: &Path) -> BTreeMap<String, Value> {
    let mut all = resources(lake);
    for v in all.values_mut() {
        if let Some(m) = v.get_mut("meta").and_then(Value::as_object_mut) {
            m.remove("lastUpdated");
        }
    }
    all
}

#[test]
fn side_products_written_out_early_still_give_way_to_richer_descriptions() {
    // The same patient twice: first in a claim without the patient's address, then with it.
    let sample = std::fs::read_to_string(root().join("samples/x12/lfh_837p_example1.837")).unwrap();
    let address = ["N3*236 N MAIN ST~", "N4*MIAMI*FL*33413~"];
    assert!(address.iter().all(|s| sample.contains(s)) && sample.contains("SE*40*0021~"));
    let lean = sample
        .lines()
        .filter(|l| !address.contains(&l.trim_end()))
        .map(|l| {
            l.replace("CLM*26463774*", "CLM*26463775*")
                .replace("SE*40*0021~", "SE*38*0021~")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a.837"), work.path().join("b.837"));
    std::fs::write(&a, lean).unwrap();
    std::fs::write(&b, &sample).unwrap();
    let inputs = [
        a,
        b,
        root().join("samples/x12"),
        root().join("samples/plain"),
    ];

    // One row per file and one waiting side product: every side product goes out to a table
    // file at once, and a richer description must take it back.
    let (early, held) = (work.path().join("early"), work.path().join("held"));
    let small = run(&inputs, &options(&early, 1)).unwrap();
    let default = Options {
        file_rows: None,
        buffer_bytes: None,
        memory_keys: None,
        ..options(&held, 1)
    };
    let large = run(&inputs, &default).unwrap();
    assert_eq!(small.rejected, 0);
    assert_eq!(small.tables, large.tables);
    assert!(files(&early, "Patient").len() > files(&held, "Patient").len());
    let all = unstamped(&early);
    assert_eq!(all, unstamped(&held));

    let teds: Vec<&Value> = all
        .iter()
        .filter(|(k, v)| k.starts_with("Patient/") && v["name"][0]["given"][0] == "TED")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(teds.len(), 1, "{teds:?}");
    assert_eq!(teds[0]["address"][0]["line"][0], "236 N MAIN ST");
    for claim in ["26463774", "26463775"] {
        assert!(
            all.keys()
                .any(|k| k.starts_with("ExplanationOfBenefit/") && k.ends_with(claim)),
            "{claim}"
        );
    }
}

#[test]
fn one_memory_budget_for_all_types_writes_the_same_lake() {
    // Every generated 837 claim names its own member: EOBs, Patients and Coverages grow
    // together, and a small budget must write out whichever type holds most, by turns.
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("g.837");
    let mut f = std::fs::File::create(&input).unwrap();
    ingest::x12::generate_837(&mut f, true, 400, 11).unwrap();
    drop(f);
    let inputs = [input];
    let (tight, roomy) = (work.path().join("tight"), work.path().join("roomy"));
    let budget = Options {
        file_rows: None,
        buffer_bytes: Some(256 << 10),
        memory_keys: None,
        ..options(&tight, 1)
    };
    let default = Options {
        file_rows: None,
        ..options(&roomy, 1)
    };
    let small = run(&inputs, &budget).unwrap();
    let large = run(&inputs, &default).unwrap();
    assert_eq!(small.rejected, 0);
    assert_eq!(small.tables, large.tables);
    assert_eq!(small.tables["ExplanationOfBenefit"], 400);
    for t in ["ExplanationOfBenefit", "Patient", "Coverage"] {
        assert_eq!(files(&roomy, t).len(), 1, "{t}");
        assert!(
            files(&tight, t).len() > 1,
            "{t} was never written out early"
        );
    }
    assert_eq!(unstamped(&tight), unstamped(&roomy));
    // The keys the run spilled to disk are gone with it.
    for lake in [&tight, &roomy] {
        for snap in std::fs::read_dir(lake.join("snapshots")).unwrap().flatten() {
            assert!(
                !snap.path().join("keys").exists(),
                "{}",
                snap.path().display()
            );
        }
    }
}

/// Nine nightly deltas (an adjusted claim, a voided one and a new one each) on a lake of many
/// files: after every run the key index agrees with the tables and its runs are merged as they
/// pile up; a rollback and a delta on top of it keep it true; pruning leaves only the index
/// runs the kept snapshots list.
#[test]
fn the_key_index_stays_true_over_many_deltas() {
    let work = tempfile::tempdir().unwrap();
    let (members, claims) = generated(work.path(), 30, 6);
    let lake = work.path().join("lake");
    let base = run(&[members, claims.clone()], &options(&lake, 40)).unwrap();
    let total = |r: &mapper::pipeline::RunReport| r.tables.values().sum::<u64>();
    let (checked, runs) = mapper::pipeline::verify_key_index(&lake).unwrap();
    assert_eq!((checked, runs), (total(&base), 1));

    let ids = claim_ids(&claims);
    // Delta `n`: claim `2n` adjusted and again under a new id, claim `2n + 1` voided.
    let delta = |n: usize| -> PathBuf {
        let (header, adjust) = claim_lines(&claims, &ids[2 * n]);
        let (_, void) = claim_lines(&claims, &ids[2 * n + 1]);
        let mut sent = adjusted(&adjust, &format!("{}.25", 100 + n));
        sent.extend(renamed(&adjust, &ids[2 * n], &format!("P-NEW-{n}")));
        sent.extend(voided(&void));
        write_delta(work.path().join(format!("delta-{n}.csv")), &header, &sent)
    };
    let mut most = 0;
    for n in 0..9 {
        let report = run(&[delta(n)], &options(&lake, 40)).unwrap();
        let eob = report.merge["ExplanationOfBenefit"];
        assert_eq!((eob.created, eob.updated), (1, 2), "delta {n}");
        assert!(!eob.key_index_built, "delta {n} used the index it had");
        let (checked, runs) = mapper::pipeline::verify_key_index(&lake).unwrap();
        assert_eq!(checked, total(&report), "delta {n}");
        most = most.max(runs);
    }
    // Ten runs touched the claims' types; merging kept their index to a few runs.
    assert!((2..=5).contains(&most), "{most} runs");

    // Back to the snapshot after the third delta, then the ninth delta again on top of it.
    let l = Lake::new(&lake);
    let names = l.list().unwrap();
    l.switch_to(&names[3]).unwrap();
    let report = run(&[delta(8)], &options(&lake, 40)).unwrap();
    assert_eq!(report.merge["ExplanationOfBenefit"].created, 1);
    let (checked, _) = mapper::pipeline::verify_key_index(&lake).unwrap();
    assert_eq!(checked, total(&report));

    // Pruning keeps exactly the index runs the kept snapshots list.
    l.prune(2).unwrap();
    let _ = run(&[delta(0)], &options(&lake, 40)).unwrap();
    let mut listed = BTreeSet::new();
    for name in l.list().unwrap() {
        listed.extend(l.manifest(&name).unwrap().keys.into_values().flatten());
    }
    let mut on_disk = BTreeSet::new();
    for t in std::fs::read_dir(lake.join("keys")).unwrap().flatten() {
        for f in std::fs::read_dir(t.path()).unwrap().flatten() {
            on_disk.insert(f.path().strip_prefix(&lake).unwrap().display().to_string());
        }
    }
    assert_eq!(on_disk, listed);
    mapper::pipeline::verify_key_index(&lake).unwrap();

    // A run whose index file was cut short builds the index again from the table.
    let m = l.manifest(&l.current_name().unwrap().unwrap()).unwrap();
    let newest = lake.join(m.keys["ExplanationOfBenefit"].last().unwrap());
    let len = std::fs::metadata(&newest).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let report = run(&[delta(1)], &options(&lake, 40)).unwrap();
    assert!(report.merge["ExplanationOfBenefit"].key_index_built);
    let (checked, runs) = mapper::pipeline::verify_key_index(&lake).unwrap();
    assert_eq!(checked, total(&report));
    assert!(runs <= 2, "{runs}");
}

/// Change every 1000th byte of the entry blocks of a type's newest (or `which`) index run,
/// leaving its footer whole so the run still opens.
fn damage_index_run(lake: &Path, t: &str, which: impl Fn(&[String]) -> &String) {
    let l = Lake::new(lake);
    let m = l.manifest(&l.current_name().unwrap().unwrap()).unwrap();
    let path = lake.join(which(&m.keys[t]));
    let mut bytes = std::fs::read(&path).unwrap();
    // Entries and their block sums are over 90 % of a run; fences and filter follow them.
    let body = bytes.len() * 9 / 10;
    for at in (0..body).step_by(1000) {
        bytes[at] ^= 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
}

/// A damaged key index is never believed: its checksums catch the change, `verify_key_index`
/// reports it, and the next run rebuilds the type's index from the table — whether the damage
/// is met by a lookup or only when the run merges index runs — and writes the same lake as
/// runs on an undamaged one. An index that is whole but wrong makes a run fail rather than
/// drop another resource's row, and the run after it rebuilds the index.
#[test]
fn a_damaged_key_index_is_rebuilt_from_the_table_not_believed() {
    let work = tempfile::tempdir().unwrap();
    let (members, claims) = generated(work.path(), 30, 6);
    let (sound, damaged) = (work.path().join("sound"), work.path().join("damaged"));
    let ids = claim_ids(&claims);
    // A delta adjusting claim `n` and voiding claim `n + 1`, or (`fresh`) bringing claim `n`
    // again under a new id.
    let delta = |n: usize, fresh: bool| -> PathBuf {
        let (header, lines) = claim_lines(&claims, &ids[n]);
        let sent = if fresh {
            renamed(&lines, &ids[n], &format!("N-{n}"))
        } else {
            let mut sent = adjusted(&lines, "123.45");
            sent.extend(voided(&claim_lines(&claims, &ids[n + 1]).1));
            sent
        };
        write_delta(
            work.path().join(format!("delta-{n}-{fresh}.csv")),
            &header,
            &sent,
        )
    };
    let both = |input: &[PathBuf]| {
        let a = run(input, &options(&sound, 40)).unwrap();
        let b = run(input, &options(&damaged, 40)).unwrap();
        assert_eq!(unstamped(&sound), unstamped(&damaged));
        (a, b)
    };
    let eob = "ExplanationOfBenefit";
    both(&[members, claims.clone()]);

    // Met by the lookups: every block of the one run is damaged.
    damage_index_run(&damaged, eob, |runs| runs.last().unwrap());
    let wrong = mapper::pipeline::verify_key_index(&damaged).unwrap_err();
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert_eq!(wrong[0].resource_type.as_deref(), Some(eob));
    assert!(wrong[0].message.contains("checksum"), "{}", wrong[0]);
    let (a, b) = both(&[delta(4, false)]);
    assert!(!a.merge[eob].key_index_built);
    assert!(
        b.merge[eob].key_index_built,
        "the damaged index was rebuilt"
    );
    // The adjusted claim and the voided one (now `cancelled`) are updates.
    assert_eq!(b.merge[eob].updated, 2);
    assert_eq!(
        b.merge[eob],
        mapper::lake::MergeStats {
            key_index_built: true,
            ..a.merge[eob]
        }
    );
    mapper::pipeline::verify_key_index(&damaged).unwrap();

    // Met only when runs are merged: new claims (looked up in no block) while the newest run,
    // which the next merge reads whole, is damaged.
    let runs = |lake: &Path| {
        let l = Lake::new(lake);
        l.manifest(&l.current_name().unwrap().unwrap())
            .unwrap()
            .keys[eob]
            .len()
    };
    let mut n = 10;
    while runs(&damaged) < 4 {
        both(&[delta(n, true)]);
        n += 1;
        assert!(n < 20, "runs do not pile up");
    }
    damage_index_run(&damaged, eob, |runs| runs.last().unwrap());
    let (_, b) = both(&[delta(n, true)]);
    assert!(
        b.merge[eob].key_index_built,
        "the damaged index was rebuilt"
    );
    let (checked, _) = mapper::pipeline::verify_key_index(&damaged).unwrap();
    assert_eq!(checked, b.tables.values().sum::<u64>());

    // An index with sound checksums that places an id in a row holding another, or in a row
    // the file does not have (here: two table files traded contents), drops no row: the run fails before it
    // publishes, and the next one rebuilds the index from the table.
    let claim = &ids[6];
    let sizes = files(&damaged, eob);
    let holder = sizes
        .keys()
        .find(|f| {
            let rows = mapper::lake::read_rows(&damaged.join(f)).unwrap();
            rows.iter().any(|r| r.id.ends_with(&format!("-{claim}")))
        })
        .unwrap()
        .clone();
    let other = sizes.keys().find(|f| **f != holder).unwrap();
    let (x, y) = (damaged.join(&holder), damaged.join(other));
    let (bx, by) = (std::fs::read(&x).unwrap(), std::fs::read(&y).unwrap());
    std::fs::write(&x, by).unwrap();
    std::fs::write(&y, bx).unwrap();
    let l = Lake::new(&damaged);
    let current = l.current_name().unwrap();
    let err = run(&[delta(6, false)], &options(&damaged, 40)).unwrap_err();
    assert!(err.to_string().contains("key index"), "{err}");
    assert_eq!(l.current_name().unwrap(), current, "nothing published");
    let marker = l.rebuild_marker(eob);
    assert!(marker.exists());
    let (a, b) = both(&[delta(6, false)]);
    assert!(b.merge[eob].key_index_built, "the wrong index was rebuilt");
    assert_eq!(
        b.merge[eob],
        mapper::lake::MergeStats {
            key_index_built: true,
            ..a.merge[eob]
        }
    );
    assert!(
        !marker.exists(),
        "the marker goes once the rebuilt index is published"
    );
    mapper::pipeline::verify_key_index(&damaged).unwrap();

    // An index naming a file the snapshot does not list (here the manifest lost the file that
    // holds the claim) is wrong the same way: the run fails, and the next one rebuilds it.
    let claim = &ids[8];
    let name = l.current_name().unwrap().unwrap();
    let mut m = l.manifest(&name).unwrap();
    let held = |f: &mapper::lake::TableFile| {
        let rows = mapper::lake::read_rows(&damaged.join(&f.path)).unwrap();
        rows.iter().any(|r| r.id.ends_with(&format!("-{claim}")))
    };
    m.files.get_mut(eob).unwrap().retain(|f| !held(f));
    let path = damaged.join("snapshots").join(&name).join("manifest.json");
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let err = run(&[delta(8, false)], &options(&damaged, 40)).unwrap_err();
    assert!(err.to_string().contains("does not list"), "{err}");
    assert_eq!(
        l.current_name().unwrap().unwrap(),
        name,
        "nothing published"
    );
    assert!(marker.exists());
    let report = run(&[delta(8, false)], &options(&damaged, 40)).unwrap();
    assert!(report.merge[eob].key_index_built);
    assert!(!marker.exists());
    // (Row counts are no check here: the traded files above keep each other's counts.)
    mapper::pipeline::verify_key_index(&damaged).unwrap();
}

/// Rewrite a table file as a fhirlake that did not have the columns of `dropped` wrote it.
fn without_columns(path: &Path, dropped: &[&str]) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<arrow::array::RecordBatch> = reader.map(Result::unwrap).collect();
    let keep: Vec<usize> = batches[0]
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !dropped.iter().any(|d| f.name().starts_with(d)))
        .map(|(i, _)| i)
        .collect();
    let old: Vec<arrow::array::RecordBatch> =
        batches.iter().map(|b| b.project(&keep).unwrap()).collect();
    let out = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(out, old[0].schema(), None).unwrap();
    for b in &old {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// A member's Patient ids found by a search of the current snapshot.
fn patients_found(lake: &Path, query: &[(&str, &str)]) -> Vec<String> {
    let pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let snap = query::Snapshot::open(&Lake::new(lake)).await.unwrap();
        let req = query::SearchRequest::parse("Patient", &pairs, true, Default::default()).unwrap();
        let page = snap.search(&req, None, None, b"k").await.unwrap();
        page.matches
            .iter()
            .map(|m| {
                serde_json::from_str::<Value>(m).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    })
}

#[test]
fn files_from_before_a_new_search_parameter_get_its_columns_in_the_next_run() {
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    let samples = root().join("samples/plain");
    let claims = samples.join("claims.csv");
    run(
        &[samples.join("members.csv"), claims.clone()],
        &options(&lake, 100),
    )
    .unwrap();
    let by_name = [("family", "nunez"), ("birthdate", "1984-03-12")];
    assert_eq!(patients_found(&lake, &by_name), ["M1001"]);

    // The lake as a fhirlake without the US Core Patient parameters wrote it.
    let new_columns = [
        "sp_name",
        "sp_family",
        "sp_given",
        "sp_gender",
        "sp_birthdate",
    ];
    let patient_files = Lake::table_files(&Lake::new(&lake).current().unwrap(), "Patient").unwrap();
    for f in &patient_files {
        without_columns(f, &new_columns);
        assert!(mapper::lake::outdated(f, "Patient").unwrap());
    }
    let before = resources(&lake);
    assert!(
        patients_found(&lake, &by_name).is_empty(),
        "old files have no values for the new parameters (and serve without error)"
    );

    // A delta that touches no member: the run rewrites the Patient files with the columns,
    // changing no resource, version or time, and the key index follows the copies.
    let (header, lines) = claim_lines(&claims, "P-5001");
    let delta = write_delta(
        work.path().join("delta.csv"),
        &header,
        &adjusted(&lines, "181.00"),
    );
    let report = run(&[delta], &options(&lake, 100)).unwrap();
    assert_eq!(report.merge["ExplanationOfBenefit"].updated, 1);
    let after = resources(&lake);
    for (k, v) in &before {
        if k.starts_with("Patient/") {
            assert_eq!(&after[k], v, "{k} changed");
        }
    }
    let now = Lake::table_files(&Lake::new(&lake).current().unwrap(), "Patient").unwrap();
    assert!(now.iter().all(|f| !patient_files.contains(f)), "{now:?}");
    for f in &now {
        assert!(!mapper::lake::outdated(f, "Patient").unwrap(), "{f:?}");
    }
    mapper::pipeline::verify_key_index(&lake).unwrap();
    assert_eq!(patients_found(&lake, &by_name), ["M1001"]);
    assert_eq!(
        patients_found(&lake, &[("gender", "female"), ("given", "ana")]),
        ["M1001"]
    );
}
