//! X12 837P/837I reader: every public sample ingests with its real values, every broken
//! sample is rejected precisely, generated files read back, and mutated inputs never panic.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ingest::model::{Claim, ClaimKind};
use ingest::x12::{
    generate_837, generate_837_shaped, read_bytes, read_parallel, read_parallel_files, read_piece,
    split_stream, FileEvent, Shape, X12Reader,
};
use ingest::{FileSummary, Reader, Reason, Reject, SourceRecord};

fn fixture(dir: &str, name: &str) -> PathBuf {
    crate::manifest_dir()
        .join("tests/fixtures/x12")
        .join(dir)
        .join(name)
}

struct Read {
    claims: Vec<Claim>,
    rejects: Vec<Reject>,
    summary: FileSummary,
}

fn read_path(path: &Path) -> Read {
    let mut claims = Vec::new();
    let mut rejects = Vec::new();
    let summary = X12Reader
        .read(path, &mut |item| match item {
            Ok(SourceRecord::Claim(c)) => claims.push(*c),
            Ok(other) => panic!("unexpected record {other:?}"),
            Err(r) => rejects.push(r),
        })
        .expect("readable file");
    Read {
        claims,
        rejects,
        summary,
    }
}

fn good(name: &str) -> Read {
    let r = read_path(&fixture("good", name));
    assert!(
        r.rejects.is_empty(),
        "{name}: unexpected rejects {:#?}",
        r.rejects
    );
    r
}

fn bad(name: &str) -> Read {
    read_path(&fixture("bad", name))
}

fn ids(r: &Read) -> Vec<&str> {
    r.claims.iter().map(|c| c.claim_id.as_str()).collect()
}

fn members(r: &Read) -> Vec<&str> {
    r.claims.iter().map(|c| c.member_id.as_str()).collect()
}

fn diags(c: &Claim) -> Vec<(&str, &str, u8)> {
    c.diagnoses
        .iter()
        .map(|d| (d.code.as_str(), d.kind.as_str(), d.icd_version))
        .collect()
}

fn amount<'a>(amounts: &'a [ingest::model::Amount], cat: &str) -> Option<&'a str> {
    amounts
        .iter()
        .find(|a| a.category == cat)
        .map(|a| a.value.as_str())
}

fn line_amounts<'a>(c: &'a Claim, cat: &str) -> Vec<&'a str> {
    c.lines
        .iter()
        .map(|l| amount(&l.amounts, cat).unwrap_or("-"))
        .collect()
}

fn supporting<'a>(c: &'a Claim, cat: &str) -> Option<&'a str> {
    c.supporting
        .iter()
        .find(|s| s.category == cat)
        .map(|s| s.value.as_str())
}

fn notices_contain(s: &FileSummary, text: &str) -> bool {
    s.notices.iter().any(|n| n.message.contains(text))
}

#[test]
fn imsweb_complex() {
    let r = good("imsweb_837p_complex.txt");
    assert_eq!(
        ids(&r),
        ["A37YH556", "A37YH667", "A37YH668", "A37YH556", "A37YH667", "A37YH668"]
    );
    assert_eq!(members(&r), ["123456"; 6]);
    let c = &r.claims[0];
    assert_eq!(c.kind, Some(ClaimKind::Professional));
    assert_eq!(
        diags(c),
        [
            ("8901", "principal", 9),
            ("87200", "secondary", 9),
            ("5559", "secondary", 9)
        ]
    );
    assert_eq!(line_amounts(c, "submitted"), ["12.25", "13.26"]);
    assert_eq!(c.lines[0].service_code.as_deref(), Some("99211"));
    assert_eq!(c.lines[0].modifiers, ["25"]);
    assert_eq!(c.lines[0].ndc.as_deref(), Some("3920293"));
    assert_eq!(c.lines[0].place_of_service.as_deref(), Some("11"));
    assert_eq!(c.from.as_deref(), Some("2015-03-30"));
    assert_eq!(c.thru.as_deref(), Some("2015-03-31"));
    assert!(!c.adjudicated);
    // Second claim: the patient is the subscriber's spouse (2000C, PAT*01).
    let c = &r.claims[1];
    let m = c.member.as_ref().unwrap();
    assert_eq!(m.family.as_deref(), Some("JONES"));
    assert_eq!(m.given, ["STEVEN", "J"]);
    assert_eq!(m.gender.as_deref(), Some("male"));
    assert_eq!(m.birth_date.as_deref(), Some("1989-09-16"));
    assert_eq!(m.coverages[0].relationship.as_deref(), Some("spouse"));
    assert_eq!(
        m.coverages[0].payer.name.as_deref(),
        Some("HEALTH INSURANCE COMPANY TWO")
    );
    assert_eq!(diags(c)[0], ("1987", "principal", 9));
    // Line 3 carries a 2430 SVD (another payer paid 55).
    assert_eq!(line_amounts(c, "submitted"), ["12.26"]);
    assert_eq!(line_amounts(c, "paidtoprovider"), ["55"]);
    assert!(c.adjudicated);
    assert_eq!(c.payment_status.as_deref(), Some("paid"));
    assert_eq!(
        c.lines[0].rendering.as_ref().and_then(|p| p.id.as_deref()),
        Some("303304")
    );
    assert_eq!(diags(&r.claims[2])[0].0, "1988");
    assert_eq!(diags(&r.claims[5])[0].0, "1989");
    assert_eq!(line_amounts(&r.claims[5], "submitted"), ["12.30", "12.31"]);
    // Known defects, reported: SE01 wrong in both sets, GE01 counts 1 set for 2, HI split.
    assert!(notices_contain(
        &r.summary,
        "SE01 says 25 segments, transaction set 987654 holds 147"
    ));
    assert!(notices_contain(
        &r.summary,
        "SE01 says 26 segments, transaction set 987655 holds 147"
    ));
    assert!(notices_contain(
        &r.summary,
        "GE01 says 1 transaction sets, group 1 holds 2"
    ));
    assert!(notices_contain(
        &r.summary,
        "HI: qualifier and code in separate elements"
    ));
}

#[test]
fn imsweb_multiple_st() {
    let r = good("imsweb_837p_multiple_st.txt");
    assert_eq!(ids(&r), ["A37YH556", "A37YH667", "A37YH556", "A37YH667"]);
    assert_eq!(members(&r), ["123456"; 4]);
    let c = &r.claims[0];
    assert_eq!(line_amounts(c, "submitted"), ["12.25"]);
    assert_eq!(c.lines[0].diagnosis_pointers, [1, 2, 3]);
    assert_eq!(c.from.as_deref(), Some("2005-03-14"));
    assert_eq!(c.thru.as_deref(), Some("2005-03-25"));
    assert_eq!(r.claims[1].lines[0].service_code.as_deref(), Some("478331"));
    assert_eq!(
        r.claims[3].payer.name.as_deref(),
        Some("AN INSURANCE COMPANY")
    );
    let se: Vec<_> = r
        .summary
        .notices
        .iter()
        .filter(|n| n.message.starts_with("SE01"))
        .map(|n| n.position.segment)
        .collect();
    assert_eq!(se, [Some(36), Some(70)]);
}

