"""``krt client``: speak text through a running server into a WAV file, and show timings.

It talks to the server the way a voice agent does: one WebSocket, the whole text as one
response (``single``), each sentence as its own queued response (``sentences``), or a token
stream of ``input.append`` pieces like an LLM's output (``--incremental``). With
``--cancel-after MS`` it barges in, to hear and time a cut-off.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from krt import SAMPLE_RATE
from krt.client.commands import (
    ToolError,
    add_mode_arguments,
    add_output_arguments,
    connected,
    output_of,
    pieces_of,
)
from krt.client.speech import MAX_RECONNECTS
from krt.client.target import add_target_arguments, resolve_target
from krt.media.audio import write_wav
from krt.media.codecs import NATIVE, OutputAudio
from krt.wire import protocol

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from krt.client.speech import ResponseTrace, SpeechClient
    from krt.client.target import Target
    from krt.config import Config

INCREMENTAL_PIECE_WORDS = 2
INCREMENTAL_GAP_S = 0.03
"""An LLM streaming ~60 tokens per second, in pieces of about two words."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", help="text to speak (default: read stdin)")
    parser.add_argument(
        "--out", type=Path, default=Path("out.wav"), help="WAV file to write (default out.wav)"
    )
    add_mode_arguments(parser)
    parser.add_argument("--incremental", action="store_true", help="stream the text as input.append pieces")
    parser.add_argument(
        "--cancel-after", type=float, metavar="MS", help="cancel (barge) this long after sending"
    )
    add_output_arguments(parser)
    add_target_arguments(parser)


async def send_incremental(client: SpeechClient, text: str) -> None:
    words = text.split()
    for start in range(0, len(words), INCREMENTAL_PIECE_WORDS):
        piece = " ".join(words[start : start + INCREMENTAL_PIECE_WORDS])
        await client.ws.send_message(
            protocol.encode(protocol.InputAppend(("" if start == 0 else " ") + piece))
        )
        await trio.sleep(INCREMENTAL_GAP_S)
    await client.ws.send_message(protocol.encode(protocol.InputCommit()))


async def speak(
    target: Target,
    text: str,
    mode: str,
    voice: str,
    speed: float | None,
    incremental: bool = False,
    cancel_after_ms: float | None = None,
    output: OutputAudio = NATIVE,
    pieces: Sequence[str] | None = None,
) -> list[ResponseTrace]:
    """Speak ``text`` (or exactly these ``pieces``, one response each) and return every
    response's trace, in the order they were created.

    One task sends (responses or input pieces, then the barge if asked, then
    ``session.end``); this one reads every frame until the server closes the socket, so
    late frames of a canceled response would be seen and counted.
    """
    async with connected(
        target, output=output, keep_audio=True, adopt_server_responses=incremental
    ) as client:

        async def send_all() -> None:
            started = trio.current_time()
            if incremental:
                settings = protocol.SessionPatch(voice=voice, speed=speed)
                await client.ws.send_message(protocol.encode(protocol.SessionUpdate(settings)))
                await send_incremental(client, text)
            else:
                for piece in pieces if pieces is not None else pieces_of(text, mode):
                    await client.create(piece, voice=voice, speed=speed)
            if cancel_after_ms is not None:
                await trio.sleep_until(started + cancel_after_ms / 1000)
                for trace in client.traces.values():
                    if not trace.finished:
                        trace.cancel_sent_at = trio.current_time()
                await client.ws.send_message(protocol.encode(protocol.Barge()))
            await client.ws.send_message(protocol.encode(protocol.SessionEnd()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            characters = len(text) + sum(map(len, pieces or ()))
            with trio.move_on_after(client.response_timeout * max(1, characters // 200)):
                await client.wait_until(lambda: client.closed)
        return list(client.traces.values())


def report(traces: Sequence[ResponseTrace]) -> str:
    lines = [f"{'response':<40} {'outcome':<10} {'TTFB ms':>8} {'audio s':>8} {'wall s':>7} {'xRT':>6}"]
    for trace in traces:
        wall = (trace.ended_at - trace.sent_at) if trace.ended_at is not None else None
        ttfb = f"{trace.ttfb * 1000:.0f}" if trace.ttfb is not None else "-"
        xrt = f"{trace.audio_seconds / wall:.2f}" if wall else "-"
        outcome = trace.outcome if trace.outcome != "error" else f"{trace.error_code}"
        lines.append(
            f"{trace.response_id[:40]:<40} {outcome or 'stuck':<10} {ttfb:>8} "
            f"{trace.audio_seconds:>8.2f} {wall if wall is not None else float('nan'):>7.2f} {xrt:>6}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace, config: Config) -> int:
    text = args.text if args.text is not None else sys.stdin.read()
    if not text.strip():
        print("krt client: nothing to speak (give --text or pipe text in)", file=sys.stderr)
        return 2
    target = resolve_target(args, args.env_file)
    try:
        traces = trio.run(
            speak,
            target,
            text,
            args.mode,
            args.voice,
            args.speed,
            args.incremental,
            args.cancel_after,
            output_of(args),
        )
        for _ in range(MAX_RECONNECTS if not (args.incremental or args.cancel_after) else 0):
            # A draining server sent us away: what it did not speak goes to a new
            # connection, which the balancer gives to another replica.
            redo = [trace for trace in traces if trace.told_to_reconnect]
            if not redo:
                break
            again = trio.run(
                speak,
                target,
                "",
                "single",
                args.voice,
                args.speed,
                False,
                None,
                output_of(args),
                [t.text for t in redo],
            )
            traces = [trace for trace in traces if not trace.told_to_reconnect] + again
    except ToolError as exc:
        print(f"krt client: {exc}", file=sys.stderr)
        return 1
    failed = [t for t in traces if t.outcome == "error" or not t.finished]
    pcm = b"".join(bytes(trace.pcm or b"") for trace in traces)
    print(report(traces))
    if pcm:
        rate = traces[0].sample_rate
        write_wav(args.out, pcm, rate)
        heard = (
            f"{args.format} at {args.sample_rate} Hz"
            if args.format != "pcm" or rate != SAMPLE_RATE
            else "pcm"
        )
        print(f"wrote {args.out}: {len(pcm) / 2 / rate:.2f} s of audio ({heard}) from {target.describe()}")
    for trace in failed:
        reason = (
            f"{trace.error_code}: {trace.error_message}" if trace.error_code else "no answer from the server"
        )
        print(f"krt client: response {trace.response_id} failed: {reason}", file=sys.stderr)
    return 1 if failed else 0
