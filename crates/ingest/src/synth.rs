//! Deterministic synthetic extracts at any scale, for benchmarks and load tests.
//!
//! Delimited layouts are generated from a template: a real sample file's header and first data
//! row, with the business keys, dates, codes and amounts varied per row. Every other column
//! keeps the sample's value, so the files have the real width and shape (a CMS RIF carrier row
//! has 100 columns). X12 and formulary generators live with their readers.

use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

/// A small deterministic PRNG (SplitMix64): same seed, same file.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One of the items.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// A template: header names and one data row of a sample file.
#[derive(Debug, Clone)]
pub struct Template {
    /// The delimiter.
    pub delimiter: u8,
    /// Column names.
    pub header: Vec<String>,
    /// The sample row's values.
    pub row: Vec<String>,
}

impl Template {
    /// Read the header and first data row of a delimited file (BOM stripped, unquoted).
    ///
    /// # Errors
    /// When the file cannot be read or has no data row.
    pub fn load(path: &Path, delimiter: u8) -> io::Result<Self> {
        let mut lines = BufReader::new(std::fs::File::open(path)?).lines();
        let split = |l: &str| -> Vec<String> {
            l.trim_start_matches('\u{feff}')
                .split(delimiter as char)
                .map(str::to_string)
                .collect()
        };
        let header = split(&lines.next().transpose()?.unwrap_or_default());
        let row = split(&lines.next().transpose()?.unwrap_or_default());
        if row.len() < header.len() {
            return Err(io::Error::other(format!(
                "{}: no data row of the header's width",
                path.display()
            )));
        }
        Ok(Self {
            delimiter,
            header,
            row,
        })
    }

    fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    fn write_header(&self, w: &mut impl Write) -> io::Result<u64> {
        let line = self.header.join(&(self.delimiter as char).to_string());
        writeln!(w, "{line}")?;
        Ok(line.len() as u64 + 1)
    }

    fn write_row(&self, w: &mut impl Write, row: &[String]) -> io::Result<u64> {
        let line = row.join(&(self.delimiter as char).to_string());
        writeln!(w, "{line}")?;
        Ok(line.len() as u64 + 1)
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const HCPCS: [&str; 8] = [
    "99213", "99214", "99203", "80053", "85025", "93000", "71046", "G0439",
];
const ICD10: [&str; 8] = [
    "E119", "I10", "J069", "M545", "R05", "Z0000", "K219", "F419",
];
const SURNAMES: [&str; 8] = [
    "Doe", "Smith", "García", "Nguyen", "Okafor", "Kowalski", "Haddad", "Ito",
];
const GIVEN: [&str; 8] = [
    "John", "Ana", "Wei", "Maria", "Sam", "Noor", "Luis", "Grace",
];

fn money(rng: &mut Rng, max_cents: u64) -> String {
    let c = rng.below(max_cents);
    format!("{}.{:02}", c / 100, c % 100)
}

/// RIF beneficiaries: one row per member, from a beneficiary template.
///
/// # Errors
/// On write errors.
pub fn rif_beneficiaries(
    t: &Template,
    w: &mut impl Write,
    members: usize,
    seed: u64,
) -> io::Result<u64> {
    let mut rng = Rng::new(seed);
    let mut n = t.write_header(w)?;
    let mut row = t.row.clone();
    let set = |row: &mut Vec<String>, name: &str, v: String| {
        if let Some(i) = t.col(name) {
            row[i] = v;
        }
    };
    for m in 0..members {
        set(&mut row, "DML_IND", "INSERT".into());
        set(&mut row, "BENE_ID", format!("-{}", 10_000_000 + m));
        set(&mut row, "MBI_NUM", format!("{}S{:07}", 1 + m % 9, m));
        set(&mut row, "BENE_SRNM_NAME", rng.pick(&SURNAMES).to_string());
        set(&mut row, "BENE_GVN_NAME", rng.pick(&GIVEN).to_string());
        set(
            &mut row,
            "BENE_BIRTH_DT",
            format!(
                "{:02}-{}-{}",
                1 + rng.below(28),
                MONTHS[rng.below(12) as usize],
                1930 + rng.below(60)
            ),
        );
        set(
            &mut row,
            "BENE_SEX_IDENT_CD",
            (1 + rng.below(2)).to_string(),
        );
        n += t.write_row(w, &row)?;
    }
    Ok(n)
}

/// How a column of a generated RIF claim file is filled, per claim or per line.
#[derive(Debug, Clone, Copy)]
pub enum Fill {
    /// The member's `BENE_ID` (the members of [`rif_beneficiaries`]).
    Member,
    /// The claim's id: `-` and this base plus the claim's number (1-based).
    ClaimId(u64),
    /// The line's number within its claim (1-based).
    LineNumber,
    /// The claim's first date of service.
    From,
    /// The claim's last date of service (the first plus the stay).
    Thru,
    /// The claim's principal diagnosis (one ICD-10-CM code per claim).
    Diagnosis,
    /// One of these values.
    Pick(&'static [&'static str]),
    /// An amount below this many cents.
    Money(u64),
    /// The NPI of one of a thousand practitioners, with a valid check digit.
    Npi,
    /// The NPI of one of a hundred facilities or pharmacies (never a practitioner's).
    OrgNpi,
    /// A whole number in `lo..=hi`.
    Number(u64, u64),
}

/// The shape of a generated RIF claim file: which template columns vary per claim and per line.
#[derive(Debug, Clone, Copy)]
pub struct ClaimShape {
    /// Columns set once per claim.
    pub claim: &'static [(&'static str, Fill)],
    /// Columns set on each line.
    pub line: &'static [(&'static str, Fill)],
    /// Lines per claim are 1 to this many.
    pub max_lines: u64,
    /// The last date of service is 0 to this many days after the first.
    pub max_stay_days: u64,
}

