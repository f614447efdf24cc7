//! Formulary readers over the fixtures in `tests/fixtures/formulary` (see its SOURCES.tsv).

use std::path::PathBuf;

use ingest::formulary::{
    extract_kind, sniff_qhp, sniff_xml, ExtractKind, FormularyXmlReader, QhpKind, QhpReader,
};
use ingest::model::{Change, FormularyDrug, FormularyPlan};
use ingest::{FileSummary, Item, Reader, Reason, Reject, SourceRecord};

fn fixture(name: &str) -> PathBuf {
    crate::manifest_dir()
        .join("tests/fixtures/formulary")
        .join(name)
}

struct Read {
    drugs: Vec<FormularyDrug>,
    plans: Vec<FormularyPlan>,
    rejects: Vec<Reject>,
    summary: FileSummary,
    order: Vec<String>,
}

fn read_with(reader: &dyn Reader, name: &str) -> Read {
    let mut out = Read {
        drugs: Vec::new(),
        plans: Vec::new(),
        rejects: Vec::new(),
        summary: FileSummary::default(),
        order: Vec::new(),
    };
    let mut items: Vec<Item> = Vec::new();
    out.summary = reader
        .read(&fixture(name), &mut |i| items.push(i))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for i in items {
        match i {
            Ok(SourceRecord::FormularyDrug(d)) => {
                out.order.push(format!("drug {}", d.rxnorm));
                out.drugs.push(*d);
            }
            Ok(SourceRecord::FormularyPlan(p)) => {
                out.order.push(format!("plan {}", p.plan_id));
                out.plans.push(*p);
            }
            Ok(other) => panic!("unexpected record {other:?}"),
            Err(r) => {
                out.order.push(format!("reject {}", r.reason.as_str()));
                out.rejects.push(r);
            }
        }
    }
    out
}

fn read_xml(name: &str) -> Read {
    read_with(&FormularyXmlReader::new(), name)
}

fn head(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(fixture(name)).expect("fixture");
    bytes[..bytes.len().min(2048)].to_vec()
}

#[test]
fn example_extract_reads_completely() {
    let r = read_xml("formulary-extract-example.xml");
    assert!(r.rejects.is_empty(), "{:?}", r.rejects);
    assert!(r.summary.notices.is_empty(), "{:?}", r.summary.notices);
    assert_eq!(
        r.order,
        [
            "plan H9999-001-000",
            "plan 12345XX9876543",
            "drug 209459",
            "drug 248656",
            "drug 197511"
        ]
    );
    let part_d = &r.plans[0];
    assert_eq!(part_d.formulary_id, "00099999");
    assert_eq!(part_d.plan_type.as_deref(), Some("mediadv"));
    assert_eq!(part_d.payer.id.as_deref(), Some("H9999"));
    assert_eq!(part_d.period_start.as_deref(), Some("2026-01-01"));
    assert_eq!(part_d.period_end.as_deref(), Some("2026-12-31"));
    assert_eq!(r.plans[1].plan_type.as_deref(), Some("qhp"));
    assert_eq!(r.plans[1].payer.id.as_deref(), Some("12345"));

    let azithro = &r.drugs[1];
    assert_eq!(azithro.tier.as_deref(), Some("preferred-generic"));
    assert_eq!(azithro.ndcs, ["99999000001"]);
    assert_eq!(azithro.quantity_limit, Some(true));
    assert_eq!(azithro.quantity_limit_amount.as_deref(), Some("6"));
    assert_eq!(azithro.quantity_limit_days.as_deref(), Some("30"));
    assert_eq!(azithro.quantity_limit_type.as_deref(), Some("OVER_TIME"));
    assert_eq!(azithro.formulary_version.as_deref(), Some("17"));
    assert_eq!(azithro.selected_drug, Some(false));
    assert_eq!(azithro.position.line, 31);
    assert_eq!(
        azithro.position.context.as_deref(),
        Some("FormularyExtract/Formulary[1]/Drug[2]")
    );
    let deleted = &r.drugs[2];
    assert_eq!(
        (deleted.change, deleted.tier.as_deref()),
        (Change::Delete, None)
    );
    assert_eq!(r.drugs[0].change, Change::Upsert);
    assert_eq!(
        extract_kind(&fixture("formulary-extract-example.xml")).expect("kind"),
        ExtractKind::Full
    );
    assert_eq!(
        extract_kind(&fixture("bad-trailer.xml")).expect("kind"),
        ExtractKind::Delta
    );
}

