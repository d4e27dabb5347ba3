"""The ``krt`` command: one entry point, a subcommand per tool."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from krt.config import ConfigError, load_config
from krt.errors import ModelUnavailableError, SpeechError

if TYPE_CHECKING:
    from collections.abc import Sequence


COMMANDS = {
    "serve": ("krt.server.app", "run the realtime WebSocket server"),
    "say": ("krt.tools.say", "speak text into a WAV file with the engine alone"),
    "client": ("krt.tools.client", "speak through a running server into a WAV file"),
    "warmup": ("krt.tools.warmup", "warm a running server up with a few responses"),
    "tpm": ("krt.tools.tpm", "transactions per minute against a running server"),
    "metrics": ("krt.metrics.report", "rolling summaries of logs/metrics.log"),
    "console": ("console.cli", "the operator console, attached to a running server's admin socket"),
}
BENCHES = {
    "engine": ("krt.bench.engine_bench", "the engine floor: load, whole sentence vs first window, xRT, RSS"),
    "server": ("krt.bench.server_bench", "the real server in-process: TTFB/floor, barge-in, load levels"),
    "formats": ("krt.bench.formats_bench", "TTFB of each audio format, WebSocket and HTTP, in one run"),
    "capacity": ("krt.bench.capacity", "the most agent streams a running server serves in real time"),
    "speech": ("krt.bench.speech_bench", "how LLM-style text is heard per kind, krt against the raw model"),
    "downloads": (
        "krt.bench.download_bench",
        "a long HTTP download: its speed, and what it costs agent replies",
    ),
}
SWEEP = "krt.bench.sweep"
"""``krt bench`` with no subcommand: load and concurrency sweeps against a running server."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, the options of that subcommand alone are
    loaded (importing a tool's module can pull in trio, numpy or the engine, which
    ``krt console`` must not pay for)."""
    parser = argparse.ArgumentParser(prog="krt", description="Realtime Kokoro-82M text-to-speech.")
    parser.add_argument(
        "--env-file", type=Path, default=Path(".env"), help="dotenv file to read (default .env)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module, summary) in COMMANDS.items():
        subparser = commands.add_parser(name, help=summary)
        if only in (None, name):
            importlib.import_module(module).add_arguments(subparser)
    bench = commands.add_parser("bench", help="benchmarks: a load sweep against a server, or engine/server")
    if only in (None, "bench"):
        importlib.import_module(SWEEP).add_arguments(bench)
        kinds = bench.add_subparsers(dest="bench", required=False)
        for name, (module, summary) in BENCHES.items():
            importlib.import_module(module).add_arguments(kinds.add_parser(name, help=summary))
    return parser


def _command_in(argv: Sequence[str] | None) -> str | None:
    """The subcommand named on the command line, if any (None: load them all, as for --help)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--env-file")
    first.add_argument("command", nargs="?")
    known, _rest = first.parse_known_args(argv)
    command: str | None = known.command
    return command if command in (*COMMANDS, "bench") else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(_command_in(argv)).parse_args(argv)
    if args.command == "metrics":  # reads a log file only; a broken .env must not stop it
        from krt.metrics import report

        return report.run(args)
    try:
        config = load_config(dotenv=args.env_file)
    except ConfigError as exc:
        print(f"krt: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.logging.level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "bench":
        module = BENCHES[args.bench][0] if args.bench else SWEEP
    else:
        module = COMMANDS[args.command][0]
    try:
        result: int = importlib.import_module(module).run(args, config)
    except ModelUnavailableError as exc:
        print(f"krt: model unavailable: {exc}", file=sys.stderr)
        return 1
    except SpeechError as exc:
        print(f"krt: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
