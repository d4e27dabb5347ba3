"""``krt bench server``: what the server adds to the engine, and how it holds up under load.

Everything runs in one process on one loaded model: the engine floor is measured on the
pipeline first, then the real server (h11 front door, sessions, shared engine) is
started on 127.0.0.1 around that same pipeline, and clients on real WebSockets measure
TTFB, barge-in and a concurrency sweep. Loading the model once is what makes
"TTFB / floor" a statement about the server: the same weights, threads and text, with
and without the server in front.
"""

from __future__ import annotations

import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from krt.bench.engine_bench import PARAGRAPH, whole_sentence_seconds
from krt.bench.load import LevelResult, Load, run_barge_in, run_level, summarize_barge_in, summarize_level
from krt.client.speech import ResponseTrace, open_speech_client
from krt.client.texts import AGENT_REPLIES as TEXTS
from krt.engine.pipeline import SpeechPipeline
from krt.metrics.stats import percentile
from krt.server import app
from krt.synth.loading import load_backend
from krt.wire.protocol import WS_PATH

if TYPE_CHECKING:
    import argparse

    from krt.bench.load import Transaction
    from krt.config import Config
    from krt.server.state import ServerState

FLOOR_REPEATS = 3
ENGINE_LOGGERS = ("krt.server", "krt.engine")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency",
        default="1,2,4",
        help="comma-separated levels of the sweep (1 is always measured: TTFB/floor needs it)",
    )
    parser.add_argument("--n", type=int, default=12, help="responses per level, and barge-ins")
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torch", "fake"])
    parser.add_argument("--voice", default="female")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _progress(message: str) -> None:
    print(f"bench server: {message}", file=sys.stderr, flush=True)


def measure_floor(pipeline: SpeechPipeline, texts: tuple[str, ...], voice: str) -> dict[str, float]:
    """Median seconds the raw model takes for each text's first sentence, whole (G2P,
    front end, one decode): what a server without windows could at best answer in."""
    whole_sentence_seconds(pipeline, texts[0], voice)  # the first inference pays for lazy init
    floors = {}
    for index, text in enumerate(texts, start=1):
        first_sentence = pipeline.plan(text, voice).segments[0]
        floors[text] = statistics.median(
            whole_sentence_seconds(pipeline, first_sentence, voice) for _ in range(FLOOR_REPEATS)
        )
        _progress(f"engine floor {index}/{len(texts)}: {floors[text] * 1000:.0f} ms")
    return floors


