#!/usr/bin/env bash
# The GPU figures docs/architecture.md asks for (batching), in one run on the pod, e.g.
#   scripts/gpu_figures.sh                      # torch on CUDA, results in gpu-figures/
#   OUT_DIR=/tmp/f MAX_STREAMS=64 scripts/gpu_figures.sh
#
# Serves krt twice on a local port, first with windows of several streams decoded in one
# model call (KRT_BATCH_WINDOWS, BATCH_WINDOWS here, default 8), then with one window a call, and runs
# `krt bench capacity` against each: the card's name, the audio seconds per model second
# the warm-up measured at each batch size, the streams that keep first-audio p95 under
# P95_MS with no stall, and first-audio p50/p95 at that load. Everything lands in OUT_DIR
# (the servers' logs, /readyz, the benches' JSON and plots) with summary.txt on top.
# Any KRT_* or admission knob in the environment reaches both servers.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${OUT_DIR:-gpu-figures}
port=${PORT:-8799}
max_streams=${MAX_STREAMS:-32}
p95_ms=${P95_MS:-150}
replies=${REPLIES:-4}
batch=${BATCH_WINDOWS:-8}
krt=${KRT:-.venv/bin/krt}
export KRT_BACKEND=${KRT_BACKEND:-torch}
mkdir -p "$out"

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
echo "${gpu:-no NVIDIA GPU}" >"$out/gpu.txt"

serve_and_bench() { # $1: label, $2: KRT_BATCH_WINDOWS
    local label=$1 server
    MAX_CONCURRENT_JOBS=${MAX_CONCURRENT_JOBS:-$max_streams} KRT_BATCH_WINDOWS=$2 \
        KRT_METRICS_LOG="$out/metrics-$label.log" KRT_ADMIN_SOCKET="$out/admin-$label.sock" \
        "$krt" serve --host 127.0.0.1 --port "$port" >"$out/server-$label.log" 2>&1 &
    server=$!
    for _ in $(seq 1 600); do
        if curl -fs "http://127.0.0.1:$port/readyz" >"$out/readyz-$label.json" 2>/dev/null; then break; fi
        if ! kill -0 "$server" 2>/dev/null; then
            echo "gpu_figures: the $label server died; see $out/server-$label.log" >&2
            return 1
        fi
        sleep 1
    done
    "$krt" bench capacity --url "ws://127.0.0.1:$port/v1/audio/speech/stream/ws" \
        --max-streams "$max_streams" --p95-target-ms "$p95_ms" --replies "$replies" \
        --json --plot "$out/capacity-$label.png" >"$out/capacity-$label.json" 2>"$out/capacity-$label.err"
    kill -TERM "$server"
    wait "$server" || true
}

serve_and_bench batched "$batch"
serve_and_bench single 1

"${PYTHON:-.venv/bin/python}" - "$out" "$p95_ms" <<'EOF' | tee "$out/summary.txt"
import json, sys
from pathlib import Path

out, target = Path(sys.argv[1]), sys.argv[2]
print(f"GPU: {(out / 'gpu.txt').read_text().strip()}")
for label in ("batched", "single"):
    ready = json.loads((out / f"readyz-{label}.json").read_text())
    bench = json.loads((out / f"capacity-{label}.json").read_text())
    rates = ", ".join(f"{size}: {rate}" for size, rate in ready["capacity_by_batch"].items())
    best = bench["capacity"]
    level = next((row for row in bench["levels"] if row["streams"] == best), None)
    at = f"first audio p50 {level['first_audio_p50_ms']} ms, p95 {level['first_audio_p95_ms']} ms" if level else "-"
    print(
        f"{label}: {ready['backend']} on {ready['device']}, up to {ready['batch_windows']} windows a call; "
        f"audio s per model s by windows a call: {rates}; "
        f"{best} streams under p95 {target} ms with no stall ({at})"
    )
EOF
