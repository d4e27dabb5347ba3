"""PNG plots for ``krt bench`` sweeps and ``krt metrics --plot``, drawn without a display.

Only the modules that write a plot import this one, and only when a plot is asked for:
matplotlib costs about half a second to import, which the CLI's other commands should not
pay. Figures are built with matplotlib's object API (``Figure``, never ``pyplot``), which
renders through Agg straight to a file: no display is needed (a pod has none) and no
global figure state outlives the call.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from matplotlib.axes import Axes

# matplotlib logs its one-time font cache build at INFO, into the tool's output.
logging.getLogger("matplotlib").setLevel(logging.WARNING)

DPI = 120
PERCENTILE_STYLES = (
    ("ttfb_p50_ms", "p50", "o", "tab:blue"),
    ("ttfb_p95_ms", "p95", "s", "tab:orange"),
    ("ttfb_p99_ms", "p99", "^", "tab:red"),
)
MIN_POINTS_PER_BIN = 3
"""Fewer responses than this in a time bin make a percentile line that is only noise."""


def _value(level: Mapping[str, Any], key: str) -> float:
    """A figure from a level summary; NaN (a gap in the line) where it was not measured."""
    value = level.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def sweep_plot(
    path: Path,
    levels: Sequence[Mapping[str, Any]],
    *,
    title: str,
    p95_target_ms: float,
    recommended: int | None,
    first_audio: bool = False,
) -> None:
    """TTFB percentiles (top) and throughput (bottom) against concurrency, one point per level.

    The p95 target and the recommended level are drawn in, levels with busy refusals or
    errors are crossed out and levels where playback stalled are labelled, so the plot
    tells the same story as the table. ``first_audio`` adds the p95 of each text's first
    audio (``sentences`` mode), the figure the target is then held to. Legends sit to
    the right of the panels, where no line can run under them.
    """
    concurrency = [int(level["concurrency"]) for level in levels]
    figure = Figure(figsize=(10, 7.5), layout="constrained")
    ttfb_axes, xrt_axes = figure.subplots(2, 1, sharex=True)
    for key, label, marker, colour in PERCENTILE_STYLES:
        ttfb_axes.plot(concurrency, _series(levels, key), marker=marker, color=colour, label=f"TTFB {label}")
    if first_audio:
        ttfb_axes.plot(
            concurrency,
            _series(levels, "first_audio_p95_ms"),
            marker="D",
            linestyle=":",
            color="tab:brown",
            label="first audio of a text, p95",
        )
    target_of = "first-audio p95" if first_audio else "p95"
    ttfb_axes.axhline(
        p95_target_ms,
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"{target_of} target ({p95_target_ms:g} ms)",
    )
    failed = [level for level in levels if _faults(level)]
    if failed:
        _cross_out(ttfb_axes, failed, "concurrency", "ttfb_p95_ms", "busy / errors / stuck")
        for level in failed:
            text = _faults(level) if _value(level, "ttfb_p95_ms") >= 0 else f"no audio: {_faults(level)}"
            _label(ttfb_axes, level, "ttfb_p95_ms", text, last=concurrency[-1], colour="black")
    for axes in (ttfb_axes, xrt_axes):
        axes.margins(x=0.08)  # room for the recommended band and labels at the last level
        if recommended is not None:
            axes.axvline(recommended, color="tab:green", alpha=0.3, linewidth=10, zorder=0)
        axes.grid(True, alpha=0.3)
    if recommended is not None:
        # An empty line carries the green band into the legend once.
        ttfb_axes.plot(
            [], [], color="tab:green", alpha=0.3, linewidth=10, label=f"recommended: {recommended}"
        )
    ttfb_axes.set_ylabel("time to first audio (ms)")
    ttfb_axes.set_ylim(bottom=0)
    ttfb_axes.set_title("Latency: response.create → first audio delta, at the client", fontsize="medium")

    xrt_axes.plot(
        concurrency,
        _series(levels, "aggregate_xrt"),
        marker="o",
        color="tab:purple",
        label="all streams together",
    )
    xrt_axes.plot(
        concurrency, _series(levels, "stream_xrt_min"), marker="v", color="tab:cyan", label="slowest stream"
    )
    xrt_axes.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="real time (xRT 1)")
    for level in levels:
        if _value(level, "stalled_texts") > 0:
            stalled = f"{level['stalled_texts']}/{level['texts']} stalled"
            _label(xrt_axes, level, "stream_xrt_min", stalled, last=concurrency[-1], colour="tab:red")
    xrt_axes.set_ylabel("xRT (audio seconds per wall second)")
    xrt_axes.set_ylim(bottom=0)
    xrt_axes.set_xlabel("concurrency (simultaneous WebSocket clients)")
    xrt_axes.set_xticks(concurrency)
    xrt_axes.set_title("Throughput: seconds of audio delivered per second", fontsize="medium")
    for axes in (ttfb_axes, xrt_axes):
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=DPI)


def capacity_plot(
    path: Path, levels: Sequence[Mapping[str, Any]], *, title: str, p95_target_ms: float, capacity: int
) -> None:
    """First audio (top) and replies and audio made per second (bottom) against the stream
    count of ``krt bench capacity``; counts with a stall or an unspoken reply are crossed
    out, the target is drawn in and the capacity found is shaded."""
    streams = [int(level["streams"]) for level in levels]
    figure = Figure(figsize=(10, 7.5), layout="constrained")
    latency_axes, rate_axes = figure.subplots(2, 1, sharex=True)
    latency_axes.plot(
        streams, _series(levels, "first_audio_p50_ms"), marker="o", color="tab:blue", label="p50"
    )
    latency_axes.plot(
        streams, _series(levels, "first_audio_p95_ms"), marker="s", color="tab:orange", label="p95"
    )
    latency_axes.axhline(
        p95_target_ms, color="grey", linestyle="--", linewidth=1, label=f"p95 target ({p95_target_ms:g} ms)"
    )
    failed = [level for level in levels if level["stalled"] or level["errors"]]
    if failed:
        _cross_out(latency_axes, failed, "streams", "first_audio_p95_ms", "stalled / unspoken")
    for axes in (latency_axes, rate_axes):
        axes.margins(x=0.08)
        if capacity:
            axes.axvline(capacity, color="tab:green", alpha=0.3, linewidth=10, zorder=0)
        axes.grid(True, alpha=0.3)
    if capacity:
        latency_axes.plot([], [], color="tab:green", alpha=0.3, linewidth=10, label=f"capacity: {capacity}")
    latency_axes.set_ylabel("first audio, from the first try (ms)")
    latency_axes.set_ylim(bottom=0)
    latency_axes.set_title("Latency a caller waits, time spent refused included", fontsize="medium")
    rate_axes.plot(streams, _series(levels, "audio_per_s"), marker="o", color="tab:purple", label="audio s/s")
    rate_axes.plot(streams, _series(levels, "replies_per_s"), marker="^", color="tab:cyan", label="replies/s")
    rate_axes.set_ylabel("per wall second")
    rate_axes.set_ylim(bottom=0)
    rate_axes.set_xlabel("streams (agents speaking back to back, joining at random)")
    rate_axes.set_xticks(streams)
    rate_axes.set_title("Throughput", fontsize="medium")
    for axes in (latency_axes, rate_axes):
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=DPI)


def _cross_out(axes: Axes, failed: Sequence[Mapping[str, Any]], x_key: str, y_key: str, label: str) -> None:
    """A black cross on each level that failed, on the line it would have been judged by."""
    axes.scatter(
        [int(level[x_key]) for level in failed],
        [_on_axis(level, y_key) for level in failed],
        marker="x",
        s=120,
        linewidths=2.5,
        color="black",
        zorder=5,
        clip_on=False,
        label=label,
    )


def _label(axes: Axes, level: Mapping[str, Any], key: str, text: str, *, last: int, colour: str) -> None:
    """Small text beside a level's point, to the left of the rightmost one so it is not cut off."""
    at_right_edge = int(level["concurrency"]) == last
    axes.annotate(
        text,
        (int(level["concurrency"]), _on_axis(level, key)),
        xytext=(-8 if at_right_edge else 8, 6),
        textcoords="offset points",
        ha="right" if at_right_edge else "left",
        fontsize="small",
        color=colour,
    )


