//! CMS Part D basic drugs formulary file through `mappings/cms-partd-formulary.toml` and the
//! generic delimited reader: the synthetic sample in `samples/formulary/partd/`, the broken
//! fixture `tests/fixtures/partd-broken.txt`, and an old (11-column) layout.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ingest::delimited::DelimitedReader;
use ingest::detect::{detect, Format};
use ingest::layout::Mapping;
use ingest::model::{Change, FormularyDrug};
use ingest::{Item, Reader, Reason, Reject, SourceRecord, Stage};

fn root() -> PathBuf {
    crate::manifest_dir().join("../..")
}

fn mapping() -> Arc<Mapping> {
    Arc::new(
        Mapping::load(&root().join("mappings/cms-partd-formulary.toml")).expect("mapping loads"),
    )
}

fn read(path: &Path) -> (Vec<FormularyDrug>, Vec<Reject>) {
    let mut items: Vec<Item> = Vec::new();
    DelimitedReader::new(mapping())
        .read(path, &mut |i| items.push(i))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut drugs = Vec::new();
    let mut rejects = Vec::new();
    for i in items {
        match i {
            Ok(SourceRecord::FormularyDrug(d)) => drugs.push(*d),
            Ok(other) => panic!("unexpected record {other:?}"),
            Err(r) => rejects.push(r),
        }
    }
    (drugs, rejects)
}

fn sample() -> PathBuf {
    root().join("samples/formulary/partd/basic-formulary.txt")
}

fn find<'a>(drugs: &'a [FormularyDrug], formulary: &str, rxcui: &str) -> &'a FormularyDrug {
    drugs
        .iter()
        .find(|d| d.formulary_id == formulary && d.rxnorm == rxcui)
        .unwrap_or_else(|| panic!("{formulary}/{rxcui} not read"))
}

#[test]
fn sample_is_detected_as_partd_and_no_other_mapping_claims_it() {
    let all: Vec<Arc<Mapping>> = Mapping::load_dir(&root().join("mappings"))
        .expect("mappings load")
        .into_iter()
        .map(Arc::new)
        .collect();
    match detect(&sample(), &all).expect("detected") {
        Format::Delimited(m) => assert_eq!(m.source.name, "cms-partd-formulary"),
        other => panic!("detected as {other:?}"),
    }
    // The Part D detect columns are its own: no other mapping matches its header, and the
    // Part D mapping matches no other mapping's detect set.
    let partd = mapping();
    let header: Vec<String> = partd.source.detect.clone();
    for m in &all {
        if m.source.name == "cms-partd-formulary" {
            continue;
        }
        assert!(!m.matches_header(&header), "{} also matches", m.source.name);
        assert!(
            !partd.matches_header(&m.source.detect),
            "matches {}",
            m.source.name
        );
    }
}