#[test]
fn quantity_limit_rules_reject_precisely() {
    let r = read_xml("bad-ql-without-flag.xml");
    assert_eq!(
        r.drugs
            .iter()
            .map(|d| d.rxnorm.as_str())
            .collect::<Vec<_>>(),
        ["209459", "248656"]
    );
    assert_eq!(r.rejects.len(), 2);
    let amount = &r.rejects[0];
    assert_eq!(amount.reason, Reason::Rule);
    assert_eq!(amount.position.line, 29);
    assert_eq!(
        amount.position.context.as_deref(),
        Some("FormularyExtract/Formulary[1]/Drug[2]/QuantityLimitAmount")
    );
    assert!(
        amount.message.contains("QuantityLimitYN is N"),
        "{}",
        amount.message
    );
    assert!(amount.raw.starts_with("<Drug>") && amount.raw.contains("<RxCUI>1049640</RxCUI>"));
    let days = &r.rejects[1];
    assert_eq!(days.reason, Reason::Rule);
    assert_eq!(days.position.line, 34);
    assert_eq!(
        days.position.context.as_deref(),
        Some("FormularyExtract/Formulary[1]/Drug[3]/QuantityLimitYN")
    );
    assert!(
        days.message.contains("QuantityLimitAmount is missing"),
        "{}",
        days.message
    );
    // every Drug element is accounted for, and the trailer agrees
    assert_eq!(r.drugs.len() + r.rejects.len(), 4);
    assert!(!r
        .summary
        .notices
        .iter()
        .any(|n| n.message.contains("trailer")));
}

#[test]
fn unknown_tiers_are_rejected_as_unknown_codes() {
    let r = read_xml("bad-unknown-tier.xml");
    assert_eq!(r.drugs.len(), 2);
    assert_eq!(r.rejects.len(), 2);
    for (reject, line, drug, words) in [
        (&r.rejects[0], 27, 2, "no TierDefinition"),
        (&r.rejects[1], 31, 3, "GOLD-STAR"),
    ] {
        assert_eq!(reject.reason, Reason::UnknownCode);
        assert_eq!(reject.position.line, line);
        assert_eq!(
            reject.position.context.as_deref(),
            Some(format!("FormularyExtract/Formulary[1]/Drug[{drug}]/TierLevelValue").as_str())
        );
        assert!(reject.message.contains(words), "{}", reject.message);
    }
    // the unknown label itself is reported where it is defined
    assert!(r
        .summary
        .notices
        .iter()
        .any(|n| n.position.line == 18 && n.message.contains("GOLD-STAR")));
}

#[test]
fn trailer_mismatch_is_a_notice_and_records_are_kept() {
    let r = read_xml("bad-trailer.xml");
    assert_eq!(r.drugs.len(), 2);
    assert!(r.rejects.is_empty());
    let trailer: Vec<_> = r
        .summary
        .notices
        .iter()
        .filter(|n| n.message.starts_with("trailer"))
        .collect();
    assert_eq!(trailer.len(), 2, "{:?}", r.summary.notices);
    assert_eq!(trailer[0].position.line, 34);
    assert_eq!(
        trailer[0].position.context.as_deref(),
        Some("FormularyExtract/Trailer/FormularyCount")
    );
    assert!(
        trailer[0].message.contains("is 2 but 1 Formulary"),
        "{}",
        trailer[0].message
    );
    assert_eq!(trailer[1].position.line, 35);
    assert!(
        trailer[1].message.contains("is 5 but 2 Drug"),
        "{}",
        trailer[1].message
    );
}

#[test]
fn malformed_xml_keeps_what_came_before() {
    let r = read_xml("bad-malformed.xml");
    assert_eq!(
        r.order,
        ["plan S1234-002", "drug 209459", "reject malformed"]
    );
    let bad = &r.rejects[0];
    assert_eq!(bad.position.line, 27);
    assert_eq!(
        bad.position.context.as_deref(),
        Some("FormularyExtract/Formulary[1]/Drug[2]/DrugName")
    );
    assert!(bad.message.contains("DrugNam"), "{}", bad.message);
    assert!(bad.raw.starts_with("<Drug>"), "{}", bad.raw);
    assert!(r
        .summary
        .notices
        .iter()
        .any(|n| n.message.starts_with("reading stopped at line 27")));
}