async def serve_pipeline(
    config: Config,
    pipeline: SpeechPipeline,
    *,
    task_status: trio.TaskStatus[tuple[int, ServerState]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``krt serve`` on 127.0.0.1:0 around the pipeline the floor was measured with.

    A second copy of the model would change the memory and thread contention the floor
    was measured under, so the server is handed this one; its warm-up also calibrates
    admission's capacity and first-window time, as in production.
    """
    await app.main(
        config, "127.0.0.1", 0, handle_signals=False, build=lambda _config: pipeline, task_status=task_status
    )


@attrs.frozen
class BenchResult:
    levels: tuple[LevelResult, ...]
    barge_in: tuple[ResponseTrace, ...]
    busy_rejections: int


async def bench(
    config: Config, pipeline: SpeechPipeline, levels: list[int], n: int, voice: str
) -> BenchResult:
    """Start the server, run the sweep and the barge-in, stop the server."""
    async with trio.open_nursery() as nursery:
        port, state = await nursery.start(serve_pipeline, config, pipeline)
        connect = partial(open_speech_client, f"ws://127.0.0.1:{port}{WS_PATH}", api_key=config.auth.api_key)
        load = Load(TEXTS, n, voice=voice)
        results = []
        for concurrency in levels:
            finished = 0

            def count(transaction: Transaction, concurrency: int = concurrency) -> None:
                nonlocal finished
                finished += 1
                outcomes = ", ".join(trace.outcome or "stuck" for trace in transaction)
                _progress(f"concurrency {concurrency}: {finished}/{n} ({outcomes})")

            results.append(await run_level(connect, load, concurrency, on_done=count))
        _progress(f"barge-in: {n} responses cancelled at their first audio")
        barge = await run_barge_in(connect, PARAGRAPH, n, voice=voice)
        assert state.engine is not None
        busy = state.engine.statistics().busy_rejections
        nursery.cancel_scope.cancel(reason="benchmark done")
    return BenchResult(tuple(results), tuple(barge), busy)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def report(
    pipeline: SpeechPipeline, voice: str, floors: dict[str, float], result: BenchResult, wall: float
) -> list[dict[str, Any]]:
    """The run as JSON-ready records: floor, overhead, barge-in, one per level, run."""
    backend = pipeline.backend
    floor_values = list(floors.values())
    floor = {
        "kind": "engine_floor",
        "backend": backend.name,
        "device": backend.device,
        "voice": pipeline.plan(TEXTS[0], voice).voice,
        "texts": len(floors),
        "floor_p50_ms": _ms(percentile(floor_values, 50)),
        "floor_min_ms": _ms(min(floor_values)),
        "floor_max_ms": _ms(max(floor_values)),
    }
    level_one = next(level for level in result.levels if level.concurrency == 1)
    pairs = [(t.ttfb, floors[t.text]) for t in level_one.traces if t.ttfb is not None]
    ratios = [ttfb / floor_s for ttfb, floor_s in pairs]
    overhead = {
        "kind": "overhead",
        "concurrency": 1,
        "ttfb_p50_ms": _ms(percentile([ttfb for ttfb, _ in pairs], 50)),
        "ttfb_over_floor_p50": None if not ratios else round(percentile(ratios, 50) or 0.0, 3),
        "ttfb_over_floor_max": None if not ratios else round(max(ratios), 3),
        "extra_ms_p50": _ms(percentile([ttfb - floor_s for ttfb, floor_s in pairs], 50)),
    }
    barge = {"kind": "barge_in", **summarize_barge_in(result.barge_in)}
    levels = [{"kind": "level", **summarize_level(level)} for level in result.levels]
    run = {
        "kind": "run",
        "wall_s": round(wall, 1),
        "engine_busy_rejections": result.busy_rejections,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, 1),
    }
    return [floor, overhead, barge, *levels, run]


COLUMNS = (
    ("concurrency", "C", 3),
    ("responses", "resp", 5),
    ("ttfb_p50_ms", "TTFB p50 ms", 12),
    ("ttfb_p95_ms", "TTFB p95 ms", 12),
    ("audible_p50_ms", "heard p50 ms", 13),
    ("aggregate_xrt", "agg xRT", 8),
    ("stream_xrt", "stream xRT", 24),
    ("fairness", "Jain", 6),
    ("stalled_responses", "stalled", 8),
    ("stall_s", "stall s", 8),
    ("busy", "busy", 5),
    ("errors", "errors", 7),
    ("stuck", "stuck", 6),
    ("leaked_bytes", "leaked B", 9),
)


def _cell(value: object) -> str:
    if isinstance(value, list):
        return " ".join(f"{v:.2f}" for v in value)
    return "-" if value is None else str(value)


def print_table(records: list[dict[str, Any]]) -> None:
    floor, overhead, barge, *levels, run = records
    print(
        f"krt bench server: {floor['backend']} ({floor['device']}), voice {floor['voice']}, "
        f"{levels[0]['responses']} responses per level"
    )
    print(
        f"engine floor (raw model, whole first sentence, median of {FLOOR_REPEATS}): "
        f"p50 {floor['floor_p50_ms']} ms, min {floor['floor_min_ms']}, max {floor['floor_max_ms']} "
        f"over {floor['texts']} texts"
    )
    print(
        f"concurrency 1: TTFB p50 {overhead['ttfb_p50_ms']} ms; TTFB/floor p50 "
        f"{overhead['ttfb_over_floor_p50']} (max {overhead['ttfb_over_floor_max']}), "
        f"server adds p50 {overhead['extra_ms_p50']} ms"
    )
    print(
        f"barge-in ({barge['responses']} cancels at first audio, {barge['canceled']} canceled): "
        f"cancel→canceled p50 {barge['cancel_p50_ms']} ms, p95 {barge['cancel_p95_ms']} ms, "
        f"max {barge['cancel_max_ms']} ms; bytes leaked {barge['leaked_bytes']}, "
        f"late events {barge['late_events']}, stuck {barge['stuck']}"
    )
    print()
    print("".join(f"{title:>{width}}" for _, title, width in COLUMNS))
    for level in levels:
        print("".join(f"{_cell(level[key]):>{width}}" for key, _, width in COLUMNS))
    print()
    print(
        f"heard = first sample above -50 dBFS as a real-time player reaches it; "
        f"stalled = responses where a real-time player starting at the first byte pauses; "
        f"wall {run['wall_s']} s, peak RSS {run['peak_rss_mb']} MB, "
        f"engine busy refusals {run['engine_busy_rejections']}"
    )


def _levels(text: str, n: int) -> list[int]:
    try:
        levels = sorted({1, *(int(part) for part in text.split(",") if part.strip())})
    except ValueError:
        raise SystemExit(f"krt bench server: --concurrency must be whole numbers, got {text!r}") from None
    if levels[0] < 1 or levels[-1] > n:
        raise SystemExit(f"krt bench server: each --concurrency must be between 1 and --n ({n})")
    return levels


def _quiet_server_logs() -> None:
    """Per-session INFO lines would bury the progress; warnings (slow sends) still show."""
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


def run(args: argparse.Namespace, config: Config) -> int:
    """Exit 1 when the server misbehaved: leaked audio, late events or a stuck response."""
    if args.n < 1:
        raise SystemExit("krt bench server: --n must be at least 1")
    levels = _levels(args.concurrency, args.n)
    _quiet_server_logs()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="krt-bench-") as scratch:
        # The bench's responses must not land in the operator's logs/metrics.log.
        config = attrs.evolve(
            config,
            model=attrs.evolve(config.model, backend=args.backend),
            # Its own scratch metrics log, and no admin socket: a bench must not take over
            # (or be refused by) the socket of a server running from the same directory.
            server=attrs.evolve(config.server, metrics_log=Path(scratch) / "metrics.log", admin_socket=""),
        )
        _progress(f"loading the {args.backend} backend")
        pipeline = SpeechPipeline(load_backend(config), config)
        floors = measure_floor(pipeline, TEXTS, args.voice)
        result = trio.run(bench, config, pipeline, levels, args.n, args.voice)
    records = report(pipeline, args.voice, floors, result, time.perf_counter() - started)
    if args.json:
        for record in records:
            print(json.dumps(record))
    else:
        print_table(records)
    faults = [r for r in records if r.get("leaked_bytes") or r.get("late_events") or r.get("stuck")]
    return 1 if faults else 0
