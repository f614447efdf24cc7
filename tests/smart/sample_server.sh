# Shared by the SMART client interop scripts (source it; it is not run on its own):
# the fhirlake binary, a temp work folder cleaned up on exit, a lake of the samples, and
# `fhirlake serve` started on a free loopback port with the auth config in "$work/auth".
#
# After `sample_setup NAME`: $bin, $work (with $work/lake and an empty $work/auth).
# After `start_server`: $base (the FHIR base URL) and $pid; audit log in "$work/audit.ndjson".

sample_setup() {
  local name="$1"
  bin="${FHIRLAKE_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/fhirlake}"
  if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build -q --bin fhirlake)
  fi
  work="$(mktemp -d "${TMPDIR:-/tmp}/fhirlake-$name.XXXXXX")"
  pid=""
  trap sample_cleanup EXIT
  (cd "$root" && "$bin" ingest --lake "$work/lake" samples/rif samples/plain) >"$work/ingest.log" 2>&1 \
    || { cat "$work/ingest.log" >&2; echo "ingest failed" >&2; exit 1; }
  mkdir -p "$work/auth"
}

sample_cleanup() {
  if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}

start_server() {
  mkfifo "$work/out"
  "$bin" serve --lake "$work/lake" --listen 127.0.0.1:0 --auth-config "$work/auth" \
    --audit-log "$work/audit.ndjson" >"$work/out" 2>"$work/serve.log" &
  pid=$!
  exec 3<"$work/out"
  local line
  if ! IFS= read -r -t 60 line <&3; then
    cat "$work/serve.log" >&2; echo "fhirlake serve did not start" >&2; exit 1
  fi
  case "$line" in
    "fhirlake serving "*) base="${line#fhirlake serving }" ;;
    *) cat "$work/serve.log" >&2; echo "unexpected first line: $line" >&2; exit 1 ;;
  esac
  cat <&3 >/dev/null &   # keep draining the server's stdout
}
