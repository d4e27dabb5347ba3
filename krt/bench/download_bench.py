"""``krt bench downloads``: what a long HTTP download costs the voice agents beside it.

A ``/v1/audio/speech`` input over OpenAI's 4096 characters (a chapter) is a download,
spoken in parts in the engine's background (docs/openai.md, "Long inputs"). This bench
says, against a running server, in one run:

- how fast a download is made: audio seconds per second of wall time over its first
  ``--seconds`` (then the bench hangs up, which also shows it stops at once), alone and
  with an agent reply started in the middle of it;
- an agent reply's time to first audible sound over the WebSocket, alone and while a
  download runs (the background's price: at most the window in progress);
- the download's first byte against a short HTTP input's.

Each round measures every variant once, alternating which goes first, so the machine's
drift falls on them alike; the ratios are medians of per-round ratios.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import TYPE_CHECKING

import attrs
import trio

from krt import PCM_BYTES_PER_SECOND
from krt.client.commands import ToolError, connected, reportable
from krt.client.http_speech import HttpSpeech, post_speech
from krt.client.target import add_target_arguments, resolve_target

if TYPE_CHECKING:
    import argparse

    from krt.client.target import Target
    from krt.config import Config

REPLY = "Sure, I can help with that. Could you tell me the name on the reservation?"
CHAPTER_SENTENCES = (
    "The road ran north along the river for most of the morning.",
    "By noon the fog had lifted, and the hills on the far bank were green and close.",
    "She stopped at the ferry landing, where an old man was mending a net.",
    "He told her the crossing would open again once the water went down.",
    "So she sat on the wall, ate the bread she had bought in town, and waited.",
)
DOWNLOAD_TIMEOUT_S = 3600.0
MAX_BUSY_RETRIES = 5
SETTLE_S = 5.0
"""Default wait after hanging up on a download: the window in progress then runs to its
end (seconds, on a slow CPU), and the next figure must not pay for it."""


@attrs.frozen
class Reading:
    """How each download is read: for ``seconds`` after its first byte, then ``settle``
    seconds of nothing once it is hung up on."""

    seconds: float
    settle: float


def chapter(chars: int) -> str:
    """Prose of about ``chars`` characters, in paragraphs of five sentences."""
    paragraphs, length, number = [], 0, 1
    while length < chars:
        paragraph = " ".join(CHAPTER_SENTENCES).replace("The road", f"On day {number} the road")
        paragraphs.append(paragraph)
        length += len(paragraph) + 2
        number += 1
    return "\n\n".join(paragraphs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant (default 3)")
    parser.add_argument(
        "--chars", type=int, default=20_000, help="the download's input length (default 20000)"
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="how long each download is read (default 20)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        help=f"seconds to wait after a hang-up (default {SETTLE_S:g})",
    )
    parser.add_argument("--voice", default="female")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_target_arguments(parser)


async def reply_first_audible(target: Target, voice: str) -> tuple[float, int]:
    """An agent reply over the WebSocket: seconds to its first audible sample, and how
    many times it was refused ``busy`` first (each time sent again when the server said,
    as a voice agent would; the time counts from the send that was served)."""
    refusals = 0
    async with connected(target) as client:
        while True:
            trace = await client.speak(REPLY, voice=voice)
            if trace.error_code != "busy" or refusals == MAX_BUSY_RETRIES:
                break
            refusals += 1
            await trio.sleep(trace.retry_after or 1.0)
        await client.finish()
    if trace.outcome != "completed" or trace.first_audible is None:
        raise ToolError(f"the reply: {trace.outcome}: {trace.error_code} {trace.error_message}")
    return trace.first_audible, refusals


async def download(
    target: Target, text: str, voice: str, reading: Reading, first_byte: trio.Event | None = None
) -> HttpSpeech:
    """POST ``text`` and read the body for ``reading.seconds`` after its first byte (or
    to its end, if sooner), then hang up and let the engine settle."""
    fields = {"model": "kokoro", "input": text, "voice": voice, "response_format": "pcm"}
    answer, started = HttpSpeech(), trio.Event()

    async def read() -> None:
        await post_speech(target.http_base, target.api_key, fields, first_byte=started, into=answer)
        nursery.cancel_scope.cancel()

    with trio.fail_after(DOWNLOAD_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await started.wait()
            if first_byte is not None:
                first_byte.set()
            await trio.sleep(reading.seconds)
            nursery.cancel_scope.cancel()
    if answer.status != 200 or answer.ttfb is None:
        raise ToolError(f"the download: HTTP {answer.status}: {bytes(answer.body)[:200]!r}")
    if answer.ended_at is None:
        answer.ended_at = trio.current_time()
        await trio.sleep(reading.settle)
    return answer


def audio_per_second(answer: HttpSpeech) -> float:
    """Audio seconds the download made per second of wall time, from its first byte."""
    made_in = (answer.ended_at or 0.0) - (answer.first_byte_at or 0.0)
    return len(answer.body) / PCM_BYTES_PER_SECOND / max(made_in, 1e-9)


async def one_round(
    target: Target, text: str, voice: str, reading: Reading, reverse: bool
) -> dict[str, float]:
    """Every variant once: the reply alone, a download alone, a short HTTP input, and a
    download with a reply started as soon as its first byte arrives."""
    figures: dict[str, float] = {}

    async def alone() -> None:
        figures["reply_alone"], figures["busy_alone"] = await reply_first_audible(target, voice)
        short = await download(target, REPLY, voice, reading)
        figures["http_short_ttfb"] = short.ttfb or 0.0
        long = await download(target, text, voice, reading)
        figures["http_long_ttfb"] = long.ttfb or 0.0
        figures["download_alone"] = audio_per_second(long)

    async def beside() -> None:
        started = trio.Event()
        result: list[HttpSpeech] = []

        async def run_download() -> None:
            result.append(await download(target, text, voice, reading, started))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_download)
            await started.wait()
            reply = await reply_first_audible(target, voice)
            figures["reply_beside_download"], figures["busy_beside_download"] = reply
        figures["download_beside_reply"] = audio_per_second(result[0])

    for variant in (beside, alone) if reverse else (alone, beside):
        await variant()
    return figures


async def bench(
    target: Target, rounds: int, chars: int, reading: Reading, voice: str
) -> list[dict[str, float]]:
    text = chapter(chars)
    await reply_first_audible(target, voice)  # the first request of a process pays for imports
    return [await one_round(target, text, voice, reading, reverse=index % 2 == 1) for index in range(rounds)]


def summarize(rounds: list[dict[str, float]]) -> dict[str, float | int]:
    def median(key: str) -> float:
        return statistics.median(figures[key] for figures in rounds)

    def ratio(key: str, base: str) -> float:
        return statistics.median(figures[key] / figures[base] for figures in rounds)

    return {
        "reply_alone_ms": round(median("reply_alone") * 1000, 1),
        "reply_beside_download_ms": round(median("reply_beside_download") * 1000, 1),
        "reply_beside_vs_alone": round(ratio("reply_beside_download", "reply_alone"), 3),
        "http_short_ttfb_ms": round(median("http_short_ttfb") * 1000, 1),
        "http_long_ttfb_ms": round(median("http_long_ttfb") * 1000, 1),
        "http_long_vs_short": round(ratio("http_long_ttfb", "http_short_ttfb"), 3),
        "download_alone_xrt": round(median("download_alone"), 2),
        "download_beside_reply_xrt": round(median("download_beside_reply"), 2),
        "busy_refusals_alone": int(sum(figures["busy_alone"] for figures in rounds)),
        "busy_refusals_beside_download": int(sum(figures["busy_beside_download"] for figures in rounds)),
    }


def run(args: argparse.Namespace, config: Config) -> int:
    if args.rounds < 1 or args.chars < 1 or args.seconds <= 0 or args.settle < 0:
        print(
            "krt bench downloads: --rounds and --chars must be at least 1, --seconds above 0", file=sys.stderr
        )
        return 2
    target = resolve_target(args, args.env_file)
    try:
        reading = Reading(args.seconds, args.settle)
        summary = summarize(trio.run(bench, target, args.rounds, args.chars, reading, args.voice))
    except Exception as exc:
        failure = reportable(exc)
        if failure is None:
            raise
        print(f"krt bench downloads: {failure}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "url": target.url,
                    "rounds": args.rounds,
                    "chars": args.chars,
                    "seconds": args.seconds,
                    **summary,
                }
            )
        )
        return 0
    print(
        f"{args.rounds} rounds, a {args.chars}-character download read for {args.seconds:g} s, "
        f"against {target.describe()}"
    )
    print(
        f"agent reply, first audible:  alone {summary['reply_alone_ms']:>7} ms   beside a download "
        f"{summary['reply_beside_download_ms']:>7} ms   (× {summary['reply_beside_vs_alone']})"
    )
    print(
        f"agent reply, refused busy:   alone {summary['busy_refusals_alone']:>7}      beside a download "
        f"{summary['busy_refusals_beside_download']:>7}"
    )
    print(
        f"HTTP first byte:             short {summary['http_short_ttfb_ms']:>7} ms   long input "
        f"{summary['http_long_ttfb_ms']:>7} ms   (× {summary['http_long_vs_short']})"
    )
    print(
        f"download, audio s per s:     alone {summary['download_alone_xrt']:>7}      beside a reply "
        f"{summary['download_beside_reply_xrt']:>7}"
    )
    return 0
