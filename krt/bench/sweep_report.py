"""The figures of a ``krt bench`` run: per-level summaries, the recommendation, the text report.

Pure functions of what the client recorded, kept apart from the code that drives the
sockets so that the recommendation and the tables can be tested on hand-made levels.
Figures follow the spec's definitions: TTFB per response at the client; xRT as audio
seconds per wall second; a stall as a pause of a player that starts at the first audio
byte and plays in real time, here counted over a whole text's playback (all of its
responses, in order), because in ``sentences`` mode the gap a caller hears is between
two sentences.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from krt import PCM_BYTES_PER_SECOND
from krt.bench.load import summarize_level
from krt.client.figures import STALL_NOISE_FLOOR_S, stalls
from krt.metrics.stats import percentile

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from krt.bench.load import LevelResult, Transaction


def _ms(values: Sequence[float], q: float) -> float | None:
    value = percentile(values, q)
    return None if value is None else round(value * 1000, 1)


def first_audio(transaction: Transaction) -> float | None:
    """Seconds from sending the text's first response to its first audio: what a caller waits."""
    arrivals = [trace.arrivals[0] for trace in transaction if trace.arrivals]
    return min(arrivals) - transaction[0].sent_at if arrivals else None


def summarize(level: LevelResult) -> dict[str, Any]:
    """``summarize_level``'s figures plus p99, the slowest stream, and per-text first audio and stalls."""
    base = summarize_level(level)
    transactions = level.transactions
    ttfbs = [trace.ttfb for trace in level.traces if trace.ttfb is not None]
    firsts = [value for value in map(first_audio, transactions) if value is not None]
    heard = [
        stalls(
            (
                (arrived, size / PCM_BYTES_PER_SECOND)
                for trace in transaction
                for arrived, size in zip(trace.arrivals, trace.sizes, strict=True)
            ),
            STALL_NOISE_FLOOR_S,
        )
        for transaction in transactions
    ]
    stream_xrt: list[float] = base["stream_xrt"]  # type: ignore[assignment]
    return {
        "concurrency": level.concurrency,
        "texts": len(transactions),
        "responses": base["responses"],
        "completed": base["completed"],
        "ttfb_p50_ms": _ms(ttfbs, 50),
        "ttfb_p95_ms": _ms(ttfbs, 95),
        "ttfb_p99_ms": _ms(ttfbs, 99),
        "audible_p50_ms": base["audible_p50_ms"],
        "audible_p95_ms": base["audible_p95_ms"],
        "first_audio_p50_ms": _ms(firsts, 50),
        "first_audio_p95_ms": _ms(firsts, 95),
        "aggregate_xrt": base["aggregate_xrt"],
        "stream_xrt_min": min(stream_xrt, default=None),
        "stream_xrt": stream_xrt,
        "fairness": base["fairness"],
        "stalled_texts": sum(s.count > 0 for s in heard),
        "text_stall_s": round(sum(s.seconds for s in heard), 3),
        "stalled_responses": base["stalled_responses"],
        "busy": base["busy"],
        "errors": base["errors"],
        "stuck": base["stuck"],
        "leaked_bytes": base["leaked_bytes"],
        "late_events": base["late_events"],
        "audio_s": base["audio_s"],
        "wall_s": base["wall_s"],
    }


@attrs.frozen
class Recommendation:
    concurrency: int | None
    message: str


def recommend(
    levels: Sequence[Mapping[str, Any]], p95_target_ms: float, mode: str = "single"
) -> Recommendation:
    """The highest level whose p95 first audio meets the target with no busy, error or stuck.

    First audio equals TTFB in ``single`` mode; in ``sentences`` mode it is what the
    caller waits for, while later sentences' TTFB includes queueing behind earlier ones.
    """

    def fault(level: Mapping[str, Any]) -> str | None:
        p95 = level.get("first_audio_p95_ms")
        if p95 is None:
            return "no audio"
        problems = [f"{level[key]} {key}" for key in ("busy", "errors", "stuck") if level.get(key)]
        if p95 > p95_target_ms:
            problems.insert(0, f"p95 {p95:g} ms")
        return ", ".join(problems) or None

    figure = "p95 TTFB" if mode == "single" else "p95 first audio per text"
    faults = {int(level["concurrency"]): fault(level) for level in levels}
    passing = [c for c, problem in faults.items() if problem is None]
    if not passing:
        listed = "; ".join(f"{c}: {problem}" for c, problem in sorted(faults.items()))
        return Recommendation(
            None,
            f"no concurrency qualifies: none had {figure} <= {p95_target_ms:g} ms without busy or "
            f"errors ({listed}); check the engine alone (krt bench engine) or the target",
        )
    best = max(passing)
    level = _level(levels, best)
    message = (
        f"recommended concurrency: {best} ({figure} {level['first_audio_p95_ms']:g} ms <= {p95_target_ms:g} ms, "
        f"no busy or errors): set MAX_CONCURRENT_JOBS={best} and add replicas for more"
    )
    if best == max(faults):
        message += "; it was the highest level tried, so more may fit (--sweep)"
    if level.get("stalled_texts"):
        smooth = [c for c in passing if c < best and not _level(levels, c).get("stalled_texts")]
        message += (
            f"; but {level['stalled_texts']} of {level['texts']} texts stalled there "
            f"(slowest stream xRT {level.get('stream_xrt_min')}): "
            + (
                f"the highest level without stalls is {max(smooth)}"
                if smooth
                else "no qualifying level was stall-free"
            )
        )
    below = [f"{c} ({problem})" for c, problem in sorted(faults.items()) if c < best and problem]
    if below:
        message += f"; note that lower levels did not qualify: {', '.join(below)}"
    return Recommendation(best, message)


