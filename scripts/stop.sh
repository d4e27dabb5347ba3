#!/usr/bin/env bash
# Stop the krt server started by scripts/start.sh: SIGTERM (a drain: /readyz turns 503 and
# responses in flight may finish for KRT_DRAIN_SECONDS), then SIGKILL if it is still alive
# after KRT_DRAIN_SECONDS + 10 s. KRT_DRAIN_SECONDS comes from the environment, else from
# $KRT_ENV_FILE (default .env in the repo root), else 30. Removes the pid file.
# Idempotent: with no server running it says so and exits 0.
#
#   scripts/stop.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/$(basename "${BASH_SOURCE[0]}")"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

case "${1:-}" in
    "") ;;
    -h|--help) sed -n '2,8s/^# \{0,1\}//p' "$SELF"; exit 0 ;;
    *) echo "stop.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

LOG_DIR="${KRT_LOG_DIR:-logs}"
ENV_FILE="${KRT_ENV_FILE:-.env}"
PID_FILE="$LOG_DIR/server.pid"

# Poll until PID is gone or SECONDS reaches the deadline; true when gone.
wait_gone() {
    local pid="$1" deadline="$2"
    while alive "$pid"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

if [ ! -f "$PID_FILE" ]; then
    echo "krt is not running (no $PID_FILE)"
    exit 0
fi
PID="$(tr -dc '0-9' <"$PID_FILE")"
if [ -z "$PID" ] || ! alive "$PID"; then
    echo "krt is not running (pid ${PID:-?} in $PID_FILE is gone); removing the stale pid file"
    rm -f "$PID_FILE"
    exit 0
fi
if ! is_krt "$PID"; then
    echo "pid $PID in $PID_FILE is not krt serve (the pid was reused); removing the stale pid file, killing nothing"
    rm -f "$PID_FILE"
    exit 0
fi

drain="$(config_value KRT_DRAIN_SECONDS)"
if ! [[ "$drain" =~ ^[0-9]+(\.[0-9]*)?$ ]]; then
    [ -z "$drain" ] || echo "stop.sh: KRT_DRAIN_SECONDS='$drain' is not a number; assuming 30" >&2
    drain=30
fi
whole="${drain%%.*}"
fraction="${drain#"$whole"}"
fraction="${fraction#.}"
[[ "$fraction" =~ [1-9] ]] && whole=$((whole + 1))
grace=$((10#$whole + 10))

echo "stopping krt (pid $PID): SIGTERM, draining for up to ${grace}s"
kill -TERM "$PID" 2>/dev/null || true
if wait_gone "$PID" $((SECONDS + grace)); then
    echo "krt stopped"
else
    echo "krt (pid $PID) still running after ${grace}s; sending SIGKILL" >&2
    kill -KILL "$PID" 2>/dev/null || true
    if ! wait_gone "$PID" $((SECONDS + 10)); then
        echo "stop.sh: pid $PID survived SIGKILL; leaving $PID_FILE in place" >&2
        exit 1
    fi
    echo "krt killed"
fi
rm -f "$PID_FILE"