#[test]
fn lfh_837i_institutional_claim() {
    let r = good("lfh_837i_institutional_claim.837i");
    assert_eq!(ids(&r), ["756048Q"]);
    assert_eq!(members(&r), ["030005074A"]);
    let c = &r.claims[0];
    assert_eq!(c.kind, Some(ClaimKind::Outpatient));
    assert_eq!(c.type_of_bill.as_deref(), Some("141"));
    assert_eq!(supporting(c, "typeofbill"), Some("141"));
    assert_eq!(supporting(c, "admtype"), Some("3"));
    assert_eq!(supporting(c, "discharge-status"), Some("01"));
    assert_eq!(supporting(c, "pointoforigin"), None);
    assert_eq!(
        diags(c),
        [
            ("3669", "principal", 9),
            ("4019", "secondary", 9),
            ("79431", "secondary", 9)
        ]
    );
    assert_eq!(line_amounts(c, "submitted"), ["13.39", "76.54"]);
    assert_eq!(c.lines[0].revenue_code.as_deref(), Some("0305"));
    assert_eq!(c.lines[1].service_code.as_deref(), Some("93005"));
    assert_eq!(c.lines[1].quantity.as_deref(), Some("3.00"));
    assert_eq!(c.from.as_deref(), Some("1996-09-11"));
    assert_eq!(amount(&c.amounts, "submitted"), Some("89.93"));
    // 2320 with SBR/OI only: other coverage named, no adjudication.
    assert!(!c.adjudicated);
    assert_eq!(c.payment_status, None);
    assert_eq!(c.care_team[0].0, "attending");
    assert_eq!(c.care_team[0].1.name.as_deref(), Some("JONES, JOHN"));
    assert!(c.care_team[0].1.person);
    let b = c.billing.as_ref().unwrap();
    assert_eq!(b.id.as_deref(), Some("9876540809"));
    assert_eq!(b.id_kind.as_deref(), Some("npi"));
    assert_eq!(b.tax_id.as_deref(), Some("567891234"));
    let m = c.member.as_ref().unwrap();
    assert_eq!(m.coverages[0].type_code.as_deref(), Some("MB"));
    assert_eq!(m.coverages[0].relationship.as_deref(), Some("self"));
    assert_eq!(m.coverages[0].payer.id.as_deref(), Some("00435"));
    assert_eq!(c.coverage_key.as_deref(), Some("00435-mb"));
}

#[test]
fn lfh_837i_two_claims() {
    let r = good("lfh_837i_two_claims_single_provider.837i");
    assert_eq!(ids(&r), ["756048Q", "756049Q"]);
    assert_eq!(members(&r), ["030005074", "123405074"]);
    assert_eq!(line_amounts(&r.claims[0], "submitted"), ["13.39", "76.56"]);
    assert_eq!(line_amounts(&r.claims[1], "submitted"), ["50.00"]);
    assert_eq!(diags(&r.claims[1]), [("30000", "principal", 9)]);
    for c in &r.claims {
        assert_eq!(c.kind, Some(ClaimKind::Outpatient));
        assert_eq!(c.type_of_bill.as_deref(), Some("131"));
    }
    assert_eq!(r.claims[1].from.as_deref(), Some("2005-04-01"));
    assert_eq!(r.claims[1].care_team[0].1.id.as_deref(), Some("9999999999"));
    assert!(r.summary.notices.is_empty(), "{:?}", r.summary.notices);
}

#[test]
fn lfh_ambulance() {
    let r = good("lfh_837p_ambulance_example5.837");
    assert_eq!(ids(&r), ["051068"]);
    assert_eq!(members(&r), ["012345678A"]);
    let c = &r.claims[0];
    assert_eq!(
        diags(c),
        [
            ("8628", "principal", 9),
            ("E8888", "secondary", 9),
            ("9592", "secondary", 9),
            ("8540", "secondary", 9)
        ]
    );
    assert_eq!(
        line_amounts(c, "submitted"),
        ["700.00", "8.20", "46.00", "12.30"]
    );
    assert_eq!(c.lines[1].quantity.as_deref(), Some("21.00"));
    assert_eq!(c.lines[0].modifiers, ["RH"]);
    // No SV105: the claim's place of service (CLM05-1) applies.
    assert_eq!(c.lines[0].place_of_service.as_deref(), Some("41"));
    assert_eq!(c.lines[0].diagnosis_pointers, [1, 2, 3, 4]);
    let m = c.member.as_ref().unwrap();
    assert_eq!(m.gender.as_deref(), Some("female"));
    assert_eq!(m.birth_date.as_deref(), Some("1963-07-29"));
    assert_eq!(m.address_lines, ["1129 REINDEER ROAD"]);
    assert_eq!(m.postal_code.as_deref(), Some("80612"));
    assert_eq!(c.payer.name.as_deref(), Some("MEDICARE PART B"));
    assert!(r.summary.notices.is_empty(), "{:?}", r.summary.notices);
}

#[test]
fn lfh_autoaccident() {
    let r = good("lfh_837p_autoaccident.837");
    assert_eq!(ids(&r), ["900000032"]);
    // Dependent without NM109: the subscriber's id is the member id.
    assert_eq!(members(&r), ["B99977791G"]);
    let c = &r.claims[0];
    assert_eq!(diags(c), [("8540", "principal", 9)]);
    assert_eq!(line_amounts(c, "submitted"), ["150.00", "35.00"]);
    let m = c.member.as_ref().unwrap();
    assert_eq!(m.family.as_deref(), Some("DIMPSON"));
    assert_eq!(m.coverages[0].relationship.as_deref(), Some("other"));
    assert_eq!(m.coverages[0].subscriber_id.as_deref(), Some("B99977791G"));
    assert_eq!(c.care_team.len(), 1);
    assert_eq!(c.care_team[0].0, "rendering");
    assert_eq!(c.care_team[0].1.name.as_deref(), Some("MOGLIE, BRUNO"));
    assert_eq!(c.care_team[0].1.id.as_deref(), Some("2366552595"));
    let f = c.facility.as_ref().unwrap();
    assert_eq!(f.id.as_deref(), Some("1235767887"));
    assert_eq!(f.city.as_deref(), Some("LOMA LINDA"));
}

#[test]
fn lfh_cob_line_adjudication() {
    let r = good("lfh_837p_cob_example3C.837");
    assert_eq!(ids(&r), ["26407789"]);
    assert_eq!(members(&r), ["22233444"]);
    let c = &r.claims[0];
    assert_eq!(
        diags(c),
        [
            ("4779", "principal", 9),
            ("2724", "secondary", 9),
            ("2780", "secondary", 9),
            ("53081", "secondary", 9)
        ]
    );
    assert_eq!(line_amounts(c, "submitted"), ["43.00", "15.00", "21.04"]);
    assert_eq!(
        line_amounts(c, "paidtoprovider"),
        ["40.00", "15.00", "21.04"]
    );
    assert!(c.adjudicated);
    assert_eq!(c.payment_status.as_deref(), Some("paid"));
    assert_eq!(amount(&c.amounts, "submitted"), Some("79.04"));
    assert_eq!(amount(&c.amounts, "paidtoprovider"), Some("39.15"));
    assert_eq!(amount(&c.amounts, "deductible"), Some("21.89"));
    assert_eq!(amount(&c.amounts, "coinsurance"), Some("15.00"));
    assert_eq!(amount(&c.amounts, "memberliability"), Some("36.89"));
    assert_eq!(c.lines[0].adjustments.len(), 1);
    assert_eq!(c.lines[0].adjustments[0].group.as_deref(), Some("CO"));
    assert_eq!(c.lines[0].adjustments[0].reason, "42");
    assert_eq!(c.lines[0].adjustments[0].amount.as_deref(), Some("3.00"));
    let b = c.billing.as_ref().unwrap();
    assert!(b.person);
    assert_eq!(b.name.as_deref(), Some("KILDARE, BEN"));
    assert_eq!(b.address_lines, ["1234", "SEAWAY ST"]);
    let m = c.member.as_ref().unwrap();
    assert_eq!(m.coverages[0].relationship.as_deref(), Some("child"));
}

