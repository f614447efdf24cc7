#!/usr/bin/env python3
"""Load benchmark of `fhirlake serve` against nginx serving the same response bodies as static
files (the ceiling of this machine), both driven by wrk at the same concurrency.

Usage: python3 bench/load_bench.py [--members N] [--claims-per-member K] [--connections C]
                                    [--seconds S] [--rotate R] [--lake DIR]
Run from the repository root after `cargo build --release`. Installs wrk and nginx with apt-get
when missing. Everything listens on 127.0.0.1 and is stopped at the end.

Each request kind rotates over R members spread over the lake (default 400), each with its own
token, and over a few drug names; nginx serves the same R response bodies per kind as static
files, requested in the same order by the same wrk Lua script. `--lake DIR` benchmarks an
existing lake (generated with the same --members) instead of generating and ingesting one.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request


def need(cmd, pkg):
    if shutil.which(cmd) is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", pkg], check=True, stdout=subprocess.DEVNULL)


LUA = """
local reqs = {%s}
local n = #reqs
local i = 0
function setup(thread)
  thread:set("offset", i)
  i = i + 37
end
function init(args)
  i = offset
end
function request()
  i = i + 1
  local r = reqs[(i %% n) + 1]
  if r[2] ~= "" then
    return wrk.format("GET", r[1], {["Authorization"] = "Bearer " .. r[2]})
  end
  return wrk.format("GET", r[1])
