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

fn rif_date(rng: &mut Rng, year0: u32) -> String {
    format!(
        "{:02}-{}-{}",
        1 + rng.below(28),
        MONTHS[rng.below(12) as usize],
        year0 + rng.below(5) as u32
    )
}

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
    let mut rng = Rng::new(seed);
    let mut bytes = t.write_header(w)?;
    let mut rows = 0;
    let mut row = t.row.clone();
    let idx = |name: &str| t.col(name);
    let (bene, clm, line, from, thru, hcpcs, dx, dx1, pay, sub, allowed) = (
        idx("BENE_ID"),
        idx("CLM_ID"),
        idx("LINE_NUM"),
        idx("CLM_FROM_DT"),
        idx("CLM_THRU_DT"),
        idx("HCPCS_CD"),
        idx("PRNCPAL_DGNS_CD"),
        idx("ICD_DGNS_CD1"),
        idx("LINE_NCH_PMT_AMT"),
        idx("LINE_SBMTD_CHRG_AMT"),
        idx("LINE_ALOWD_CHRG_AMT"),
    );
    let mut claim = 0u64;
    for m in 0..members {
        for _ in 0..claims_per_member {
            claim += 1;
            let date = rif_date(&mut rng, 2019);
            let d = rng.pick(&ICD10).to_string();
            for (i, v) in [
                (bene, format!("-{}", 10_000_000 + m)),
                (clm, format!("-{}", 300_000_000 + claim)),
                (from, date.clone()),
                (thru, date),
                (dx, d.clone()),
                (dx1, d),
            ] {
                if let Some(i) = i {
                    row[i] = v;
                }
            }
            let lines = 1 + rng.below(4);
            for l in 1..=lines {
                for (i, v) in [
                    (line, l.to_string()),
                    (hcpcs, rng.pick(&HCPCS).to_string()),
                    (pay, money(&mut rng, 20_000)),
                    (sub, money(&mut rng, 40_000)),
                    (allowed, money(&mut rng, 30_000)),
                ] {
                    if let Some(i) = i {
                        row[i] = v;
                    }
                }
                bytes += t.write_row(w, &row)?;
                rows += 1;
            }
        }
    }
    Ok((bytes, rows))
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