#[test]
fn lfh_drug_lines() {
    let r = good("lfh_837p_drug_example10_2.837");
    assert_eq!(ids(&r), ["CLMNO12345"]);
    assert_eq!(members(&r), ["MBRID01234"]);
    let c = &r.claims[0];
    assert_eq!(diags(c), [("4659", "principal", 9)]);
    assert_eq!(
        line_amounts(c, "submitted"),
        ["1400.00", "682.50", "15.12", "67.69", "57.12", "10.50"]
    );
    let ndc: Vec<_> = c.lines.iter().map(|l| l.ndc.as_deref()).collect();
    assert_eq!(
        ndc,
        [
            None,
            Some("00004196501"),
            Some("63323024910"),
            Some("00338004938"),
            Some("08290033010"),
            Some("08290038005")
        ]
    );
    assert_eq!(c.lines[2].quantity.as_deref(), Some("14.00"));
    assert_eq!(c.lines[0].place_of_service.as_deref(), Some("12"));
    assert_eq!(c.from.as_deref(), Some("2004-02-01"));
    assert_eq!(c.thru.as_deref(), Some("2004-02-07"));
    assert_eq!(c.payer.id.as_deref(), Some("PLANID12345"));
    assert_eq!(c.payer.id_kind.as_deref(), Some("payerid"));
    let m = c.member.as_ref().unwrap();
    assert_eq!(m.coverages[0].group.as_deref(), Some("GRP01020102"));
}

#[test]
fn lfh_example1_and_oop_indented_bom_crlf() {
    for (name, amounts, thru) in [
        (
            "lfh_837p_example1.837",
            ["40.00", "15.00", "35.00", "10.00"],
            "2006-10-10",
        ),
        (
            "oop_837p_example1_health_insurance.txt",
            ["40", "15", "35", "10"],
            "2006-10-25",
        ),
    ] {
        let r = good(name);
        assert_eq!(ids(&r), ["26463774"], "{name}");
        assert_eq!(members(&r), ["JS00111223333"], "{name}");
        let c = &r.claims[0];
        assert_eq!(c.kind, Some(ClaimKind::Professional));
        assert_eq!(
            diags(c),
            [("0340", "principal", 9), ("V7389", "secondary", 9)]
        );
        assert_eq!(line_amounts(c, "submitted"), amounts, "{name}");
        assert_eq!(c.from.as_deref(), Some("2006-10-03"));
        assert_eq!(c.thru.as_deref(), Some(thru), "{name}");
        assert_eq!(c.identifiers.len(), 1);
        assert_eq!(c.identifiers[0].kind, "clearinghouse");
        assert_eq!(c.identifiers[0].value, "17312345600006351");
        assert_eq!(supporting(c, "patientaccountnumber"), Some("26463774"));
        let m = c.member.as_ref().unwrap();
        assert_eq!(m.family.as_deref(), Some("SMITH"));
        assert_eq!(m.given, ["TED"]);
        assert_eq!(m.coverages[0].relationship.as_deref(), Some("child"));
        assert_eq!(m.coverages[0].group.as_deref(), Some("2222-SJ"));
        assert!(
            r.summary.notices.is_empty(),
            "{name}: {:?}",
            r.summary.notices
        );
    }
}

#[test]
fn uhin() {
    let r = good("uhin_837p.edi");
    assert_eq!(ids(&r), ["1606"]);
    assert_eq!(members(&r), ["601239742"]);
    let c = &r.claims[0];
    assert_eq!(diags(c), [("R69", "principal", 10)]);
    assert_eq!(line_amounts(c, "submitted"), ["2"]);
    assert_eq!(c.from.as_deref(), Some("2024-08-15"));
    assert_eq!(c.thru.as_deref(), Some("2024-08-20"));
    assert_eq!(c.created.as_deref(), Some("2022-01-18"));
    assert_eq!(c.member.as_ref().unwrap().gender.as_deref(), Some("female"));
    assert!(r.summary.notices.is_empty(), "{:?}", r.summary.notices);
}

#[test]
fn zx12_837i_cob() {
    let r = good("zx12_837i_cob_line_adjudication.x12");
    assert_eq!(ids(&r), ["ABC0002"]);
    assert_eq!(members(&r), ["1008716534V004619"]);
    let c = &r.claims[0];
    // ST03 says 837I although GS08 says X222A1; facility code "011" → 11 → inpatient.
    assert_eq!(c.kind, Some(ClaimKind::Inpatient));
    assert_eq!(c.type_of_bill.as_deref(), Some("111"));
    assert_eq!(
        diags(c),
        [
            ("M24562", "principal", 10),
            ("H5988", "admitting", 10),
            ("H59369", "patientreasonforvisit", 10),
            ("V4312XA", "externalcauseofinjury", 10),
            ("Z970", "externalcauseofinjury", 10),
            ("Z9681", "externalcauseofinjury", 10),
            ("E8359", "secondary", 10),
            ("A0102", "secondary", 10),
            ("A0103", "secondary", 10)
        ]
    );
    assert_eq!(c.diagnoses[0].poa.as_deref(), Some("N"));
    assert_eq!(c.diagnoses[7].poa.as_deref(), Some("Y"));
    assert_eq!(c.procedures.len(), 13);
    assert_eq!(c.procedures[0].code, "009G0ZZ");
    assert_eq!(c.procedures[0].kind, "principal");
    assert_eq!(c.procedures[0].date.as_deref(), Some("2017-10-03"));
    assert_eq!(c.procedures[12].code, "B8001ZZ");
    assert_eq!(supporting(c, "drg"), Some("025"));
    assert_eq!(supporting(c, "admissionperiod"), Some("2019-03-10/"));
    assert_eq!(supporting(c, "clmrecvddate"), Some("2019-02-15"));
    assert_eq!(supporting(c, "pointoforigin"), Some("7"));
    assert_eq!(c.from.as_deref(), Some("2019-03-10"));
    assert_eq!(c.thru.as_deref(), Some("2019-03-11"));
    let idents: Vec<_> = c
        .identifiers
        .iter()
        .map(|i| (i.kind.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        idents,
        [
            ("payer-claim-control", "CLAIM04"),
            ("clearinghouse", "CLAIM0004")
        ]
    );
    let roles: Vec<_> = c.care_team.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        roles,
        [
            "attending",
            "operating",
            "otheroperating",
            "rendering",
            "referring"
        ]
    );
    assert_eq!(
        c.facility.as_ref().unwrap().id.as_deref(),
        Some("1689432123")
    );
    assert!(c.adjudicated);
    assert_eq!(c.payment_status.as_deref(), Some("paid"));
    assert_eq!(amount(&c.amounts, "paidtoprovider"), Some("8852.72"));
    assert_eq!(amount(&c.amounts, "noncovered"), Some("780"));
    assert_eq!(amount(&c.amounts, "memberliability"), Some("60"));
    assert_eq!(c.adjustments.len(), 12);
    assert_eq!(line_amounts(c, "submitted"), ["173.42", "86.54"]);
    assert_eq!(line_amounts(c, "paidtoprovider"), ["173.42", "76.54"]);
    assert_eq!(line_amounts(c, "coinsurance"), ["35.00", "65.00"]);
    assert_eq!(line_amounts(c, "memberliability"), ["75", "20"]);
    assert_eq!(c.lines[0].revenue_code.as_deref(), Some("0300"));
    assert_eq!(c.lines[0].modifiers, ["A1", "05", "02", "01"]);
    assert_eq!(c.lines[1].ndc.as_deref(), Some("00093-0051-05"));
    assert_eq!(
        c.lines[0]
            .rendering
            .as_ref()
            .and_then(|p| p.name.as_deref()),
        Some("BIG, ANNA")
    );
    assert!(notices_contain(
        &r.summary,
        "SE01 says 104 segments, transaction set 00000024 holds 150"
    ));
    assert!(notices_contain(
        &r.summary,
        "GE02 000004513 does not match GS06 02"
    ));
    assert!(notices_contain(
        &r.summary,
        "IEA02 000000001 does not match ISA13 000000002"
    ));
    assert!(notices_contain(
        &r.summary,
        "ST03 005010X223A2 differs from GS08 005010X222A1"
    ));
}

