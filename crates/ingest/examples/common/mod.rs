//! Helpers shared by the X12 benchmarks (`ingest`'s `x12_bench`, `mapper`'s `x12_map_bench`,
//! which includes this file by path): load, per-thread CPU time, peak memory, and the memchr
//! ceiling.

use std::io::Read;
use std::path::Path;

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU time this thread has run, in seconds (Linux `schedstat`, nanoseconds): unlike wall
/// time it does not grow when other jobs share the cores.
pub fn thread_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns / 1e9)
}

/// CPU time of the whole process (all threads), in seconds (`/proc/self/stat` utime +
/// stime, at the usual 100 ticks per second).
#[allow(dead_code)]
pub fn process_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of the line; `rest` starts at field 3.
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .map_or(f64::NAN, |ticks| ticks / 100.0)
}

/// Peak resident set size (VmHWM) in MiB, since the start or the last [`reset_peak_rss`].
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Reset the peak RSS to the current RSS (Linux: `5` to `clear_refs`).
#[allow(dead_code)]
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The ceiling: count the segment terminators of a generated file (`~` and 0x1C) with
/// `memchr` over 128 KiB buffered reads.
pub fn memchr_terminators(path: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 128 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        n += memchr::memchr2_iter(b'~', 0x1C, &buf[..k]).count() as u64;
    }
}