#[test]
fn wrong_namespace_is_refused_with_its_line() {
    let err = FormularyXmlReader::new()
        .read(&fixture("bad-namespace.xml"), &mut |_| {
            panic!("no records expected")
        })
        .expect_err("wrong namespace");
    let msg = err.to_string();
    assert!(msg.contains("line 2"), "{msg}");
    assert!(
        msg.contains("urn:example:payer:formulary-extract:2"),
        "{msg}"
    );
    assert!(extract_kind(&fixture("bad-namespace.xml")).is_err());
    assert!(!sniff_xml(&head("bad-namespace.xml")));
    assert!(sniff_xml(&head("formulary-extract-example.xml")));
}

#[test]
fn foreign_element_rejects_only_its_drug() {
    let r = read_xml("bad-element-namespace.xml");
    assert_eq!(r.drugs.len(), 2);
    let bad = &r.rejects[0];
    assert_eq!(bad.reason, Reason::Malformed);
    assert_eq!(bad.position.line, 28);
    assert_eq!(
        bad.position.context.as_deref(),
        Some("FormularyExtract/Formulary[1]/Drug[2]/Note")
    );
    assert!(bad.message.contains("urn:other"), "{}", bad.message);
}

#[test]
fn qhp_files_are_recognised_by_content() {
    assert_eq!(sniff_qhp(&head("qhp_drugs-1.json")), Some(QhpKind::Drugs));
    assert_eq!(sniff_qhp(&head("qhp_drugs-2.json")), Some(QhpKind::Drugs));
    assert_eq!(sniff_qhp(&head("qhp_plans.json")), Some(QhpKind::Plans));
    assert_eq!(
        sniff_qhp(&head("qhp_cms-data-index.json")),
        Some(QhpKind::Index)
    );
    assert_eq!(sniff_qhp(&head("formulary-extract-example.xml")), None);
}

#[test]
fn qhp_drugs_become_one_record_per_plan() {
    let r = read_with(&QhpReader::new(), "qhp_drugs-1.json");
    assert!(r.rejects.is_empty(), "{:?}", r.rejects);
    assert_eq!(r.drugs.len(), 5);
    let d = &r.drugs[3];
    assert_eq!(d.rxnorm, "248656");
    assert_eq!(d.formulary_id, "12345XX9876543");
    assert_eq!(d.tier.as_deref(), Some("generic"));
    assert_eq!(d.quantity_limit, Some(true));
    assert_eq!(d.effective_start.as_deref(), Some("2020-01-01"));
    assert_eq!(d.position.line, 35);
    assert_eq!(d.position.context.as_deref(), Some("[1].plans[0]"));
    assert!(d.pharmacy_benefit_types.is_empty());

    let joined = QhpReader::with_plans(&fixture("qhp_plans.json")).expect("plans");
    let r = read_with(&joined, "qhp_drugs-1.json");
    assert_eq!(
        r.drugs[0].pharmacy_benefit_types,
        ["1-month-in-retail", "1-month-in-mail"]
    );
}

#[test]
fn qhp_plans_translate_cost_sharing_and_report_what_pdex_cannot_carry() {
    let r = read_with(&QhpReader::new(), "qhp_plans.json");
    assert_eq!(r.plans.len(), 3);
    let gold = &r.plans[0];
    assert_eq!(gold.plan_id, "12345XX9876543");
    assert_eq!(gold.formulary_id, gold.plan_id);
    assert_eq!(
        gold.plan_name.as_deref(),
        Some("Vandelay Insurance Gold Health Plan")
    );
    assert_eq!(gold.plan_type.as_deref(), Some("qhp"));
    assert_eq!(gold.payer.id.as_deref(), Some("12345"));
    // GENERIC × (retail, mail); PREFERRED is not a PDex drug tier
    assert_eq!(gold.tiers.len(), 2);
    let retail = &gold.tiers[0];
    assert_eq!(retail.tier, "generic");
    assert_eq!(retail.pharmacy_type.as_deref(), Some("1-month-in-retail"));
    assert_eq!(retail.copay.as_deref(), Some("20.0"));
    assert_eq!(retail.copay_option.as_deref(), Some("after-deductible"));
    // BEFORE-DEDUCTIBLE is not a coinsurance option (CoinsuranceOptionVS)
    assert_eq!(retail.coinsurance, None);
    let mail = &gold.tiers[1];
    assert_eq!(mail.copay_option.as_deref(), Some("no-charge"));
    assert_eq!(mail.coinsurance, None, "null coinsurance_opt");
    assert_eq!(gold.contacts.len(), 3);
    let messages: Vec<&str> = r
        .summary
        .notices
        .iter()
        .map(|n| n.message.as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("\"PREFERRED\"")),
        "{messages:?}"
    );
    let preferred = r
        .summary
        .notices
        .iter()
        .find(|n| n.message.contains("\"PREFERRED\""))
        .expect("notice");
    assert_eq!(
        preferred.position.context.as_deref(),
        Some("[0].formulary[1].drug_tier")
    );
    assert_eq!(preferred.position.line, 2);
}