def _on_axis(level: Mapping[str, Any], key: str) -> float:
    """Where to mark a level: at its value, or on the x axis when nothing was measured."""
    value = _value(level, key)
    return 0.0 if math.isnan(value) else value


def _series(levels: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [_value(level, key) for level in levels]


def _faults(level: Mapping[str, Any]) -> str:
    """``"busy 2, errors 1"`` for a level that had any; empty (false) for a clean one."""
    return ", ".join(f"{key} {level[key]}" for key in ("busy", "errors", "stuck") if _value(level, key) > 0)


def timeline_plot(
    path: Path,
    ttfb_ms: Sequence[tuple[float, float]],
    xrt: Sequence[tuple[float, float]],
    *,
    title: str,
) -> None:
    """TTFB (top) and xRT (bottom) of each logged response against the time it ended.

    Each response is a faint dot; where a time bin holds enough responses, lines through
    the bins' p50/p95 (TTFB) and median (xRT) show the trend the dots blur into.
    Points are ``(unix seconds, value)``; times are shown in UTC, as the log stores them.
    """
    figure = Figure(figsize=(10, 7), layout="constrained")
    ttfb_axes, xrt_axes = figure.subplots(2, 1, sharex=True)
    _timeline(ttfb_axes, ttfb_ms, "TTFB", "tab:blue", ((50, "p50", "tab:blue"), (95, "p95", "tab:orange")))
    ttfb_axes.set_ylabel("time to first audio (ms)")
    ttfb_axes.set_title("TTFB per response (server side: response.create → first audio)", fontsize="medium")
    _timeline(xrt_axes, xrt, "xRT", "tab:purple", ((50, "median", "tab:purple"),))
    if xrt:
        xrt_axes.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="real time (xRT 1)")
    xrt_axes.set_ylabel("xRT (audio seconds per wall second)")
    xrt_axes.set_xlabel("time the response ended (UTC)")
    xrt_axes.set_title("xRT per completed response (canceled ones left out)", fontsize="medium")
    for axes in (ttfb_axes, xrt_axes):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    if ttfb_ms or xrt:
        locator = AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
        xrt_axes.xaxis.set_major_locator(locator)
        xrt_axes.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
    figure.suptitle(title)
    figure.savefig(path, dpi=DPI)