/// RIF carrier (professional) claims: 1–4 lines.
pub const CARRIER: ClaimShape = ClaimShape {
    claim: &[
        ("BENE_ID", Fill::Member),
        ("CLM_ID", Fill::ClaimId(300_000_000)),
        ("CLM_FROM_DT", Fill::From),
        ("CLM_THRU_DT", Fill::Thru),
        ("PRNCPAL_DGNS_CD", Fill::Diagnosis),
        ("ICD_DGNS_CD1", Fill::Diagnosis),
    ],
    line: &[
        ("LINE_NUM", Fill::LineNumber),
        ("HCPCS_CD", Fill::Pick(&HCPCS)),
        ("LINE_NCH_PMT_AMT", Fill::Money(20_000)),
        ("LINE_SBMTD_CHRG_AMT", Fill::Money(40_000)),
        ("LINE_ALOWD_CHRG_AMT", Fill::Money(30_000)),
    ],
    max_lines: 4,
    max_stay_days: 0,
};

const REVENUE: [&str; 6] = ["0120", "0250", "0300", "0450", "0636", "0730"];
const DRG: [&str; 6] = ["193", "291", "375", "470", "690", "871"];
const NDC: [&str; 6] = [
    "00093505601",
    "00378395177",
    "50090443201",
    "00603441521",
    "00071015523",
    "68180051303",
];

/// RIF inpatient claims: a stay of up to a week, 1–6 revenue center lines.
pub const INPATIENT: ClaimShape = ClaimShape {
    claim: &[
        ("BENE_ID", Fill::Member),
        ("CLM_ID", Fill::ClaimId(500_000_000)),
        ("CLM_FROM_DT", Fill::From),
        ("CLM_THRU_DT", Fill::Thru),
        ("CLM_ADMSN_DT", Fill::From),
        ("NCH_BENE_DSCHRG_DT", Fill::Thru),
        ("NCH_WKLY_PROC_DT", Fill::Thru),
        ("ADMTG_DGNS_CD", Fill::Diagnosis),
        ("PRNCPAL_DGNS_CD", Fill::Diagnosis),
        ("ICD_DGNS_CD1", Fill::Diagnosis),
        ("CLM_DRG_CD", Fill::Pick(&DRG)),
        ("CLM_PMT_AMT", Fill::Money(5_000_000)),
        ("CLM_TOT_CHRG_AMT", Fill::Money(8_000_000)),
        ("ORG_NPI_NUM", Fill::OrgNpi),
        ("AT_PHYSN_NPI", Fill::Npi),
        ("OP_PHYSN_NPI", Fill::Npi),
    ],
    line: &[
        ("CLM_LINE_NUM", Fill::LineNumber),
        ("REV_CNTR", Fill::Pick(&REVENUE)),
        ("HCPCS_CD", Fill::Pick(&HCPCS)),
        ("REV_CNTR_TOT_CHRG_AMT", Fill::Money(2_000_000)),
        ("REV_CNTR_NCVRD_CHRG_AMT", Fill::Money(100_000)),
        ("RNDRNG_PHYSN_NPI", Fill::Npi),
    ],
    max_lines: 6,
    max_stay_days: 7,
};

