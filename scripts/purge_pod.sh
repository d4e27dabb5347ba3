#!/usr/bin/env bash
# Stop the krt server and optionally reset the pod.
#
#   scripts/purge_pod.sh [--port N] [--clean-files | --aggressive] [machine-wide flags --yes] [--dry-run]
#
# Always: stop the server of $KRT_LOG_DIR/server.pid (scripts/stop.sh: a drain, then SIGKILL).
#   --port N        also stop whatever still listens on TCP port N (found with ss, fuser or lsof)
#   --clean-files   remove .venv/, the log dir (server.log, server.pid, metrics.log), cache/,
#                   warmup_audio/, *.pid in the repo root, KRT_METRICS_LOG and the krt weight
#                   cache ${KRT_CACHE_DIR:-~/.cache/krt}. Keeps .env (it holds the API key).
#   --aggressive    --clean-files, plus the pip cache, ~/.cache/torch, ~/.cache/torch_extensions
#                   and the Hugging Face cache of MODEL_NAME (hexgrad/Kokoro-82M)
# Machine-wide (they affect more than krt; each needs --yes, else the plan is printed and the
# script exits 2 having done nothing):
#   --drop-caches   sync, then drop the kernel page cache (root)
#   --clear-shm     remove everything in /dev/shm
#   --clear-tmp     remove everything in /tmp but X11/ICE and tmux sockets (may disrupt consoles)
#   --kill-jupyter  stop Jupyter servers and kernels
#   --kill-sessions end tmux and screen sessions (run this from outside them)
#   --purge-system  clear apt's package caches (krt's setup installs no system packages)
#   --docker-prune  docker/podman system prune -af
#   --gpu-reset     nvidia-smi --gpu-reset (needs no process on the GPUs)
#   --self-remove   delete this RunPod pod (RUNPOD_API_KEY and RUNPOD_POD_ID; runpodctl or the REST API)
#   --yes           allow the machine-wide flags
#   --dry-run       print every action instead of doing it
# Settings come from the environment, else from $KRT_ENV_FILE (default .env in the repo root).
# Exit status: 0 done, 1 a step failed, 2 bad usage or machine-wide flags without --yes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/$(basename "${BASH_SOURCE[0]}")"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

usage() { sed -n '2,29s/^# \{0,1\}//p' "$SELF"; }

PORT=""
CLEAN=0
AGGRESSIVE=0
YES=0
DRY_RUN=0
MACHINE=()
while [ $# -gt 0 ]; do
    case "$1" in
        --port) [ $# -ge 2 ] || { echo "purge_pod.sh: --port needs a value" >&2; exit 2; }; PORT="$2"; shift ;;
        --port=*) PORT="${1#*=}" ;;
        --clean-files) CLEAN=1 ;;
        --aggressive) AGGRESSIVE=1; CLEAN=1 ;;
        --drop-caches|--clear-shm|--clear-tmp|--kill-jupyter|--kill-sessions|--purge-system|--docker-prune|--gpu-reset|--self-remove)
            MACHINE+=("${1#--}") ;;
        --yes|-y) YES=1 ;;
        --dry-run|-n) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "purge_pod.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$PORT" ] && { ! [[ "$PORT" =~ ^[0-9]+$ ]] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; }; then
    echo "purge_pod.sh: --port must be a number from 1 to 65535, got '$PORT'" >&2
    exit 2
fi

ENV_FILE="${KRT_ENV_FILE:-.env}"
FAILED=0

