//! X12 837P throughput, parse-only and parse+map, against a plain memchr scan, at one and two
//! threads: `cargo run --release -p mapper --example x12_map_bench -- [SIZE_MB] [REPS]
//! [single|files]`
//!
//! Generates a SIZE_MB (default 1100) 837P file in a temp dir (deterministic, seed 7; with
//! `single`, the whole file in one interchange and one group, sets of 5,000 claims), then
//! reports, in the same run, MB/s and claims/s of:
//! - (a) a `memchr` count of the segment terminators over the same buffered reads (the
//!   ceiling);
//! - (b) parse-only on one core: `X12Reader`, each claim built and dropped;
//! - (c) parse+map on a rayon pool of 1 and of 2 threads: `x12::read_parallel` (the file cut
//!   between interchanges or transaction sets, pieces read and mapped in parallel, results in
//!   file order),
//!   each record mapped with `mapper::pipeline::map_record` and the resources dropped;
//! - (d) parse-only through `read_parallel` on 2 threads;
//! - with `files`, (e) the same claims as files of 300 claims (about 175 KB, each one piece),
//!   parsed and mapped on 2 threads file after file with `read_parallel` (how a run read them
//!   before session 13: each small file on one core), and side by side with
//!   `read_parallel_files`.
//!
//! The best of REPS (default 1) runs of each, file in the page cache, with `mimalloc` as the
//! global allocator (as in the `fhirlake` binary). Parse-only also gives its thread's CPU
//! time, which other jobs on a shared machine do not inflate. Peak RSS (VmHWM) is reset
//! before each measurement and reported for each.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ingest::x12::{
    generate_837, generate_837_shaped, read_parallel, read_parallel_files, FileEvent, Shape,
    X12Reader,
};
use ingest::{Reader, SourceRecord};
use mapper::c4bb::Systems;
use mapper::pipeline::map_record;