def _level(levels: Sequence[Mapping[str, Any]], concurrency: int) -> Mapping[str, Any]:
    return next(level for level in levels if int(level["concurrency"]) == concurrency)


# --- output --------------------------------------------------------------------------------

COLUMNS = (
    ("concurrency", "C", 4, "d"),
    ("texts", "texts", 7, "d"),
    ("ttfb_p50_ms", "TTFB p50 ms", 13, ".0f"),
    ("ttfb_p95_ms", "p95 ms", 8, ".0f"),
    ("ttfb_p99_ms", "p99 ms", 8, ".0f"),
    ("audible_p95_ms", "heard p95 ms", 14, ".0f"),
    ("first_audio_p95_ms", "1st audio p95 ms", 18, ".0f"),
    ("aggregate_xrt", "agg xRT", 9, ".2f"),
    ("stream_xrt_min", "min stream xRT", 16, ".2f"),
    ("stalled_texts", "stalled", 9, "d"),
    ("busy", "busy", 6, "d"),
    ("errors", "errors", 8, "d"),
    ("stuck", "stuck", 7, "d"),
)
"""Key, header, width, format. TTFB is per response, and so is "heard": when a real-time
player reaches the first sample above -50 dBFS. The first-audio column (per text)
is shown in ``sentences`` mode only, since in ``single`` mode it is the TTFB column."""


def format_table(levels: Sequence[Mapping[str, Any]], mode: str) -> str:
    """One row per level, ``-`` where a figure was not measured (no audio at that level)."""
    columns = [column for column in COLUMNS if mode == "sentences" or column[0] != "first_audio_p95_ms"]
    lines = ["".join(f"{title:>{width}}" for _, title, width, _ in columns)]
    for level in levels:
        lines.append("".join(f"{cell(level.get(key), spec):>{width}}" for key, _, width, spec in columns))
    return "\n".join(lines)


def cell(value: object, spec: str = ".0f") -> str:
    if value is None:
        return "-"
    return (
        format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
    )


def format_level(level: Mapping[str, Any], mode: str) -> str:
    """The single-level report: every figure the seed's bench printed, and stalls."""
    streams = " ".join(f"{x:.2f}" for x in level["stream_xrt"])
    lines = [
        f"texts      {level['texts']} ({level['responses']} responses, {level['completed']} completed; "
        f"busy {level['busy']}, errors {level['errors']}, stuck {level['stuck']})",
        f"TTFB       p50 {cell(level['ttfb_p50_ms'])} ms, p95 {cell(level['ttfb_p95_ms'])} ms, "
        f"p99 {cell(level['ttfb_p99_ms'])} ms (per response)",
        f"heard      p50 {cell(level['audible_p50_ms'])} ms, p95 {cell(level['audible_p95_ms'])} ms "
        "(first sample above -50 dBFS, as a real-time player reaches it)",
    ]
    if mode == "sentences":
        lines.append(
            f"1st audio  p50 {cell(level['first_audio_p50_ms'])} ms, "
            f"p95 {cell(level['first_audio_p95_ms'])} ms (per text)"
        )
    lines += [
        f"xRT        {cell(level['aggregate_xrt'], '.2f')} audio-s per wall-s in all; per stream {streams} "
        f"(Jain {cell(level['fairness'], '.3f')})",
        f"stalls     {level['stalled_texts']} of {level['texts']} texts would pause a real-time player "
        f"({level['text_stall_s']:.3f} s in all)",
        f"wall       {level['wall_s']:.2f} s for {level['audio_s']:.2f} s of audio",
    ]
    return "\n".join(lines)
