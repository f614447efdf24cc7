#!/usr/bin/env bash
# Third-party client interop: PyPI `fhirclient` (smart-on-fhir/client-py, the SMART Python client
# library) runs a SMART standalone patient launch against the real `fhirlake serve` (embedded
# authorization server, sample lake) on loopback, non-interactively. Unlike npm `fhirclient`,
# client-py discovers the authorization server from `/metadata` only (the CapabilityStatement's
# `rest[0].security` oauth-uris extension), never from `.well-known/smart-configuration`; this
# test is the oracle that both discovery paths work. The Python script plays both the app and
# the member's browser (it posts the login and consent forms).
#
# Usage: tests/smart/pyfhirclient_test.sh      (needs python3 and pip; cargo if the binary is missing)
# FHIRLAKE_BIN overrides the binary (default: $CARGO_TARGET_DIR or target/, debug/fhirlake).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 2; }
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check fhirclient requests
. "$here/sample_server.sh"
sample_setup pyfhirclient   # $bin, $work, a lake of samples/rif + samples/plain

# 2. The app's redirect URI (loopback). client-py hands the callback URL to handle_callback();
#    the script reads it from the consent response's Location, so nothing listens there.
app_port="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()')"
redirect="http://127.0.0.1:$app_port/callback"

# 3. Auth config: one public client (client-py sends PKCE S256, which the server requires of
#    public clients); john is member 567834.
cat >"$work/auth/clients.toml" <<EOF
[[client]]
client_id = "pyfhirclient-test"
name = "client-py test app"
redirect_uris = ["$redirect"]
EOF
cat >"$work/auth/members.toml" <<EOF
[[member]]
username = "john"
display_name = "John Doe"
password_hash = "$("$bin" hash-secret john-pw)"
patients = ["567834"]
EOF

# 4. The server under test, on a free loopback port.
start_server

# 5. The client.
python3 "$here/py/pyfhirclient_test.py" "$base" "$redirect" "$work/audit.ndjson"
