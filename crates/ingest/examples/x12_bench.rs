//! Throughput of the X12 reader against a plain memchr scan.
//!
//! `cargo run --release -p ingest --example x12_bench -- SIZE_MB [professional|institutional]`
//!
//! Generates a SIZE_MB 837 file in a temp dir, then reports MB/s and claims/s for
//! (a) a plain `memchr` count of segment terminators over the same buffered reads and
//! (b) the X12 reader (records built, then discarded), (c) the tokenizer/envelope scan alone
//! (`scan_stream`, no records), (d) the records alone: as many claims as the file holds cloned
//! from 1,000 parsed ones and dropped, no parsing (the cost of building and freeing the
//! `ingest::model` records, a floor for (b)), and the ratios to (a). Best of 3 runs, one core,
//! file in the page cache. Each speed is given by wall time and by the thread's CPU time; on a machine
//! shared with other jobs the CPU figure is the one to compare between runs.
//!
//! With `--features mimalloc` the whole process (reader and consumer) runs on mimalloc instead
//! of the system allocator; the report says which.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

use ingest::x12::{generate_837, scan_stream, X12Reader};
use ingest::{Reader, SourceRecord};

mod common;
use common::{load_average, memchr_terminators, peak_rss_mib, thread_cpu_secs};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

/// Best wall and best CPU seconds over the runs of one measurement.
#[derive(Clone, Copy)]
struct Best {
    wall: f64,
    cpu: f64,
}

impl Best {
    fn new() -> Self {
        Self {
            wall: f64::MAX,
            cpu: f64::MAX,
        }
    }

    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (t, c) = (Instant::now(), thread_cpu_secs());
        let out = f();
        self.wall = self.wall.min(t.elapsed().as_secs_f64());
        self.cpu = self.cpu.min(thread_cpu_secs() - c);
        out
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let size_mb: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(200.0);
    let professional = args.next().as_deref() != Some("institutional");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.837");

    // Bytes per claim, to size the file.
    let mut probe = Vec::new();
    let probe_bytes = generate_837(&mut probe, professional, 2_000, 1)?;
    let per_claim = probe_bytes as f64 / 2_000.0;
    let claims = ((size_mb * 1e6) / per_claim).ceil() as usize;
    let t = Instant::now();
    let mut w = BufWriter::new(File::create(&path)?);
    let bytes = generate_837(&mut w, professional, claims, 7)?;
    w.flush()?;
    drop(w);
    println!(
        "allocator: {ALLOCATOR}, load average before: {}",
        load_average()
    );
    println!(
        "generated {:.1} MB, {claims} claims ({}) in {:.1?}",
        bytes as f64 / 1e6,
        if professional { "837P" } else { "837I" },
        t.elapsed()
    );

    let mb = bytes as f64 / 1e6;
    let (mut a, mut b, mut c, mut f) = (Best::new(), Best::new(), Best::new(), Best::new());
    let mut sample = Vec::new();
    let mut terms = 0u64;
    let mut seen = 0u64;
    let mut rejects = 0u64;
    let mut scanned = 0u64;
    for _ in 0..3 {
        // (c) tokenizer only: delimiters, segments, CLM count; no records.
        scanned = c.time(|| scan_stream(File::open(&path)?))?.claims;

        // (a) plain memchr count of segment terminators (the generator uses '~' and 0x1C).
        terms = a.time(|| memchr_terminators(&path))?;

        // (b) the reader, records discarded.
        (seen, rejects) = b.time(|| -> std::io::Result<(u64, u64)> {
            let (mut n, mut r) = (0u64, 0u64);
            X12Reader
                .read(&path, &mut |item| match item {
                    Ok(SourceRecord::Claim(claim)) => {
                        n += 1;
                        if sample.len() < 1_000 {
                            sample.push(claim);
                        } else {
                            std::hint::black_box(claim);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => r += 1,
                })
                .map_err(std::io::Error::other)?;
            Ok((n, r))
        })?;
    }
    // (d) the records alone.
    for _ in 0..3 {
        f.time(|| {
            for k in 0..claims.min(sample.len() * claims) {
                std::hint::black_box(sample[k % sample.len()].clone());
            }
        });
    }
    println!("best of 3; MB/s by wall time, then by this thread's CPU time");
    println!(
        "(a) memchr terminator count: {:>6.0} MB/s (cpu {:>6.0})  {terms} segments  {:.3} s",
        mb / a.wall,
        mb / a.cpu,
        a.wall
    );
    println!(
        "(b) X12Reader parse-only:    {:>6.0} MB/s (cpu {:>6.0})  {:.0} claims/s (cpu {:.0})  {seen} claims, {rejects} rejects  {:.3} s",
        mb / b.wall,
        mb / b.cpu,
        seen as f64 / b.wall,
        seen as f64 / b.cpu,
        b.wall
    );
    println!(
        "(c) tokenizer/envelope scan: {:>6.0} MB/s (cpu {:>6.0})  {:.0} claims/s  {scanned} claims  {:.3} s",
        mb / c.wall,
        mb / c.cpu,
        scanned as f64 / c.wall,
        c.wall
    );
    println!(
        "(d) records alone (clone+drop): {:>6.0} MB/s (cpu {:>6.0})  {:.0} claims/s (cpu {:.0})  {:.0} ns/claim (cpu)",
        mb / f.wall,
        mb / f.cpu,
        claims as f64 / f.wall,
        claims as f64 / f.cpu,
        f.cpu * 1e9 / claims as f64
    );
    println!(
        "ratio b/a (records built): {:.3} (cpu {:.3})",
        a.wall / b.wall,
        a.cpu / b.cpu
    );
    println!(
        "ratio c/a (tokenizer only): {:.3} (cpu {:.3})",
        a.wall / c.wall,
        a.cpu / c.cpu
    );
    println!(
        "ratio d/a (records alone, a ceiling for b/a): {:.3} (cpu {:.3})",
        a.wall / f.wall,
        a.cpu / f.cpu
    );
    println!("load average after: {}", load_average());
    if let Some(rss) = peak_rss_mib() {
        println!("peak RSS: {rss:.1} MB (file {mb:.0} MB)");
    }
    Ok(())
}
