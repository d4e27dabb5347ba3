"""The ``krt`` command: one entry point, a subcommand per tool."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from krt.config import ConfigError, load_config
from krt.errors import ModelUnavailableError, SpeechError

if TYPE_CHECKING:
    from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from krt import metrics, say, serve
    from krt.bench import engine_bench, server_bench

    parser = argparse.ArgumentParser(prog="krt", description="Realtime Kokoro-82M text-to-speech.")
    parser.add_argument(
        "--env-file", type=Path, default=Path(".env"), help="dotenv file to read (default .env)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve.add_arguments(commands.add_parser("serve", help="run the realtime WebSocket server"))
    say.add_arguments(commands.add_parser("say", help="speak text into a WAV file"))
    metrics.add_arguments(commands.add_parser("metrics", help="rolling summaries of logs/metrics.log"))
    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    engine_bench.add_arguments(
        bench.add_parser("engine", help="the engine floor: load, first segment, xRT, RSS")
    )
    server_bench.add_arguments(
        bench.add_parser("server", help="the real server in-process: TTFB/floor, barge-in, load sweep")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "metrics":  # reads a log file only; a broken .env must not stop it
        from krt import metrics

        return metrics.run(args)
    try:
        config = load_config(dotenv=args.env_file)
    except ConfigError as exc:
        print(f"krt: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.auth.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            from krt import serve

            return serve.run(args, config)
        if args.command == "say":
            from krt import say

            return say.run(args, config)
        if args.bench == "server":
            from krt.bench import server_bench

            return server_bench.run(args, config)
        from krt.bench import engine_bench

        return engine_bench.run(args, config)
    except ModelUnavailableError as exc:
        print(f"krt: model unavailable: {exc}", file=sys.stderr)
        return 1
    except SpeechError as exc:
        print(f"krt: {exc.code}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