/// RIF outpatient claims: one day, 1–4 revenue center lines.
pub const OUTPATIENT: ClaimShape = ClaimShape {
    claim: &[
        ("BENE_ID", Fill::Member),
        ("CLM_ID", Fill::ClaimId(600_000_000)),
        ("CLM_FROM_DT", Fill::From),
        ("CLM_THRU_DT", Fill::Thru),
        ("NCH_WKLY_PROC_DT", Fill::Thru),
        ("PRNCPAL_DGNS_CD", Fill::Diagnosis),
        ("ICD_DGNS_CD1", Fill::Diagnosis),
        ("CLM_PMT_AMT", Fill::Money(200_000)),
        ("CLM_TOT_CHRG_AMT", Fill::Money(400_000)),
        ("ORG_NPI_NUM", Fill::OrgNpi),
        ("AT_PHYSN_NPI", Fill::Npi),
        ("OP_PHYSN_NPI", Fill::Npi),
    ],
    line: &[
        ("CLM_LINE_NUM", Fill::LineNumber),
        ("REV_CNTR", Fill::Pick(&REVENUE)),
        ("REV_CNTR_DT", Fill::From),
        ("HCPCS_CD", Fill::Pick(&HCPCS)),
        ("REV_CNTR_UNIT_CNT", Fill::Number(1, 4)),
        ("REV_CNTR_TOT_CHRG_AMT", Fill::Money(100_000)),
        ("REV_CNTR_PMT_AMT_AMT", Fill::Money(80_000)),
        ("REV_CNTR_PRVDR_PMT_AMT", Fill::Money(80_000)),
        ("RNDRNG_PHYSN_NPI", Fill::Npi),
    ],
    max_lines: 4,
    max_stay_days: 0,
};

/// RIF Part D events (pharmacy claims): one row each, pharmacy and prescriber by NPI.
pub const PDE: ClaimShape = ClaimShape {
    claim: &[
        ("BENE_ID", Fill::Member),
        ("PDE_ID", Fill::ClaimId(700_000_000)),
        ("RX_SRVC_RFRNC_NUM", Fill::ClaimId(700_000_000)),
        ("SRVC_DT", Fill::From),
        ("PD_DT", Fill::Thru),
        ("SRVC_PRVDR_ID_QLFYR_CD", Fill::Pick(&["01"])),
        ("SRVC_PRVDR_ID", Fill::OrgNpi),
        ("PRSCRBR_ID_QLFYR_CD", Fill::Pick(&["01"])),
        ("PRSCRBR_ID", Fill::Npi),
        ("PROD_SRVC_ID", Fill::Pick(&NDC)),
        ("QTY_DSPNSD_NUM", Fill::Number(10, 90)),
        ("DAYS_SUPLY_NUM", Fill::Pick(&["30", "60", "90"])),
        ("FILL_NUM", Fill::Number(0, 5)),
        ("PTNT_PAY_AMT", Fill::Money(5_000)),
        ("CVRD_D_PLAN_PD_AMT", Fill::Money(20_000)),
        ("TOT_RX_CST_AMT", Fill::Money(30_000)),
    ],
    line: &[],
    max_lines: 1,
    max_stay_days: 0,
};

/// A valid NPI: `1` and eight digits from `n`, then the check digit
/// ([`crate::model::npi_check_digit`]).
pub fn npi(n: u64) -> String {
    let mut v = format!("1{:08}", n % 100_000_000);
    v.push(char::from(
        crate::model::npi_check_digit(&v).unwrap_or(b'0'),
    ));
    v
}

