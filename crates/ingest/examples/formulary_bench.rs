//! Formulary XML reader throughput: `cargo run --release -p ingest --example formulary_bench -- 50 5000`
//!
//! Generates an extract of FORMULARIES × DRUGS drugs (deterministic, seed 42) into a temporary
//! file, streams it through `FormularyXmlReader`, and prints drugs/s, MB/s and the peak resident
//! set size (VmHWM) — which must stay flat as the file grows.

use std::io::BufWriter;
use std::time::Instant;

use ingest::formulary::{generate_extract, FormularyXmlReader};
use ingest::{Reader, SourceRecord};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let formularies: u32 = args.first().map_or(Ok(50), |s| s.parse())?;
    let drugs: u32 = args.get(1).map_or(Ok(5000), |s| s.parse())?;
    let dir = std::env::temp_dir().join(format!("fhirlake-formulary-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("extract.xml");
    let t = Instant::now();
    generate_extract(
        BufWriter::new(std::fs::File::create(&path)?),
        formularies,
        drugs,
        42,
    )?;
    let size = std::fs::metadata(&path)?.len();
    println!(
        "generated {formularies} formularies x {drugs} drugs: {:.1} MB in {:.2?}",
        size as f64 / 1e6,
        t.elapsed()
    );
    let rss_before = vm_hwm_kb();
    let (mut ok_drugs, mut plans, mut rejects) = (0u64, 0u64, 0u64);
    let t = Instant::now();
    let summary = FormularyXmlReader::new().read(&path, &mut |item| match item {
        Ok(SourceRecord::FormularyDrug(_)) => ok_drugs += 1,
        Ok(_) => plans += 1,
        Err(_) => rejects += 1,
    })?;
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir)?;
    let total = ok_drugs + rejects;
    println!(
        "parsed {total} drugs ({rejects} rejected), {plans} plan records, {} notices in {secs:.2} s",
        summary.notices.len()
    );
    println!(
        "throughput: {:.0} drugs/s, {:.1} MB/s",
        total as f64 / secs,
        summary.bytes as f64 / 1e6 / secs
    );
    println!(
        "peak RSS (VmHWM): {} kB before parsing, {} kB after",
        rss_before.unwrap_or(0),
        vm_hwm_kb().unwrap_or(0)
    );
    Ok(())
}

/// Peak resident set size of this process, from /proc/self/status (Linux).
fn vm_hwm_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