#[test]
fn zx12_one_line() {
    let r = good("zx12_837p_one_line.x12");
    assert_eq!(ids(&r), ["PATIENT123", "PATIENT456"]);
    assert_eq!(members(&r), ["PATIENT123", "PATIENT123"]);
    assert_eq!(diags(&r.claims[0]), [("M545", "principal", 9)]);
    assert_eq!(diags(&r.claims[1]), [("R51", "principal", 9)]);
    assert_eq!(line_amounts(&r.claims[0], "submitted"), ["250", "150"]);
    assert_eq!(line_amounts(&r.claims[1], "submitted"), ["100"]);
    assert_eq!(r.claims[1].position.segment, Some(27));
    let se: Vec<_> = r
        .summary
        .notices
        .iter()
        .map(|n| n.message.as_str())
        .collect();
    assert_eq!(se, ["SE01 says 23 segments, transaction set 0002 holds 31"]);
}

fn assert_reject(r: &Reject, reason: Reason, segment: u64, offset: u64, context: &str) {
    assert_eq!(r.reason, reason, "{r:?}");
    assert_eq!(r.position.segment, Some(segment), "{r:?}");
    assert_eq!(r.position.byte_offset, offset, "{r:?}");
    assert_eq!(r.position.context.as_deref(), Some(context), "{r:?}");
    assert!(!r.raw.is_empty());
}

#[test]
fn bad_first_line() {
    let r = bad("imsweb_bad_first_line.txt");
    assert!(r.claims.is_empty());
    assert_eq!(r.rejects.len(), 1);
    assert_reject(&r.rejects[0], Reason::Envelope, 1, 0, "ISA");
    assert!(r.rejects[0].message.contains("byte offset 17"));
}

#[test]
fn bad_no_isa() {
    let r = bad("imsweb_no_isa_line.txt");
    assert!(r.claims.is_empty());
    assert_eq!(r.rejects.len(), 1);
    assert_reject(&r.rejects[0], Reason::Envelope, 1, 0, "ISA");
    assert!(r.rejects[0].message.contains("found \"GS\""));
}

#[test]
fn bad_utf16() {
    let r = bad("oop_837p_utf16_truncated.txt");
    assert!(r.claims.is_empty());
    assert_eq!(r.rejects.len(), 1);
    assert_reject(&r.rejects[0], Reason::Encoding, 1, 0, "ISA");
}

#[test]
fn bad_segment_identifier() {
    let r = bad("imsweb_bad_segment_identifier.txt");
    assert!(r.claims.is_empty());
    // "*IC*…" in the submitter loop taints the set header: both claims rejected there.
    assert_eq!(r.rejects.len(), 2);
    for rj in &r.rejects {
        assert_reject(rj, Reason::Segment, 6, 280, "1000A");
    }
    assert!(r.rejects[0].message.contains("A37YH556"));
    assert!(r.rejects[1].message.contains("A37YH667"));
    assert!(r.rejects[0].raw.starts_with("CLM*A37YH556"));
}

#[test]
fn bad_missing_elements() {
    let r = bad("imsweb_missing_elements.txt");
    assert_eq!(ids(&r), ["A37YH556"]);
    assert_eq!(r.rejects.len(), 1);
    assert_reject(&r.rejects[0], Reason::MissingValue, 31, 1031, "2300");
    assert!(r.rejects[0].message.contains("CLM05"));
    assert!(r.rejects[0].raw.starts_with("CLM*A37YH667*500****Y"));
    // The receiver's missing NM102 feeds nothing: a notice.
    assert!(r
        .summary
        .notices
        .iter()
        .any(|n| n.position.segment == Some(7) && n.message.contains("NM102")));
}

#[test]
fn bad_segments_out_of_order() {
    let r = bad("imsweb_segments_out_of_order.txt");
    assert!(r.claims.is_empty());
    assert_eq!(r.rejects.len(), 2);
    for rj in &r.rejects {
        assert_reject(rj, Reason::Segment, 12, 465, "2010AA");
        assert!(rj.message.contains("N4 is out of order"));
    }
}

#[test]
fn bad_truncated_transaction() {
    let r = bad("zx12_truncated_transaction.x12");
    assert!(r.claims.is_empty());
    assert_eq!(r.rejects.len(), 1);
    assert_reject(&r.rejects[0], Reason::Segment, 5, 232, "1000A");
    assert!(r.rejects[0].raw.starts_with("ST*837*0001"));
}

fn all_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(fixture(dir, ""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "SOURCES.tsv"))
        .collect();
    v.sort();
    v
}

#[test]
fn mixed_run_keeps_every_good_claim() {
    let mut files = all_files("good");
    files.extend(all_files("bad"));
    // Interleave good and bad.
    files.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
    let mut ok = 0;
    let mut rejected = 0;
    for f in &files {
        let r = read_path(f);
        ok += r.claims.len();
        rejected += r.rejects.len();
    }
    assert_eq!(ok, 23 + 1);
    assert_eq!(rejected, 1 + 1 + 1 + 2 + 1 + 2 + 1);

    // One stream mixing interchanges: a bad one does not hide the good ones after it.
    let mut data = std::fs::read(fixture("good", "uhin_837p.edi")).unwrap();
    data.extend(std::fs::read(fixture("bad", "imsweb_bad_first_line.txt")).unwrap());
    data.extend(std::fs::read(fixture("bad", "oop_837p_utf16_truncated.txt")).unwrap());
    data.extend(std::fs::read(fixture("good", "zx12_837p_one_line.x12")).unwrap());
    data.extend(std::fs::read(fixture("bad", "imsweb_no_isa_line.txt")).unwrap());
    data.extend(std::fs::read(fixture("good", "lfh_837p_example1.837")).unwrap());
    let (claims, rejects, _) = collect(&data);
    let ids: Vec<_> = claims.iter().map(|c| c.claim_id.as_str()).collect();
    assert_eq!(ids, ["1606", "PATIENT123", "PATIENT456", "26463774"]);
    // The bad first line swallows the UTF-16 bytes up to the next valid ISA; the GS-first
    // file after the one-line interchange becomes one envelope reject.
    let reasons: Vec<_> = rejects.iter().map(|r| r.reason).collect();
    assert_eq!(reasons, [Reason::Envelope, Reason::Envelope]);
}

