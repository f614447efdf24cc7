#!/usr/bin/env bash
# The API's own JSON is valid FHIR R4: CapabilityStatement, searchset Bundles (with _include,
# _summary=count, paging), a $everything page, history Bundles, and OperationOutcomes for a bad
# parameter, an unknown id and a missing token. Serves LAKE on a free loopback port and stops it after.
#   bash tests/validate/api_responses.sh LAKE   (run from the repository root)
set -euo pipefail
lake="$1"
bin="${FHIRLAKE_BIN:-cargo run -q --}"
out="$(mktemp --suffix=.ndjson)"
log="$(mktemp)"
$bin serve --lake "$lake" --listen 127.0.0.1:0 >"$log" 2>/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$out" "$out.body" "$log"' EXIT
for _ in $(seq 1 300); do
  grep -q '^fhirlake serving ' "$log" && break
  sleep 0.2
done
base="$(sed -n 's/^fhirlake serving //p' "$log" | head -1)"
[ -n "$base" ] || { echo "the server did not start"; exit 1; }
token="$($bin token --patient 567834 --lake "$lake" --base-url "$base" | tail -1)"
get() {
  # One response per line; the status is checked against the expected one.
  local want="$1" path="$2" auth="${3:-yes}"
  local args=(-s -o "$out.body" -w '%{http_code}')
  [ "$auth" = yes ] && args+=(-H "Authorization: Bearer $token")
  local got
  got="$(curl "${args[@]}" "$base/$path")"
  if [ "$got" != "$want" ]; then
    echo "GET $path: HTTP $got, expected $want"
    exit 1
  fi
  python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$out.body" >>"$out"
}
get 200 metadata no
get 200 'ExplanationOfBenefit?patient=567834&_include=ExplanationOfBenefit:*&_count=2'
get 200 'ExplanationOfBenefit?patient=567834&_summary=count'
get 200 'Patient/567834/$everything?_count=3'
get 200 'Coverage?patient=567834&_include=Coverage:payor'
get 200 'Patient/567834/_history/1'
get 200 'Patient/567834/_history'
get 200 'InsurancePlan?_count=1' no
plan="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["entry"][0]["resource"]["id"])' "$out.body")"
get 200 "InsurancePlan/$plan/_history" no
get 200 'InsurancePlan?_include=InsurancePlan:coverage-area' no
get 200 'Basic?_count=2&_include=Basic:subject&_include=Basic:formulary' no
get 400 'ExplanationOfBenefit?service-date=bogus'
get 404 'Patient/nobody'
get 401 'ExplanationOfBenefit' no
python3 tests/validate/validate_fhir.py "$out"
