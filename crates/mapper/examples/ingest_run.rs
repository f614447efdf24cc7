//! Run the ingest pipeline alone (no server crates linked), for profiling the run:
//! `cargo run --release -p mapper --example ingest_run -- LAKE FILE...` from the repository root.
//! Prints the run's seconds, records/s and resources per type.
//!
//! With `HEAP_EVERY_MS=N` in the environment it also prints, every N ms, the bytes the run's
//! allocations hold (counted by this example's allocator, so the figure is the live heap, not
//! what the allocator keeps mapped) beside the process's resident memory: the gap between the
//! two is the allocator's retention and fragmentation. Run with `MIMALLOC_PURGE_DELAY=-1` to
//! match `fhirlake ingest`.

use std::alloc::{GlobalAlloc, Layout};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// mimalloc, counting the bytes held and the most ever held.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn held(delta: isize) {
    if delta >= 0 {
        let now = LIVE.fetch_add(delta as usize, Relaxed) + delta as usize;
        PEAK.fetch_max(now, Relaxed);
    } else {
        LIVE.fetch_sub(delta.unsigned_abs(), Relaxed);
    }
}

// SAFETY: every call is passed on to mimalloc unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        held(layout.size() as isize);
        // SAFETY: the caller's contract is passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        held(layout.size() as isize);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        held(-(layout.size() as isize));
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        held(new_size as isize - layout.size() as isize);
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| (pages * 4096) >> 20)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let lake = args.next().ok_or("usage: ingest_run LAKE FILE...")?;
    let files: Vec<PathBuf> = args.collect();
    if let Some(ms) = std::env::var("HEAP_EVERY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let start = std::time::Instant::now();
        std::thread::spawn(move || loop {
            eprintln!(
                "{:7.1} s  heap {:5} MiB  peak {:5} MiB  rss {:5} MiB",
                start.elapsed().as_secs_f64(),
                LIVE.load(Relaxed) >> 20,
                PEAK.load(Relaxed) >> 20,
                rss_mib()
            );
            std::thread::sleep(std::time::Duration::from_millis(ms));
        });
    }
    let opts = mapper::pipeline::Options {
        lake,
        mappings: PathBuf::from("mappings"),
        forced_mapping: None,
        progress: None,
        file_rows: None,
        buffer_bytes: None,
        memory_keys: None,
    };
    let r = mapper::pipeline::run(&files, &opts)?;
    println!(
        "{:.2} s, {} records ({:.0}/s), tables {:?}; heap peak {} MiB",
        r.seconds,
        r.records_read,
        r.records_read as f64 / r.seconds,
        r.tables,
        PEAK.load(Relaxed) >> 20
    );
    Ok(())
}