fn collect(data: &[u8]) -> (Vec<Claim>, Vec<Reject>, FileSummary) {
    let mut claims = Vec::new();
    let mut rejects = Vec::new();
    let s = read_bytes("mem", data, &mut |item| match item {
        Ok(SourceRecord::Claim(c)) => claims.push(*c),
        Ok(_) => {}
        Err(r) => rejects.push(r),
    });
    (claims, rejects, s)
}

/// Rewrite an interchange with other delimiters (same fixed-width ISA).
fn redelimit(data: &[u8], e: u8, c: u8, t: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in data {
        match b {
            b'*' => out.push(e),
            b':' => out.push(c),
            b'~' => out.extend_from_slice(t),
            b'\n' | b'\r' => {}
            _ => out.push(b),
        }
    }
    out
}

#[test]
fn any_delimiters() {
    let base = std::fs::read(fixture("good", "lfh_837p_cob_example3C.837")).unwrap();
    let (want, _, _) = collect(&base);
    for (e, c, t) in [
        (b'|', b'>', &b"\n"[..]),
        (b'^', b'\\', &b"'\r\n"[..]),
        (0x1D, 0x1F, &b"\x1C"[..]),
        (b'!', b'@', &b"#"[..]),
    ] {
        let data = redelimit(&base, e, c, t);
        let (got, rejects, s) = collect(&data);
        assert!(rejects.is_empty(), "{rejects:?}");
        assert!(s.notices.is_empty(), "{:?}", s.notices);
        assert_eq!(got.len(), 1);
        let (mut a, mut b) = (got[0].clone(), want[0].clone());
        a.position = Default::default();
        b.position = Default::default();
        a.member.as_mut().unwrap().position = Default::default();
        b.member.as_mut().unwrap().position = Default::default();
        assert_eq!(a, b, "delimiters {e} {c} {t:?}");
    }
}

#[test]
fn missing_trailing_terminator_and_missing_iea() {
    let mut data = std::fs::read(fixture("good", "uhin_837p.edi")).unwrap();
    while data
        .last()
        .is_some_and(|b| b.is_ascii_whitespace() || *b == b'~')
    {
        data.pop();
    }
    let (claims, rejects, s) = collect(&data);
    assert_eq!(claims.len(), 1);
    assert!(
        rejects.is_empty() && s.notices.is_empty(),
        "{:?}",
        s.notices
    );
    // Cut after SE: GE and IEA missing are notices, the claim stands.
    let cut = data.windows(3).position(|w| w == b"GE*").unwrap();
    let (claims, rejects, s) = collect(&data[..cut]);
    assert_eq!(claims.len(), 1);
    assert!(rejects.is_empty());
    assert!(s.notices.iter().any(|n| n.message.contains("GE missing")));
    assert!(s.notices.iter().any(|n| n.message.contains("IEA missing")));
    // Cut inside the last line: the open claim is rejected (it may have lost lines).
    let cut = data.windows(4).position(|w| w == b"DTP*").unwrap();
    let (claims, rejects, _) = collect(&data[..cut]);
    assert!(claims.is_empty());
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].reason, Reason::Envelope);
}

#[test]
fn generated_files_read_back() {
    for professional in [true, false] {
        let mut buf = Vec::new();
        let bytes = generate_837(&mut buf, professional, 3_000, 42).unwrap();
        assert_eq!(bytes as usize, buf.len());
        let (claims, rejects, s) = collect(&buf);
        assert!(rejects.is_empty(), "{:?}", &rejects[..rejects.len().min(3)]);
        assert!(
            s.notices.is_empty(),
            "{:?}",
            &s.notices[..s.notices.len().min(3)]
        );
        assert_eq!(claims.len(), 3_000);
        for (i, c) in claims.iter().enumerate() {
            assert_eq!(c.claim_id, format!("G42-{i}"));
            assert_eq!(c.member_id, format!("M{i:09}"));
            assert!(!c.lines.is_empty() && c.lines.len() <= 4);
            assert_eq!(c.diagnoses.len(), 3);
            if professional {
                assert_eq!(c.kind, Some(ClaimKind::Professional));
            } else {
                assert_ne!(c.kind, Some(ClaimKind::Professional));
            }
        }
        assert!(claims.iter().any(|c| c.adjudicated));
        assert!(claims.iter().any(|c| !c.adjudicated));
        // Several interchanges with different delimiters.
        assert!(buf.windows(4).any(|w| w == b"ISA|"));
        assert!(buf.contains(&0x1C));
    }
}

// ---- Mutation fuzzing: no panic, and every claim accounted for exactly once. ----

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn count_clm(data: &[u8], e: u8, t: u8) -> usize {
    let mut n = 0;
    for seg in data.split(|&b| b == t) {
        let s = seg.trim_ascii_start();
        if s.len() >= 4 && &s[..3] == b"CLM" && s[3] == e {
            n += 1;
        }
    }
    n
}

/// A claim-level reject names its claim ("claim … rejected"); other rejects stand for a set
/// or an interchange.
fn is_claim_reject(r: &Reject) -> bool {
    r.message.starts_with("claim ")
}

