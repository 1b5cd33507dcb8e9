#!/usr/bin/env bash
# Checks that the API does what its OpenAPI document says: builds the release binary, starts it on
# 127.0.0.1 with a free port, a temporary database and fresh tokens, runs schemathesis (pinned) with
# every check against /openapi.json, and stops the service. Bounded: schemathesis gets
# SCHEMATHESIS_MAX_TIME seconds (default 150) and is killed a minute after that.
#
# What is configured for the run is in scripts/schemathesis.toml (one narrow exception, explained
# there).
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.32.5
# Its property-testing engine, pinned too so a run today is the run of tomorrow.
hypothesis_version=6.170.17
max_time=${SCHEMATHESIS_MAX_TIME:-150}

log() { echo "schemathesis: $*"; }

scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
user_scripts_dir=$(python3 -c 'import site, os; print(os.path.join(site.getuserbase(), "bin"))')
find_st() {
  for candidate in "$(command -v schemathesis || true)" "$scripts_dir/schemathesis" "$user_scripts_dir/schemathesis"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" --version 2>/dev/null | grep -q " $version\$"; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}
st=$(find_st) || {
  log "installing schemathesis $version"
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$version" "hypothesis==$hypothesis_version" ||
    python3 -m pip install --quiet --disable-pip-version-check --user "schemathesis==$version" "hypothesis==$hypothesis_version"
  st=$(find_st) || { echo "schemathesis: FAILED: schemathesis $version is not runnable after install" >&2; exit 1; }
}

cargo build --release --locked --bin tunehook

dir=$(mktemp -d /tmp/tunehook-schemathesis.XXXXXX)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
api_token=$(token)
export TUNEHOOK_SCHEMATHESIS_INGEST_TOKEN
TUNEHOOK_SCHEMATHESIS_INGEST_TOKEN=$(token)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

env -i PATH="$PATH" \
  TUNEHOOK_LISTEN="127.0.0.1:$port" \
  TUNEHOOK_DATABASE_URL="sqlite://$dir/tunehook.db" \
  TUNEHOOK_API_TOKEN="$api_token" \
  TUNEHOOK_INGEST_TOKEN="$TUNEHOOK_SCHEMATHESIS_INGEST_TOKEN" \
  TUNEHOOK_LOG_FORMAT=json TUNEHOOK_LOG=warn \
  target/release/tunehook serve >"$dir/tunehook.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=1)" 2>/dev/null; then
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || { cat "$dir/tunehook.log"; echo "schemathesis: FAILED: tunehook exited" >&2; exit 1; }
  sleep 0.1
done
log "tunehook on 127.0.0.1:$port; running schemathesis $version for at most ${max_time}s"

status=0
timeout --kill-after=10 $((max_time + 60)) \
  "$st" --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
  --checks all \
  --header "Authorization: Bearer $api_token" \
  --max-examples 50 \
  --max-time "$max_time" \
  --workers 1 \
  --seed "${SCHEMATHESIS_SEED:-2026}" \
  --no-color \
  --output-sanitize true || status=$?
if grep -q '"level":"ERROR"' "$dir/tunehook.log"; then
  grep '"level":"ERROR"' "$dir/tunehook.log" | head -5
  echo "schemathesis: FAILED: errors in tunehook's log" >&2
  status=1
fi
[ "$status" = 0 ] && log "passed" || echo "schemathesis: FAILED (exit $status)" >&2
exit "$status"
