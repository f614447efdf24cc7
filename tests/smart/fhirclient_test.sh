#!/usr/bin/env bash
# Third-party client interop: npm `fhirclient` runs a SMART standalone patient launch against
# fhirlake's embedded authorization server (crates/api/examples/sandbox.rs) on loopback.
#
# Usage: tests/smart/fhirclient_test.sh      (needs node >= 20, npm, cargo)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
command -v node >/dev/null && command -v npm >/dev/null || { echo "node and npm are required" >&2; exit 2; }
npm install --prefix "$here/node" --no-audit --no-fund --loglevel=error >/dev/null
(cd "$root" && cargo build -q -p api --example sandbox)
target="${CARGO_TARGET_DIR:-$root/target}"
node "$here/node/fhirclient_test.mjs" "$target/debug/examples/sandbox"