#[test]
fn fuzz_mutations_never_panic_and_account_for_claims() {
    let samples: Vec<Vec<u8>> = all_files("good")
        .into_iter()
        .chain(all_files("bad"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let mut rng = Lcg(0x5eed);
    let start = std::time::Instant::now();
    let cases = 6_000;
    let mut exact = 0;
    for case in 0..cases {
        let base = &samples[rng.below(samples.len())];
        let mut data = base.clone();
        let structural = case % 2 == 0 && base.starts_with(b"ISA") && base.len() > 200;
        if structural {
            // Structure-preserving: change one byte to a letter or digit inside the
            // transaction sets (never a delimiter, never the envelope): the number of CLM
            // segments is then known and each must yield exactly one Ok or claim reject.
            let first_st = data.windows(4).position(|w| w == b"ST*8").unwrap_or(0);
            let last_se = data.windows(4).rposition(|w| w == b"SE*").unwrap_or(0);
            if last_se > first_st + 10 {
                for _ in 0..1 + rng.below(3) {
                    let i = first_st + 10 + rng.below(last_se - first_st - 10);
                    if !matches!(data[i], b'*' | b':' | b'~' | b'\r' | b'\n' | b'^') {
                        let alnum = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                        data[i] = alnum[rng.below(alnum.len())];
                    }
                }
            }
            // Never let a flip touch envelope ids (a new "SE" would end the set early).
            let orig_env = count_env(base);
            if count_env(&data) != orig_env {
                continue;
            }
            let expected = count_clm(&data, b'*', b'~');
            let (claims, rejects, _) = collect(&data);
            let claim_rejects = rejects.iter().filter(|r| is_claim_reject(r)).count();
            let set_rejects = rejects.len() - claim_rejects;
            if set_rejects == 0 {
                exact += 1;
                assert_eq!(
                    claims.len() + claim_rejects,
                    expected,
                    "case {case}: {:?}",
                    String::from_utf8_lossy(&data)
                );
            } else {
                // A set reject only happens for a set that holds no claim (or is not an 837).
                assert!(claims.len() + claim_rejects <= expected, "case {case}");
            }
        } else {
            match rng.below(6) {
                0 => {
                    let n = rng.below(data.len() + 1);
                    data.truncate(n);
                }
                1 => {
                    for _ in 0..1 + rng.below(8) {
                        if !data.is_empty() {
                            let i = rng.below(data.len());
                            data[i] = rng.next() as u8;
                        }
                    }
                }
                2 => {
                    let d = [b'*', b':', b'~', b'^', b'\n', 0, 0xFF][rng.below(7)];
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(data.len() + 1);
                        data.insert(i, d);
                    }
                }
                3 => {
                    // Duplicate a segment.
                    let segs: Vec<usize> = data
                        .iter()
                        .enumerate()
                        .filter(|(_, &b)| b == b'~')
                        .map(|(i, _)| i + 1)
                        .collect();
                    if segs.len() > 2 {
                        let k = rng.below(segs.len() - 1);
                        let seg = data[segs[k]..segs[k + 1]].to_vec();
                        let at = segs[rng.below(segs.len())];
                        data.splice(at..at, seg);
                    }
                }
                4 => {
                    // Delete a range.
                    if data.len() > 2 {
                        let a = rng.below(data.len());
                        let b = (a + rng.below(64)).min(data.len());
                        data.drain(a..b);
                    }
                }
                _ => {
                    // Concatenate with another sample, cut somewhere.
                    let other = &samples[rng.below(samples.len())];
                    let cut = rng.below(data.len() + 1);
                    data.truncate(cut);
                    data.extend_from_slice(other);
                }
            }
            let (claims, rejects, _) = collect(&data);
            let mut segs: Vec<_> = claims.iter().map(|c| c.position.segment).collect();
            segs.sort();
            segs.dedup();
            assert_eq!(
                segs.len(),
                claims.len(),
                "case {case}: a claim emitted twice"
            );
            let clm = data.windows(3).filter(|w| *w == b"CLM").count();
            assert!(claims.len() <= clm, "case {case}");
            if clm > 0 && data.windows(3).any(|w| w == b"ISA") {
                assert!(
                    !claims.is_empty() || !rejects.is_empty(),
                    "case {case}: CLM silently dropped"
                );
            }
        }
    }
    assert!(exact > 1_500, "only {exact} exact-accounting cases ran");
    assert!(
        start.elapsed().as_secs() < 30,
        "fuzz too slow: {:?}",
        start.elapsed()
    );
}

fn count_env(data: &[u8]) -> usize {
    data.split(|&b| b == b'~')
        .filter(|s| {
            let s = s.trim_ascii_start();
            ["ST*", "SE*", "GS*", "GE*", "ISA*", "IEA*", "HL*", "CLM*"]
                .iter()
                .any(|p| s.starts_with(p.as_bytes()))
        })
        .count()
}

// ---- Pieces: a file cut between interchanges or between transaction sets reads exactly like
// the whole file. ----

/// Everything a read gives, in order.
fn read_all(data: &[u8]) -> (Vec<ingest::Item>, FileSummary) {
    let mut items = Vec::new();
    let s = read_bytes("mem", data, &mut |item| items.push(item));
    (items, s)
}

/// The same, reading the pieces of `target` bytes one by one.
fn read_cut(data: &[u8], target: u64) -> (Vec<ingest::Item>, FileSummary, usize) {
    let pieces = split_stream(data, target).unwrap();
    let mut items = Vec::new();
    let mut sum = FileSummary::default();
    let mut at = 0;
    for p in &pieces {
        assert_eq!(p.start, at, "pieces are contiguous");
        at = p.end;
        let bytes = &data[p.start as usize..p.end as usize];
        let s = read_piece("mem", bytes, p.clone(), &mut |item| items.push(item)).unwrap();
        sum.bytes += s.bytes;
        sum.units += s.units;
        sum.notices.extend(s.notices);
    }
    assert_eq!(at, data.len() as u64, "pieces cover the input");
    (items, sum, pieces.len())
}

fn assert_pieces_match(data: &[u8], target: u64, what: &str) -> usize {
    let (whole, ws) = read_all(data);
    let (cut, cs, n) = read_cut(data, target);
    assert_eq!(ws, cs, "{what}: summaries differ (target {target})");
    assert_eq!(whole.len(), cut.len(), "{what}: item counts differ");
    for (i, (a, b)) in whole.iter().zip(&cut).enumerate() {
        assert_eq!(a, b, "{what}: item {i} differs (target {target})");
    }
    n
}

#[test]
fn pieces_read_like_the_whole_file() {
    for professional in [true, false] {
        let mut buf = Vec::new();
        generate_837(&mut buf, professional, 2_500, 9).unwrap();
        // A leading BOM and blank lines between interchanges are part of the bytes.
        let mut data = vec![0xEF, 0xBB, 0xBF];
        data.extend_from_slice(&buf);
        for target in [1, 50_000, 400_000, u64::MAX] {
            let n = assert_pieces_match(&data, target, "generated");
            if target == 1 {
                assert!(n > 2, "several interchanges give several pieces");
            }
        }
    }
    // Every sample, good and bad, one after another (bad interchanges, missing trailers,
    // truncated sets between the cuts).
    let mut all = Vec::new();
    for p in all_files("good").into_iter().chain(all_files("bad")) {
        all.extend_from_slice(&std::fs::read(p).unwrap());
        all.extend_from_slice(b"\r\n");
    }
    for target in [1, 700, 5_000] {
        assert_pieces_match(&all, target, "samples");
    }
}

/// A rayon pool of two threads.
fn two_threads() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
}

/// Read `path` sequentially and in parallel on two threads, check that both give the same
/// items and summary, and return them.
fn read_both_ways(path: &std::path::Path) -> (Vec<ingest::Item>, FileSummary) {
    let mut whole = Vec::new();
    let ws = X12Reader.read(path, &mut |i| whole.push(i)).unwrap();
    let mut par = Vec::new();
    let ps = two_threads()
        .install(|| read_parallel(path, &|i| Some(i), &mut |i| par.extend(i)))
        .unwrap();
    assert_eq!(ws, ps);
    assert_eq!(whole.len(), par.len());
    assert!(
        whole == par,
        "parallel read differs from the sequential one"
    );
    (whole, ws)
}

/// One interchange, one group, sets of `per_set` claims.
fn single_interchange(claims: usize, per_set: usize, seed: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let shape = Shape {
        claims_per_set: per_set,
        ..Shape::single_interchange()
    };
    generate_837_shaped(&mut buf, true, claims, seed, shape).unwrap();
    buf
}

/// Segments with id `id`.
fn count_id(data: &[u8], id: &[u8]) -> usize {
    data.split(|&b| b == b'~')
        .filter(|s| {
            let s = s.trim_ascii_start();
            s.starts_with(id) && s.get(id.len()) == Some(&b'*')
        })
        .count()
}

/// Replace the first occurrence of `from` (after `after`) with `to`.
fn replace_once(data: &mut Vec<u8>, after: usize, from: &[u8], to: &[u8]) {
    let i = after
        + data[after..]
            .windows(from.len())
            .position(|w| w == from)
            .unwrap_or_else(|| panic!("{} not found", String::from_utf8_lossy(from)));
    data.splice(i..i + from.len(), to.iter().copied());
}