def _timeline(
    axes: Axes,
    points: Sequence[tuple[float, float]],
    name: str,
    colour: str,
    lines: Sequence[tuple[float, str, str]],
) -> None:
    axes.grid(True, alpha=0.3)
    if not points:
        axes.text(
            0.5, 0.5, f"no {name} values in this window", ha="center", va="center", transform=axes.transAxes
        )
        axes.set_yticks([])
        axes.set_xticks([])
        return
    times = np.array([ts for ts, _ in points], dtype=float)
    values = np.array([value for _, value in points], dtype=float)
    axes.scatter(
        _dates(times), values, s=10, alpha=0.5, color=colour, linewidths=0, label=f"{name} per response"
    )
    centres, binned = _binned_percentiles(times, values, [q for q, _, _ in lines])
    if len(centres) >= 2:
        for (_, label, line_colour), series in zip(lines, binned, strict=True):
            axes.plot(
                _dates(centres), series, color=line_colour, linewidth=1.8, label=f"{label} per time bin"
            )
    axes.set_ylim(bottom=0)


def _dates(times: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Unix seconds as matplotlib date numbers (whatever epoch matplotlib is set to)."""
    moments = [datetime.fromtimestamp(float(ts), tz=UTC) for ts in times]
    return np.asarray(date2num(moments), dtype=np.float64)  # type: ignore[no-untyped-call]


def _binned_percentiles(
    times: np.ndarray[Any, np.dtype[np.float64]],
    values: np.ndarray[Any, np.dtype[np.float64]],
    quantiles: Sequence[float],
) -> tuple[np.ndarray[Any, np.dtype[np.float64]], list[list[float]]]:
    """Percentiles of ``values`` in equal time bins (5–60 bins, about ten responses each);
    NaN for a bin with too few responses to have a percentile worth drawing."""
    bins = int(min(60, max(5, len(times) // 10)))
    edges = np.linspace(times.min(), times.max(), bins + 1)
    index = np.clip(np.digitize(times, edges) - 1, 0, bins - 1)
    centres: list[float] = []
    series: list[list[float]] = [[] for _ in quantiles]
    for number in range(bins):
        inside = values[index == number]
        centres.append(float((edges[number] + edges[number + 1]) / 2))
        for column, q in zip(series, quantiles, strict=True):
            # NaN breaks the line: no trend is drawn across an idle stretch of the log.
            column.append(float(np.percentile(inside, q)) if inside.size >= MIN_POINTS_PER_BIN else math.nan)
    return np.array(centres, dtype=float), series
