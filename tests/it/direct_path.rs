//! The direct path of `query` (index + row selection, no DataFusion planning) answers exactly
//! as DataFusion does: same ids, order, totals and paging cursors, over the sample lake and
//! over the same tables split into several files (a member's rows spread over files).

use std::path::{Path, PathBuf};

use mapper::lake::{copy_without, read_rows, Lake};
use query::params::Limits;
use query::{OpenOptions, Page, SearchRequest, Snapshot};
use serde_json::Value;

use crate::common::sample_lake;

const SECRET: &[u8] = b"direct-path-test-secret";
const BASE: &str = "http://h/fhir";

fn direct(cache: usize) -> OpenOptions {
    OpenOptions {
        direct: true,
        row_cache_bytes: cache,
    }
}

fn planner() -> OpenOptions {
    OpenOptions {
        direct: false,
        row_cache_bytes: 0,
    }
}

fn page_eq(what: &str, a: &Page, b: &Page) {
    assert_eq!(a.matches, b.matches, "matches of {what}");
    assert_eq!(a.included, b.included, "included of {what}");
    assert_eq!(a.total, b.total, "total of {what}");
    assert_eq!(a.next, b.next, "next of {what}");
    assert_eq!(a.previous, b.previous, "previous of {what}");
    assert_eq!(a.offset, b.offset, "offset of {what}");
}