/// RIF claims of a shape: `claims` claims over `members` members (claim `n` is member
/// `n % members`'s), from a template of the claim file. Returns (bytes, rows).
///
/// # Errors
/// On write errors.
pub fn rif_claims(
    t: &Template,
    shape: &ClaimShape,
    w: &mut impl Write,
    members: usize,
    claims: usize,
    seed: u64,
) -> io::Result<(u64, u64)> {
    let mut rng = Rng::new(seed);
    let mut bytes = t.write_header(w)?;
    let mut rows = 0;
    let mut row = t.row.clone();
    let at = |fills: &'static [(&'static str, Fill)]| -> Vec<(Option<usize>, Fill)> {
        fills.iter().map(|(name, f)| (t.col(name), *f)).collect()
    };
    let (claim_cols, line_cols) = (at(shape.claim), at(shape.line));
    for n in 1..=claims as u64 {
        let member = (n - 1) % members.max(1) as u64;
        let (day, month, year) = (
            1 + rng.below(28 - shape.max_stay_days.min(27)),
            rng.below(12) as usize,
            2019 + rng.below(5),
        );
        let stay = rng.below(shape.max_stay_days + 1);
        let date = |d: u64| format!("{d:02}-{}-{year}", MONTHS[month]);
        let diagnosis = rng.pick(&ICD10);
        let value = |f: Fill, line: u64, rng: &mut Rng| match f {
            Fill::Member => format!("-{}", 10_000_000 + member),
            Fill::ClaimId(base) => format!("-{}", base + n),
            Fill::LineNumber => line.to_string(),
            Fill::From => date(day),
            Fill::Thru => date(day + stay),
            Fill::Diagnosis => diagnosis.to_string(),
            Fill::Pick(items) => rng.pick(items).to_string(),
            Fill::Money(max) => money(rng, max),
            Fill::Npi => npi(rng.below(1_000)),
            Fill::OrgNpi => npi(50_000_000 + rng.below(100)),
            Fill::Number(lo, hi) => (lo + rng.below(hi - lo + 1)).to_string(),
        };
        for &(i, f) in &claim_cols {
            let v = value(f, 1, &mut rng);
            if let Some(i) = i {
                row[i] = v;
            }
        }
        for l in 1..=1 + rng.below(shape.max_lines) {
            for &(i, f) in &line_cols {
                let v = value(f, l, &mut rng);
                if let Some(i) = i {
                    row[i] = v;
                }
            }
            bytes += t.write_row(w, &row)?;
            rows += 1;
        }
    }
    Ok((bytes, rows))
}

/// RIF carrier claims: `claims_per_member` claims per member, 1–4 lines each.
///
/// # Errors
/// On write errors.
pub fn rif_carrier(
    t: &Template,
    w: &mut impl Write,
    members: usize,
    claims_per_member: usize,
    seed: u64,
) -> io::Result<(u64, u64)> {
    rif_claims(t, &CARRIER, w, members, members * claims_per_member, seed)
}