end
"""


def lua_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk(origin, reqs, conns, secs, script):
    """Drive `origin` with wrk, rotating over reqs = [(path, token or "")]."""
    with open(script, "w") as f:
        f.write(LUA % ",".join("{%s,%s}" % (lua_str(p), lua_str(t)) for p, t in reqs))
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency", "-s", script, origin]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, pct(50), pct(99), int(non2xx.group(1)) if non2xx else 0


def get(url, token=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req) as r:
        return r.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--claims-per-member", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--bin", default="target/release/fhirlake")
    ap.add_argument("--rotate", type=int, default=400, help="members each request kind rotates over")
    ap.add_argument("--lake", help="benchmark this existing lake instead of generating one")
    a = ap.parse_args()
    need("wrk", "wrk")
    need("nginx", "nginx")
    work = tempfile.mkdtemp(prefix="fhirlake-load-")
    procs = []
    try:
        data, lake = os.path.join(work, "data"), os.path.join(work, "lake")
        ingest_s = 0.0
        if a.lake:
            lake = a.lake
        else:
            subprocess.run([a.bin, "generate", "--dataset", data, "--members", str(a.members),
                            "--claims-per-member", str(a.claims_per_member)], check=True, stdout=subprocess.DEVNULL)
            subprocess.run([a.bin, "generate", "--formularies", "20", "--drugs", "2000", "--out",
                            os.path.join(data, "formulary.xml")], check=True, stdout=subprocess.DEVNULL)
            t0 = time.perf_counter()
            subprocess.run([a.bin, "ingest", "--lake", lake, os.path.join(data, "rif"),
                            os.path.join(data, "formulary.xml")], check=True, stdout=subprocess.DEVNULL)
            ingest_s = time.perf_counter() - t0
        lake_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(lake) for f in fs) / 1e6

        t0 = time.perf_counter()
        srv = subprocess.Popen([a.bin, "serve", "--lake", lake, "--listen", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(srv)
        base = srv.stdout.readline().strip().removeprefix("fhirlake serving ")
        ready_s = time.perf_counter() - t0
        # Members spread over the lake (synthetic BENE_IDs are -(10000000 + m), m = 1..members).
        step = max(1, a.members // a.rotate)
        pids = [f"-{10_000_000 + 1 + i * step}" for i in range(min(a.rotate, a.members))]

        def mint(pid):
            return subprocess.run([a.bin, "token", f"--patient={pid}", "--lake", lake, "--base-url", base],
                                  capture_output=True, text=True, check=True).stdout.strip()

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            tokens = list(ex.map(mint, pids))
        origin = base.split("/fhir")[0]
        prefix = base[len(origin):]
        cases = {name: [] for name in ["Patient read", "EOB read", "EOB?patient&_count=10",
                                       "EOB?patient&service-date=ge", "Coverage?patient",
                                       "$everything page 1", "$everything later page", "drug-name search"]}
        for pid, token in zip(pids, tokens):
            bundle = json.loads(get(f"{base}/ExplanationOfBenefit?patient={pid}&_count=10", token))
            if not bundle.get("entry"):
                continue
            eob = bundle["entry"][0]["resource"]["id"]
            first = json.loads(get(f"{base}/Patient/{pid}/$everything?_count=10", token))
            later = next(l["url"] for l in first["link"] if l["relation"] == "next")
            for name, path in [
                ("Patient read", f"Patient/{pid}"),
                ("EOB read", f"ExplanationOfBenefit/{eob}"),
                ("EOB?patient&_count=10", f"ExplanationOfBenefit?patient={pid}&_count=10"),
                ("EOB?patient&service-date=ge", f"ExplanationOfBenefit?patient={pid}&service-date=ge2020-01-01&_count=10"),
                ("Coverage?patient", f"Coverage?patient={pid}"),
                ("$everything page 1", f"Patient/{pid}/$everything?_count=10"),
                ("$everything later page", later[len(origin):]),
            ]:
                cases[name].append((path if path.startswith("/") else f"{prefix}/{path}", token))
        for drug in ["ator", "lisin", "metf", "amlo", "omep", "simv", "losa", "gaba"]:
            cases["drug-name search"].append((f"{prefix}/MedicationKnowledge?drug-name={drug}&_count=10", ""))
        static = os.path.join(work, "static")
        os.makedirs(static)
        nginx_reqs = {}
        for c, (name, reqs) in enumerate(cases.items()):
            nginx_reqs[name] = []
            for i, (path, token) in enumerate(reqs):
                with open(os.path.join(static, f"r{c}_{i}.json"), "wb") as f:
                    f.write(get(origin + path, token or None))
                nginx_reqs[name].append((f"/r{c}_{i}.json", ""))
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 2; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; default_type application/fhir+json; keepalive_requests 100000;
  server {{ listen 127.0.0.1:18089; root {static}; }} }}
""")
        ng = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"])
        procs.append(ng)
        time.sleep(0.5)
        print(f"lake: {a.members} members, {a.members * a.claims_per_member} EOBs, {lake_mb:.0f} MB on disk; "
              f"ingest {ingest_s:.1f}s; server ready in {ready_s:.2f}s; rotating over {len(pids)} members")
        print(f"{'request':30} {'fhirlake r/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'nginx r/s':>10} {'p99 ms':>7} {'share':>6}")
        script = os.path.join(work, "rotate.lua")
        for name, reqs in cases.items():
            f_rps, f50, f99, bad = wrk(origin, reqs, a.connections, a.seconds, script)
            n_rps, _, n99, _ = wrk("http://127.0.0.1:18089", nginx_reqs[name], a.connections, a.seconds, script)
            flag = f"  ({bad} non-2xx!)" if bad else ""
            print(f"{name:30} {f_rps:12.0f} {f50:7.2f} {f99:7.2f} {n_rps:10.0f} {n99:7.2f} {f_rps / n_rps:6.3f}{flag}")
        rss = 0
        with open(f"/proc/{srv.pid}/status") as st:
            for line in st:
                if line.startswith("VmHWM"):
                    rss = int(line.split()[1]) / 1024
        print(f"fhirlake peak RSS {rss:.0f} MiB (lake {lake_mb:.0f} MB); share = fhirlake r/s / nginx r/s, {a.connections} connections")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)  # never the --lake given


if __name__ == "__main__":
    main()
