//! C4BB output pinned byte for byte: for every sample record, records of generated extracts
//! and mutations of them (every claim kind, adjudicated or not, values that need escaping,
//! odd numbers, each error path), a digest of each resource's JSON, where its `meta` ends and
//! its index values, or the mapping error. A change here changes the `content_hash` of stored
//! resources, so every nightly run would write new versions of them: regenerate with
//! `BLESS=1` only on purpose, and review the diff. The digests are SHA-256 (the
//! [`legacy_hash`] lakes once stored), whatever `content_hash` uses now.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ingest::detect::{detect, Format};
use ingest::layout::Mapping;
use ingest::model::{Adjustment, Amount, ClaimKind, Ident, Party, Supporting};
use ingest::{Reader, SourceRecord};
use mapper::c4bb::{self, Systems};
use mapper::lake::{legacy_hash, Prepared};
use mapper::Json;

fn root() -> PathBuf {
    crate::manifest_dir().join("../..")
}

fn read(path: &Path, mappings: &[Arc<Mapping>]) -> Vec<SourceRecord> {
    let reader: Box<dyn Reader> = match detect(path, mappings) {
        Ok(Format::Delimited(m)) => Box::new(ingest::delimited::DelimitedReader::new(m)),
        Ok(Format::X12) => Box::new(ingest::x12::X12Reader::new()),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    let _ = reader.read(path, &mut |i| {
        if let Ok(r) = i {
            out.push(r);
        }
    });
    out
}

/// The first 128 bits of the SHA-256 of `text`, in hex.
fn digest(text: &str) -> String {
    format!("{:032x}", legacy_hash(text))
}

/// One line: the label, then the number of resources and one digest of them all (type, id,
/// compartment, deletion, content hash, the JSON with stamps, the index values), or the error.
fn describe(
    out: &mut String,
    label: &str,
    mapped: Result<Vec<mapper::Resource>, mapper::MapError>,
) {
    let _ = write!(out, "{label}\t");
    match mapped {
        Err(e) => {
            let _ = write!(out, "error: {e}");
        }
        Ok(resources) => {
            let n = resources.len();
            let mut all = String::new();
            for r in resources {
                same_as_tree(&r);
                let p = Prepared::new(r);
                let _ = writeln!(
                    all,
                    "{}/{} {:?} {} {} {} {:?}",
                    p.resource_type,
                    p.id,
                    p.patient_id,
                    p.deleted,
                    digest(&p.text),
                    p.stamped(7, "T"),
                    p.index,
                );
            }
            let _ = write!(out, "{n} resources {}", digest(&all));
        }
    }
    out.push('\n');
}

/// The builders write text and index values without a tree; the search registry's extractors
/// (which `_include` and `$everything` also use on stored JSON) must find the same values in
/// that text, and serializing it as a tree must give the same bytes.
fn same_as_tree(r: &mapper::Resource) {
    if r.json.as_tree().is_some() {
        return;
    }
    let tree = mapper::Resource {
        json: Json::Tree(r.json.to_value()),
        ..r.clone()
    };
    let (a, b) = (Prepared::new(r.clone()), Prepared::new(tree));
    let what = format!("{}/{}", r.resource_type, r.id);
    assert_eq!(a.text, b.text, "text of {what}");
    assert_eq!(a.index, b.index, "index values of {what}");
    assert_eq!(a.stamped(7, "T"), b.stamped(7, "T"), "meta of {what}");
}

fn map(
    r: &SourceRecord,
    systems: &Systems,
) -> Option<Result<Vec<mapper::Resource>, mapper::MapError>> {
    match r {
        SourceRecord::Claim(c) => Some(c4bb::map_claim(c, systems)),
        SourceRecord::Member(m) => Some(c4bb::map_member(m, systems)),
        _ => None,
    }
}

/// `map_claim_with` asks about every side product `map_claim` builds (payer and provider
/// Organizations, Practitioners, the member's Patient and Coverages), in order, and leaving
/// them all out changes nothing else.
fn side_filter_agrees(c: &ingest::model::Claim, systems: &Systems, label: &str) {
    let all = c4bb::map_claim(c, systems);
    let mut asked = Vec::new();
    let without = c4bb::map_claim_with(c, systems, &mut |s| {
        s.resource_types(&mut asked);
        false
    });
    match (all, without) {
        (Ok(all), Ok(without)) => {
            // `without` is `all` with some resources left out, in the same order.
            let mut kept = without.iter().peekable();
            let mut left_out = Vec::new();
            for r in &all {
                if kept.peek() == Some(&r) {
                    kept.next();
                } else {
                    left_out.push(r.resource_type);
                }
            }
            assert!(
                kept.next().is_none(),
                "{label}: resources not in map_claim's"
            );
            assert_eq!(asked, left_out, "{label}: side products asked about");
            assert!(
                !left_out.contains(&"ExplanationOfBenefit"),
                "{label}: {left_out:?}"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{label}"),
        (a, b) => panic!("{label}: {a:?} against {b:?}"),
    }
}

fn mutations(c: &ingest::model::Claim) -> Vec<ingest::model::Claim> {
    let mut out = Vec::new();
    let party = |person: bool, id: Option<&str>, name: Option<&str>| Party {
        id: id.map(Into::into),
        id_kind: Some(if person { "npi" } else { "tax" }.into()),
        name: name.map(Into::into),
        person,
        tax_id: Some("12-3\"45".into()),
        address_lines: vec!["1 \"Main\"\\St\n".into(), "Apt\t2".into()],
        city: Some("Zürich".into()),
        state: None,
        postal_code: Some("0\u{1}1".into()),
    };
    for kind in [
        ClaimKind::Professional,
        ClaimKind::Inpatient,
        ClaimKind::Outpatient,
        ClaimKind::Pharmacy,
    ] {
        for adjudicated in [false, true] {
            let mut m = c.clone();
            m.kind = Some(kind);
            m.adjudicated = adjudicated;
            out.push(m.clone());
            m.network_status = Some("innetwork".into());
            m.payment_status = Some("paid".into());
            m.received = Some("2020-02-02".into());
            m.created = None;
            m.change = ingest::model::Change::Cancel;
            m.adjustments.push(Adjustment {
                group: None,
                reason: "45".into(),
                amount: Some("12.345".into()),
            });
            m.adjustments.push(Adjustment {
                group: None,
                reason: "2".into(),
                amount: None,
            });
            m.amounts.push(Amount {
                category: "benefit".into(),
                value: "100.1".into(),
            });
            m.amounts.push(Amount {
                category: "paidtoprovider".into(),
                value: "0.30000000000000004".into(),
            });
            m.identifiers.push(Ident {
                kind: "mbi".into(),
                value: "1EG4\"TE5MK73".into(),
            });
            m.care_team.push((
                "attending".into(),
                party(true, Some("111"), Some("Doe, Jane  Q")),
            ));
            m.care_team
                .push(("primary".into(), party(false, Some("222"), None)));
            m.care_team
                .push(("supervisor".into(), party(true, Some("333"), None)));
            m.care_team
                .push(("prescribing".into(), party(true, Some("444"), Some("Solo"))));
            m.care_team
                .push(("bogus".into(), party(true, Some("555"), Some("X, "))));
            m.care_team
                .push(("primary".into(), party(false, Some("222"), None)));
            m.billing = Some(party(false, None, Some("Clinic \"A\"")));
            for cat in [
                "admissionperiod",
                "clmrecvddate",
                "typeofbill",
                "drg",
                "dayssupply",
                "refillnum",
                "other",
            ] {
                let value = match cat {
                    "admissionperiod" => "2020-01-01/",
                    "dayssupply" => "30",
                    "refillnum" => "2.5",
                    _ => "1\u{1f}x",
                };
                m.supporting.push(Supporting {
                    category: cat.into(),
                    value: value.into(),
                });
            }
            for (i, l) in m.lines.iter_mut().enumerate() {
                l.number += i as u32 * 2;
                l.quantity = Some(["1", "2.50", "1e20", "-0"][i % 4].into());
                l.modifiers = vec!["25".into(), "\"x\"".into()];
                l.diagnosis_pointers = vec![1, 2];
                l.revenue_code = (i % 2 == 0).then(|| "0450".into());
                l.ndc = (i % 3 == 0).then(|| "00071015523".into());
                l.place_of_service = (i % 2 == 1).then(|| "11".into());
                l.thru = Some("2021-12-31".into());
                l.rendering = Some(party(i % 2 == 0, Some(&format!("9{i}")), Some("Roe, Al")));
                l.adjustments.push(Adjustment {
                    group: None,
                    reason: "1".into(),
                    amount: Some("-3".into()),
                });
                l.amounts.push(Amount {
                    category: "submitted".into(),
                    value: "1e400".into(),
                });
                l.amounts.push(Amount {
                    category: "coinsurance".into(),
                    value: "NaN".into(),
                });
            }
            out.push(m.clone());
            // Error paths, one at a time.
            let mut e = m.clone();
            e.diagnoses.clear();
            out.push(e);
            let mut e = m.clone();
            e.lines.clear();
            out.push(e);
            let mut e = m.clone();
            if let Some(l) = e.lines.last_mut() {
                l.quantity = Some("many".into());
            }
            out.push(e);
            let mut e = m.clone();
            e.amounts.push(Amount {
                category: "benefit".into(),
                value: "$1".into(),
            });
            out.push(e);
            let mut e = m.clone();
            e.amounts.clear();
            for l in &mut e.lines {
                l.amounts.clear();
            }
            out.push(e);
            let mut e = m.clone();
            e.supporting.push(Supporting {
                category: "refillsauthorized".into(),
                value: "n/a".into(),
            });
            out.push(e);
            let mut e = m.clone();
            e.adjustments.push(Adjustment {
                group: None,
                reason: "3".into(),
                amount: Some("".into()),
            });
            out.push(e);
            let mut e = m.clone();
            e.from = None;
            e.coverage_key = None;
            out.push(e);
            let mut e = m;
            e.billing = None;
            e.facility = None;
            out.push(e);
        }
    }
    out
}

/// The mappings, the identifier systems, and every input the pinned tests read: the sample
/// files and extracts generated into `tmp` (what the benchmark ingests), sorted by name.
fn inputs(tmp: &Path) -> (Vec<Arc<Mapping>>, Systems, Vec<(String, PathBuf)>) {
    let root = root();
    let mappings: Vec<Arc<Mapping>> = Mapping::load_dir(&root.join("mappings"))
        .expect("mappings")
        .into_iter()
        .map(Arc::new)
        .collect();
    let systems = Systems::parse(
        &std::fs::read_to_string(root.join("mappings/fhir/identifier-systems.toml"))
            .expect("systems"),
    )
    .expect("systems");
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for dir in ["samples/rif", "samples/plain", "samples/x12"] {
        for e in std::fs::read_dir(root.join(dir))
            .expect("samples")
            .flatten()
        {
            let name = format!("{dir}/{}", e.file_name().to_string_lossy());
            files.push((name, e.path()));
        }
    }
    let create = |p: &Path| std::io::BufWriter::new(std::fs::File::create(p).expect("create"));
    let template = |n: &str| {
        ingest::synth::Template::load(&root.join("samples/rif").join(n), b'|').expect("template")
    };
    let p = |n: &str| tmp.join(n);
    ingest::synth::rif_beneficiaries(
        &template("synthea-beneficiary_2021.csv"),
        &mut create(&p("beneficiaries.txt")),
        40,
        7,
    )
    .expect("gen");
    ingest::synth::rif_carrier(
        &template("synthea-carrier.csv"),
        &mut create(&p("carrier.txt")),
        40,
        4,
        7,
    )
    .expect("gen");
    for (shape, t, n) in [
        (
            &ingest::synth::INPATIENT,
            "synthea-inpatient.csv",
            "inpatient.txt",
        ),
        (
            &ingest::synth::OUTPATIENT,
            "synthea-outpatient.csv",
            "outpatient.txt",
        ),
        (&ingest::synth::PDE, "synthea-pde.csv", "pde.txt"),
    ] {
        ingest::synth::rif_claims(&template(t), shape, &mut create(&p(n)), 40, 40, 7).expect("gen");
    }
    ingest::synth::plain(
        &mut create(&p("members.csv")),
        &mut create(&p("claims.csv")),
        40,
        4,
        7,
    )
    .expect("gen");
    let mut x12 = create(&p("gen.837"));
    ingest::x12::generate_837(&mut x12, true, 60, 3).expect("gen");
    drop(x12);
    let mut x12 = create(&p("gen.837i"));
    ingest::x12::generate_837(&mut x12, false, 60, 4).expect("gen");
    drop(x12);
    for n in [
        "beneficiaries.txt",
        "carrier.txt",
        "inpatient.txt",
        "outpatient.txt",
        "pde.txt",
        "members.csv",
        "claims.csv",
        "gen.837",
        "gen.837i",
    ] {
        files.push((format!("generated/{n}"), p(n)));
    }
    files.sort();
    (mappings, systems, files)
}

#[test]
fn c4bb_output_is_pinned() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mappings, systems, files) = inputs(tmp.path());
    let mut out = String::new();
    for (name, path) in &files {
        for (i, r) in read(path, &mappings).iter().enumerate() {
            let label = format!("{name}#{i}");
            if let Some(m) = map(r, &systems) {
                describe(&mut out, &label, m);
            }
            if let SourceRecord::Claim(c) = r {
                side_filter_agrees(c, &systems, &label);
                if i % if name.starts_with("generated") {
                    40
                } else {
                    11
                } == 0
                {
                    for (j, m) in mutations(c).into_iter().enumerate() {
                        side_filter_agrees(&m, &systems, &format!("{label}~{j}"));
                        describe(
                            &mut out,
                            &format!("{label}~{j}"),
                            c4bb::map_claim(&m, &systems),
                        );
                    }
                }
            }
        }
    }
    let path = crate::manifest_dir().join("tests/golden/c4bb.txt");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &out).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with BLESS=1", path.display()));
    if let Some((n, (e, a))) = expected
        .lines()
        .zip(out.lines())
        .enumerate()
        .find(|(_, (e, a))| e != a)
    {
        panic!(
            "C4BB output changed at line {}:\nexpected {e}\nactual   {a}",
            n + 1
        );
    }
    assert_eq!(expected.lines().count(), out.lines().count(), "line count");
}

