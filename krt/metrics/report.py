"""``krt metrics``: read ``logs/metrics.log`` back into rolling summaries and plots.

Never imported by the server: the records it reads are written by ``record``, and this
side may load numpy's percentiles and, for ``--plot``, matplotlib.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from krt.config import ServerConfig, read_dotenv
from krt.metrics.record import round_or_none

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Sequence

DEFAULT_LOG_PATH: Path = ServerConfig().metrics_log
"""Where the server writes unless ``KRT_METRICS_LOG`` says otherwise (the config's default)."""
DEFAULT_PERIODS = "30m,1h,6h,24h,3d"

_PERIOD_PATTERN = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SECONDS_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@attrs.frozen
class LoadedRecords:
    """A log's readable records, and how many lines were not, so the CLI can say so."""

    records: list[dict[str, Any]]
    skipped: int
    """Non-blank lines that were not a JSON object with a numeric ``ts``."""


def load_records(path: Path) -> LoadedRecords:
    """Read a metrics log, keeping every line that parses and counting those that do not.

    A line torn by a crash, or written by something else, must not hide the rest of the
    log from the summary, so a bad line is counted and skipped, never raised.
    Raises ``FileNotFoundError`` (and other ``OSError``) for the file itself.
    """
    records: list[dict[str, Any]] = []
    skipped = 0
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if isinstance(record, dict) and _number(record, "ts") is not None:
                records.append(record)
            else:
                skipped += 1
    return LoadedRecords(records, skipped)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The readable records of a metrics log; see ``load_records`` for the skipped count."""
    return load_records(path).records


def _number(record: dict[str, Any], key: str) -> float | None:
    """A finite number from a record read back from disk, whose fields nothing guarantees."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_period(text: str) -> float:
    """Seconds in a window such as ``30m``, ``1.5h`` or ``3d`` (units s, m, h, d)."""
    match = _PERIOD_PATTERN.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(
            f"invalid period {text!r}: expected a positive number followed by s, m, h or d (e.g. 30m, 6h, 3d)"
        )
    return float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]


def parse_periods(text: str) -> list[str]:
    """Split a comma-separated ``--periods`` value, checking every entry before any work is done."""
    periods = [part.strip() for part in text.split(",") if part.strip()]
    if not periods:
        raise ValueError(f"invalid periods {text!r}: give at least one, e.g. 30m,1h,6h")
    for period in periods:
        parse_period(period)
    return periods


@attrs.frozen
class PeriodSummary:
    """One rolling window's figures; None where the window has nothing to measure."""

    period: str
    count: int
    canceled: int
    cancel_rate: float | None
    ttfb_p50_ms: float | None
    ttfb_p95_ms: float | None
    ttfb_p99_ms: float | None
    mean_xrt: float | None
    audio_s: float


def _completed_xrt(record: dict[str, Any]) -> float | None:
    """xRT of a response that ran to the end; a canceled one says nothing about speed."""
    audio_s, wall_s = _number(record, "audio_s") or 0.0, _number(record, "wall_s") or 0.0
    if record.get("canceled") is True or audio_s <= 0 or wall_s <= 0:
        return None
    return audio_s / wall_s


def _summarize_window(period: str, records: list[dict[str, Any]]) -> PeriodSummary:
    canceled = sum(1 for record in records if record.get("canceled") is True)
    ttfbs = [ttfb for record in records if (ttfb := _number(record, "ttfb_ms")) is not None]
    p50, p95, p99 = (
        (float(value) for value in np.percentile(ttfbs, [50, 95, 99], method="linear"))
        if ttfbs
        else (None, None, None)
    )
    xrts = [xrt for record in records if (xrt := _completed_xrt(record)) is not None]
    return PeriodSummary(
        period=period,
        count=len(records),
        canceled=canceled,
        cancel_rate=canceled / len(records) if records else None,
        ttfb_p50_ms=p50,
        ttfb_p95_ms=p95,
        ttfb_p99_ms=p99,
        mean_xrt=sum(xrts) / len(xrts) if xrts else None,
        audio_s=sum(_number(record, "audio_s") or 0.0 for record in records),
    )


def summarize(records: Iterable[dict[str, Any]], periods: Sequence[str], now: float) -> list[PeriodSummary]:
    """One summary per period over the records whose ``ts`` lies in ``[now - period, now]``.

    ``now`` is a parameter so that a summary is a pure function of the log; records with
    no numeric ``ts`` belong to no window. Raises ``ValueError`` for a bad period.
    """
    timed = [(ts, record) for record in records if (ts := _number(record, "ts")) is not None]
    summaries = []
    for period in periods:
        start = now - parse_period(period)
        window = [record for ts, record in timed if start <= ts <= now]
        summaries.append(_summarize_window(period, window))
    return summaries


