//! Versions over HTTP: vread and `_history` serve the earlier versions the lake's retained
//! snapshots hold, and a resource a later run deleted is 410 while they hold it; all gated and
//! confined like a read.

use std::path::Path;

use crate::common::{bin, export, first_line_billed, ingest, root, succeed, Server};

const MEMBER: &str = "M1001";
const OTHER_MEMBER: &str = "M1002";

/// Send claim P-5001 of the plain sample again as an adjustment whose first line bills
/// `billed`, as a delta run.
fn adjust_p5001(lake: &Path, billed: &str) {
    let claims = std::fs::read_to_string(root().join("samples/plain/claims.csv")).unwrap();
    let mut lines = claims.lines();
    let mut text = format!("{}\n", lines.next().unwrap());
    for l in lines.filter(|l| l.starts_with("P-5001,")) {
        text.push_str(
            &l.replace(",ORIGINAL,", ",ADJUSTED,")
                .replace(",180.00,", &format!(",{billed},")),
        );
        text.push('\n');
    }
    let delta = lake.with_extension(format!("delta-{billed}.csv"));
    std::fs::write(&delta, text).unwrap();
    let (code, out) = ingest(lake, &[delta.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn earlier_versions_are_read_from_the_snapshots_the_lake_keeps() {
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    let (code, out) = ingest(&lake, &["samples/plain"]);
    assert_eq!(code, 0, "{out}");
    adjust_p5001(&lake, "190.00");
    adjust_p5001(&lake, "200.00");
    let eob = export(&lake)
        .into_iter()
        .find(|r| r["resourceType"] == "ExplanationOfBenefit" && r["meta"]["versionId"] == "3")
        .expect("the twice-adjusted claim at version 3");
    let path = format!("ExplanationOfBenefit/{}", eob["id"].as_str().unwrap());

    let s = Server::start(&lake);
    let t = s.token(MEMBER, "patient/*.rs");

    // The current version, then each earlier one by vread, each with its own amounts.
    let (st, now) = s.get(&path, Some(&t));
    assert_eq!(st, 200, "{now}");
    assert_eq!(first_line_billed(&now), 200.0);
    for (vid, billed) in [("3", 200.0), ("2", 190.0), ("1", 180.0)] {
        let (st, v) = s.get(&format!("{path}/_history/{vid}"), Some(&t));
        assert_eq!(st, 200, "version {vid}: {v}");
        assert_eq!(v["meta"]["versionId"], vid);
        assert_eq!(first_line_billed(&v), billed, "version {vid}");
    }
    let (st, o) = s.get(&format!("{path}/_history/4"), Some(&t));
    assert_eq!(st, 404, "{o}");
    assert_eq!(o["resourceType"], "OperationOutcome");
    assert!(o.to_string().contains("version 4"), "{o}");

    // The history: every kept version, newest first, each with its request and response.
    let (st, h) = s.get(&format!("{path}/_history"), Some(&t));
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["resourceType"], "Bundle");
    assert_eq!(h["type"], "history");
    assert_eq!(h["total"], 3);
    let entries = h["entry"].as_array().unwrap();
    let versions: Vec<&str> = entries
        .iter()
        .map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["3", "2", "1"]);
    let billed: Vec<f64> = entries
        .iter()
        .map(|e| first_line_billed(&e["resource"]))
        .collect();
    assert_eq!(billed, [200.0, 190.0, 180.0]);
    assert_eq!(entries[0]["fullUrl"], format!("{}/{path}", s.base));
    assert_eq!(entries[0]["request"]["method"], "PUT");
    assert_eq!(entries[0]["request"]["url"], path);
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(entries[0]["response"]["etag"], "W/\"3\"");
    assert_eq!(
        entries[0]["response"]["lastModified"],
        entries[0]["resource"]["meta"]["lastUpdated"]
    );
    assert_eq!(entries[2]["request"]["method"], "POST");
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    assert_eq!(h["link"][0]["url"], format!("{}/{path}/_history", s.base));

    // The audit log records the versions the history disclosed.
    let audit = std::fs::read_to_string(lake.join("audit.ndjson")).unwrap();
    let record = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["resource_type"] == "ExplanationOfBenefit/_history")
        .expect("an audit record of the history");
    assert_eq!(record["count"], 3, "{record}");
    assert_eq!(record["patients"][0], MEMBER, "{record}");

    // A resource no run changed has one version, although later snapshots were published.
    let (st, h) = s.get(&format!("Patient/{MEMBER}/_history"), Some(&t));
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["total"], 1);
    assert_eq!(h["entry"][0]["resource"]["id"], MEMBER);

    // Gated and confined like a read: no token is 401, another member's token finds nothing,
    // and neither answer carries the claim.
    let claim = eob["id"].as_str().unwrap();
    for p in [format!("{path}/_history"), format!("{path}/_history/1")] {
        let (st, o) = s.get(&p, None);
        assert_eq!(st, 401, "{o}");
        assert!(!o.to_string().contains(claim), "{o}");
        let (st, o) = s.get(&p, Some(&s.token(OTHER_MEMBER, "patient/*.rs")));
        assert_eq!(st, 404, "{o}");
        assert!(!o.to_string().contains("180"), "{o}");
    }

    // The metadata says so.
    let (_, cs) = s.get("metadata", None);
    let eob_rest = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "ExplanationOfBenefit")
        .unwrap();
    assert!(eob_rest["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["code"] == "history-instance"));
    assert_eq!(eob_rest["readHistory"], true);

    // After a rollback to the second snapshot, the versions are those of its line: 2 and 1;
    // the third, which the rollback withdrew, is not served.
    let mut snapshots: Vec<String> = std::fs::read_dir(lake.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap-"))
        .collect();
    snapshots.sort();
    assert_eq!(snapshots.len(), 3, "{snapshots:?}");
    succeed(
        bin()
            .args(["snapshots", "--rollback", &snapshots[1], "--lake"])
            .arg(&lake),
    );
    let served = (0..100).find_map(|_| {
        let (_, v) = s.get(&path, Some(&t));
        if v["meta"]["versionId"] == "2" {
            return Some(v);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        None
    });
    assert!(served.is_some(), "the server picks up the rollback");
    let (st, h) = s.get(&format!("{path}/_history"), Some(&t));
    assert_eq!(st, 200, "{h}");
    let versions: Vec<&str> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["2", "1"]);
    let (st, o) = s.get(&format!("{path}/_history/3"), Some(&t));
    assert_eq!(st, 404, "{o}");
    assert!(o.to_string().contains("version 3 of"), "{o}");

    // Versions reach back as far as the retention: once the first snapshot is pruned, the
    // history is the served version alone and the first version is 404.
    succeed(
        bin()
            .args(["snapshots", "--keep", "1", "--lake"])
            .arg(&lake),
    );
    assert!(!lake.join("snapshots").join(&snapshots[0]).exists());
    let (st, h) = s.get(&format!("{path}/_history"), Some(&t));
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["total"], 1);
    assert_eq!(h["entry"][0]["resource"]["meta"]["versionId"], "2");
    let (st, o) = s.get(&format!("{path}/_history/1"), Some(&t));
    assert_eq!(st, 404, "{o}");
    assert!(o.to_string().contains("version 1 of"), "{o}");
}

/// Every `Type/id` of the lake's current snapshot.
fn keys(lake: &Path) -> std::collections::BTreeSet<String> {
    export(lake)
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_deleted_resource_is_gone_while_a_kept_snapshot_holds_it() {
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    let sample = root().join("samples/formulary/formulary-extract-example.xml");
    let (code, out) = ingest(&lake, &[sample.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let before = keys(&lake);

    // A delta extract deleting one drug of the formulary.
    let text = std::fs::read_to_string(&sample).unwrap();
    let (head, rest) = text.split_once("    <Drug changeType=\"ADD\">").unwrap();
    let (_, tail) = rest.rsplit_once("</Drug>").unwrap();
    let delta = format!(
        "{}    <Drug changeType=\"DEL\">\n      <RxCUI>209459</RxCUI>\n    </Drug>{}",
        head.replace(
            "<ExtractType>FULL</ExtractType>",
            "<ExtractType>DELTA</ExtractType>"
        ),
        tail.replace(
            "<DrugRecordCount>3</DrugRecordCount>",
            "<DrugRecordCount>1</DrugRecordCount>"
        )
    );
    let delta_path = work.path().join("delta.xml");
    std::fs::write(&delta_path, delta).unwrap();
    let (code, out) = ingest(&lake, &[delta_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let after = keys(&lake);
    let gone: Vec<&String> = before.difference(&after).collect();
    assert!(!gone.is_empty(), "the delta deletes the drug's resources");
    assert!(after.is_subset(&before), "{after:?}");

    // Formulary data is public: no token needed. A deleted resource is 410 with an
    // OperationOutcome saying so (C4BB and PDex list 410 for deleted resources); an id no
    // snapshot knew is 404; a resource still there reads as before.
    let s = Server::start(&lake);
    for path in &gone {
        for p in [
            path.to_string(),
            format!("{path}/_history"),
            format!("{path}/_history/2"),
        ] {
            let (st, o) = s.get(&p, None);
            assert_eq!(st, 410, "{p}: {o}");
            assert_eq!(o["resourceType"], "OperationOutcome");
            assert_eq!(o["issue"][0]["code"], "deleted", "{o}");
            assert!(o.to_string().contains("version 1"), "{o}");
        }
        // The version it had before the delete stays readable by vread.
        let (st, v) = s.get(&format!("{path}/_history/1"), None);
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            ),
            **path
        );
        assert_eq!(v["meta"]["versionId"], "1");
    }
    let (st, o) = s.get("Basic/never-was", None);
    assert_eq!(st, 404, "{o}");
    assert_eq!(o["issue"][0]["code"], "not-found", "{o}");
    let kept = after.iter().next().unwrap();
    let (st, r) = s.get(kept, None);
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        ),
        *kept
    );

    // Once no kept snapshot holds it, it is unknown: 404.
    succeed(
        bin()
            .args(["snapshots", "--keep", "1", "--lake"])
            .arg(&lake),
    );
    for p in [gone[0].to_string(), format!("{}/_history/1", gone[0])] {
        let (st, o) = s.get(&p, None);
        assert_eq!(st, 404, "{p}: {o}");
        assert_eq!(o["issue"][0]["code"], "not-found", "{p}: {o}");
    }
}
