#!/usr/bin/env bash
# Third-party interop: a real OpenID provider (npm oidc-provider) issues a JWT access token
# (client_credentials + resource indicator, aud = FHIR base, ES256 and RS256), and fhirlake's
# validator (crates/api/examples/check_token.rs) must accept it — and refuse a tampered
# token, a token for another audience, and a scope that does not cover the resource type.
#
# Usage: tests/smart/oidc_provider_test.sh      (needs node >= 20, npm, cargo; loopback only)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
node_dir="$here/node"
aud="https://fhir.example.org/r4"
patient="pat-idp-4711"
pass=0
fail=0

ok() { echo "ok - $1"; pass=$((pass + 1)); }
ko() { echo "FAIL - $1"; fail=$((fail + 1)); }

command -v node >/dev/null && command -v npm >/dev/null || { echo "node and npm are required" >&2; exit 2; }
echo "# oidc-provider $(node -p "require('$node_dir/package.json').dependencies['oidc-provider']")"
npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error >/dev/null

# Built with the workspace's feature set (as `cargo test --workspace` builds it), so nothing
# is compiled twice.
(cd "$root" && cargo build -q --workspace --example check_token)
check_bin="${CARGO_TARGET_DIR:-$root/target}/debug/examples/check_token"
check() { "$check_bin" "$@"; }

log="$(mktemp)"
idp_pid=""
cleanup() {
  if [[ -n "$idp_pid" ]]; then kill "$idp_pid" 2>/dev/null || true; wait "$idp_pid" 2>/dev/null || true; fi
  rm -f "$log"
}
trap cleanup EXIT

for alg in ES256 RS256; do
  IDP_ALG="$alg" node "$node_dir/idp.mjs" "$aud" "$patient" >"$log" 2>&1 &
  idp_pid=$!
  issuer=""
  for _ in $(seq 1 50); do
    issuer="$(sed -n 's/^ISSUER=//p' "$log")"
    [[ -n "$issuer" ]] && break
    sleep 0.1
  done
  [[ -n "$issuer" ]] || { cat "$log" >&2; echo "IdP did not start" >&2; exit 1; }

  resp="$(curl -fsS -u fhirlake-test:idp-test-secret \
    -d grant_type=client_credentials \
    --data-urlencode 'scope=patient/Coverage.rs patient/ExplanationOfBenefit.read' \
    --data-urlencode "resource=$aud" "$issuer/token")"
  token="$(node -e 'process.stdout.write(JSON.parse(process.argv[1]).access_token)' "$resp")"
  header_alg="$(node -e 'process.stdout.write(JSON.parse(Buffer.from(process.argv[1].split(".")[0],"base64url")).alg)' "$token")"
  [[ "$header_alg" == "$alg" ]] && ok "$alg: provider signed with $alg" || ko "$alg: provider signed with $header_alg"

  if out="$(check "$issuer" "$aud" "$token" patient Coverage)" && [[ "$out" == *"\"patients\":[\"$patient\"]"* ]]; then
    ok "$alg: token accepted, patient claim mapped"
  else
    ko "$alg: token refused: $out"
  fi
  if out="$(check "$issuer" "https://other.example/fhir" "$token")"; then ko "$alg: wrong audience accepted"; else ok "$alg: wrong audience refused ($out)"; fi
  # Flip one character in the middle of the signature.
  sig="${token##*.}"; c="${sig:10:1}"; [[ "$c" == "A" ]] && r="B" || r="A"
  tampered="${token%.*}.${sig:0:10}${r}${sig:11}"
  if out="$(check "$issuer" "$aud" "$tampered")"; then ko "$alg: tampered signature accepted"; else ok "$alg: tampered signature refused ($out)"; fi
  if out="$(check "$issuer" "$aud" "$token" patient Condition)"; then ko "$alg: out-of-scope type accepted"; else
    [[ "$out" == *403* ]] && ok "$alg: out-of-scope type refused ($out)" || ko "$alg: expected 403, got $out"
  fi

  kill "$idp_pid"; wait "$idp_pid" 2>/dev/null || true; idp_pid=""
done

echo "$pass passed, $fail failed"
[[ "$fail" -eq 0 ]]