_COLUMNS = [field.name for field in attrs.fields(PeriodSummary)]
"""The table's headers are the JSON keys, so both outputs read the same."""


def _cell(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def format_summary(summaries: list[PeriodSummary]) -> str:
    """An aligned text table, one row per period, ``-`` where a value does not exist."""
    rows = [list(_COLUMNS)]
    for summary in summaries:
        rows.append(
            [
                summary.period,
                str(summary.count),
                str(summary.canceled),
                _cell(None if summary.cancel_rate is None else summary.cancel_rate * 100, "{:.1f}%"),
                _cell(summary.ttfb_p50_ms, "{:.1f}"),
                _cell(summary.ttfb_p95_ms, "{:.1f}"),
                _cell(summary.ttfb_p99_ms, "{:.1f}"),
                _cell(summary.mean_xrt, "{:.2f}"),
                _cell(summary.audio_s if summary.count else None, "{:.1f}"),
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    lines = [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(lines)


def _rounded_fields(summary: PeriodSummary) -> dict[str, Any]:
    """A summary for ``--json``, rounded like the log lines so that it reads as measured."""
    fields = attrs.asdict(summary)
    for name, digits in [("cancel_rate", 4), ("mean_xrt", 3), ("audio_s", 3)]:
        fields[name] = round_or_none(fields[name], digits)
    for name in ("ttfb_p50_ms", "ttfb_p95_ms", "ttfb_p99_ms"):
        fields[name] = round_or_none(fields[name], 1)
    return fields


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--periods",
        default=DEFAULT_PERIODS,
        help=f"comma-separated windows, units s/m/h/d (default {DEFAULT_PERIODS})",
    )
    parser.add_argument(
        "--log", type=Path, help=f"metrics log to read (default: KRT_METRICS_LOG, else {DEFAULT_LOG_PATH})"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per period instead of a table"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="also draw TTFB and xRT of each response over the longest period into a PNG",
    )


def plot_timeline(path: Path, records: Iterable[dict[str, Any]], period: str, now: float, log: Path) -> int:
    """Draw the responses that ended in ``[now - period, now]``; returns how many there were.

    The summaries hide when the latency rose; a point per response shows it. matplotlib
    is imported only here, so ``krt metrics`` without ``--plot`` does not pay for it.
    """
    from krt.metrics.plots import timeline_plot

    start = now - parse_period(period)
    window = [
        (ts, record) for record in records if (ts := _number(record, "ts")) is not None and start <= ts <= now
    ]
    ttfb = [(ts, value) for ts, record in window if (value := _number(record, "ttfb_ms")) is not None]
    xrt = [(ts, value) for ts, record in window if (value := _completed_xrt(record)) is not None]
    timeline_plot(path, ttfb, xrt, title=f"krt metrics: {log}, last {period} ({len(window)} responses)")
    return len(window)


def configured_log_path(env_file: Path) -> Path:
    """Where the server writes: ``KRT_METRICS_LOG`` from the environment or ``.env``.

    Read without the full config on purpose: a typo in an unrelated knob must not keep an
    operator from reading the metrics.
    """

    try:
        values = {**read_dotenv(env_file), **os.environ}
    except ValueError:
        values = dict(os.environ)
    return Path(values.get("KRT_METRICS_LOG") or DEFAULT_LOG_PATH)


def run(args: argparse.Namespace) -> int:
    """``krt metrics``: summarize the log over each period ending now.

    A missing log is not an error (a fresh server has answered nothing yet): it says so on
    stderr and prints the empty table, so scripts reading stdout still get every period.
    """
    try:
        periods = parse_periods(args.periods)
    except ValueError as exc:
        print(f"krt metrics: {exc}", file=sys.stderr)
        return 2
    if args.log is None:
        args.log = configured_log_path(getattr(args, "env_file", Path(".env")))
    try:
        loaded = load_records(args.log)
    except FileNotFoundError:
        print(f"krt metrics: no metrics log at {args.log} yet; nothing to summarize", file=sys.stderr)
        loaded = LoadedRecords([], 0)
    except OSError as exc:
        print(f"krt metrics: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if loaded.skipped:
        print(f"krt metrics: skipped {loaded.skipped} unreadable line(s) in {args.log}", file=sys.stderr)
    now = time.time()
    summaries = summarize(loaded.records, periods, now=now)
    if args.json:
        for summary in summaries:
            print(json.dumps(_rounded_fields(summary)))
    else:
        print(format_summary(summaries))
    if args.plot is not None:
        longest = max(periods, key=parse_period)
        try:
            drawn = plot_timeline(args.plot, loaded.records, longest, now, args.log)
        except OSError as exc:
            print(f"krt metrics: cannot write the plot {args.plot}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(
            f"krt metrics: plotted {drawn} response(s) of the last {longest} into {args.plot}",
            file=sys.stderr,
        )
    return 0
