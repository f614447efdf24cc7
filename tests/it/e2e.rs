//! The served API over HTTP: reads, searches, paging, includes, $everything, errors, security.

use std::collections::BTreeSet;

use crate::common::{ids, next, sample_lake, Server};

const JOHN: &str = "567834";
const JOHN_EOBS: [&str; 4] = [
    "ExplanationOfBenefit/inpatient-333333222222",
    "ExplanationOfBenefit/outpatient-1234567890",
    "ExplanationOfBenefit/pharmacy-89",
    "ExplanationOfBenefit/professional-9991831999",
];

#[test]
fn reads_searches_paging_and_errors() {
    let lake = sample_lake();
    let s = Server::start(lake.path());
    let t = s.token(JOHN, "patient/*.rs");

    // Read, with values.
    let (st, p) = s.get(&format!("Patient/{JOHN}"), Some(&t));
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["name"][0]["family"], "Doe");
    assert_eq!(p["birthDate"], "1981-03-17");
    assert_eq!(p["gender"], "male");
    assert_eq!(p["meta"]["versionId"], "1");

    // vread: a lake of one snapshot keeps only the current version; others are 404 (earlier
    // versions kept by older snapshots: tests/it/history.rs), and a version read is gated like a
    // read.
    let (st, v) = s.get(&format!("Patient/{JOHN}/_history/1"), Some(&t));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, p);
    let (st, o) = s.get(&format!("Patient/{JOHN}/_history/2"), Some(&t));
    assert_eq!(st, 404, "{o}");
    assert_eq!(o["resourceType"], "OperationOutcome");
    assert!(o.to_string().contains("version 2"), "{o}");
    let (st, o) = s.get(&format!("Patient/{JOHN}/_history/1"), None);
    assert_eq!(st, 401);
    assert_eq!(o["resourceType"], "OperationOutcome", "{o}");
    assert!(
        !o.to_string().contains(JOHN),
        "no data without a token: {o}"
    );
    let (st, o) = s.get("Patient/-1000014/_history/1", Some(&t));
    assert_eq!(
        st, 404,
        "another member's record is not there for this token: {o}"
    );

    // Search by patient: exactly John's four claims, in id order.
    let (st, b) = s.get(&format!("ExplanationOfBenefit?patient={JOHN}"), Some(&t));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["type"], "searchset");
    assert_eq!(ids(&b, "match"), JOHN_EOBS.to_vec());
    assert_eq!(b["total"], 4);
    let full = b["entry"][0]["fullUrl"].as_str().unwrap();
    assert_eq!(full, format!("{}/{}", s.base, JOHN_EOBS[0]));

    // The carrier claim keeps its seven lines and its amounts.
    let prof = &b["entry"][3]["resource"];
    assert_eq!(prof["item"].as_array().unwrap().len(), 7);
    let submitted = prof["total"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["category"]["coding"][0]["code"] == "submitted")
        .unwrap();
    assert_eq!(submitted["amount"]["value"], 245.04);

    // Paging with _count=1 walks every match exactly once, in order.
    for count in [1, 3] {
        let mut url = format!("ExplanationOfBenefit?patient={JOHN}&_count={count}");
        let mut seen = Vec::new();
        loop {
            let (st, b) = s.get(&url, Some(&t));
            assert_eq!(st, 200, "{b}");
            let page = ids(&b, "match");
            assert!(page.len() <= count);
            seen.extend(page);
            match next(&b) {
                Some(n) => url = n,
                None => break,
            }
        }
        assert_eq!(seen, JOHN_EOBS.to_vec(), "count {count}");
    }

    // Sorting by service date, newest first, with a stable id tie-break.
    let (_, b) = s.get(
        &format!("ExplanationOfBenefit?patient={JOHN}&_sort=-service-date"),
        Some(&t),
    );
    let sorted = ids(&b, "match");
    assert_eq!(
        sorted.first().map(String::as_str),
        Some("ExplanationOfBenefit/inpatient-333333222222")
    );
    // The outpatient claim has a revenue line dated 1942 in the CMS sample: its service dates start there.
    assert_eq!(
        sorted.last().map(String::as_str),
        Some("ExplanationOfBenefit/outpatient-1234567890")
    );

    // Token search on identifier (system|value), and type.
    let (_, b) = s.get("ExplanationOfBenefit?identifier=https://fhirlake.example.org/fhir/sid/claim-id|pharmacy-89", Some(&t));
    assert_eq!(ids(&b, "match"), vec!["ExplanationOfBenefit/pharmacy-89"]);
    let (_, b) = s.get("ExplanationOfBenefit?type=pharmacy,professional", Some(&t));
    assert_eq!(
        ids(&b, "match"),
        vec![
            "ExplanationOfBenefit/pharmacy-89",
            "ExplanationOfBenefit/professional-9991831999"
        ]
    );

    // Dates: service-date precision and prefixes.
    let (_, b) = s.get("ExplanationOfBenefit?service-date=2016-01", Some(&t));
    assert_eq!(
        ids(&b, "match"),
        vec!["ExplanationOfBenefit/inpatient-333333222222"]
    );
    let (_, b) = s.get(
        "ExplanationOfBenefit?service-date=ge2015&service-date=lt2016-06",
        Some(&t),
    );
    assert_eq!(
        ids(&b, "match"),
        vec![
            "ExplanationOfBenefit/inpatient-333333222222",
            "ExplanationOfBenefit/pharmacy-89"
        ]
    );
    let (_, b) = s.get("ExplanationOfBenefit?_lastUpdated=gt2000-01-01", Some(&t));
    assert_eq!(ids(&b, "match").len(), 4);
    let (_, b) = s.get("ExplanationOfBenefit?_lastUpdated=lt2000-01-01", Some(&t));
    assert!(ids(&b, "match").is_empty());

    // _summary=count.
    let (_, b) = s.get("ExplanationOfBenefit?_summary=count", Some(&t));
    assert_eq!(b["total"], 4);
    assert!(b.get("entry").is_none());

    // _include: providers come once, marked include.
    let (_, b) = s.get(
        &format!("ExplanationOfBenefit?patient={JOHN}&_include=ExplanationOfBenefit:insurer"),
        Some(&t),
    );
    assert_eq!(ids(&b, "include"), vec!["Organization/payer-CMS"]);
    assert_eq!(ids(&b, "match").len(), 4);
    let (_, b) = s.get(
        &format!("ExplanationOfBenefit?patient={JOHN}&_include=ExplanationOfBenefit:*"),
        Some(&t),
    );
    let inc = ids(&b, "include");
    assert!(inc.contains(&format!("Patient/{JOHN}")), "{inc:?}");
    assert!(inc.iter().any(|i| i.starts_with("Coverage/")), "{inc:?}");
    assert_eq!(
        inc.len(),
        inc.iter().collect::<BTreeSet<_>>().len(),
        "no duplicates"
    );

    // Unknown parameters are ignored and left out of the self link.
    let (st, b) = s.get(
        &format!("ExplanationOfBenefit?patient={JOHN}&foo=bar"),
        Some(&t),
    );
    assert_eq!(st, 200);
    let self_link = b["link"][0]["url"].as_str().unwrap();
    assert!(!self_link.contains("foo"), "{self_link}");
    assert!(self_link.contains("patient=567834"), "{self_link}");

    // Errors are OperationOutcomes with the right status.
    let (st, o) = s.get("ExplanationOfBenefit?service-date=2020-13", Some(&t));
    assert_eq!(st, 400);
    assert_eq!(o["resourceType"], "OperationOutcome");
    let (st, o) = s.get("ExplanationOfBenefit/does-not-exist", Some(&t));
    assert_eq!(
        (st, o["issue"][0]["code"].as_str()),
        (404, Some("not-found"))
    );
    let (st, o) = s.get("Observation?patient=1", Some(&t));
    assert_eq!(
        (st, o["issue"][0]["code"].as_str()),
        (404, Some("not-found"))
    );
    let (st, o) = s.get("ExplanationOfBenefit?_cursor=forged.cursor", Some(&t));
    assert_eq!(st, 400, "{o}");

    // A cursor cannot be altered.
    let (_, b) = s.get(
        &format!("ExplanationOfBenefit?patient={JOHN}&_count=1"),
        Some(&t),
    );
    let n = next(&b).unwrap();
    let tampered = n.replace("_cursor=e", "_cursor=f");
    assert_ne!(tampered, n);
    let (st, o) = s.get(&tampered, Some(&t));
    assert_eq!(st, 400);
    assert!(
        o["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("cursor"),
        "{o}"
    );
    assert!(o.get("entry").is_none());

    // Writes are refused: the API is read-only.
    let client = reqwest::blocking::Client::new();
    let r = client
        .put(format!("{}/Patient/{JOHN}", s.base))
        .bearer_auth(&t)
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = client
        .delete(format!("{}/Patient/{JOHN}", s.base))
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);

    // POST _search means the same as GET.
    let r = client
        .post(format!("{}/ExplanationOfBenefit/_search", s.base))
        .bearer_auth(&t)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("patient={JOHN}&type=pharmacy"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let b: serde_json::Value = r.json().unwrap();
    assert_eq!(ids(&b, "match"), vec!["ExplanationOfBenefit/pharmacy-89"]);

    // Strict handling turns unknown parameters into 400.
    let r = client
        .get(format!("{}/ExplanationOfBenefit?foo=1", s.base))
        .bearer_auth(&t)
        .header("prefer", "handling=strict")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[test]
fn the_compartment_and_scopes_confine_every_path() {
    let lake = sample_lake();
    let s = Server::start(lake.path());
    let john = s.token(JOHN, "patient/*.rs");

    // Another member's data: absent, not forbidden.
    let (st, o) = s.get("Patient/M1001", Some(&john));
    assert_eq!(st, 404);
    assert!(!o.to_string().contains("Núñez"));
    let (st, b) = s.get("ExplanationOfBenefit?patient=M1001", Some(&john));
    assert_eq!(st, 200);
    assert!(ids(&b, "match").is_empty());
    let (_, b) = s.get("ExplanationOfBenefit?identifier=P-5001", Some(&john));
    assert!(ids(&b, "match").is_empty(), "{b}");
    let (st, o) = s.get("Patient/M1001/$everything", Some(&john));
    assert_eq!(
        (st, o["resourceType"].as_str()),
        (404, Some("OperationOutcome"))
    );
    assert!(!o.to_string().contains("Núñez"));
    // A search without patient is confined to the token's patient.
    let (_, b) = s.get("ExplanationOfBenefit", Some(&john));
    assert_eq!(ids(&b, "match"), JOHN_EOBS.to_vec());
    let (_, b) = s.get("Coverage", Some(&john));
    assert!(
        ids(&b, "match")
            .iter()
            .all(|c| c.starts_with("Coverage/567834-")),
        "{b}"
    );

    // No token, bad token, missing scope.
    let (st, o) = s.get("ExplanationOfBenefit", None);
    assert_eq!(st, 401);
    assert!(!o.to_string().contains(JOHN));
    let (st, _) = s.get("ExplanationOfBenefit", Some("not-a-jwt"));
    assert_eq!(st, 401);
    let cov_only = s.token(JOHN, "patient/Coverage.rs");
    let (st, o) = s.get("ExplanationOfBenefit", Some(&cov_only));
    assert_eq!(st, 403);
    assert!(o.to_string().contains("ExplanationOfBenefit"), "{o}");
    let (st, _) = s.get("Coverage", Some(&cov_only));
    assert_eq!(st, 200);

    // A cursor issued to one member cannot be replayed by another.
    let ana = s.token("M1001", "patient/*.rs");
    let (_, b) = s.get("ExplanationOfBenefit?_count=1", Some(&john));
    let (st, o) = s.get(&next(&b).unwrap(), Some(&ana));
    assert_eq!(st, 400);
    assert!(
        o["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("another search or caller"),
        "{o}"
    );
    assert!(!o.to_string().contains(JOHN));

    // Formulary data is public.
    let (st, b) = s.get("MedicationKnowledge", None);
    assert_eq!(st, 200);
    assert!(!ids(&b, "match").is_empty());
    let (st, cs) = s.get("metadata", None);
    assert_eq!(st, 200);
    assert_eq!(
        cs["rest"][0]["security"]["service"][0]["coding"][0]["code"],
        "SMART-on-FHIR"
    );
    let (st, sc) = s.get(".well-known/smart-configuration", None);
    assert_eq!(st, 200);
    assert!(sc["code_challenge_methods_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "S256"));

    // Every access to member data is audited, without PHI in the operational log.
    let audit = std::fs::read_to_string(lake.path().join("audit.ndjson")).unwrap();
    assert!(audit.lines().count() >= 5);
    assert!(audit.contains("\"ExplanationOfBenefit\""));
}

#[test]
fn everything_returns_each_resource_of_the_compartment_once() {
    let lake = sample_lake();
    let s = Server::start(lake.path());
    let t = s.token(JOHN, "patient/*.rs");
    for count in [2, 50] {
        let mut url = format!("Patient/{JOHN}/$everything?_count={count}");
        let mut seen = Vec::new();
        let mut types = Vec::new();
        loop {
            let (st, b) = s.get(&url, Some(&t));
            assert_eq!(st, 200, "{b}");
            let page = ids(&b, "match");
            let page_types: BTreeSet<String> = page
                .iter()
                .map(|i| i.split('/').next().unwrap().to_string())
                .collect();
            assert!(page_types.len() <= 1, "one phase per page: {page:?}");
            types.extend(page_types);
            seen.extend(page);
            match next(&b) {
                Some(n) => url = n,
                None => break,
            }
        }
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "no duplicates: {seen:?}");
        assert!(seen.contains(&format!("Patient/{JOHN}")));
        for e in JOHN_EOBS {
            assert!(seen.contains(&e.to_string()), "{e} missing");
        }
        assert!(seen.contains(&"Organization/payer-CMS".to_string()));
        types.dedup();
        assert_eq!(types.first().map(String::as_str), Some("Patient"));
    }

    // A parameter the operation does not apply is left out of the links, as in a search;
    // under strict handling it is refused with an OperationOutcome naming it.
    let (st, b) = s.get(
        &format!("Patient/{JOHN}/$everything?_elements=id&_count=5"),
        Some(&t),
    );
    assert_eq!(st, 200, "{b}");
    let self_link = b["link"][0]["url"].as_str().unwrap();
    assert!(
        self_link.contains("_count=5") && !self_link.contains("_elements"),
        "{self_link}"
    );
    let client = reqwest::blocking::Client::new();
    let strict = |query: &str| {
        let r = client
            .get(format!("{}/Patient/{JOHN}/$everything?{query}", s.base))
            .bearer_auth(&t)
            .header("prefer", "handling=strict")
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().unwrap())
    };
    let (st, o) = strict("_elements=id");
    assert_eq!(st, 400, "{o}");
    assert_eq!(o["resourceType"], "OperationOutcome");
    assert!(o.to_string().contains("_elements"), "{o}");
    let (st, b) = strict("_count=5&_type=Patient&start=2000-01-01");
    assert_eq!(st, 200, "{b}");
    assert_eq!(ids(&b, "match"), vec![format!("Patient/{JOHN}")]);
}

#[test]
fn key_rotation_keeps_issued_tokens_valid_and_includes_stay_in_the_compartment() {
    let lake = sample_lake();
    let s = Server::start(lake.path());
    let old = s.token(JOHN, "patient/*.rs");
    crate::common::succeed(
        crate::common::bin()
            .args(["rotate-key", "--lake"])
            .arg(lake.path())
            .args(["--base-url", &s.base]),
    );
    let new = s.token(JOHN, "patient/*.rs");
    // The server learns the new key through its JWKS refresh on an unknown kid.
    for t in [&old, &new] {
        let (st, b) = s.get("ExplanationOfBenefit?_include=ExplanationOfBenefit:patient&_include=ExplanationOfBenefit:coverage", Some(t));
        assert_eq!(st, 200, "{b}");
        let inc = ids(&b, "include");
        assert!(
            inc.iter()
                .filter(|i| i.starts_with("Patient/"))
                .all(|i| i == "Patient/567834"),
            "{inc:?}"
        );
        assert!(
            inc.iter()
                .filter(|i| i.starts_with("Coverage/"))
                .all(|i| i.starts_with("Coverage/567834-")),
            "{inc:?}"
        );
        assert!(inc.contains(&"Patient/567834".to_string()));
    }
}

#[test]
fn paging_walks_forward_and_back_over_every_match_once() {
    let lake = sample_lake();
    let s = Server::start(lake.path());
    // No compartment for shared resources: 30 Organizations and many Practitioners.
    let t = s.token(JOHN, "patient/*.rs");
    for (query, count) in [
        ("Organization?", 1usize),
        ("Organization?", 7),
        ("Practitioner?_sort=-_lastUpdated", 4),
        ("ExplanationOfBenefit?_sort=service-date", 1),
        ("ExplanationOfBenefit?_sort=-service-date", 3),
    ] {
        let (_, all) = s.get(&format!("{query}&_count=200"), Some(&t));
        let want = ids(&all, "match");
        assert!(want.len() > count, "{query}");
        let mut url = format!("{query}&_count={count}");
        let mut pages: Vec<Vec<String>> = Vec::new();
        let mut last;
        loop {
            let (st, b) = s.get(&url, Some(&t));
            assert_eq!(st, 200, "{b}");
            pages.push(ids(&b, "match"));
            last = b.clone();
            match next(&b) {
                Some(n) => url = n,
                None => break,
            }
        }
        let forward: Vec<String> = pages.concat();
        assert_eq!(forward, want, "{query} count {count}");
        // Back from the last page, page by page, to the first.
        let mut back_pages = vec![ids(&last, "match")];
        let mut b = last;
        while let Some(p) = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "previous")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string)
        {
            let (st, page) = s.get(&p, Some(&t));
            assert_eq!(st, 200, "{page}");
            back_pages.push(ids(&page, "match"));
            b = page;
        }
        back_pages.reverse();
        assert_eq!(back_pages.concat(), want, "{query} count {count} backwards");
    }
}

