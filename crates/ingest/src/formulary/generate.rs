//! A deterministic generator of formulary XML extracts, for benchmarks and load tests.

use std::io::{self, Write};

/// SplitMix64: small, fast, and the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const TIERS: &[(u8, &str)] = &[
    (1, "PREFERRED-GENERIC"),
    (2, "GENERIC"),
    (3, "PREFERRED-BRAND"),
    (4, "NON-PREFERRED-BRAND"),
    (5, "SPECIALTY"),
];

const FORMS: &[&str] = &[
    "Oral Tablet",
    "Oral Capsule",
    "Injectable Solution",
    "Topical Cream",
    "Oral Solution",
];

/// Write a valid extract with `formularies` formularies of `drugs` drugs each (plus two plans
/// and five tiers per formulary) to `w`. The same `seed` gives the same bytes. About 1 in 5
/// drugs has a quantity limit; 1 in 20 is a `DEL`.
///
/// # Errors
/// Errors of `w`.
pub fn generate_extract<W: Write>(
    mut w: W,
    formularies: u32,
    drugs: u32,
    seed: u64,
) -> io::Result<()> {
    let mut rng = Rng(seed);
    writeln!(w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>")?;
    writeln!(
        w,
        "<FormularyExtract xmlns=\"urn:example:payer:formulary-extract:1\" schemaVersion=\"1.0\">"
    )?;
    writeln!(
        w,
        "  <Header>\n    <SenderId>GENERATOR</SenderId>\n    <ReceiverId>BENCH</ReceiverId>\n    <FileControlNumber>{seed:09}</FileControlNumber>\n    <ExtractTimestamp>2026-05-31T02:00:00Z</ExtractTimestamp>\n    <ExtractType>FULL</ExtractType>\n    <ContractYear>2026</ContractYear>\n  </Header>"
    )?;
    for f in 0..formularies {
        writeln!(w, "  <Formulary>")?;
        writeln!(w, "    <FormularyId>{:08}</FormularyId>", 26000 + f)?;
        writeln!(
            w,
            "    <FormularyVersion>{}</FormularyVersion>",
            1 + rng.below(40)
        )?;
        writeln!(w, "    <ContractYear>2026</ContractYear>")?;
        writeln!(w, "    <EffectiveDate>2026-01-01</EffectiveDate>")?;
        writeln!(
            w,
            "    <Plan><ContractId>H{:04}</ContractId><PlanId>{:03}</PlanId><SegmentId>000</SegmentId></Plan>",
            f % 10000,
            1 + f % 999
        )?;
        writeln!(
            w,
            "    <Plan><ContractId>S{:04}</ContractId><PlanId>{:03}</PlanId></Plan>",
            f % 10000,
            1 + f % 999
        )?;
        for (level, label) in TIERS {
            writeln!(
                w,
                "    <TierDefinition><TierLevelValue>{level}</TierLevelValue><TierLabel>{label}</TierLabel><SpecialtyTierYN>{}</SpecialtyTierYN></TierDefinition>",
                if *level == 5 { 'Y' } else { 'N' }
            )?;
        }
        for d in 0..drugs {
            let rxcui = 100_000 + u64::from(d) * 7 + rng.below(7);
            if rng.below(20) == 0 {
                writeln!(
                    w,
                    "    <Drug changeType=\"DEL\">\n      <RxCUI>{rxcui}</RxCUI>\n    </Drug>"
                )?;
                continue;
            }
            let change = if rng.below(4) == 0 { "UPD" } else { "ADD" };
            writeln!(w, "    <Drug changeType=\"{change}\">")?;
            writeln!(w, "      <RxCUI>{rxcui}</RxCUI>")?;
            for _ in 0..rng.below(3) {
                writeln!(w, "      <NDC>{:011}</NDC>", rng.below(99_999_999_999))?;
            }
            let form = FORMS[rng.below(FORMS.len() as u64) as usize];
            writeln!(
                w,
                "      <DrugName>drug {rxcui} {} MG {form}</DrugName>",
                5 * (1 + rng.below(100))
            )?;
            writeln!(
                w,
                "      <TierLevelValue>{}</TierLevelValue>",
                1 + rng.below(5)
            )?;
            let yn = |b: bool| if b { 'Y' } else { 'N' };
            writeln!(
                w,
                "      <PriorAuthorizationYN>{}</PriorAuthorizationYN>",
                yn(rng.below(6) == 0)
            )?;
            writeln!(
                w,
                "      <StepTherapyYN>{}</StepTherapyYN>",
                yn(rng.below(10) == 0)
            )?;
            if rng.below(5) == 0 {
                writeln!(w, "      <QuantityLimitYN>Y</QuantityLimitYN>")?;
                writeln!(w, "      <QuantityLimitType>OVER_TIME</QuantityLimitType>")?;
                writeln!(
                    w,
                    "      <QuantityLimitAmount>{}</QuantityLimitAmount>",
                    1 + rng.below(180)
                )?;
                writeln!(w, "      <QuantityLimitDays>30</QuantityLimitDays>")?;
            } else {
                writeln!(w, "      <QuantityLimitYN>N</QuantityLimitYN>")?;
            }
            writeln!(
                w,
                "      <SelectedDrugYN>{}</SelectedDrugYN>",
                yn(rng.below(100) == 0)
            )?;
            writeln!(w, "    </Drug>")?;
        }
        writeln!(w, "  </Formulary>")?;
    }
    writeln!(
        w,
        "  <Trailer>\n    <FormularyCount>{formularies}</FormularyCount>\n    <DrugRecordCount>{}</DrugRecordCount>\n  </Trailer>",
        u64::from(formularies) * u64::from(drugs)
    )?;
    writeln!(w, "</FormularyExtract>")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formulary::FormularyXmlReader;

    #[test]
    fn generated_extracts_are_deterministic_and_clean() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        generate_extract(&mut a, 3, 50, 7).expect("write");
        generate_extract(&mut b, 3, 50, 7).expect("write");
        assert_eq!(a, b);
        let mut drugs = 0;
        let mut plans = 0;
        let summary = FormularyXmlReader::new()
            .read_from("gen.xml", a.as_slice(), &mut |i| match i {
                Ok(crate::SourceRecord::FormularyDrug(_)) => drugs += 1,
                Ok(crate::SourceRecord::FormularyPlan(_)) => plans += 1,
                other => panic!("{other:?}"),
            })
            .expect("reads");
        assert_eq!((drugs, plans), (150, 6));
        assert!(summary.notices.is_empty(), "{:?}", summary.notices);
    }
}
