//! Run the ingest pipeline alone (no server crates linked), for profiling the run:
//! `cargo run --release -p mapper --example ingest_run -- LAKE FILE...` from the repository root.
//! Prints the run's seconds, records/s and resources per type.

use std::path::PathBuf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let lake = args.next().ok_or("usage: ingest_run LAKE FILE...")?;
    let files: Vec<PathBuf> = args.collect();
    let opts = mapper::pipeline::Options {
        lake,
        mappings: PathBuf::from("mappings"),
        forced_mapping: None,
        progress: None,
        file_rows: None,
        buffer_bytes: None,
    };
    let r = mapper::pipeline::run(&files, &opts)?;
    println!(
        "{:.2} s, {} records ({:.0}/s), tables {:?}",
        r.seconds,
        r.records_read,
        r.records_read as f64 / r.seconds,
        r.tables
    );
    Ok(())
}
