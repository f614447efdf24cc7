#!/usr/bin/env python3
"""Ingest benchmark: fhirlake (parse + map to C4BB + write Parquet) against DuckDB converting
the same delimited input straight to Parquet with no FHIR mapping at all — the bar to beat.

Usage: python3 bench/ingest_bench.py [--members N] [--claims-per-member K] [--bin PATH] [--repeat R]
                                     [--all-rif]
`--all-rif` also measures the generated RIF inpatient (275 columns), outpatient (234) and Part D
event (41) files.
Run from the repository root with a release build (cargo build --release). Needs PyPI duckdb.
Prints one table; figures are from this machine, this run (compare ratios, not absolutes).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def run_measured(cmd):
    """Run a command; return (seconds, peak RSS in MiB of that process alone, stdout)."""
    rss_file = tempfile.mktemp(prefix="fhirlake-rss-")
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    with open(rss_file) as f:
        rss_kb = int(f.read().strip().splitlines()[-1])
    os.unlink(rss_file)
    return dt, rss_kb / 1024.0, p.stdout


def make_delta(src, dst, delim, quote, id_col, amount_col, share):
    """A delta extract: the last `share` of the claims (whole claims) with a changed amount
    (updates), plus the same claims under new ids (creates). Returns the delta's line count."""
    import csv  # noqa: PLC0415

    with open(src, newline="") as f:
        r = csv.reader(f, delimiter=delim, quotechar='"' if quote else None,
                       quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)
        header = next(r)
        rows = list(r)
    i, a = header.index(id_col), header.index(amount_col)
    cut = int(len(rows) * (1 - share))
    while 0 < cut < len(rows) and rows[cut][i] == rows[cut - 1][i]:
        cut += 1
    tail = rows[cut:]
    changed = [row[:a] + [f"{float(row[a] or 0) + 1:.2f}"] + row[a + 1:] for row in tail]
    fresh = [row[:i] + [row[i] + "9"] + row[i + 1:] for row in tail]
    with open(dst, "w", newline="") as f:
        w = csv.writer(f, delimiter=delim, quotechar='"' if quote else None,
                       quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE, lineterminator="\n")
        w.writerow(header)
        w.writerows(changed + fresh)
    return len(changed) + len(fresh)


def duckdb_convert(src, dst, delim, quote):
    import duckdb  # noqa: PLC0415

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    q = "'\"'" if quote else "''"
    t0 = time.perf_counter()
    con.execute(
        f"COPY (SELECT * FROM read_csv('{src}', delim='{delim}', header=true, all_varchar=true, quote={q})) "
        f"TO '{dst}' (FORMAT parquet)"
    )
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--claims-per-member", type=int, default=10)
    ap.add_argument("--bin", default="target/release/fhirlake")
    ap.add_argument("--delta-share", type=float, default=0.01,
                    help="size of the delta run, as a share of the claims")
    ap.add_argument("--repeat", type=int, default=1,
                    help="full runs of each side, interleaved; the best time of each is compared")
    ap.add_argument("--all-rif", action="store_true",
                    help="also the RIF inpatient, outpatient and Part D event files")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="fhirlake-bench-")
    try:
        data = os.path.join(work, "data")
        subprocess.run([a.bin, "generate", "--dataset", data, "--members", str(a.members),
                        "--claims-per-member", str(a.claims_per_member)], check=True, stdout=subprocess.DEVNULL)
        rows = []
        deltas = []
        inputs = [
            ("CMS RIF carrier (100 cols)", "rif/carrier.txt", "|", False, "CLM_ID", "LINE_NCH_PMT_AMT"),
            ("plain CSV claims (37 cols)", "plain/claims.csv", ",", True, "claim_id", "paid_amount"),
        ]
        if a.all_rif:
            inputs += [
                ("CMS RIF inpatient (275 cols)", "rif/inpatient.txt", "|", False, "CLM_ID", "CLM_PMT_AMT"),
                ("CMS RIF outpatient (234 cols)", "rif/outpatient.txt", "|", False, "CLM_ID", "CLM_PMT_AMT"),
                ("CMS RIF Part D events (41 cols)", "rif/pde.txt", "|", False, "PDE_ID", "TOT_RX_CST_AMT"),
            ]
        for name, claims, delim, quote, id_col, amount_col in inputs:
            src = os.path.join(data, claims)
            size = os.path.getsize(src)
            with open(src, "rb") as f:
                lines = sum(1 for _ in f) - 1
            lake = os.path.join(work, "lake-" + os.path.basename(claims))
            # Each side runs `--repeat` times, fhirlake and DuckDB in turn, so that both meet the
            # same moments of a noisy machine; the best time of each is compared.
            ours, theirs, rss = [], [], 0.0
            for _ in range(max(1, a.repeat)):
                shutil.rmtree(lake, ignore_errors=True)
                secs, run_rss, out = run_measured([a.bin, "ingest", "--lake", lake, src])
                ours.append(secs)
                rss = max(rss, run_rss)
                theirs.append(duckdb_convert(src, os.path.join(work, "duck.parquet"), delim, quote))
            resources = 0
            for line in out.splitlines():
                if line.startswith("lake tables:"):
                    resources = sum(int(kv.split("=")[1]) for kv in line.split(":", 1)[1].split(","))
            secs, dsecs = min(ours), min(theirs)
            if len(ours) > 1:
                print(f"{name}: fhirlake {' '.join(f'{t:.2f}' for t in ours)} s, "
                      f"duckdb {' '.join(f'{t:.2f}' for t in theirs)} s")
            rows.append((name, size, lines, secs, rss, resources, dsecs))
            # A nightly delta of 1 % of the claims (half changed, half new) on that lake.
            delta = os.path.join(work, "delta-" + os.path.basename(claims))
            dlines = make_delta(src, delta, delim, quote, id_col, amount_col, a.delta_share / 2)
            d_secs, d_rss, _ = run_measured([a.bin, "ingest", "--lake", lake, delta])
            deltas.append((name, dlines, d_secs, d_rss, secs))
            shutil.rmtree(lake, ignore_errors=True)
        print(f"{'input':32} {'MB':>8} {'lines':>10} {'fhirlake s':>10} {'lines/s':>10} {'MB/s':>7} "
              f"{'res/s':>9} {'peak MiB':>9} {'duckdb s':>9} {'ratio':>6}")
        for name, size, lines, secs, rss, res, dsecs in rows:
            print(f"{name:32} {size/1e6:8.1f} {lines:10d} {secs:10.2f} {lines/secs:10.0f} {size/1e6/secs:7.1f} "
                  f"{res/secs:9.0f} {rss:9.0f} {dsecs:9.2f} {dsecs/secs:6.2f}")
        print("ratio = DuckDB seconds / fhirlake seconds (>= 1.0 means fhirlake is at least as fast)"
              + (f"; best of {a.repeat} runs each" if a.repeat > 1 else ""))
        print()
        print(f"{'delta run on that lake':32} {'lines':>10} {'seconds':>10} {'peak MiB':>9} {'share of full run':>18}")
        for name, dlines, d_secs, d_rss, full in deltas:
            print(f"{name:32} {dlines:10d} {d_secs:10.2f} {d_rss:9.0f} {d_secs / full:18.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