/// README's first command: `fhirlake demo` ingests the samples, serves them and prints a
/// token and requests to try. Every printed request answers 200 with what it names.
#[test]
fn the_demo_serves_every_request_it_prints() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::common::bin()
        .args(["demo", "--listen", "127.0.0.1:0", "--lake"])
        .arg(dir.path().join("lake"))
        .current_dir(crate::common::root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start fhirlake demo");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let (mut base, mut token, mut requests) = (String::new(), String::new(), Vec::new());
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let line = line.trim();
        if let Some(b) = line.strip_prefix("fhirlake serving ") {
            base = b.to_string();
        } else if let Some(t) = line.strip_prefix("TOKEN=") {
            token = t.to_string();
        } else if let Some(cmd) = line.strip_prefix("curl -s ") {
            requests.push(cmd.to_string());
        } else if line == "Stop with Ctrl-C." {
            break;
        }
    }
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert!(token.len() > 100, "{token}");
    assert!(requests.len() >= 6, "{requests:?}");
    let client = reqwest::blocking::Client::new();
    for cmd in &requests {
        let authorized = cmd.contains("$TOKEN");
        let url = cmd
            .split_whitespace()
            .map(|w| w.trim_matches('\''))
            .find(|w| w.starts_with("http"))
            .unwrap_or_else(|| panic!("no URL in {cmd}"));
        let mut req = client.get(url);
        if authorized {
            req = req.bearer_auth(&token);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{cmd}");
        let body: serde_json::Value = resp.json().unwrap();
        let want = if url.ends_with("/metadata") {
            "CapabilityStatement"
        } else if url.ends_with("/Patient/567834") {
            "Patient"
        } else {
            "Bundle"
        };
        assert_eq!(body["resourceType"], want, "{cmd}");
        if want == "Bundle" {
            assert!(
                body["entry"].as_array().is_some_and(|e| !e.is_empty()),
                "{cmd}: no entries"
            );
        }
    }
}