#[test]
fn sample_reads_every_row() {
    let (drugs, rejects) = read(&sample());
    assert!(rejects.is_empty(), "{rejects:#?}");
    assert_eq!(drugs.len(), 12);
    assert_eq!(
        drugs
            .iter()
            .filter(|d| d.formulary_id == "00099901")
            .count(),
        6
    );
    assert_eq!(
        drugs
            .iter()
            .filter(|d| d.formulary_id == "00099902")
            .count(),
        6
    );
    // every row: one NDC, a PDex tier, Y/N flags read as booleans, upsert, file position
    for (i, d) in drugs.iter().enumerate() {
        assert_eq!(d.ndcs.len(), 1, "{d:?}");
        assert_eq!(d.ndcs[0].len(), 11);
        assert!(d.tier.is_some());
        assert!(d.prior_auth.is_some() && d.step_therapy.is_some());
        assert!(d.quantity_limit.is_some() && d.selected_drug.is_some());
        assert_eq!(d.contract_year.as_deref(), Some("2026"));
        assert_eq!(d.change, Change::Upsert);
        assert_eq!(d.position.line, i as u64 + 2, "header is line 1");
        assert!(d.position.file.ends_with("basic-formulary.txt"));
    }

    let azi = find(&drugs, "00099901", "248656");
    assert_eq!(azi.formulary_version.as_deref(), Some("13"));
    assert_eq!(azi.ndcs, ["99999000001"]);
    assert_eq!(azi.tier.as_deref(), Some("preferred-generic"));
    assert_eq!(azi.quantity_limit, Some(true));
    assert_eq!(azi.quantity_limit_amount.as_deref(), Some("6"));
    assert_eq!(azi.quantity_limit_days.as_deref(), Some("30"));
    assert_eq!(azi.quantity_limit_type.as_deref(), Some("OVER_TIME"));
    assert_eq!(azi.prior_auth, Some(false));
    assert_eq!(azi.step_therapy, Some(false));
    assert_eq!(azi.selected_drug, Some(false));

    // blank amounts as a single space read as absent
    let levlen = find(&drugs, "00099901", "753532");
    assert_eq!(levlen.tier.as_deref(), Some("generic"));
    assert_eq!(levlen.quantity_limit, Some(false));
    assert_eq!(levlen.quantity_limit_amount, None);
    assert_eq!(levlen.quantity_limit_days, None);

    let percocet = find(&drugs, "00099901", "1049640");
    assert_eq!(percocet.tier.as_deref(), Some("non-preferred-brand"));
    assert_eq!(percocet.prior_auth, Some(true));
    assert_eq!(percocet.quantity_limit_amount.as_deref(), Some("180"));
    let percocet2 = find(&drugs, "00099902", "1049640");
    assert_eq!(percocet2.formulary_version.as_deref(), Some("8"));
    assert_eq!(percocet2.tier.as_deref(), Some("preferred-brand"));
    assert_eq!(percocet2.quantity_limit_amount.as_deref(), Some("120.5"));

    assert_eq!(find(&drugs, "00099901", "284520").step_therapy, Some(true));
    let doxepin = find(&drugs, "00099901", "1000091");
    assert_eq!(doxepin.tier.as_deref(), Some("specialty"));
    assert_eq!(doxepin.selected_drug, Some(true));

    // the whole tier table, 1..7, as the mapping documents it
    let tiers: Vec<(&str, &str)> = drugs
        .iter()
        .map(|d| (d.formulary_id.as_str(), d.tier.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        tiers,
        [
            ("00099901", "preferred-generic"),
            ("00099901", "generic"),
            ("00099901", "preferred-brand"),
            ("00099901", "non-preferred-brand"),
            ("00099901", "non-preferred-brand"),
            ("00099901", "specialty"),
            ("00099902", "generic"),
            ("00099902", "zero-cost-share-preventative"),
            ("00099902", "preferred-generic"),
            ("00099902", "preferred-brand"),
            ("00099902", "specialty"),
            ("00099902", "non-preferred-brand"),
        ]
    );
    // nothing the file does not carry is invented
    assert!(drugs.iter().all(|d| d.drug_name.is_none()
        && d.formulary_name.is_none()
        && d.pharmacy_benefit_types.is_empty()
        && d.excluded_drug.is_none()
        && d.indications.is_empty()));
}

#[test]
fn broken_rows_are_rejected_precisely_and_good_rows_survive() {
    let (drugs, rejects) = read(&root().join("tests/fixtures/partd-broken.txt"));
    let kept: Vec<(&str, u64)> = drugs
        .iter()
        .map(|d| (d.rxnorm.as_str(), d.position.line))
        .collect();
    assert_eq!(kept, [("248656", 2), ("1000091", 7)]);
    let got: Vec<(Reason, Stage, u64, &str)> = rejects
        .iter()
        .map(|r| (r.reason, r.stage, r.position.line, r.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                Reason::UnknownCode,
                Stage::Validate,
                3,
                "TIER_LEVEL_VALUE: code \"9\" is not in table \"tier\""
            ),
            (
                Reason::MissingValue,
                Stage::Validate,
                4,
                "rxnorm (RXCUI) is empty"
            ),
            (
                Reason::FieldCount,
                Stage::Parse,
                5,
                "line 5: 11 fields where the header has 12"
            ),
            (
                Reason::UnknownCode,
                Stage::Validate,
                6,
                "QUANTITY_LIMIT_YN: code \"X\" is not in table \"yn\""
            ),
        ]
    );
    // each reject keeps its raw row
    assert_eq!(
        rejects[0].raw,
        "00099901|13|2026|753532|99999010202|9|N|||N|N|N"
    );
    assert!(rejects
        .iter()
        .all(|r| r.position.file.ends_with("partd-broken.txt")));
}