expand_home() {
    case "$1" in
        "~") printf '%s' "$HOME" ;;
        \~/*) printf '%s/%s' "$HOME" "${1#\~/}" ;;
        *) printf '%s' "$1" ;;
    esac
}
cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }
say() { if [ "$DRY_RUN" = 1 ]; then echo "[dry-run] would $*"; else echo "== $*"; fi; }
# run CMD...: print it, and run it unless this is a dry run; a failure is counted, not fatal.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "[dry-run] would run: $*"
        return 0
    fi
    echo "+ $*"
    if ! "$@"; then
        echo "purge_pod.sh: failed: $*" >&2
        FAILED=$((FAILED + 1))
    fi
}
# remove PATH: rm -rf it if it exists, refusing paths that would take more than krt with them.
remove() {
    local path="$1" real
    [ -e "$path" ] || [ -L "$path" ] || return 0
    real="$(realpath -m -- "$path")"
    case "$real" in
        /|/root|/home|/usr|/etc|/var|/tmp|/opt|"$HOME"|"$HOME/.cache"|"$ROOT"|"$(dirname "$ROOT")")
            echo "purge_pod.sh: refusing to remove $path ($real)" >&2
            FAILED=$((FAILED + 1))
            return 0 ;;
    esac
    if [ "$DRY_RUN" = 1 ]; then
        echo "[dry-run] would remove $path ($(du -sh -- "$path" 2>/dev/null | cut -f1 || echo '?'))"
        return 0
    fi
    if rm -rf -- "$path"; then
        echo "removed $path"
    else
        echo "purge_pod.sh: could not remove all of $path" >&2
        FAILED=$((FAILED + 1))
    fi
}
# stop_pid PID GRACE: SIGTERM, wait up to GRACE seconds, then SIGKILL.
stop_pid() {
    local pid="$1" grace="$2" deadline
    if [ "$DRY_RUN" = 1 ]; then
        echo "[dry-run] would stop pid $pid ($(cmdline "$pid")): SIGTERM, SIGKILL after ${grace}s"
        return 0
    fi
    echo "stopping pid $pid ($(cmdline "$pid")): SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if alive "$pid"; then
        echo "pid $pid still running after ${grace}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
        if alive "$pid"; then
            echo "purge_pod.sh: pid $pid survived SIGKILL" >&2
            FAILED=$((FAILED + 1))
        fi
    fi
}
# The pids listening on TCP port $1, one a line.
pids_on_port() {
    local port="$1"
    if command -v ss >/dev/null 2>&1; then
        ss -Htlnp "sport = :$port" 2>/dev/null |
            awk '{ while (match($0, /pid=[0-9]+/)) { print substr($0, RSTART + 4, RLENGTH - 4); $0 = substr($0, RSTART + RLENGTH) } }' |
            sort -un
    elif command -v fuser >/dev/null 2>&1; then
        { fuser -n tcp "$port" 2>/dev/null || true; } | tr -s ' ' '\n' | awk '/^[0-9]+$/' | sort -un
    elif command -v lsof >/dev/null 2>&1; then
        { lsof -t -nP -iTCP:"$port" -sTCP:LISTEN 2>/dev/null || true; } | sort -un
    else
        echo "purge_pod.sh: none of ss, fuser, lsof is installed; cannot find the process on port $port" >&2
        return 1
    fi
}
# pids of processes whose command line matches the extended regex $1, never this script's.
pids_matching() {
    local pid
    for pid in $(pgrep -f -- "$1" 2>/dev/null || true); do
        if [ "$pid" != "$$" ] && [ "$pid" != "$PPID" ]; then echo "$pid"; fi
    done
}

machine_step() {
    case "$1" in
        drop-caches)
            say "drop the kernel page cache (sync; echo 3 > /proc/sys/vm/drop_caches)"
            run sync
            run sh -c 'echo 3 > /proc/sys/vm/drop_caches' ;;
        clear-shm)
            say "remove everything in /dev/shm"
            run find /dev/shm -mindepth 1 -maxdepth 1 -exec rm -rf -- {} + ;;
        clear-tmp)
            say "remove everything in /tmp but X11/ICE and tmux sockets"
            run find /tmp -mindepth 1 -maxdepth 1 ! -name .X11-unix ! -name .ICE-unix ! -name .font-unix \
                ! -name 'tmux-*' -exec rm -rf -- {} + ;;
        kill-jupyter)
            say "stop Jupyter servers and kernels"
            local pids
            pids="$(pids_matching 'jupyter-(lab|notebook|server)|jupyter (lab|notebook|server)|ipykernel_launcher|jupyter_server|notebook\.notebookapp')"
            [ -n "$pids" ] || echo "   (no Jupyter process found)"
            for pid in $pids; do stop_pid "$pid" 10; done ;;
        kill-sessions)
            say "end tmux and screen sessions"
            if command -v tmux >/dev/null 2>&1 && tmux list-sessions >/dev/null 2>&1; then
                run tmux kill-server
            else
                echo "   (no tmux sessions)"
            fi
            if command -v screen >/dev/null 2>&1; then
                local sessions
                sessions="$(screen -ls 2>/dev/null | awk '/\t[0-9]+\./ {print $1}' || true)"
                [ -n "$sessions" ] || echo "   (no screen sessions)"
                for session in $sessions; do run screen -S "$session" -X quit; done
            fi ;;
        purge-system)
            say "clear apt's package caches (krt's setup.sh installs no system packages)"
            if command -v apt-get >/dev/null 2>&1; then
                run apt-get clean
                run find /var/lib/apt/lists -mindepth 1 -maxdepth 1 -name '*_*' -exec rm -f -- {} +
            else
                echo "   (no apt-get here)"
            fi ;;
        docker-prune)
            say "prune the container engine's images, containers and build cache"
            if command -v docker >/dev/null 2>&1; then
                run docker system prune -af
            elif command -v podman >/dev/null 2>&1; then
                run podman system prune -af
            else
                echo "   (neither docker nor podman is installed)"
            fi ;;
        gpu-reset)
            say "reset the GPUs (nvidia-smi --gpu-reset)"
            if command -v nvidia-smi >/dev/null 2>&1; then
                run nvidia-smi --gpu-reset
            else
                echo "   (nvidia-smi is not installed)"
            fi ;;
        self-remove)
            local api_key pod_id
            api_key="$(config_value RUNPOD_API_KEY)"
            pod_id="$(config_value RUNPOD_POD_ID)"
            say "delete this RunPod pod (${pod_id:-RUNPOD_POD_ID unset}); this cannot be undone"
            if [ -z "$api_key" ] || [ -z "$pod_id" ]; then
                echo "purge_pod.sh: --self-remove needs RUNPOD_API_KEY and RUNPOD_POD_ID" >&2
                FAILED=$((FAILED + 1))
                return 0
            fi
            if command -v runpodctl >/dev/null 2>&1; then
                run runpodctl remove pod "$pod_id"
            elif [ "$DRY_RUN" = 1 ]; then
                echo "[dry-run] would run: curl -X DELETE https://rest.runpod.io/v1/pods/$pod_id (Bearer RUNPOD_API_KEY)"
            else
                echo "+ curl -X DELETE https://rest.runpod.io/v1/pods/$pod_id"
                # The key goes to curl on stdin, never on a command line that ps can show.
                if ! printf 'header = "Authorization: Bearer %s"\n' "$api_key" |
                    curl -fsS -K - -X DELETE "https://rest.runpod.io/v1/pods/$pod_id"; then
                    echo "purge_pod.sh: the RunPod API refused to delete pod $pod_id" >&2
                    FAILED=$((FAILED + 1))
                fi
            fi ;;
    esac
}

# The machine-wide steps in their order; --self-remove very last, as it ends the pod.
machine_steps() {
    local step
    for step in "${MACHINE[@]}"; do
        if [ "$step" != self-remove ]; then machine_step "$step"; fi
    done
    for step in "${MACHINE[@]}"; do
        if [ "$step" = self-remove ]; then machine_step "$step"; fi
    done
}

if [ "${#MACHINE[@]}" -gt 0 ] && [ "$YES" != 1 ] && [ "$DRY_RUN" != 1 ]; then
    echo "purge_pod.sh: these flags act on the whole machine, not just krt; nothing was done. The plan:" >&2
    DRY_RUN=1
    machine_steps >&2
    echo "purge_pod.sh: add --yes to do it (or --dry-run to only print the plan)" >&2
    exit 2
fi

LOG_DIR="${KRT_LOG_DIR:-logs}"
PID_FILE="$LOG_DIR/server.pid"

# 1. The server of our pid file: a drain via scripts/stop.sh.
OUR_PID=""
if [ -f "$PID_FILE" ]; then
    OUR_PID="$(tr -dc '0-9' <"$PID_FILE")"
fi
if [ "$DRY_RUN" = 1 ]; then
    if [ -n "$OUR_PID" ] && alive "$OUR_PID"; then
        echo "[dry-run] would run: scripts/stop.sh (pid $OUR_PID from $PID_FILE: $(cmdline "$OUR_PID"))"
    else
        echo "[dry-run] no krt server recorded in $PID_FILE"
    fi
else
    "$ROOT/scripts/stop.sh" || FAILED=$((FAILED + 1))
fi

# 2. Anything else still listening on --port.
if [ -n "$PORT" ]; then
    found=0
    drain="$(config_value KRT_DRAIN_SECONDS)"
    [[ "$drain" =~ ^[0-9]+(\.[0-9]*)?$ ]] || drain=30
    drain=$((10#${drain%%.*} + 1))
    port_pids=""
    if ! port_pids="$(pids_on_port "$PORT")"; then FAILED=$((FAILED + 1)); fi
    for pid in $port_pids; do
        if [ "$pid" = "$OUR_PID" ] || [ "$pid" = "$$" ]; then continue; fi
        found=1
        stop_pid "$pid" $((drain + 10))
    done
    [ "$found" = 1 ] || echo "nothing else listens on port $PORT"
fi

# 3. Files.
if [ "$CLEAN" = 1 ]; then
    say "remove krt's runtime files"
    remove "$ROOT/.venv"
    remove "$LOG_DIR"
    metrics_log="$(config_value KRT_METRICS_LOG)"
    [ -z "$metrics_log" ] || remove "$(expand_home "$metrics_log")"
    remove "$ROOT/cache"
    remove "$ROOT/warmup_audio"
    shopt -s nullglob
    for pid_file in "$ROOT"/*.pid; do remove "$pid_file"; done
    shopt -u nullglob
    cache_dir="$(config_value KRT_CACHE_DIR)"
    remove "$(expand_home "${cache_dir:-$HOME/.cache/krt}")"
fi
if [ "$AGGRESSIVE" = 1 ]; then
    say "remove the pip, torch and Hugging Face model caches"
    pip_cache="$(python3 -m pip cache dir 2>/dev/null || true)"
    remove "${pip_cache:-${PIP_CACHE_DIR:-$HOME/.cache/pip}}"
    remove "$(expand_home "${TORCH_HOME:-$HOME/.cache/torch}")"
    remove "$HOME/.cache/torch_extensions"
    model_name="$(config_value MODEL_NAME)"
    model_name="${model_name:-hexgrad/Kokoro-82M}"
    hub="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
    remove "$(expand_home "$hub")/models--${model_name//\//--}"
fi

# 4. Machine-wide, last.
machine_steps

if [ "$FAILED" -gt 0 ]; then
    echo "purge_pod.sh: $FAILED step(s) failed; see above" >&2
    exit 1
fi
if [ "$DRY_RUN" = 1 ]; then echo "dry run: nothing was changed"; else echo "purge done"; fi
