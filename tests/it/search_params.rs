//! Each search parameter of the registry against the sample lake, with exact result ids.

use crate::common::{ids, sample_lake, Server};

fn eob(ids: &[&str]) -> Vec<String> {
    ids.iter()
        .map(|i| format!("ExplanationOfBenefit/{i}"))
        .collect()
}

#[test]
fn every_parameter_selects_exactly_what_it_should() {
    let lake = sample_lake();
    let s = Server::start(lake.path());
    let t = s.token("567834", "patient/*.rs");
    let q = |query: &str| -> Vec<String> {
        let (st, b) = s.get(query, Some(&t));
        assert_eq!(st, 200, "{query}: {b}");
        let mut v = ids(&b, "match");
        v.sort();
        v
    };
    let all = [
        "inpatient-333333222222",
        "outpatient-1234567890",
        "pharmacy-89",
        "professional-9991831999",
    ];

    // _id, with OR.
    assert_eq!(
        q("ExplanationOfBenefit?_id=pharmacy-89,inpatient-333333222222"),
        eob(&["inpatient-333333222222", "pharmacy-89"])
    );
    // references: Type/id, bare id across target types, and AND of two parameters.
    assert_eq!(
        q("ExplanationOfBenefit?coverage=Coverage/567834-part-b"),
        eob(&["outpatient-1234567890", "professional-9991831999"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?insurer=Organization/payer-CMS"),
        eob(&all)
    );
    assert_eq!(
        q("ExplanationOfBenefit?provider=npi-1023011079"),
        eob(&["pharmacy-89"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?provider=Organization/cms-provider-number-777776"),
        eob(&["inpatient-333333222222"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?care-team=Practitioner/npi-8765676"),
        eob(&["professional-9991831999"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?care-team=npi-161999999&coverage=Coverage/567834-part-a"),
        eob(&["inpatient-333333222222"])
    );
    assert!(
        q("ExplanationOfBenefit?care-team=npi-161999999&coverage=Coverage/567834-part-b")
            .is_empty()
    );
    // tokens: code, system|code, system|, |code, :not, :missing.
    assert_eq!(q("ExplanationOfBenefit?type=http://terminology.hl7.org/CodeSystem/claim-type|institutional"), eob(&["inpatient-333333222222", "outpatient-1234567890"]));
    assert_eq!(
        q("ExplanationOfBenefit?type:not=pharmacy"),
        eob(&[
            "inpatient-333333222222",
            "outpatient-1234567890",
            "professional-9991831999"
        ])
    );
    assert_eq!(
        q("ExplanationOfBenefit?identifier=https://fhirlake.example.org/fhir/sid/claim-id|"),
        eob(&all)
    );
    assert!(
        q("ExplanationOfBenefit?identifier=|professional-9991831999").is_empty(),
        "the identifier has a system"
    );
    assert_eq!(
        q("ExplanationOfBenefit?identifier=9991831999"),
        Vec::<String>::new()
    );
    assert_eq!(
        q("ExplanationOfBenefit?identifier=74655592568216"),
        eob(&["professional-9991831999"])
    );
    assert_eq!(q("ExplanationOfBenefit?payee:missing=true"), eob(&all));
    assert!(q("ExplanationOfBenefit?payee:missing=false").is_empty());
    // dates: precision, prefixes, periods.
    assert_eq!(
        q("ExplanationOfBenefit?billable-period-start=2016-01-15"),
        eob(&["inpatient-333333222222"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?billable-period-start=2016"),
        eob(&["inpatient-333333222222"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?service-start-date=le2000"),
        eob(&["outpatient-1234567890", "professional-9991831999"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?service-date=sa2015-12-31"),
        eob(&["inpatient-333333222222"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?service-date=eb2000-01-01"),
        eob(&["professional-9991831999"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?service-date=2015-05-12"),
        eob(&["pharmacy-89"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?service-date=ne2015-05-12&type=pharmacy,professional"),
        eob(&["professional-9991831999"])
    );
    // ap: within 10% of the distance from now (about a year here), so January 2016 is near.
    assert_eq!(
        q("ExplanationOfBenefit?service-date=ap2015-05-12"),
        eob(&["inpatient-333333222222", "pharmacy-89"])
    );
    assert_eq!(
        q("ExplanationOfBenefit?service-date=ap1999-10-27"),
        eob(&["outpatient-1234567890", "professional-9991831999"])
    );
    // Coverage.
    let cov = [
        "Coverage/567834-part-a",
        "Coverage/567834-part-b",
        "Coverage/567834-part-d",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(q("Coverage?patient=567834"), cov);
    assert_eq!(q("Coverage?beneficiary=Patient/567834"), cov);
    assert_eq!(q("Coverage?payor=Organization/payer-CMS"), cov);
    assert_eq!(
        q("Coverage?_id=567834-part-d"),
        vec!["Coverage/567834-part-d".to_string()]
    );
    // identifiers of Patient, Organization, Practitioner.
    assert_eq!(
        q("Patient?identifier=http://hl7.org/fhir/sid/us-mbi|3456789"),
        vec!["Patient/567834".to_string()]
    );
    assert_eq!(
        q("Organization?identifier=1023011079"),
        vec!["Organization/npi-1023011079".to_string()]
    );
    assert_eq!(
        q("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1750384806"),
        vec!["Practitioner/npi-1750384806".to_string()]
    );
    assert_eq!(
        q("Organization?_id=payer-CMS"),
        vec!["Organization/payer-CMS".to_string()]
    );
    // The US Core Patient parameters (John Doe, male, born 1981-03-17), confined to the
    // token's member: another member's name finds nothing.
    let john = vec!["Patient/567834".to_string()];
    let none: Vec<String> = Vec::new();
    for (query, want) in [
        ("Patient?name=doe", &john),
        ("Patient?name=JOHN", &john),
        ("Patient?name:contains=oh", &john),
        ("Patient?family=doe&given=john", &john),
        ("Patient?family:exact=Doe", &john),
        ("Patient?family:exact=DOE", &none),
        ("Patient?given=a", &john),
        ("Patient?name=smith", &none),
        ("Patient?gender=male", &john),
        (
            "Patient?gender=http://hl7.org/fhir/administrative-gender|male",
            &john,
        ),
        ("Patient?gender=female", &none),
        ("Patient?gender=http://example.org/other|male", &none),
        ("Patient?birthdate=1981-03-17", &john),
        ("Patient?birthdate=1981", &john),
        ("Patient?birthdate=lt1981-03-17", &none),
        ("Patient?birthdate=ge1981-03-17&name=doe", &john),
    ] {
        assert_eq!(&q(query), want, "{query}");
    }
}
