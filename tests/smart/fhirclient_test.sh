#!/usr/bin/env bash
# Third-party client interop: npm `fhirclient` (the SMART JS client library) runs a SMART
# standalone patient launch against the real `fhirlake serve` (embedded authorization server,
# sample lake) on loopback, non-interactively, then reads the member's Patient, Coverage and
# EOBs through the gate. The node script plays both the app and the member's browser (it
# posts the login and consent forms).
#
# Usage: tests/smart/fhirclient_test.sh      (needs node >= 20, npm; cargo if the binary is missing)
# FHIRLAKE_BIN overrides the binary (default: $CARGO_TARGET_DIR or target/, debug/fhirlake).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
command -v node >/dev/null && command -v npm >/dev/null || { echo "node and npm are required" >&2; exit 2; }
npm install --prefix "$here/node" --no-audit --no-fund --loglevel=error >/dev/null
. "$here/sample_server.sh"
sample_setup fhirclient   # $bin, $work, a lake of samples/rif + samples/plain

# 2. The app's callback port (loopback), registered as the public client's redirect URI.
app_port="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
redirect="http://127.0.0.1:$app_port/callback"

# 3. Auth config: one public client; john (member 567834) and dora (delegate for M1002, M1003).
cat >"$work/auth/clients.toml" <<EOF
[[client]]
client_id = "fhirclient-test"
name = "fhirclient test app"
redirect_uris = ["$redirect"]
EOF
cat >"$work/auth/members.toml" <<EOF
[[member]]
username = "john"
display_name = "John Doe"
password_hash = "$("$bin" hash-secret john-pw)"
patients = ["567834"]

[[member]]
username = "dora"
display_name = "Dora Okafor (delegate)"
password_hash = "$("$bin" hash-secret dora-pw)"
fhir_user = "RelatedPerson/dora"
patients = ["M1002", "M1003"]
patient_labels = { "M1002" = "Ben Okafor", "M1003" = "Chloe Okafor" }
EOF

# 4. The server under test, on a free loopback port.
start_server

# 5. The client.
node "$here/node/fhirclient_test.mjs" "$base" "$app_port" "$work/audit.ndjson"