#[test]
fn qhp_index_holds_no_records() {
    let r = read_with(&QhpReader::new(), "qhp_cms-data-index.json");
    assert!(r.order.is_empty());
    assert_eq!(r.summary.notices.len(), 1);
}

/// Random damage to the XML and QHP JSON fixtures (and to a plan list with service areas):
/// truncations, flipped bytes, stray markup and doubled elements. The readers never panic, and
/// whatever they return accounts for itself: every item is a record or a reject with a reason.
#[test]
fn damaged_extracts_never_panic() {
    // Each base with its QHP kind (none: formulary XML).
    let mut bases: Vec<(Option<QhpKind>, Vec<u8>)> = Vec::new();
    for name in [
        "formulary-extract-example.xml",
        "bad-trailer.xml",
        "bad-ql-without-flag.xml",
    ] {
        bases.push((None, std::fs::read(fixture(name)).unwrap()));
    }
    let partd = crate::manifest_dir().join("../../samples/formulary/partd/plan-formularies.xml");
    bases.push((None, std::fs::read(partd).unwrap()));
    for (name, kind) in [
        ("qhp_plans.json", QhpKind::Plans),
        ("qhp_drugs-1.json", QhpKind::Drugs),
    ] {
        bases.push((Some(kind), std::fs::read(fixture(name)).unwrap()));
    }
    let mut rng = ingest::synth::Rng::new(0xF0);
    let (mut records, mut rejects) = (0u64, 0u64);
    for case in 0..3_000 {
        let (qhp, base) = &bases[case % bases.len()];
        let mut data = base.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(data.len() as u64 + 1) as usize;
            match rng.below(5) {
                0 => data.truncate(i),
                1 if i < data.len() => data[i] = rng.next_u64() as u8,
                2 => {
                    let junk: &[&[u8]] = &[
                        b"<", b">", b"&", b"</Plan>", b"<State>", b"\"", b"]", b"\xFF",
                    ];
                    let j = junk[rng.below(junk.len() as u64) as usize];
                    data.splice(i..i, j.iter().copied());
                }
                3 => {
                    let elem: &[u8] =
                        b"<State>M\xC3\xA9</State><State></State><Plan><State>ME</State></Plan>";
                    data.splice(i..i, elem.iter().copied());
                }
                _ => {
                    let n = rng.below(64) as usize;
                    let end = (i + n).min(data.len());
                    let copy = data[i..end].to_vec();
                    data.splice(i..i, copy);
                }
            }
        }
        let mut items: Vec<Item> = Vec::new();
        let result = match *qhp {
            None => FormularyXmlReader::new()
                .read_from("damaged.xml", data.as_slice(), &mut |i| items.push(i)),
            Some(kind) => {
                QhpReader::new().read_from("damaged.json", kind, data.as_slice(), &mut |i| {
                    items.push(i)
                })
            }
        };
        // A damaged file may also fail as a whole (not XML, not JSON): an error, not a panic.
        let _ = result;
        for i in &items {
            match i {
                Ok(SourceRecord::FormularyDrug(_) | SourceRecord::FormularyPlan(_)) => records += 1,
                Ok(other) => panic!("case {case}: unexpected record {other:?}"),
                Err(r) => {
                    assert!(
                        !r.message.is_empty(),
                        "case {case}: a reject without a reason"
                    );
                    rejects += 1;
                }
            }
        }
    }
    // Records before the damage still read (a malformed XML file keeps what came before it),
    // and damaged records are rejected, not dropped.
    assert!(
        records > 1_000 && rejects > 1_000,
        "{records} records, {rejects} rejects"
    );
}