#[path = "../../ingest/examples/common/mod.rs"]
mod common;
use common::{
    load_average, memchr_terminators, peak_rss_mib, process_cpu_secs, reset_peak_rss,
    thread_cpu_secs,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Best wall and CPU seconds, claims and peak RSS of one measurement over its runs.
struct Best {
    wall: f64,
    cpu: f64,
    /// CPU seconds of all the process's threads.
    all_cpu: f64,
    claims: u64,
    peak: f64,
}

fn best<F: FnMut() -> std::io::Result<u64>>(reps: usize, mut f: F) -> std::io::Result<Best> {
    let mut b = Best {
        wall: f64::MAX,
        cpu: f64::MAX,
        all_cpu: f64::MAX,
        claims: 0,
        peak: 0.0,
    };
    for _ in 0..reps {
        reset_peak_rss();
        let (t, c, p) = (Instant::now(), thread_cpu_secs(), process_cpu_secs());
        b.claims = f()?;
        b.wall = b.wall.min(t.elapsed().as_secs_f64());
        b.cpu = b.cpu.min(thread_cpu_secs() - c);
        b.all_cpu = b.all_cpu.min(process_cpu_secs() - p);
        b.peak = b.peak.max(peak_rss_mib().unwrap_or(f64::NAN));
    }
    Ok(b)
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

/// Parse and map the file on a pool of `threads`; returns the claims mapped.
fn parse_map(path: &Path, systems: &Systems, threads: usize) -> std::io::Result<u64> {
    let mut claims = 0u64;
    let mut failed = 0u64;
    pool(threads)
        .install(|| {
            read_parallel(path, &|item| map_one(item, systems), &mut |ok| {
                if ok {
                    claims += 1;
                } else {
                    failed += 1;
                }
            })
        })
        .map_err(std::io::Error::other)?;
    if failed > 0 {
        eprintln!("warning: {failed} records rejected or not mapped");
    }
    Ok(claims)
}

/// Map one item as the runs do; true for a claim that maps.
fn map_one(item: ingest::Item, systems: &Systems) -> bool {
    match item {
        Ok(rec) => {
            let mapped = map_record(&rec, systems)
                .map(|r| !std::hint::black_box(r).is_empty())
                .unwrap_or(false);
            mapped && matches!(rec, SourceRecord::Claim(_))
        }
        Err(_) => false,
    }
}

/// (e): `claims` claims as files of 300, parsed and mapped on 2 threads, file after file and
/// side by side.
fn small_files(
    dir: &Path,
    claims: usize,
    systems: &Systems,
    reps: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    const PER_FILE: usize = 300;
    let mut paths = Vec::new();
    let mut bytes = 0u64;
    for (i, start) in (0..claims).step_by(PER_FILE).enumerate() {
        let p = dir.join(format!("small-{i:05}.837"));
        let mut w = BufWriter::new(File::create(&p)?);
        bytes += generate_837(&mut w, true, PER_FILE.min(claims - start), i as u64)?;
        w.flush()?;
        paths.push(p);
    }
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let mb = bytes as f64 / 1e6;
    let one_by_one = best(reps, || {
        let mut n = 0u64;
        pool(2).install(|| -> std::io::Result<()> {
            for p in &refs {
                read_parallel(p, &|item| map_one(item, systems), &mut |ok| {
                    n += u64::from(ok)
                })
                .map_err(std::io::Error::other)?;
            }
            Ok(())
        })?;
        Ok(n)
    })?;
    let side_by_side = best(reps, || {
        let mut n = 0u64;
        pool(2)
            .install(|| {
                read_parallel_files(&refs, &|item| map_one(item, systems), &mut |_, event| {
                    if let FileEvent::Item(ok) = event {
                        n += u64::from(ok);
                    }
                    std::ops::ControlFlow::Continue(())
                })
            })
            .map_err(std::io::Error::other)?;
        Ok(n)
    })?;
    println!(
        "(e) {} files of {PER_FILE} claims, {mb:.1} MB, parse+map on 2 threads:",
        paths.len()
    );
    for (name, m) in [
        ("file after file:", &one_by_one),
        ("side by side:   ", &side_by_side),
    ] {
        println!(
            "    {name} {:>6.0} MB/s  {:>9.0} claims/s  cores busy {:.2}  peak RSS {:.1} MiB  ({} claims)",
            mb / m.wall,
            m.claims as f64 / m.wall,
            m.all_cpu / m.wall,
            m.peak,
            m.claims
        );
    }
    println!(
        "    speed-up side by side / file after file: {:.2}",
        one_by_one.wall / side_by_side.wall
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let size_mb: f64 = args.next().map_or(Ok(1100.0), |s| s.parse())?;
    let reps: usize = args.next().map_or(Ok(1), |s| s.parse())?;
    let reps = reps.max(1);
    let mode = args.next().unwrap_or_default();
    let single = mode == "single";
    let shape = if single {
        Shape::single_interchange()
    } else {
        Shape::default()
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.837");
    let mut probe = Vec::new();
    let per_claim = generate_837(&mut probe, true, 2_000, 1)? as f64 / 2_000.0;
    let claims = ((size_mb * 1e6) / per_claim).ceil() as usize;
    let t = Instant::now();
    let mut w = BufWriter::new(File::create(&path)?);
    let bytes = generate_837_shaped(&mut w, true, claims, 7, shape)?;
    w.flush()?;
    drop(w);
    let mb = bytes as f64 / 1e6;
    let systems_file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mappings/fhir/identifier-systems.toml");
    let systems = Systems::parse(&std::fs::read_to_string(systems_file)?)?;
    println!(
        "generated {mb:.1} MB, {claims} claims (837P{}) in {:.1?}; allocator mimalloc; load average before: {}",
        if single { ", one interchange" } else { "" },
        t.elapsed(),
        load_average()
    );

    let a = best(reps.max(3), || memchr_terminators(&path))?;
    let b = best(reps, || {
        let mut n = 0u64;
        X12Reader
            .read(&path, &mut |item| {
                if let Ok(SourceRecord::Claim(c)) = item {
                    n += 1;
                    std::hint::black_box(c);
                }
            })
            .map_err(std::io::Error::other)?;
        Ok(n)
    })?;
    let m1 = best(reps, || parse_map(&path, &systems, 1))?;
    let m2 = best(reps, || parse_map(&path, &systems, 2))?;
    let p2 = best(reps, || {
        let mut n = 0u64;
        pool(2)
            .install(|| {
                read_parallel(
                    &path,
                    &|item| matches!(item, Ok(SourceRecord::Claim(_))),
                    &mut |claim| n += u64::from(claim),
                )
            })
            .map_err(std::io::Error::other)?;
        Ok(n)
    })?;

    println!(
        "best of {reps} (memchr: {}); MB/s by wall time",
        reps.max(3)
    );
    println!(
        "(a) memchr terminator count:  {:>6.0} MB/s (cpu {:>6.0})  {} segments  peak RSS {:.1} MiB",
        mb / a.wall,
        mb / a.cpu,
        a.claims,
        a.peak
    );
    println!(
        "(b) parse-only, 1 thread:     {:>6.0} MB/s (cpu {:>6.0})  {:>9.0} claims/s (cpu {:.0})  ratio to memchr {:.3} (cpu {:.3})  peak RSS {:.1} MiB",
        mb / b.wall,
        mb / b.cpu,
        b.claims as f64 / b.wall,
        b.claims as f64 / b.cpu,
        a.wall / b.wall,
        a.cpu / b.cpu,
        b.peak
    );
    for (name, m) in [("1 thread: ", &m1), ("2 threads:", &m2)] {
        println!(
            "(c) parse+map, {name}   {:>6.0} MB/s  {:>9.0} claims/s  cores busy {:.2}  {:.1} MB per CPU-second  peak RSS {:.1} MiB",
            mb / m.wall,
            m.claims as f64 / m.wall,
            m.all_cpu / m.wall,
            mb / m.all_cpu,
            m.peak
        );
    }
    println!(
        "    parse+map speed-up 2 threads / 1 thread: {:.2}",
        m1.wall / m2.wall
    );
    println!(
        "(d) parse-only, 2 threads:    {:>6.0} MB/s  {:>9.0} claims/s  cores busy {:.2}  peak RSS {:.1} MiB",
        mb / p2.wall,
        p2.claims as f64 / p2.wall,
        p2.all_cpu / p2.wall,
        p2.peak
    );
    if mode == "files" {
        small_files(dir.path(), claims, &systems, reps)?;
    }
    for (what, n) in [("(b)", b.claims), ("(c1)", m1.claims), ("(c2)", m2.claims)] {
        if n != claims as u64 {
            println!("warning: {what} saw {n} claims, expected {claims}");
        }
    }
    println!("load average after: {}", load_average());
    Ok(())
}
