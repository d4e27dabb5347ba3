#!/usr/bin/env bash
# Install krt (`just setup`: .venv with torch and krt) and create .env with a fresh API key.
#
#   scripts/setup.sh [--rotate-key]
#
# .env ($KRT_ENV_FILE, default .env in the repo root) is created once, mode 0600, with a
# strong random API_KEY (printed once) and the common knobs commented out. An existing
# .env is kept as it is; --rotate-key replaces only its API_KEY line (restart the server
# afterwards: scripts/stop.sh && scripts/start.sh).
# KRT_SKIP_INSTALL=1 skips `just setup` (only the .env step runs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/$(basename "${BASH_SOURCE[0]}")"
cd "$ROOT"

ROTATE=0
for arg in "$@"; do
    case "$arg" in
        --rotate-key) ROTATE=1 ;;
        -h|--help) sed -n '2,11s/^# \{0,1\}//p' "$SELF"; exit 0 ;;
        *) echo "setup.sh: unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

if [ "${KRT_SKIP_INSTALL:-0}" != "1" ]; then
    JUST="$(command -v just || true)"
    [ -n "$JUST" ] || { [ -x .venv/bin/just ] && JUST=.venv/bin/just; }
    if [ -z "$JUST" ]; then
        echo "setup.sh: 'just' is required. Install it from PyPI, then run this again:" >&2
        echo "    python3 -m pip install rust-just      (or: pipx install rust-just)" >&2
        exit 1
    fi
    echo "== just setup (creates/updates .venv; the first run downloads torch and krt's dependencies)"
    "$JUST" setup
fi

ENV_FILE="${KRT_ENV_FILE:-.env}"
umask 077

new_key() {
    local py=python3
    [ -x .venv/bin/python ] && py=.venv/bin/python
    "$py" -c 'import secrets; print(secrets.token_urlsafe(32))'
}

print_key() {
    echo "API_KEY=$1"
    echo "  (shown once; it is in $ENV_FILE. Clients send ?api_key=KEY or 'Authorization: Bearer KEY'.)"
}

if [ -f "$ENV_FILE" ]; then
    if [ "$ROTATE" = "1" ]; then
        key="$(new_key)"
        tmp="$(mktemp "$(dirname "$ENV_FILE")/.env.rotate.XXXXXX")"
        trap 'rm -f "$tmp"' EXIT
        if grep -qE '^[[:space:]]*(export[[:space:]]+)?API_KEY[[:space:]]*=' "$ENV_FILE"; then
            awk -v key="$key" '
                /^[[:space:]]*(export[[:space:]]+)?API_KEY[[:space:]]*=/ { if (!done) print "API_KEY=" key; done = 1; next }
                { print }
            ' "$ENV_FILE" >"$tmp"
        else
            { cat "$ENV_FILE"; echo "API_KEY=$key"; } >"$tmp"
        fi
        chmod 600 "$tmp"
        mv -f "$tmp" "$ENV_FILE"
        trap - EXIT
        echo "Rotated API_KEY in $ENV_FILE (the rest of the file is unchanged)."
        print_key "$key"
        echo "Restart the server to use it: scripts/stop.sh && scripts/start.sh"
    else
        echo "Keeping the existing $ENV_FILE (API_KEY unchanged; scripts/setup.sh --rotate-key makes a new one)."
        current="$(sed -n -E 's/^[[:space:]]*(export[[:space:]]+)?API_KEY[[:space:]]*=[[:space:]]*//p' "$ENV_FILE" | tail -n 1)"
        current="${current#[\"\']}"
        current="${current%[\"\']}"
        if [ -z "$current" ]; then
            echo "WARNING: $ENV_FILE sets no API_KEY: the WebSocket accepts anyone. Run scripts/setup.sh --rotate-key." >&2
        elif [ "$current" = "dev-key" ] || [ "${#current}" -lt 16 ]; then
            echo "WARNING: the API_KEY in $ENV_FILE is weak or a known default. Run scripts/setup.sh --rotate-key." >&2
        fi
        mode="$(stat -c '%a' "$ENV_FILE" 2>/dev/null || echo '?')"
        if [ "$mode" != "600" ] && [ "$mode" != "400" ]; then
            echo "WARNING: $ENV_FILE has mode $mode; it holds the API key: chmod 600 $ENV_FILE" >&2
        fi
    fi
    exit 0
fi

key="$(new_key)"
mkdir -p "$(dirname "$ENV_FILE")"
tmp="$(mktemp "$(dirname "$ENV_FILE")/.env.new.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
cat >"$tmp" <<ENV
# krt configuration, read by krt serve at start (the environment wins over this file).
# All knobs and their defaults: docs/configuration.md. Restart after a change:
#   scripts/stop.sh && scripts/start.sh

# Clients must present this key: ?api_key=KEY or "Authorization: Bearer KEY".
API_KEY=$key

# Where clients outside the pod reach this server (RunPod's public TCP mapping).
# RUNPOD_TCP_HOST=
# RUNPOD_TCP_PORT=8000

# LOG_LEVEL=INFO
# auto = torch on CUDA, onnx on CPU.
# KRT_BACKEND=auto
# KOKORO_DEVICE=
# KRT_CACHE_DIR=~/.cache/krt
# Voice ids or blends for the logical voices; empty = the weight source's best.
# DEFAULT_VOICE_FEMALE=
# DEFAULT_VOICE_MALE=
# KOKORO_SPEED=1.0
# MAX_CONCURRENT_JOBS=4
# MAX_QUEUED_REQUESTS=16
# QUEUE_WAIT_SLA_MS=4000
# KRT_DRAIN_SECONDS=30
# KRT_METRICS_LOG=logs/metrics.log
ENV
chmod 600 "$tmp"
# Never clobber a .env that appeared meanwhile: mv -n leaves $tmp behind if the target exists.
mv -n "$tmp" "$ENV_FILE"
if [ -e "$tmp" ]; then
    echo "setup.sh: $ENV_FILE appeared while writing; keeping it" >&2
    exit 1
fi
trap - EXIT
echo "Created $ENV_FILE (mode 0600) with a new API key:"
print_key "$key"
