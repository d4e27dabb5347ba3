# krt — run `just` to see the recipes.

# Recipe arguments reach the command as "$@", each one intact (spaces and all).
set positional-arguments := true
set shell := ["bash", "-cu"]

venv := ".venv"
bin := venv / "bin"

default:
    @just --list

# Create .venv and install krt with its test extras (idempotent; fast when nothing changed).
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x {{bin}}/python ]; then
        # A pod image that ships a CUDA torch system-wide keeps using it inside the venv.
        if python3 -c "import torch" 2>/dev/null; then
            python3 -m venv --system-site-packages {{venv}}
        else
            python3 -m venv {{venv}}
        fi
    fi
    stamp={{venv}}/.krt-installed
    if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
    if ! {{bin}}/python -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            {{bin}}/pip install --quiet torch
        else
            # CPU machine: the CPU build (on local disk here), never the multi-GB CUDA wheel;
            # not compiled at install (11 s, not 35 s): what is imported compiles on first use.
            {{bin}}/pip install --quiet --no-compile torch==2.13.0
        fi
    fi
    if grep -q "include-system-site-packages = true" {{venv}}/pyvenv.cfg; then
        # A system torch (a GPU pod's): pip sees it and leaves it be.
        {{bin}}/pip install --quiet -e '.[test]'
    else
        # uv installs the rest in seconds where pip takes minutes (CI's budget); torch is
        # already in the venv, from pip, which alone finds the CPU build on local disk.
        {{bin}}/pip install --quiet uv
        {{bin}}/uv pip install --quiet --python {{bin}}/python -e '.[test]'
    fi
    touch "$stamp"

# Run the whole test suite on two workers (unit tests on the fake backend, integration tests on the real model).
test *args: setup
    {{bin}}/python -m pytest -n 2 --dist worksteal "$@"

# The everyday lane (under two minutes): no real model, no server processes, no proxies.
test-fast *args: setup
    {{bin}}/python -m pytest -n 2 --dist worksteal -m "not integration and not slow" "$@"

# Lint, type-check, check the import contracts (pyproject.toml [tool.importlinter]) and test.
check: setup
    {{bin}}/ruff check krt console tests
    {{bin}}/ruff format --check krt console tests
    {{bin}}/mypy
    {{bin}}/lint-imports
    {{bin}}/python -m pytest -n 2 --dist worksteal

# Speak TEXT into OUT (a WAV file) with the engine alone, e.g. just say "Hello there." out.wav
say text out="out.wav" *args: setup
    {{bin}}/krt say "$1" -o "$2" "${@:3}"

# The engine floor: load time, first-segment latency, xRT and RSS per backend.
bench-engine *args: setup
    {{bin}}/krt bench engine "$@"

# How LLM-style text is heard, kind by kind, through krt and the raw model (Whisper base).
bench-speech *args: setup
    {{bin}}/krt bench speech "$@"

# A long HTTP download against a running server: its speed, and an agent reply's first audio beside it.
bench-downloads *args: setup
    {{bin}}/krt bench downloads "$@"

# Run the realtime server (default 0.0.0.0:8000; reads .env), e.g. just serve --port 9000
serve *args: setup
    {{bin}}/krt serve "$@"

# The operator console, attached to the server started from this directory, e.g. just console --socket PATH
console *args: setup
    {{bin}}/krt console "$@"

# Rolling summaries of logs/metrics.log, e.g. just metrics --periods 1h,24h
metrics *args: setup
    {{bin}}/krt metrics "$@"

# Start the server in the background, wait until /readyz is 200 (log: logs/server.log), e.g. just start --port 9000
start *args: setup
    bash scripts/start.sh "$@"

# Stop the background server: SIGTERM drain, SIGKILL after KRT_DRAIN_SECONDS+10 s.
stop:
    bash scripts/stop.sh

# Follow the background server's log, e.g. just logs -n 200
logs *args:
    bash scripts/tail_bg_logs.sh "$@"

# Stop the server and clean up (scripts/purge_pod.sh --help), e.g. just purge --clean-files --dry-run
purge *args:
    bash scripts/purge_pod.sh "$@"

# Concurrency sweep 1-8 against the running server (reads .env): table, bench-sweep.png, a recommendation, e.g. just bench --n 10
bench *args: setup
    {{bin}}/krt bench "$@"

# Speak through the running server into a WAV, e.g. just client --text "Hello there." --out hello.wav --mode sentences
client *args: setup
    {{bin}}/krt client "$@"

# Warm the running server up (both voices), e.g. just warmup --mode sentences --save warmup/
warmup *args: setup
    {{bin}}/krt warmup "$@"

# Transactions per minute against the running server, e.g. just tpm --mode sentences --duration 120
tpm *args: setup
    {{bin}}/krt tpm "$@"

