#!/usr/bin/env bash
# Start `krt serve` in the background and wait until /readyz says 200.
#
#   scripts/start.sh [--port N] [--host H] [--timeout S]
#
# stdout+stderr go to $KRT_LOG_DIR/server.log (appended, one marker line per start), the pid
# to $KRT_LOG_DIR/server.pid (KRT_LOG_DIR defaults to logs/ in the repo root). The server
# reads $KRT_ENV_FILE (default .env in the repo root); the environment wins over it.
# Exits 0 once ready; non-zero with the log's tail if the server dies or is not ready in
# time (default 120 s, KRT_START_TIMEOUT) — then it is left running; scripts/stop.sh ends it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/$(basename "${BASH_SOURCE[0]}")"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

usage() {
    sed -n '2,10s/^# \{0,1\}//p' "$SELF"
}

HOST="0.0.0.0"
PORT="8000"
TIMEOUT="${KRT_START_TIMEOUT:-120}"
while [ $# -gt 0 ]; do
    case "$1" in
        --port) [ $# -ge 2 ] || { echo "start.sh: --port needs a value" >&2; exit 2; }; PORT="$2"; shift 2 ;;
        --port=*) PORT="${1#*=}"; shift ;;
        --host) [ $# -ge 2 ] || { echo "start.sh: --host needs a value" >&2; exit 2; }; HOST="$2"; shift 2 ;;
        --host=*) HOST="${1#*=}"; shift ;;
        --timeout) [ $# -ge 2 ] || { echo "start.sh: --timeout needs a value" >&2; exit 2; }; TIMEOUT="$2"; shift 2 ;;
        --timeout=*) TIMEOUT="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "start.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
    echo "start.sh: --port must be a number from 1 to 65535, got '$PORT'" >&2
    exit 2
fi
if ! [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || [ "$TIMEOUT" -lt 1 ]; then
    echo "start.sh: the timeout must be a whole number of seconds, got '$TIMEOUT'" >&2
    exit 2
fi

KRT="$ROOT/.venv/bin/krt"
if [ ! -x "$KRT" ]; then
    echo "start.sh: $KRT not found; run scripts/setup.sh first" >&2
    exit 1
fi
command -v curl >/dev/null 2>&1 || { echo "start.sh: curl is required (apt-get install -y curl)" >&2; exit 1; }

LOG_DIR="${KRT_LOG_DIR:-logs}"
ENV_FILE="${KRT_ENV_FILE:-.env}"
LOG_FILE="$LOG_DIR/server.log"
PID_FILE="$LOG_DIR/server.pid"
mkdir -p "$LOG_DIR"


if [ -f "$PID_FILE" ]; then
    old="$(tr -dc '0-9' <"$PID_FILE")"
    if [ -n "$old" ] && alive "$old" && is_krt "$old"; then
        echo "start.sh: krt is already running (pid $old, $PID_FILE); scripts/stop.sh stops it" >&2
        exit 1
    fi
    echo "start.sh: removing stale pid file $PID_FILE (pid ${old:-?} is not running krt)"
    rm -f "$PID_FILE"
fi

if command -v ss >/dev/null 2>&1 && [ -n "$(ss -Htln "sport = :$PORT" 2>/dev/null)" ]; then
    echo "start.sh: port $PORT is already in use:" >&2
    ss -tlnp "sport = :$PORT" >&2 || true
    echo "start.sh: stop that process (scripts/purge_pod.sh --port $PORT) or pick another --port" >&2
    exit 1
fi

case "$HOST" in
    ""|0.0.0.0) PROBE_HOST="127.0.0.1" ;;
    ::|"[::]") PROBE_HOST="[::1]" ;;
    \[*) PROBE_HOST="$HOST" ;;
    *:*) PROBE_HOST="[$HOST]" ;;
    *) PROBE_HOST="$HOST" ;;
esac
READY_URL="http://$PROBE_HOST:$PORT/readyz"

printf '===== krt start %s host=%s port=%s =====\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$HOST" "$PORT" >>"$LOG_FILE"
# Own session (setsid): a Ctrl-C in this terminal never reaches the server; nohup: neither does
# the terminal closing. In a script the background child is not a group leader, so setsid
# execs in place and $! is the server's pid.
SETSID=()
command -v setsid >/dev/null 2>&1 && SETSID=(setsid)
nohup "${SETSID[@]}" "$KRT" --env-file "$ENV_FILE" serve --host "$HOST" --port "$PORT" \
    >>"$LOG_FILE" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$PID_FILE"
echo "krt starting (pid $PID), log $LOG_FILE; waiting up to ${TIMEOUT}s for $READY_URL"

show_tail() {
    echo "----- last 40 lines of $LOG_FILE -----" >&2
    tail -n 40 "$LOG_FILE" >&2 || true
    echo "-----" >&2
}

deadline=$((SECONDS + TIMEOUT))
while :; do
    if ! alive "$PID"; then
        code=0
        wait "$PID" || code=$?
        rm -f "$PID_FILE"
        echo "start.sh: krt serve exited (status $code) before it was ready" >&2
        show_tail
        exit 1
    fi
    status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$READY_URL" || true)"
    if [ "$status" = "200" ]; then
        echo "krt ready: http://$PROBE_HOST:$PORT (WebSocket ws://$PROBE_HOST:$PORT/v1/audio/speech/stream/ws; pid $PID)"
        exit 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "start.sh: krt (pid $PID) was not ready after ${TIMEOUT}s (last /readyz: ${status:-no answer})." >&2
        echo "start.sh: it is still running; scripts/tail_bg_logs.sh follows it, scripts/stop.sh stops it." >&2
        show_tail
        exit 1
    fi
    sleep 0.5
done