#[test]
fn older_files_without_selected_drug_column_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir
        .path()
        .join("basic drugs formulary file  PPUF_2022Q4.txt");
    std::fs::write(
        &path,
        "FORMULARY_ID|FORMULARY_VERSION|CONTRACT_YEAR|RXCUI|NDC|TIER_LEVEL_VALUE|QUANTITY_LIMIT_YN|QUANTITY_LIMIT_AMOUNT|QUANTITY_LIMIT_DAYS|PRIOR_AUTHORIZATION_YN|STEP_THERAPY_YN\n\
         00099901|5|2022|248656|99999000001|01|Y|6|30|N|N\n\
         00099901|5|2022|209459|99999010303|3|N|||N|N\n",
    )
    .expect("write");
    let (drugs, rejects) = read(&path);
    assert!(rejects.is_empty(), "{rejects:#?}");
    assert_eq!(drugs.len(), 2);
    assert_eq!(
        drugs[0].tier.as_deref(),
        Some("preferred-generic"),
        "01 is tier 1"
    );
    assert_eq!(drugs[0].contract_year.as_deref(), Some("2022"));
    assert!(drugs.iter().all(|d| d.selected_drug.is_none()));

    // a file that lacks a required column is a mapping error, not a silent gap
    std::fs::write(
        &path,
        "FORMULARY_ID|FORMULARY_VERSION|CONTRACT_YEAR|RXCUI|NDC|QUANTITY_LIMIT_YN|QUANTITY_LIMIT_AMOUNT|QUANTITY_LIMIT_DAYS|PRIOR_AUTHORIZATION_YN|STEP_THERAPY_YN\n\
         00099901|5|2022|248656|99999000001|N|||N|N\n",
    )
    .expect("write");
    let err = DelimitedReader::new(mapping())
        .read(&path, &mut |_| {})
        .expect_err("TIER_LEVEL_VALUE missing");
    assert!(err.to_string().contains("TIER_LEVEL_VALUE"), "{err}");
}

#[test]
fn rows_with_invalid_utf8_are_rejected_with_their_field_and_the_rest_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir
        .path()
        .join("basic drugs formulary file  PPUF_2026Q1.txt");
    let header = "FORMULARY_ID|FORMULARY_VERSION|CONTRACT_YEAR|RXCUI|NDC|TIER_LEVEL_VALUE|QUANTITY_LIMIT_YN|QUANTITY_LIMIT_AMOUNT|QUANTITY_LIMIT_DAYS|PRIOR_AUTHORIZATION_YN|STEP_THERAPY_YN\n";
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(b"00099901|5|2026|248656|99999000001|1|Y|6|30|N|N\n");
    // line 3: a lone continuation byte in the 4th field
    bytes.extend_from_slice(b"00099901|5|2026|2\x8059|99999000002|1|Y|6|30|N|N\n");
    // line 4: "é" (C3 A9) cut in two by the delimiter: the row's bytes without the
    // delimiters are valid UTF-8, fields 4 and 5 are not
    bytes.extend_from_slice(b"00099901|5|2026|1\xc3|\xa999000003|1|Y|6|30|N|N\n");
    // line 5: a multi-byte character inside a field is read as it is
    bytes.extend_from_slice("00099901|5é|2026|209459|99999000004|1|Y|6|30|N|N\n".as_bytes());
    std::fs::write(&path, bytes).expect("write");
    let (drugs, rejects) = read(&path);
    assert_eq!(
        drugs.iter().map(|d| d.rxnorm.as_str()).collect::<Vec<_>>(),
        ["248656", "209459"]
    );
    assert!(
        format!("{:?}", drugs[1]).contains("\"5é\""),
        "{:?}",
        drugs[1]
    );
    assert_eq!(rejects.len(), 2, "{rejects:#?}");
    for (r, line, field) in [(&rejects[0], 3, 4), (&rejects[1], 4, 4)] {
        assert_eq!(r.reason, Reason::Encoding);
        assert_eq!(r.stage, Stage::Parse);
        assert_eq!(r.position.line, line);
        assert!(
            r.message.contains(&format!("field {field}: invalid UTF-8")),
            "{}",
            r.message
        );
        assert!(
            r.raw.ends_with("|Y|6|30|N|N"),
            "the raw row is kept: {}",
            r.raw
        );
    }
}
