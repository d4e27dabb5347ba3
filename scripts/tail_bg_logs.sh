#!/usr/bin/env bash
# Follow the background server's log ($KRT_LOG_DIR/server.log, default logs/server.log),
# across restarts (tail -F). Arguments go to tail, e.g. -n 200.
#
#   scripts/tail_bg_logs.sh [-n N]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/$(basename "${BASH_SOURCE[0]}")"
cd "$ROOT"

case "${1:-}" in
    -h|--help) sed -n '2,5s/^# \{0,1\}//p' "$SELF"; exit 0 ;;
esac

LOG_FILE="${KRT_LOG_DIR:-logs}/server.log"
[ -f "$LOG_FILE" ] || echo "($LOG_FILE does not exist yet; waiting for scripts/start.sh to create it)" >&2
exec tail -F "$@" "$LOG_FILE"
