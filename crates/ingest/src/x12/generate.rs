//! A deterministic generator of valid 837P/837I files of any size, for tests and benchmarks.
//!
//! The output has several interchanges, groups and transaction sets with correct control
//! numbers and counts, billing/subscriber/patient HL loops, claims with diagnoses, care team,
//! optional other-payer adjudication (2320/2330, 2430) and 1–4 lines. Interchanges rotate
//! through different delimiter sets (and line breaks after terminators) so that readers
//! cannot lean on `*`, `:` or `~`.

use std::io::{self, Write};

/// How a generated file is enveloped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Claims per transaction set (ST/SE).
    pub claims_per_set: usize,
    /// Transaction sets per functional group (GS/GE).
    pub sets_per_group: usize,
    /// Functional groups per interchange (ISA/IEA).
    pub groups_per_interchange: usize,
}

impl Default for Shape {
    /// Many small interchanges (200 claims a set, 3 sets a group, 2 groups an interchange),
    /// rotating through the delimiter sets.
    fn default() -> Self {
        Self {
            claims_per_set: 200,
            sets_per_group: 3,
            groups_per_interchange: 2,
        }
    }
}

impl Shape {
    /// The whole file in one interchange and one functional group, in transaction sets of
    /// 5,000 claims (the most the 837 implementation guides recommend a set to hold): the
    /// shape of a large production file.
    pub fn single_interchange() -> Self {
        Self {
            claims_per_set: 5_000,
            sets_per_group: usize::MAX,
            groups_per_interchange: 1,
        }
    }
}

/// (element, component, repetition, segment terminator, newline after terminator)
const DELIMS: [(u8, u8, u8, u8, bool); 3] = [
    (b'*', b':', b'^', b'~', true),
    (b'|', b'>', b'!', b'~', false),
    (b'*', b':', b'^', b'\x1c', false),
];

const FAMILY: [&str; 8] = [
    "SMITH", "JOHNSON", "GARCIA", "NGUYEN", "OKAFOR", "MULLER", "TANAKA", "ROSSI",
];
const GIVEN: [&str; 8] = [
    "ANA", "JOHN", "MARIA", "WEI", "CHIDI", "LENA", "HIRO", "LUCA",
];
const ICD10: [&str; 10] = [
    "E119", "I10", "J449", "M545", "R69", "Z0000", "K219", "F329", "N390", "J069",
];
const HCPCS: [&str; 8] = [
    "99213", "99214", "80053", "85025", "93005", "J3301", "97110", "71046",
];
const REVENUE: [&str; 6] = ["0300", "0305", "0450", "0730", "0250", "0120"];
const PCS: [&str; 4] = ["0DTJ4ZZ", "009G0ZZ", "B8001ZZ", "3E0234Z"];

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    fn date(&mut self) -> String {
        format!(
            "{}{:02}{:02}",
            2023 + self.below(2),
            1 + self.below(12),
            1 + self.below(28)
        )
    }
    fn money(&mut self, max_cents: u64) -> u64 {
        100 + self.next() % max_cents
    }
}

fn cents(v: u64) -> String {
    format!("{}.{:02}", v / 100, v % 100)
}

/// Segment writer for one transaction set.
struct W {
    buf: Vec<u8>,
    e: u8,
    c: u8,
    t: u8,
    nl: bool,
    count: u64,
}

impl W {
    fn seg(&mut self, els: &[&str]) {
        for (i, e) in els.iter().enumerate() {
            if i > 0 {
                self.buf.push(self.e);
            }
            self.buf.extend_from_slice(e.as_bytes());
        }
        self.buf.push(self.t);
        if self.nl {
            self.buf.push(b'\n');
        }
        self.count += 1;
    }
    /// A composite from components.
    fn comp(&self, parts: &[&str]) -> String {
        let sep = (self.c as char).to_string();
        parts.join(&sep)
    }
}

/// Write a valid 837P (`professional`) or 837I file with `claims` claims, deterministic for
/// `seed`. Returns the number of bytes written.
///
/// # Errors
/// Only the writer's I/O errors.
pub fn generate_837(
    w: &mut impl Write,
    professional: bool,
    claims: usize,
    seed: u64,
) -> io::Result<u64> {
    generate_837_shaped(w, professional, claims, seed, Shape::default())
}

