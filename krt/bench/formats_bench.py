"""``krt bench formats``: time to first byte for each format, WebSocket and HTTP, one run.

Every variant speaks the same texts one request at a time, and the variants alternate
within each round (reversed every other round), so the machine's drift falls on all of
them alike; each variant's figure is then also given as the median of its per-round ratio
to WebSocket PCM, which is what the drift cannot move.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import TYPE_CHECKING

import attrs
import trio

from krt.client.commands import ToolError, connected, reportable
from krt.client.http_speech import REQUEST_TIMEOUT_S, post_speech
from krt.client.target import add_target_arguments, resolve_target
from krt.media.codecs import OutputAudio
from krt.metrics.stats import percentile

if TYPE_CHECKING:
    import argparse

    from krt.client.target import Target
    from krt.config import Config

TEXTS = (
    "Thanks for calling. Your order shipped this morning and should arrive on Thursday.",
    "Sure, I can help with that. Could you tell me the name on the reservation?",
    "Your appointment is confirmed for Tuesday at three thirty in the afternoon.",
)


@attrs.frozen
class Variant:
    transport: str
    """``websocket`` or ``http``."""
    format: str
    sample_rate: int = 24000

    @property
    def name(self) -> str:
        rate = "" if self.sample_rate == 24000 else f" {self.sample_rate // 1000} kHz"
        return f"{self.transport} {self.format}{rate}"


BASELINE = Variant("websocket", "pcm")
VARIANTS = (
    BASELINE,
    Variant("websocket", "opus"),
    Variant("websocket", "mulaw", 8000),
    Variant("http", "pcm"),
    Variant("http", "opus"),
    Variant("http", "mp3"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=4, help="rounds of every variant (default 4)")
    parser.add_argument("--voice", default="female")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_target_arguments(parser)


async def ttfb(target: Target, variant: Variant, text: str, voice: str) -> float:
    """One request's time to first audio byte, in seconds; ToolError if it failed."""
    if variant.transport == "http":
        fields = {"model": "kokoro", "input": text, "voice": voice, "response_format": variant.format}
        with trio.fail_after(REQUEST_TIMEOUT_S):
            answer = await post_speech(target.http_base, target.api_key, fields)
        if answer.status != 200 or answer.ttfb is None:
            raise ToolError(f"{variant.name}: HTTP {answer.status}: {bytes(answer.body)[:200]!r}")
        return answer.ttfb
    async with connected(target, output=OutputAudio(variant.format, variant.sample_rate)) as client:  # type: ignore[arg-type]
        trace = await client.speak(text, voice=voice)
        await client.finish()
    if trace.outcome != "completed" or trace.ttfb is None:
        raise ToolError(f"{variant.name}: {trace.outcome}: {trace.error_code} {trace.error_message}")
    return trace.ttfb


async def bench(target: Target, rounds: int, voice: str) -> dict[Variant, list[float]]:
    times: dict[Variant, list[float]] = {variant: [] for variant in VARIANTS}
    await ttfb(target, BASELINE, TEXTS[0], voice)  # the first request of a process pays for imports
    for round_ in range(rounds):
        order = VARIANTS if round_ % 2 == 0 else tuple(reversed(VARIANTS))
        for text in TEXTS:
            for variant in order:
                times[variant].append(await ttfb(target, variant, text, voice))
    return times


def summarize(times: dict[Variant, list[float]]) -> list[dict[str, object]]:
    baseline = times[BASELINE]
    return [
        {
            "variant": variant.name,
            "ttfb_p50_ms": round(statistics.median(values) * 1000, 1),
            "ttfb_p95_ms": round((percentile(values, 95) or 0.0) * 1000, 1),
            "vs_websocket_pcm": round(
                statistics.median(v / b for v, b in zip(values, baseline, strict=True)), 3
            ),
        }
        for variant, values in times.items()
    ]


def run(args: argparse.Namespace, config: Config) -> int:
    if args.rounds < 1:
        print("krt bench formats: --rounds must be at least 1", file=sys.stderr)
        return 2
    target = resolve_target(args, args.env_file)
    try:
        rows = summarize(trio.run(bench, target, args.rounds, args.voice))
    except Exception as exc:
        failure = reportable(exc)
        if failure is None:
            raise
        print(f"krt bench formats: {failure}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"url": target.url, "rounds": args.rounds, "variants": rows}))
        return 0
    print(f"{'variant':<22} {'TTFB p50 ms':>12} {'p95 ms':>8} {'× websocket pcm':>16}")
    for row in rows:
        print(
            f"{row['variant']:<22} {row['ttfb_p50_ms']:>12} {row['ttfb_p95_ms']:>8} {row['vs_websocket_pcm']:>16}"
        )
    return 0