fn ids_of(texts: &[String]) -> Vec<String> {
    texts
        .iter()
        .map(|t| {
            let v: Value = serde_json::from_str(t).expect("json");
            v["id"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

fn pairs(q: &[(&str, String)]) -> Vec<(String, String)> {
    q.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Compare a search on both snapshots, following `next` to the end and `previous` back from
/// every page.
async fn same_search(
    a: &Snapshot,
    b: &Snapshot,
    t: &str,
    q: &[(&str, String)],
    patients: Option<&[String]>,
) -> usize {
    let mut req = SearchRequest::parse(t, &pairs(q), false, Limits::default()).expect("parse");
    let what = format!("{t}?{q:?} as {patients:?}");
    let mut seen = 0;
    for _ in 0..50 {
        let pa = a
            .search(&req, patients, Some(BASE), SECRET)
            .await
            .expect("a");
        let pb = b
            .search(&req, patients, Some(BASE), SECRET)
            .await
            .expect("b");
        page_eq(&what, &pa, &pb);
        seen += pa.matches.len();
        if let Some(prev) = &pa.previous {
            let mut back = req.clone();
            back.cursor = Some(prev.clone());
            let ba = a
                .search(&back, patients, Some(BASE), SECRET)
                .await
                .expect("a back");
            let bb = b
                .search(&back, patients, Some(BASE), SECRET)
                .await
                .expect("b back");
            page_eq(&format!("{what} (previous)"), &ba, &bb);
        }
        match pa.next {
            Some(n) => req.cursor = Some(n),
            None => break,
        }
    }
    seen
}

async fn same_everything(
    a: &Snapshot,
    b: &Snapshot,
    patient: &str,
    since: Option<&str>,
    care: (Option<&str>, Option<&str>),
    types: Option<&[String]>,
    count: usize,
) {
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let pa = a
            .everything(
                patient,
                since,
                care,
                types,
                count,
                cursor.as_deref(),
                None,
                SECRET,
            )
            .await
            .expect("a");
        let pb = b
            .everything(
                patient,
                since,
                care,
                types,
                count,
                cursor.as_deref(),
                None,
                SECRET,
            )
            .await
            .expect("b");
        page_eq(
            &format!("$everything {since:?} {care:?} {types:?} {count}"),
            &pa,
            &pb,
        );
        match pa.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
}

/// Every hot request, compared on two snapshots of the same data.
async fn compare(a: &Snapshot, b: &Snapshot) {
    // Patients: those with the most claims first, plus one without any and an unknown one.
    let everyone = SearchRequest::parse(
        "Patient",
        &pairs(&[("_count", "200".into())]),
        false,
        Limits::default(),
    )
    .expect("parse");
    let all_patients = ids_of(
        &b.search(&everyone, None, None, SECRET)
            .await
            .expect("patients")
            .matches,
    );
    assert!(all_patients.len() > 3, "the sample lake has members");
    let mut by_claims = Vec::new();
    for p in &all_patients {
        let r = SearchRequest::parse(
            "ExplanationOfBenefit",
            &pairs(&[("patient", p.clone()), ("_summary", "count".into())]),
            false,
            Limits::default(),
        )
        .expect("parse");
        let n = b.search(&r, None, None, SECRET).await.expect("count").total;
        by_claims.push((std::cmp::Reverse(n), p.clone()));
    }
    by_claims.sort();
    let mut chosen: Vec<String> = by_claims.iter().take(4).map(|(_, p)| p.clone()).collect();
    chosen.push(by_claims.last().map(|(_, p)| p.clone()).unwrap_or_default());
    chosen.push("no-such-member".into());
    let other = by_claims[1].1.clone();

    let mut seen = 0;
    for p in &chosen {
        let me = vec![p.clone()];
        let two = vec![p.clone(), other.clone()];
        let nobody: Vec<String> = Vec::new();
        let scopes: [Option<&[String]>; 4] = [None, Some(&me), Some(&two), Some(&nobody)];
        let queries: Vec<Vec<(&str, String)>> = vec![
            vec![("patient", p.clone()), ("_count", "3".into())],
            vec![("patient", format!("Patient/{p}")), ("_count", "1".into())],
            vec![
                ("patient", format!("{BASE}/Patient/{p}")),
                ("_count", "0".into()),
            ],
            vec![("patient", format!("{p},{other}")), ("_count", "4".into())],
            vec![("patient", p.clone()), ("patient", other.clone())],
            vec![
                ("patient", p.clone()),
                ("service-date", "ge2020-01-01".into()),
                ("_count", "2".into()),
            ],
            vec![
                ("patient", p.clone()),
                ("service-date", "lt2019,gt2022-06".into()),
            ],
            vec![
                ("patient", p.clone()),
                ("service-date", "ne2021".into()),
                ("service-date", "le2030".into()),
            ],
            vec![("patient", p.clone()), ("service-date", "eq2020".into())],
            vec![
                ("patient", p.clone()),
                ("_lastUpdated", "gt2000-01-01".into()),
                ("_count", "2".into()),
            ],
            vec![
                ("patient", p.clone()),
                ("_sort", "-service-date".into()),
                ("_count", "2".into()),
            ],
            vec![
                ("patient", p.clone()),
                ("_sort", "service-date".into()),
                ("_count", "3".into()),
            ],
            vec![
                ("patient", p.clone()),
                ("_sort", "-_lastUpdated".into()),
                ("_count", "2".into()),
                ("_total", "accurate".into()),
            ],
            vec![("patient", p.clone()), ("_summary", "count".into())],
            vec![
                ("patient", p.clone()),
                ("_include", "ExplanationOfBenefit:provider".into()),
                ("_count", "2".into()),
            ],
            vec![("_count", "2".into())],
            vec![("service-date", "ge2021".into()), ("_count", "5".into())],
        ];
        for q in &queries {
            for s in scopes {
                seen += same_search(a, b, "ExplanationOfBenefit", q, s).await;
            }
        }
        for q in [
            vec![("patient", p.clone())],
            vec![("patient", p.clone()), ("_count", "1".into())],
            vec![("_count", "1".into())],
        ] {
            for s in scopes {
                seen += same_search(a, b, "Coverage", &q, s).await;
            }
        }
        let all = (None, None);
        for count in [1, 3, 20] {
            same_everything(a, b, p, None, all, None, count).await;
        }
        same_everything(a, b, p, Some("2000-01-01"), all, None, 2).await;
        same_everything(a, b, p, Some("2999-01-01"), all, None, 2).await;
        let types = vec!["Practitioner".to_string(), "Coverage".to_string()];
        same_everything(a, b, p, None, all, Some(&types), 1).await;
        for care in [
            (Some("2010-01-01"), None),
            (None, Some("2015-12-31")),
            (Some("2000"), Some("2019")),
            (Some("2024-02"), Some("2024-02")),
            (Some("2999-01-01"), None),
        ] {
            same_everything(a, b, p, None, care, None, 2).await;
        }
    }
    assert!(seen > 20, "the comparisons saw matches");

    // Reads of every id of the member-data types, in and out of the compartment.
    for t in [
        "Patient",
        "ExplanationOfBenefit",
        "Coverage",
        "Organization",
        "Practitioner",
    ] {
        let r = SearchRequest::parse(
            t,
            &pairs(&[("_count", "200".into())]),
            false,
            Limits::default(),
        )
        .expect("parse");
        let page = b.search(&r, None, None, SECRET).await.expect("all");
        let mut texts = page.matches;
        texts.truncate(60);
        for text in &texts {
            let v: Value = serde_json::from_str(text).expect("json");
            let id = v["id"].as_str().unwrap_or_default();
            for s in [None, Some(&chosen[..1]), Some(&chosen[1..2]), Some(&[][..])] {
                let ra = a.read(t, id, s).await.expect("a read");
                let rb = b.read(t, id, s).await.expect("b read");
                assert_eq!(ra, rb, "read {t}/{id} as {s:?}");
            }
        }
        assert_eq!(a.read(t, "no-such-id", None).await.expect("a"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_path_answers_as_datafusion_over_the_sample_lake() {
    let dir = sample_lake();
    let lake = Lake::new(dir.path());
    let b = Snapshot::open_with(&lake, planner()).await.expect("open");
    // Without a row cache (every row read from the file) and with one.
    for cache in [0, 1 << 20] {
        let a = Snapshot::open_with(&lake, direct(cache))
            .await
            .expect("open");
        compare(&a, &b).await;
        compare(&a, &b).await;
    }
}

/// Each table split into several files, as the writer may: in runs (a member's rows across a
/// file boundary) and round-robin (a member's rows in every file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_path_answers_as_datafusion_over_split_tables() {
    let dir = sample_lake();
    let lake = Lake::new(dir.path());
    let snap = lake.current().expect("current");
    let name = snap
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    for (mode, parts) in [("runs", 3usize), ("round-robin", 4usize)] {
        let out = dir.path().join(format!("split-{mode}"));
        std::fs::create_dir_all(&out).expect("mkdir");
        let mut files: Vec<(String, Vec<PathBuf>)> = Vec::new();
        for t in mapper::registry::resource_types() {
            let mut list = Vec::new();
            for f in Lake::table_files(&snap, t).expect("files") {
                list.extend(split(&f, t, &out, mode, parts));
            }
            files.push((t.to_string(), list));
        }
        let b = Snapshot::open_files(name.clone(), snap.clone(), files.clone(), planner())
            .await
            .expect("open");
        let a = Snapshot::open_files(name.clone(), snap.clone(), files, direct(1 << 20))
            .await
            .expect("open");
        compare(&a, &b).await;
    }
}

fn split(file: &Path, t: &str, out: &Path, mode: &str, parts: usize) -> Vec<PathBuf> {
    let n = read_rows(file).expect("read rows").len();
    let per = n.div_ceil(parts).max(1);
    let mut paths = Vec::new();
    for g in 0..parts {
        let dead: std::collections::HashMap<u32, ()> = (0..n)
            .filter(|i| if mode == "runs" { i / per } else { i % parts } != g)
            .map(|i| (i as u32, ()))
            .collect();
        if dead.len() == n {
            continue;
        }
        let p = out.join(format!("{t}-{g}.parquet"));
        copy_without(file, &p, t, &dead, |(), _| true).expect("write");
        paths.push(p);
    }
    paths
}
