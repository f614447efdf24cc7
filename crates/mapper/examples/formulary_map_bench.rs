//! Formulary XML → PDex resources throughput:
//! `cargo run --release -p mapper --example formulary_map_bench -- 50 5000`
//!
//! Generates an extract (deterministic, seed 42), streams it through `FormularyXmlReader`,
//! maps every record with `map_drug`/`map_plan`, serialises each resource to JSON text (as the
//! lake writer will) and extracts its search-index values. Prints drugs/s, resources/s and the
//! peak resident set size (VmHWM).

use std::io::BufWriter;
use std::time::Instant;

use ingest::formulary::{generate_extract, FormularyXmlReader};
use ingest::{Reader, SourceRecord};
use mapper::formulary::{map_drug, map_plan, SEARCH_PARAMS};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let formularies: u32 = args.first().map_or(Ok(50), |s| s.parse())?;
    let drugs: u32 = args.get(1).map_or(Ok(5000), |s| s.parse())?;
    let dir = std::env::temp_dir().join(format!(
        "fhirlake-formulary-map-bench-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("extract.xml");
    generate_extract(
        BufWriter::new(std::fs::File::create(&path)?),
        formularies,
        drugs,
        42,
    )?;
    let size = std::fs::metadata(&path)?.len();
    let (mut records, mut resources, mut errors, mut json_bytes, mut index_values) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut drug_records = 0u64;
    let t = Instant::now();
    FormularyXmlReader::new().read(&path, &mut |item| {
        records += 1;
        let mapped = match item {
            Ok(SourceRecord::FormularyDrug(d)) => {
                drug_records += 1;
                map_drug(&d)
            }
            Ok(SourceRecord::FormularyPlan(p)) => map_plan(&p),
            Ok(_) | Err(_) => {
                errors += 1;
                return;
            }
        };
        match mapped {
            Ok(rs) => {
                for r in rs {
                    resources += 1;
                    // Formulary resources are built as trees.
                    let mapper::Json::Tree(json) = &r.json else {
                        continue;
                    };
                    json_bytes += serde_json::to_string(json).map_or(0, |s| s.len() as u64);
                    for p in SEARCH_PARAMS
                        .iter()
                        .filter(|p| p.resource == r.resource_type)
                    {
                        index_values += (p.extract)(json).len() as u64;
                    }
                }
            }
            Err(_) => errors += 1,
        }
    })?;
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir)?;
    println!(
        "{formularies} formularies x {drugs} drugs ({:.1} MB XML): {records} records, {errors} rejected/unmapped",
        size as f64 / 1e6
    );
    println!(
        "parse+map+serialise+index in {secs:.2} s: {:.0} drugs/s, {:.0} resources/s ({resources} resources, {:.1} MB JSON, {index_values} index values)",
        drug_records as f64 / secs,
        resources as f64 / secs,
        json_bytes as f64 / 1e6
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ?");
    println!("peak RSS {}", hwm.trim_start_matches("VmHWM:").trim());
    Ok(())
}
