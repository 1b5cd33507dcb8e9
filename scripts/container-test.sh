#!/usr/bin/env bash
# Builds the real image from the Dockerfile and runs it the way `docker run` would: the image's own
# entrypoint, command, environment and user, plus a free port and a writable data folder. Then checks
# what a user would: /readyz answers 200, the HEALTHCHECK command passes inside the container, a
# webhook posted with `tunehook send-test-event` shows under /v1/jobs, the process runs as the image's
# non-root user, the database lands in the data folder, and a restart keeps the job.
#
# Needs podman and buildah (no Docker engine): on machines without a registry, the base images are made
# locally by ../shared/container/make-base-images.sh when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/tunehook:test}
shared=../shared/container/make-base-images.sh

log() { echo "container-test: $*"; }
fail() { echo "container-test: FAILED: $*" >&2; exit 1; }

if [ -f "$shared" ]; then
  bash "$shared"
elif ! command -v podman >/dev/null ||
  ! podman image exists docker.io/library/rust:1-slim-bookworm 2>/dev/null ||
  ! podman image exists docker.io/library/debian:bookworm-slim 2>/dev/null; then
  # Neither the script that makes the base images nor the images themselves: this machine cannot
  # build the image (no registry is reachable here). Say so loudly rather than fail on a pull.
  log "SKIPPED: no $shared and no local base images; run it where they exist"
  exit 0
fi
command -v podman >/dev/null && command -v buildah >/dev/null || fail "podman and buildah are needed"

started=$(date +%s)
podman build --format docker --isolation chroot --network host -t "$IMAGE" . >/tmp/tunehook-image-build.log 2>&1 ||
  { tail -40 /tmp/tunehook-image-build.log; fail "podman build"; }
build_seconds=$(( $(date +%s) - started ))
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE in ${build_seconds}s, $(( size / 1024 / 1024 )) MiB"

inspect() { podman image inspect --format "{{json $1}}" "$IMAGE"; }
entrypoint=$(inspect .Config.Entrypoint | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin) or []))')
cmd=$(inspect .Config.Cmd | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin) or []))')
user=$(inspect .Config.User | python3 -c 'import json,sys; print(json.load(sys.stdin))')
health=$(inspect .Config.Healthcheck | python3 -c '
import json, sys
test = (json.load(sys.stdin) or {}).get("Test") or []
print(" ".join(test[1:]) if test and test[0] == "CMD" else "")')
listen=$(inspect .Config.Env | python3 -c '
import json, sys
print([e.split("=", 1)[1] for e in json.load(sys.stdin) if e.startswith("TUNEHOOK_LISTEN=")][0])')
log "entrypoint=[$entrypoint] cmd=[$cmd] user=$user healthcheck=[$health] listen=$listen"
[ -n "$health" ] || fail "the image has no HEALTHCHECK command"
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || fail "the image runs as root"

# What `docker run -p PORT:8080 -v DATA:/data` gives: the image's environment, a free port, a volume.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d /tmp/tunehook-data.XXXXXX)
chown "${user%%:*}:${user##*:}" "$data" 2>/dev/null || chmod 0777 "$data"
volumes=$(inspect .Config.Volumes)
case "$volumes" in *'"/data"'*) ;; *) fail "the image declares no /data volume: $volumes" ;; esac
container=$(buildah from "$IMAGE")
buildah config --env "TUNEHOOK_LISTEN=${listen%:*}:$port" "$container"
# `docker run -v DATA:/data` puts DATA where the image's anonymous /data volume would be; `buildah run`
# would mount that anonymous volume over our bind mount, so the working container drops it.
buildah config --volume /data- "$container"
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  pkill -TERM -f "tunehook $cmd" -U "${user%%:*}" 2>/dev/null || true
  buildah rm "$container" >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT
in_container() { buildah run --isolation chroot --network host -v "$data:/data" "$container" -- "$@"; }

http() { # METHOD URL [TOKEN] -> prints "STATUS BODY"
  python3 - "$@" <<'PY'
import sys, urllib.request, urllib.error
method, url = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, method=method)
if len(sys.argv) > 3:
    req.add_header("Authorization", "Bearer " + sys.argv[3])
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except Exception as e:
    print(0, e)
PY
}

start_server() {
  # shellcheck disable=SC2086
  in_container $entrypoint $cmd >>/tmp/tunehook-container.log 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    [ "$(http GET "http://127.0.0.1:$port/readyz" | cut -d' ' -f1)" = 200 ] && return 0
    sleep 0.2
  done
  tail -20 /tmp/tunehook-container.log
  fail "/readyz never answered 200"
}

stop_server() {
  pkill -TERM -f "tunehook $cmd" -U "${user%%:*}" || fail "no tunehook process runs as ${user%%:*}"
  for _ in $(seq 1 100); do
    pgrep -f "tunehook $cmd" -U "${user%%:*}" >/dev/null || { wait "$server_pid" 2>/dev/null || true; server_pid=; return 0; }
    sleep 0.2
  done
  fail "tunehook did not stop on SIGTERM"
}

: >/tmp/tunehook-container.log
start_server
log "/readyz answers 200"
pgrep -f "tunehook $cmd" -U "${user%%:*}" >/dev/null || fail "tunehook does not run as user ${user%%:*}"
log "the server runs as uid ${user%%:*}"
# shellcheck disable=SC2086
in_container $health >/dev/null || fail "the HEALTHCHECK command failed inside the container"
log "the HEALTHCHECK command passes"

tokens=$(in_container tunehook tokens)
path=$(echo "$tokens" | sed -n 's/^Webhook path: //p')
api=$(echo "$tokens" | sed -n '/^API token/{n;p}' | tr -d ' ')
[ -n "$path" ] && [ -n "$api" ] || fail "tunehook tokens printed no path or token"
in_container tunehook send-test-event "http://127.0.0.1:$port$path" --event AVAILABLE --finetune-id container-job \
  --name from-ci >/dev/null || fail "send-test-event"
answer=$(http GET "http://127.0.0.1:$port/v1/jobs" "$api")
case "$answer" in 200*container-job*) log "the webhook's job shows under /v1/jobs" ;; *) fail "/v1/jobs: $answer" ;; esac
[ -f "$data/tunehook.db" ] || fail "no database in the data folder"
log "the database is in the data folder"

stop_server
start_server
answer=$(http GET "http://127.0.0.1:$port/v1/jobs/container-job" "$api")
case "$answer" in 200*AVAILABLE*) log "a restart keeps the job" ;; *) fail "after restart: $answer" ;; esac
stop_server
grep -q '"level":"ERROR"' /tmp/tunehook-container.log && fail "errors in the container's log"
log "passed (image $(( size / 1024 / 1024 )) MiB, built in ${build_seconds}s)"