#[test]
fn conditional_reads_answer_304_when_the_client_has_that_version() {
    let lake = sample_lake();
    let s = Server::start(lake.path());
    let t = s.token(JOHN, "patient/*.rs");
    let client = reqwest::blocking::Client::new();
    let read = |path: &str, header: Option<(&str, &str)>, token: Option<&str>| {
        let mut req = client.get(format!("{}/{path}", s.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let resp = req.send().expect("request");
        let status = resp.status().as_u16();
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (etag, modified) = (h("etag"), h("last-modified"));
        (status, etag, modified, resp.text().unwrap())
    };
    let patient = format!("Patient/{JOHN}");

    // A plain read carries the version as ETag and meta.lastUpdated as an HTTP date.
    let (st, etag, modified, body) = read(&patient, None, Some(&t));
    assert_eq!(st, 200);
    assert_eq!(etag.as_deref(), Some("W/\"1\""));
    let p: serde_json::Value = serde_json::from_str(&body).unwrap();
    let updated = chrono::DateTime::parse_from_rfc3339(p["meta"]["lastUpdated"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let modified = modified.expect("Last-Modified");
    assert_eq!(
        modified,
        updated.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
    );

    // The client has that version: 304, no body, the same validators.
    for (name, value) in [
        ("if-none-match", "W/\"1\""),
        ("if-none-match", "\"1\""),
        ("if-none-match", "W/\"7\", W/\"1\""),
        ("if-none-match", "*"),
        ("if-modified-since", modified.as_str()),
        ("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT"),
    ] {
        let (st, etag, _, body) = read(&patient, Some((name, value)), Some(&t));
        assert_eq!(st, 304, "{name}: {value}");
        assert_eq!(body, "", "{name}: {value}");
        assert_eq!(etag.as_deref(), Some("W/\"1\""));
    }
    let (st, _, _, body) = read(
        &format!("{patient}/_history/1"),
        Some(("if-none-match", "W/\"1\"")),
        Some(&t),
    );
    assert_eq!((st, body.as_str()), (304, ""));

    // It has another version, or an older copy: the resource.
    for (name, value) in [
        ("if-none-match", "W/\"2\""),
        ("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT"),
        ("if-modified-since", "not a date"),
    ] {
        let (st, _, _, body) = read(&patient, Some((name, value)), Some(&t));
        assert_eq!(st, 200, "{name}: {value}");
        assert!(body.contains("\"family\":\"Doe\""), "{name}: {value}");
    }

    // A validator does not stand in for a token: 401, no validators of the member's record.
    let (st, etag, modified, body) = read(&patient, Some(("if-none-match", "*")), None);
    assert_eq!(st, 401, "{body}");
    assert_eq!((etag, modified), (None, None));
}

#[test]
fn everything_keeps_the_claims_of_the_care_dates_asked_for() {
    let lake = sample_lake();
    let s = Server::start(lake.path());
    let t = s.token(JOHN, "patient/*.rs");
    // Every page of a $everything, as Type/id.
    let everything = |query: &str| {
        let mut url = format!("Patient/{JOHN}/$everything?_count=2{query}");
        let mut seen = Vec::new();
        loop {
            let (st, b) = s.get(&url, Some(&t));
            assert_eq!(st, 200, "{b}");
            seen.extend(ids(&b, "match"));
            match next(&b) {
                Some(n) => url = n,
                None => break,
            }
        }
        seen
    };
    let claims = |all: &[String]| -> BTreeSet<String> {
        all.iter()
            .filter(|i| i.starts_with("ExplanationOfBenefit/"))
            .cloned()
            .collect()
    };
    let all = everything("");
    assert_eq!(claims(&all).len(), JOHN_EOBS.len());
    let mut narrowed = false;
    for (start, end) in [
        (Some("2000-01-01"), None),
        (None, Some("2000-12-31")),
        (Some("1999"), Some("2000")),
        (Some("2010-06"), Some("2010-06")),
        (Some("2999-01-01"), None),
    ] {
        let mut q = String::new();
        let mut search = format!("ExplanationOfBenefit?patient={JOHN}&_count=50");
        if let Some(v) = start {
            q.push_str(&format!("&start={v}"));
            search.push_str(&format!("&service-date=ge{v}"));
        }
        if let Some(v) = end {
            q.push_str(&format!("&end={v}"));
            search.push_str(&format!("&service-date=le{v}"));
        }
        // The claims are those whose service dates meet the range: what a service-date search
        // with ge/le finds.
        let got = everything(&q);
        let (st, b) = s.get(&search, Some(&t));
        assert_eq!(st, 200, "{b}");
        let want: BTreeSet<String> = ids(&b, "match").into_iter().collect();
        assert_eq!(claims(&got), want, "{q}");
        narrowed |= !want.is_empty() && want.len() < JOHN_EOBS.len();
        // The member, the coverage and the providers come as before.
        let others = |v: &[String]| -> Vec<String> {
            v.iter()
                .filter(|i| {
                    !i.starts_with("ExplanationOfBenefit/")
                        && !i.starts_with("Organization/")
                        && !i.starts_with("Practitioner/")
                })
                .cloned()
                .collect()
        };
        assert_eq!(others(&got), others(&all), "{q}");
    }
    assert!(narrowed, "some range keeps some of the claims but not all");

    // The range is in the links; a search prefix or a malformed date is a 400.
    let (st, b) = s.get(
        &format!("Patient/{JOHN}/$everything?start=2000-01-01&end=2000-12-31"),
        Some(&t),
    );
    assert_eq!(st, 200, "{b}");
    let self_link = b["link"][0]["url"].as_str().unwrap();
    assert!(
        self_link.contains("start=2000-01-01") && self_link.contains("end=2000-12-31"),
        "{self_link}"
    );
    for bad in ["start=ge2000-01-01", "end=2000-13-01", "start=yesterday"] {
        let (st, o) = s.get(&format!("Patient/{JOHN}/$everything?{bad}"), Some(&t));
        assert_eq!(st, 400, "{bad}: {o}");
        assert_eq!(o["resourceType"], "OperationOutcome");
    }
}