#[test]
fn pieces_cut_between_the_sets_of_one_interchange() {
    // 20 sets of 50 claims in one interchange and one group.
    let mut data = single_interchange(1_000, 50, 3);
    let (isa, gs) = (count_id(&data, b"ISA"), count_id(&data, b"GS"));
    assert_eq!((isa, gs, count_id(&data, b"ST")), (1, 1, 20));
    // Envelope counts that are wrong only when the sets before the cut are counted: GE01 says
    // 21 sets, IEA01 says 2 groups, and the last set's SE01 is one short.
    replace_once(&mut data, 0, b"\nGE*20*", b"\nGE*21*");
    replace_once(&mut data, 0, b"\nIEA*1*", b"\nIEA*2*");
    let last_st = data.windows(4).rposition(|w| w == b"\nST*").unwrap();
    let se = last_st
        + data[last_st..]
            .windows(4)
            .position(|w| w == b"\nSE*")
            .unwrap();
    let digits_end = se + 4 + data[se + 4..].iter().position(|&b| b == b'*').unwrap();
    let se01: u64 = std::str::from_utf8(&data[se + 4..digits_end])
        .unwrap()
        .parse()
        .unwrap();
    data.splice(se + 4..digits_end, (se01 - 1).to_string().bytes());

    let pieces = split_stream(data.as_slice(), 20_000).unwrap();
    assert!(
        pieces.len() > 5,
        "cut between sets: {} pieces",
        pieces.len()
    );
    let inside: Vec<_> = pieces.iter().filter_map(|p| p.resume.as_ref()).collect();
    assert_eq!(
        inside.len(),
        pieces.len() - 1,
        "every piece but the first resumes"
    );
    assert!(pieces[..pieces.len() - 1].iter().all(|p| p.open_end));
    assert!(!pieces.last().unwrap().open_end);
    for (i, e) in inside.iter().enumerate() {
        assert_eq!(e.control, "000000001");
        assert_eq!(e.isa_at, (1, 0));
        assert_eq!(e.groups, 1);
        let g = e.group.as_ref().expect("the group is open at every cut");
        assert_eq!(g.gs_at.0, 2);
        assert!(
            g.sets > 0 && g.sets < 20,
            "piece {i} starts after {} sets",
            g.sets
        );
        assert_eq!(&data[pieces[i + 1].start as usize..][..3], b"ST*");
    }
    for target in [1, 20_000, 100_000] {
        assert_pieces_match(&data, target, "one interchange");
    }
    // The counts are checked across the cuts.
    let (items, summary) = read_all(&data);
    assert_eq!(items.iter().filter(|i| i.is_ok()).count(), 1_000);
    let notices: Vec<&str> = summary.notices.iter().map(|n| n.message.as_str()).collect();
    assert!(
        notices.contains(&"GE01 says 21 transaction sets, group 10 holds 20"),
        "{notices:?}"
    );
    assert!(
        notices.contains(&"IEA01 says 2 functional groups, interchange 000000001 holds 1"),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|n| n.starts_with(&format!("SE01 says {} segments", se01 - 1))),
        "{notices:?}"
    );
    assert_eq!(notices.len(), 3, "{notices:?}");
}

#[test]
fn a_single_interchange_file_is_read_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.837");
    let mut claims = 2_000;
    let data = loop {
        let d = single_interchange(claims, 500, 11);
        if d.len() > 12 * ingest::x12::PIECE_BYTES as usize {
            break d;
        }
        claims *= 2;
    };
    std::fs::write(&path, &data).unwrap();
    let pieces = split_stream(data.as_slice(), ingest::x12::PIECE_BYTES).unwrap();
    assert!(pieces.len() >= 10, "{} pieces", pieces.len());
    let (whole, summary) = read_both_ways(&path);
    assert_eq!(whole.len(), claims);
    assert!(summary.notices.is_empty(), "{:?}", summary.notices);
}

/// A mapped item that counts how many of its kind are alive.
struct Live(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_parallel_read_holds_few_results_however_large_a_piece() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    // Three transaction sets of 16,000 claims: each is one piece, of about 9 MB.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sets.837");
    std::fs::write(&path, single_interchange(48_000, 16_000, 5)).unwrap();
    let pool = two_threads();
    let (live, most) = (Arc::new(AtomicUsize::new(0)), AtomicUsize::new(0));
    let mut claims = 0;
    pool.install(|| {
        read_parallel(
            &path,
            &|item| {
                let n = live.fetch_add(1, SeqCst) + 1;
                most.fetch_max(n, SeqCst);
                (item.is_ok(), Live(live.clone()))
            },
            &mut |(ok, _live)| claims += usize::from(ok),
        )
    })
    .unwrap();
    assert_eq!(claims, 48_000);
    assert_eq!(live.load(SeqCst), 0);
    // The results the caller has taken and not yet dropped and its slot refilled behind them
    // (1,024 each, and a batch over), a budget of 2,048 per thread (and one) for the others
    // (a batch over), a batch of 64 per worker: well under a piece's 16,000.
    let most = most.load(SeqCst);
    assert!(
        most <= 2 * (1_024 + 64) + (3 * 2_048 + 64) + 2 * 64,
        "{most} mapped results held at once"
    );
}

#[test]
fn a_panic_while_mapping_a_piece_does_not_hang_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sets.837");
    std::fs::write(&path, single_interchange(6_000, 1_000, 5)).unwrap();
    // On a thread of its own, so that a hang fails the test instead of stopping the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pool = two_threads();
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                read_parallel(
                    &path,
                    &|_item| {
                        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert!(n != 2_500, "a mapper bug");
                    },
                    &mut |()| {},
                )
            })
        }));
        let _ = tx.send(result.is_err());
    });
    let panicked = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the read hung after a worker panicked");
    assert!(panicked, "the panic reaches the caller");
}

#[test]
fn pieces_of_mutated_inputs_read_like_the_whole() {
    // The samples, and two one-interchange files of several small sets, so that many cuts
    // fall between the sets of an interchange.
    let mut samples: Vec<Vec<u8>> = all_files("good")
        .into_iter()
        .chain(all_files("bad"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    samples.push(single_interchange(12, 3, 1));
    samples.push(single_interchange(8, 1, 2));
    let mut rng = Lcg(0xC0FFEE);
    for case in 0..400 {
        let mut data = Vec::new();
        for _ in 0..2 + rng.below(4) {
            data.extend_from_slice(&samples[rng.below(samples.len())]);
        }
        for _ in 0..rng.below(6) {
            if data.is_empty() {
                break;
            }
            let i = rng.below(data.len());
            match rng.below(3) {
                0 => data[i] = rng.next() as u8,
                1 => data.insert(i, [b'~', b'*', b'\n', b'I'][rng.below(4)]),
                _ => {
                    let b = (i + rng.below(80)).min(data.len());
                    data.drain(i..b);
                }
            }
        }
        let target = 1 + rng.below(3_000) as u64;
        assert_pieces_match(&data, target, &format!("case {case}"));
    }
}

#[test]
fn parallel_read_keeps_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.837");
    let mut buf = Vec::new();
    // Twelve pieces or more, three times as many as two threads keep under way, so that the
    // file is really cut and finished pieces wait for their turn.
    while buf.len() < 12 * ingest::x12::PIECE_BYTES as usize {
        let mut part = Vec::new();
        generate_837(&mut part, buf.len() % 2 == 0, 1_000, buf.len() as u64).unwrap();
        buf.extend_from_slice(&part);
    }
    std::fs::write(&path, &buf).unwrap();
    read_both_ways(&path);
}

/// A generated 837 file of `claims` claims in `dir`, named by its seed.
fn generated_file(dir: &std::path::Path, professional: bool, claims: usize, seed: u64) -> PathBuf {
    let p = dir.join(format!("gen-{seed:03}.837"));
    let mut buf = Vec::new();
    generate_837(&mut buf, professional, claims, seed).unwrap();
    std::fs::write(&p, buf).unwrap();
    p
}

/// What a read of several files gives: each item with its file, and each file's end.
#[derive(Debug, PartialEq)]
enum Seen {
    Item(usize, ingest::Item),
    Done(usize, FileSummary),
}

#[test]
fn many_small_files_are_read_side_by_side_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // Small generated files (each one piece), every sample, good and bad, and one large file
    // cut into pieces, in one list.
    let mut paths: Vec<PathBuf> = (0..24u64)
        .map(|i| generated_file(dir.path(), i % 3 != 0, 150 + i as usize, i))
        .collect();
    paths.extend(all_files("good").into_iter().chain(all_files("bad")));
    let big = dir.path().join("big.837");
    std::fs::write(&big, single_interchange(6_000, 500, 2)).unwrap();
    paths.insert(10, big);
    let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();

    let mut expected = Vec::new();
    for (f, p) in refs.iter().enumerate() {
        let mut items = Vec::new();
        let s = X12Reader.read(p, &mut |i| items.push(i)).unwrap();
        expected.extend(items.into_iter().map(|i| Seen::Item(f, i)));
        expected.push(Seen::Done(f, s));
    }
    let seen = std::sync::Mutex::new(Vec::new());
    two_threads()
        .install(|| {
            read_parallel_files(&refs, &|i| Some(i), &mut |f, event| {
                seen.lock().unwrap().push(match event {
                    FileEvent::Item(i) => Seen::Item(f, i.expect("every item is mapped")),
                    FileEvent::Done(s) => Seen::Done(f, s),
                });
                ControlFlow::Continue(())
            })
        })
        .unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), expected.len());
    assert!(
        seen == expected,
        "the files' items, in order, each file's end after them"
    );
}