/// [`generate_837`] with the envelopes of `shape`.
///
/// # Errors
/// Only the writer's I/O errors.
pub fn generate_837_shaped(
    w: &mut impl Write,
    professional: bool,
    claims: usize,
    seed: u64,
    shape: Shape,
) -> io::Result<u64> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut written = 0u64;
    let mut claim_no = 0usize;
    let mut ic_no = 0u64;
    let version = if professional {
        "005010X222A1"
    } else {
        "005010X223A2"
    };
    while claim_no < claims {
        ic_no += 1;
        let (e, c, r, t, nl) = DELIMS[(ic_no as usize - 1) % DELIMS.len()];
        let mut wr = W {
            buf: Vec::with_capacity(1 << 20),
            e,
            c,
            t,
            nl,
            count: 0,
        };
        let es = (e as char).to_string();
        let isa13 = format!("{:09}", ic_no);
        let isa = [
            "ISA",
            "00",
            "          ",
            "00",
            "          ",
            "ZZ",
            "FHIRLAKEGEN    ",
            "ZZ",
            "PAYER          ",
            "240101",
            "1200",
            &(r as char).to_string(),
            "00501",
            &isa13,
            "0",
            "T",
            &(c as char).to_string(),
        ]
        .join(&es);
        wr.buf.extend_from_slice(isa.as_bytes());
        wr.buf.push(t);
        if nl {
            wr.buf.push(b'\n');
        }
        let mut groups = 0;
        for g in 0..shape.groups_per_interchange.max(1) {
            if claim_no >= claims && g > 0 {
                break;
            }
            groups += 1;
            let gs06 = format!("{}", ic_no * 10 + g as u64);
            wr.seg(&[
                "GS",
                "HC",
                "FHIRLAKEGEN",
                "PAYER",
                "20240101",
                "1200",
                &gs06,
                "X",
                version,
            ]);
            let mut sets = 0;
            for s in 0..shape.sets_per_group.max(1) {
                if claim_no >= claims && s > 0 {
                    break;
                }
                sets += 1;
                let st02 = format!("{:04}", s + 1);
                let n = shape
                    .claims_per_set
                    .max(1)
                    .min(claims - claim_no.min(claims));
                wr.count = 0;
                write_set(
                    &mut wr,
                    &mut rng,
                    professional,
                    version,
                    &st02,
                    claim_no,
                    n,
                    seed,
                );
                claim_no += n;
                let se01 = (wr.count + 1).to_string();
                wr.seg(&["SE", &se01, &st02]);
                written += wr.buf.len() as u64;
                w.write_all(&wr.buf)?;
                wr.buf.clear();
            }
            wr.seg(&["GE", &sets.to_string(), &gs06]);
        }
        wr.seg(&["IEA", &groups.to_string(), &isa13]);
        written += wr.buf.len() as u64;
        w.write_all(&wr.buf)?;
    }
    Ok(written)
}

