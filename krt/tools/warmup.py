"""``krt warmup``: a few responses through a running server after a start or deploy.

The first syntheses after a model loads are slower (lazy initialisation, allocator
growth); sending a handful of realistic replies in both voices before real callers
arrive keeps that cost off a caller's first sentence. ``--save DIR`` keeps the audio so
a person can listen to what the server says.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from krt.client.commands import ToolError, add_mode_arguments, connected, pieces_of
from krt.client.target import add_target_arguments, resolve_target
from krt.media.audio import write_wav
from krt.tools.client import report

if TYPE_CHECKING:
    import argparse

    from krt.client.speech import ResponseTrace
    from krt.client.target import Target
    from krt.config import Config

WARMUP_TEXTS = (
    "Hello! Thanks for calling, how can I help you today?",
    "Sure. I can book that for Tuesday at 3:30 PM. Does that work for you?",
    "Your order total is $42.50, and it ships tomorrow morning.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_mode_arguments(parser)
    parser.set_defaults(voice=None)
    parser.add_argument("--save", type=Path, metavar="DIR", help="write each response's audio as a WAV here")
    add_target_arguments(parser)


async def warm(
    target: Target, mode: str, voices: list[str], speed: float | None
) -> list[tuple[str, ResponseTrace]]:
    results: list[tuple[str, ResponseTrace]] = []
    async with connected(target, keep_audio=True) as client:
        for voice in voices:
            for text in WARMUP_TEXTS:
                for piece in pieces_of(text, mode):
                    results.append((voice, await client.speak(piece, voice=voice)))
        await client.finish()
    return results


def run(args: argparse.Namespace, config: Config) -> int:
    target = resolve_target(args, args.env_file)
    voices = [args.voice] if args.voice else ["female", "male"]
    try:
        results = trio.run(warm, target, args.mode, voices, args.speed)
    except ToolError as exc:
        print(f"krt warmup: {exc}", file=sys.stderr)
        return 1
    print(report([trace for _voice, trace in results]))
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        for number, (voice, trace) in enumerate(results, start=1):
            write_wav(args.save / f"warmup_{number:02d}_{voice}.wav", bytes(trace.pcm or b""))
        print(f"saved {len(results)} WAV files in {args.save}")
    failed = [trace for _voice, trace in results if trace.outcome != "completed"]
    for trace in failed:
        print(
            f"krt warmup: {trace.response_id} ended {trace.outcome} {trace.error_code or ''}", file=sys.stderr
        )
    return 1 if failed else 0