/// Every EOB of the sample and generated claims is written into the buffer
/// [`c4bb::eob_capacity`] sizes, without growing it, and fills at least half of it.
#[test]
fn eob_fits_its_first_buffer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mappings, systems, files) = inputs(tmp.path());
    let mut checked = 0;
    let mut fill = (f64::MAX, 0f64);
    for (name, path) in &files {
        for (i, r) in read(path, &mappings).iter().enumerate() {
            let SourceRecord::Claim(c) = r else { continue };
            let Ok(resources) = c4bb::map_claim(c, &systems) else {
                continue;
            };
            let eob = resources
                .iter()
                .find(|r| r.resource_type == "ExplanationOfBenefit")
                .expect("an EOB");
            let Json::Text(w) = &eob.json else {
                panic!("EOBs are written as text")
            };
            let (len, cap, first) = (w.text.len(), w.text.capacity(), c4bb::eob_capacity(c));
            // A `String` that grows at least doubles its capacity.
            assert!(
                (first..2 * first).contains(&cap),
                "{name}#{i}: the EOB's buffer grew from {first} to {cap} ({len} bytes written)"
            );
            let used = len as f64 / cap as f64;
            fill = (fill.0.min(used), fill.1.max(used));
            checked += 1;
        }
    }
    eprintln!(
        "{checked} EOBs; share of the buffer used: {:.2} to {:.2}",
        fill.0, fill.1
    );
    assert!(checked > 500, "only {checked} EOBs");
    assert!(fill.0 > 0.5, "an EOB used only {:.2} of its buffer", fill.0);
}