#[allow(clippy::too_many_arguments)]
fn write_set(
    w: &mut W,
    rng: &mut Rng,
    professional: bool,
    version: &str,
    st02: &str,
    first: usize,
    n: usize,
    seed: u64,
) {
    w.seg(&["ST", "837", st02, version]);
    w.seg(&["BHT", "0019", "00", st02, "20240101", "1200", "CH"]);
    w.seg(&[
        "NM1",
        "41",
        "2",
        "FHIRLAKE GENERATOR",
        "",
        "",
        "",
        "",
        "46",
        "GEN01",
    ]);
    w.seg(&["PER", "IC", "OPS", "TE", "5555550100"]);
    w.seg(&[
        "NM1",
        "40",
        "2",
        "EXAMPLE PAYER",
        "",
        "",
        "",
        "",
        "46",
        "PAYER01",
    ]);
    let mut hl = 1u64;
    w.seg(&["HL", "1", "", "20", "1"]);
    w.seg(&["PRV", "BI", "PXC", "207Q00000X"]);
    let npi = crate::synth::npi(rng.next());
    w.seg(&[
        "NM1",
        "85",
        "2",
        "GENERATED CLINIC",
        "",
        "",
        "",
        "",
        "XX",
        &npi,
    ]);
    w.seg(&["N3", "1 MAIN ST"]);
    w.seg(&["N4", "SPRINGFIELD", "IL", "62701"]);
    w.seg(&["REF", "EI", "123456789"]);
    for k in 0..n {
        let idx = first + k;
        hl += 1;
        let sub_hl = hl;
        let dependent = rng.chance(25);
        let hl04 = if dependent { "1" } else { "0" };
        w.seg(&["HL", &sub_hl.to_string(), "1", "22", hl04]);
        let sbr02 = if dependent { "" } else { "18" };
        let group = format!("GRP{}", rng.below(50));
        w.seg(&["SBR", "P", sbr02, &group, "", "", "", "", "", "CI"]);
        let member = format!("M{:09}", idx);
        let fam = rng.pick(&FAMILY);
        let giv = rng.pick(&GIVEN);
        w.seg(&["NM1", "IL", "1", fam, giv, "", "", "", "MI", &member]);
        w.seg(&["N3", &format!("{} OAK AVE", 1 + rng.below(999))]);
        w.seg(&["N4", "SPRINGFIELD", "IL", "62704"]);
        let gender = if rng.chance(50) { "F" } else { "M" };
        let dob = format!("{}0{}15", 1940 + rng.below(70), 1 + rng.below(9));
        if !dependent {
            w.seg(&["DMG", "D8", &dob, gender]);
        }
        w.seg(&[
            "NM1",
            "PR",
            "2",
            "EXAMPLE PAYER",
            "",
            "",
            "",
            "",
            "PI",
            "PAYER01",
        ]);
        if dependent {
            hl += 1;
            w.seg(&["HL", &hl.to_string(), &sub_hl.to_string(), "23", "0"]);
            w.seg(&["PAT", "19"]);
            w.seg(&["NM1", "QC", "1", fam, rng.pick(&GIVEN)]);
            w.seg(&["N3", "2 ELM ST"]);
            w.seg(&["N4", "SPRINGFIELD", "IL", "62704"]);
            w.seg(&["DMG", "D8", "20100101", gender]);
        }
        // Claim.
        let lines = 1 + rng.below(4);
        let charges: Vec<u64> = (0..lines).map(|_| rng.money(50_000)).collect();
        let total: u64 = charges.iter().sum();
        let claim_id = format!("G{seed}-{idx}");
        let freq = if rng.chance(5) { "7" } else { "1" };
        let fc = if professional || rng.chance(50) {
            "11"
        } else {
            "13"
        };
        let clm05 = w.comp(&[fc, if professional { "B" } else { "A" }, freq]);
        w.seg(&[
            "CLM",
            &claim_id,
            &cents(total),
            "",
            "",
            &clm05,
            "Y",
            "A",
            "Y",
            "Y",
        ]);
        let from = rng.date();
        if !professional {
            w.seg(&["DTP", "434", "RD8", &format!("{from}-{from}")]);
            w.seg(&["CL1", "1", "1", "01"]);
        }
        w.seg(&["REF", "D9", &format!("TRN{idx:08}")]);
        let (pq, sq) = ("ABK", "ABF");
        let p = w.comp(&[pq, rng.pick(&ICD10)]);
        let s1 = w.comp(&[sq, rng.pick(&ICD10)]);
        let s2 = w.comp(&[sq, rng.pick(&ICD10)]);
        w.seg(&["HI", &p, &s1, &s2]);
        if !professional && fc == "11" {
            let pr = w.comp(&["BBR", rng.pick(&PCS), "D8", &from]);
            w.seg(&["HI", &pr]);
        }
        let rnpi = crate::synth::npi(rng.next());
        if professional {
            w.seg(&[
                "NM1",
                "82",
                "1",
                rng.pick(&FAMILY),
                rng.pick(&GIVEN),
                "",
                "",
                "",
                "XX",
                &rnpi,
            ]);
            w.seg(&["PRV", "PE", "PXC", "207Q00000X"]);
        } else {
            w.seg(&[
                "NM1",
                "71",
                "1",
                rng.pick(&FAMILY),
                rng.pick(&GIVEN),
                "",
                "",
                "",
                "XX",
                &rnpi,
            ]);
        }
        let cob = rng.chance(30);
        let paid: Vec<u64> = charges.iter().map(|c| c * 8 / 10).collect();
        if cob {
            w.seg(&["SBR", "S", "18", "OTHERGRP", "", "", "", "", "", "CI"]);
            let ded = charges[0] / 10;
            w.seg(&[
                "CAS",
                "PR",
                "1",
                &cents(ded),
                "",
                "2",
                &cents(charges[0] / 10),
            ]);
            w.seg(&["AMT", "D", &cents(paid.iter().sum())]);
            w.seg(&["OI", "", "", "Y", "P", "", "Y"]);
            w.seg(&["NM1", "IL", "1", fam, giv, "", "", "", "MI", &member]);
            w.seg(&[
                "NM1",
                "PR",
                "2",
                "OTHER PAYER",
                "",
                "",
                "",
                "",
                "PI",
                "OTHER01",
            ]);
        }
        for (li, ch) in charges.iter().enumerate() {
            w.seg(&["LX", &(li + 1).to_string()]);
            let code = rng.pick(&HCPCS);
            if professional {
                let sv = if rng.chance(30) {
                    w.comp(&["HC", code, "25"])
                } else {
                    w.comp(&["HC", code])
                };
                let ptr = w.comp(&["1", "2"]);
                w.seg(&["SV1", &sv, &cents(*ch), "UN", "1", "", "", &ptr]);
            } else {
                let sv = w.comp(&["HC", code]);
                w.seg(&["SV2", rng.pick(&REVENUE), &sv, &cents(*ch), "UN", "1"]);
            }
            w.seg(&["DTP", "472", "D8", &from]);
            if cob {
                let svc = w.comp(&["HC", code]);
                w.seg(&["SVD", "OTHER01", &cents(paid[li]), &svc, "", "1"]);
                w.seg(&["CAS", "CO", "45", &cents(ch - paid[li])]);
                w.seg(&["DTP", "573", "D8", &from]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        generate_837(&mut a, true, 50, 7).unwrap();
        generate_837(&mut b, true, 50, 7).unwrap();
        assert_eq!(a, b);
        let mut c = Vec::new();
        generate_837(&mut c, true, 50, 8).unwrap();
        assert_ne!(a, c);
    }
}