/// The plain CSV layout (`mappings/plain-members.toml`, `plain-claims.toml`): members and
/// their professional claims (1–3 lines each). Returns (member bytes, claim bytes, claim rows).
///
/// # Errors
/// On write errors.
pub fn plain(
    members_out: &mut impl Write,
    claims_out: &mut impl Write,
    members: usize,
    claims_per_member: usize,
    seed: u64,
) -> io::Result<(u64, u64, u64)> {
    let mut rng = Rng::new(seed);
    let mh = "member_id,first_name,middle_name,last_name,birth_date,sex,address,city,state,zip,plan_id,plan_name,group_id,group_name,coverage_start,coverage_end,subscriber_id,relationship,payer_id,payer_name";
    let ch = "claim_id,claim_type,member_id,plan_id,status,service_from,service_to,paid_date,received_date,billing_npi,billing_name,rendering_npi,rendering_name,dx1,dx2,dx3,line_no,procedure_code,modifier1,units,place_of_service,revenue_code,ndc,billed_amount,allowed_amount,paid_amount,member_paid,days_supply,daw,fill_number,refills_authorized,type_of_bill,admit_date,discharge_date,drg,payment_status,network";
    writeln!(members_out, "{mh}")?;
    writeln!(claims_out, "{ch}")?;
    let (mut mb, mut cb, mut rows) = (mh.len() as u64 + 1, ch.len() as u64 + 1, 0u64);
    let mut claim = 0u64;
    for m in 0..members {
        let id = format!("G{m:08}");
        let line = format!(
            "{id},{},,{},{}-{:02}-{:02},{},{} Main St,Portland,ME,04101,PPO-GOLD,Gold PPO,GRP-{},Employer {},2023-01-01,,S{m:08},self,FLHP,Fhirlake Health Plan",
            rng.pick(&GIVEN),
            rng.pick(&SURNAMES),
            1940 + rng.below(70),
            1 + rng.below(12),
            1 + rng.below(28),
            if rng.below(2) == 0 { "F" } else { "M" },
            1 + rng.below(999),
            m % 500,
            m % 500
        );
        writeln!(members_out, "{line}")?;
        mb += line.len() as u64 + 1;
        for _ in 0..claims_per_member {
            claim += 1;
            let day = format!("2024-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28));
            let dx = rng.pick(&ICD10);
            for l in 1..=1 + rng.below(3) {
                let billed = rng.below(50_000);
                let line = format!(
                    "C{claim:09},PROF,{id},PPO-GOLD,ORIGINAL,{day},{day},{day},{day},1487654323,Harbor Family Medicine,1234567893,\"Lee, Grace\",{dx},,,{l},{},,1,11,,,{}.{:02},{}.{:02},{}.{:02},{}.{:02},,,,,,,,,paid,in",
                    rng.pick(&HCPCS),
                    billed / 100,
                    billed % 100,
                    billed * 8 / 1000,
                    (billed * 8 / 10) % 100,
                    billed * 6 / 1000,
                    (billed * 6 / 10) % 100,
                    billed * 2 / 1000,
                    (billed * 2 / 10) % 100,
                );
                writeln!(claims_out, "{line}")?;
                cb += line.len() as u64 + 1;
                rows += 1;
            }
        }
    }
    Ok((mb, cb, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npis_carry_their_check_digit() {
        // Published examples of valid NPIs, and their bases.
        assert_eq!(npi(23_456_789), "1234567893");
        assert_eq!(npi(12_233_445), "1122334455");
        for n in [0, 1, 99_999_999, 123_456_789_012] {
            let v = npi(n);
            assert_eq!(v.len(), 10);
            assert!(crate::model::is_valid_npi(&v), "{v}");
            // The check: with the prefix, every second digit from the right doubled.
            let digits: Vec<u32> = format!("80840{v}")
                .bytes()
                .map(|b| u32::from(b - b'0'))
                .collect();
            let sum: u32 = digits
                .iter()
                .rev()
                .enumerate()
                .map(|(i, &d)| {
                    if i % 2 == 1 {
                        (2 * d) / 10 + (2 * d) % 10
                    } else {
                        d
                    }
                })
                .sum();
            assert_eq!(sum % 10, 0, "{v}");
        }
    }

    /// Each shape fills columns its template has, and its files are what the mappings read:
    /// claims grouped by id, one member per claim, dates in order, NPIs valid.
    #[test]
    fn claim_shapes_fit_their_templates() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/rif");
        for (shape, template, id) in [
            (&CARRIER, "synthea-carrier.csv", "CLM_ID"),
            (&INPATIENT, "synthea-inpatient.csv", "CLM_ID"),
            (&OUTPATIENT, "synthea-outpatient.csv", "CLM_ID"),
            (&PDE, "synthea-pde.csv", "PDE_ID"),
        ] {
            let t = Template::load(&root.join(template), b'|').expect("template");
            for (name, _) in shape.claim.iter().chain(shape.line) {
                assert!(t.col(name).is_some(), "{template} has no {name}");
            }
            let mut out = Vec::new();
            let (bytes, rows) = rif_claims(&t, shape, &mut out, 7, 40, 3).expect("write");
            assert_eq!(bytes, out.len() as u64);
            let text = String::from_utf8(out).expect("utf-8");
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().expect("header").split('|').collect();
            let col = |n: &str| header.iter().position(|h| *h == n).expect(n);
            let first_date = shape.claim.iter().find(|(_, f)| matches!(f, Fill::From));
            let (idc, bene, from) = (col(id), col("BENE_ID"), col(first_date.expect("date").0));
            let mut claims = std::collections::BTreeMap::new();
            let mut n = 0;
            for l in lines {
                let f: Vec<&str> = l.split('|').collect();
                assert_eq!(f.len(), header.len(), "{template}: {l}");
                let who = claims
                    .entry(f[idc].to_string())
                    .or_insert(f[bene].to_string());
                assert_eq!(*who, f[bene], "{template}: a claim with two members");
                assert!(f[from].len() == 11, "{template}: date {}", f[from]);
                for (name, fill) in shape.claim.iter().chain(shape.line) {
                    if matches!(fill, Fill::Npi | Fill::OrgNpi) {
                        let v = f[col(name)];
                        assert_eq!(v, npi(v[1..9].parse().expect("digits")), "{name}");
                    }
                }
                n += 1;
            }
            assert_eq!(n, rows);
            assert_eq!(claims.len(), 40, "{template}");
            assert!(rows >= 40 && rows <= 40 * shape.max_lines);
        }
    }
}