#[test]
fn a_file_that_cannot_be_read_stops_the_read_of_several_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths: Vec<PathBuf> = (0..6)
        .map(|i| generated_file(dir.path(), true, 100, i))
        .collect();
    paths[3] = dir.path().join("missing.837");
    let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    let mut finished = Vec::new();
    let err = two_threads()
        .install(|| {
            read_parallel_files(&refs, &|_| (), &mut |f, event| {
                if let FileEvent::Done(_) = event {
                    finished.push(f);
                }
                ControlFlow::Continue(())
            })
        })
        .unwrap_err();
    assert!(
        matches!(&err, ingest::Error::Io { path, .. } if path.ends_with("missing.837")),
        "{err:?}"
    );
    assert_eq!(finished, [0, 1, 2], "the files before it were read whole");
}

#[test]
fn a_read_of_several_files_stops_where_the_caller_says() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..12)
        .map(|i| generated_file(dir.path(), true, 2_000, i))
        .collect();
    let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mapped = std::sync::atomic::AtomicUsize::new(0);
        let mut taken = Vec::new();
        pool.install(|| {
            read_parallel_files(
                &refs,
                &|_| {
                    mapped.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                },
                &mut |f, event| {
                    if let FileEvent::Item(()) = event {
                        taken.push(f);
                    }
                    // The caller fails on the 2,500th record (file 1).
                    if taken.len() == 2_500 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )
        })
        .unwrap();
        assert_eq!(
            taken.len(),
            2_500,
            "{threads} threads: nothing after the stop"
        );
        assert_eq!(taken.last(), Some(&1));
        // The workers stop too: what they mapped ahead is bounded (about 8,500 results), far
        // from the 24,000 records of the files.
        let mapped = mapped.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            mapped < 12_000,
            "{threads} threads: {mapped} records mapped"
        );
    }
}

// ---- Reads in small pieces: the tokenizer's general path and its byte (non-UTF-8) buffers. ----

/// A reader that hands out 1 to 40 bytes per call, so that segments straddle buffer refills
/// and many reads end inside a multi-byte character.
struct Dribble<'a> {
    data: &'a [u8],
    state: u64,
}

impl std::io::Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = (1 + (self.state >> 33) as usize % 40)
            .min(buf.len())
            .min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn assert_dribble_matches(data: &[u8], what: &str) {
    let (whole, ws) = read_all(data);
    let mut items = Vec::new();
    let ds = ingest::x12::read_stream(
        "mem",
        Dribble {
            data,
            state: data.len() as u64,
        },
        &mut |item| items.push(item),
    )
    .unwrap();
    assert_eq!(ws, ds, "{what}: summaries differ");
    assert_eq!(whole, items, "{what}: items differ");
}

#[test]
fn small_reads_read_like_one_read() {
    for p in all_files("good").into_iter().chain(all_files("bad")) {
        let data = std::fs::read(&p).unwrap();
        assert_dribble_matches(&data, &p.display().to_string());
    }
    let mut data = Vec::new();
    generate_837(&mut data, true, 300, 5).unwrap();
    assert_dribble_matches(&data, "generated");
}

#[test]
fn non_ascii_text_and_invalid_bytes() {
    let isa = "ISA*00*          *00*          *ZZ*SUBMITTER      *ZZ*RECEIVER       *240101*1200*^*00501*000000001*0*P*:~";
    let body = |family: &[u8]| {
        let mut x = Vec::new();
        x.extend_from_slice(isa.as_bytes());
        x.extend_from_slice(b"GS*HC*S*R*20240101*1200*1*X*005010X222A1~ST*837*0001*005010X222A1~BHT*0019*00*1*20240101*1200*CH~NM1*41*2*SUB*****46*S1~NM1*40*2*REC*****46*R1~HL*1**20*1~NM1*85*2*CLINIC*****XX*1234567893~");
        x.extend_from_slice(b"HL*2*1*22*0~SBR*P*18*GRP1******CI~NM1*IL*1*");
        x.extend_from_slice(family);
        x.extend_from_slice(b"*JOS\xC3\x89****MI*M1~NM1*PR*2*PAYER*****PI*P1~CLM*A1*10***11:B:1*Y*A*Y*Y~HI*ABK:I10~LX*1~SV1*HC:99213*10*UN*1***1~SE*1*0001~GE*1*1~IEA*1*000000001~");
        x
    };
    // Valid UTF-8 (the buffer is text), and a lone byte that is not (the buffer is bytes).
    let ok = body("MÜLLER".as_bytes());
    let (claims, rejects, _) = collect(&ok);
    assert!(rejects.is_empty(), "{rejects:?}");
    let m = claims[0].member.as_ref().unwrap();
    assert_eq!(m.family.as_deref(), Some("MÜLLER"));
    assert_eq!(m.given, ["JOSÉ"]);
    let bad = body(b"M\xFCLLER");
    let (claims, rejects, _) = collect(&bad);
    assert!(rejects.is_empty(), "{rejects:?}");
    let m = claims[0].member.as_ref().unwrap();
    assert_eq!(m.family.as_deref(), Some("M\u{FFFD}LLER"));
    assert_eq!(
        m.given,
        ["JOSÉ"],
        "the other segments are still read as text"
    );
    assert_dribble_matches(&ok, "utf-8 names");
    // Byte-order marks after line breaks and indentation between segments (a concatenation
    // of files saved with BOMs): skipped wherever the reads end.
    let mut boms = Vec::new();
    for (i, seg) in ok.split_inclusive(|&b| b == b'~').enumerate() {
        boms.extend_from_slice(seg);
        if i % 3 == 1 {
            boms.extend_from_slice(b"\r\n  \xEF\xBB\xBF");
        }
    }
    let (claims, rejects, _) = collect(&boms);
    assert!(rejects.is_empty(), "{rejects:?}");
    assert_eq!(claims.len(), 1);
    assert_dribble_matches(&boms, "byte-order marks after whitespace");
    assert_dribble_matches(&bad, "invalid byte");
}
