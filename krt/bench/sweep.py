"""``krt bench``: load one concurrency level, or sweep several, against a running server.

The seed's ``test/bench.py --n 60 --concurrency 3`` measured one level and left finding
the sweet spot to hand-run repeats ("pick the highest concurrency where p95 TTFB is
acceptable"). This does the same measurement, and by default runs it at every level of a
sweep, prints one table, draws it, and names that level: the highest concurrency whose
p95 TTFB meets ``--p95-target-ms`` with no busy refusals, errors or stuck responses.

Every level speaks the same ``--n`` texts (text i goes to client i mod C, each client
speaking its share back to back), so levels differ in concurrency only. In ``sentences``
mode each sentence of a text is queued at once as its own response, as a voice agent
sends them (and as ``krt client``/``krt tpm`` do); a text's transaction ends when all of
them have. TTFB is per response, but a queued sentence's TTFB includes waiting behind the
ones before it, so there the recommendation uses the text's first audio, and stalls are
counted over the text's whole playback, where a gap between two sentences is heard.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs
import trio

from krt.bench.load import Load, run_level
from krt.bench.sweep_report import cell, format_level, format_table, recommend, summarize
from krt.client.commands import (
    ToolError,
    add_mode_arguments,
    add_output_arguments,
    connected,
    leaves,
    output_of,
)
from krt.client.target import add_target_arguments, resolve_target
from krt.client.texts import AGENT_REPLIES
from krt.media.codecs import NATIVE, OutputAudio

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence

    from krt.bench.load import Transaction
    from krt.client.target import Target
    from krt.config import Config

DEFAULT_LEVELS = "1,2,3,4,6,8"
DEFAULT_N = 24
DEFAULT_P95_TARGET_MS = 1500.0
DEFAULT_PLOT = Path("bench-sweep.png")
READYZ_TIMEOUT_S = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``krt bench`` itself; ``--n``, ``--concurrency``, ``--voice`` and ``--json``
    share names with ``krt bench server``, whose own defaults win when it is the one run."""
    parser.add_argument(
        "--sweep",
        metavar="LEVELS",
        help=f"comma-separated concurrency levels (default {DEFAULT_LEVELS} unless --concurrency)",
    )
    parser.add_argument(
        "--concurrency", type=int, metavar="C", help="run a single level of C clients instead of a sweep"
    )
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"texts per level (default {DEFAULT_N})")
    add_mode_arguments(parser)
    parser.add_argument(
        "--texts",
        type=Path,
        metavar="FILE",
        help="texts to speak, one per line (default: built-in agent replies)",
    )
    parser.add_argument(
        "--p95-target-ms",
        type=float,
        metavar="MS",
        default=DEFAULT_P95_TARGET_MS,
        help=f"TTFB p95 a recommended level must meet (default {DEFAULT_P95_TARGET_MS:g})",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help=f"PNG of TTFB and xRT against concurrency (default {DEFAULT_PLOT} for a sweep; "
        "a single level is drawn only when this is given)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_output_arguments(parser)
    add_target_arguments(parser)


# --- what to send --------------------------------------------------------------------------


def parse_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"levels must be whole numbers separated by commas, got {text!r}") from None
    if not levels or levels[0] < 1:
        raise ValueError(f"levels must be at least 1, got {text!r}")
    return levels


def read_texts(path: Path) -> tuple[str, ...]:
    """One text per line, blank lines skipped; ValueError with a one-line reason otherwise."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the texts file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the texts file {path} is not UTF-8 text") from None
    texts = tuple(line.strip() for line in lines if line.strip())
    if not texts:
        raise ValueError(f"the texts file {path} has no texts (one per line; blank lines are skipped)")
    return texts


# --- while it runs ------------------------------------------------------------------------


class Progress:
    """Live progress on stderr: a redrawn bar on a terminal, a line per finished level anywhere.

    Hand-written rather than rich or tqdm: a dozen lines, and neither is a dependency of
    ours (both only come in through other packages).
    """

    WIDTH = 24
    TICK_S = 0.5

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.live = stream.isatty()
        self.concurrency = 0
        self.done = 0
        self.started = 0.0

    def start(self, concurrency: int) -> None:
        self.concurrency, self.done, self.started = concurrency, 0, trio.current_time()
        self._draw()

    def advance(self, _: Transaction) -> None:
        self.done += 1
        self._draw()

    async def tick(self) -> None:
        """Redraw twice a second, so the clock moves while long texts are still speaking."""
        while True:
            await trio.sleep(self.TICK_S)
            self._draw()

    def _draw(self) -> None:
        if self.live and self.concurrency:
            filled = self.WIDTH * self.done // self.total
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            elapsed = trio.current_time() - self.started
            self.stream.write(
                f"\r\x1b[2Kconcurrency {self.concurrency} [{bar}] {self.done}/{self.total} texts {elapsed:.1f} s"
            )
            self.stream.flush()

    def finish(self, level: Mapping[str, Any]) -> None:
        self.concurrency = 0  # no redraw until the next level starts
        clear = "\r\x1b[2K" if self.live else ""
        self.stream.write(
            f"{clear}krt bench: concurrency {level['concurrency']}: {level['texts']} texts in "
            f"{level['wall_s']:.1f} s, TTFB p95 {cell(level['ttfb_p95_ms'])} ms, "
            f"busy {level['busy']}, errors {level['errors']}\n"
        )
        self.stream.flush()


def describe_server(target: Target) -> str:
    """The server's backend and device from ``/readyz``, for the title; best effort."""
    try:
        with urllib.request.urlopen(target.http_base + "/readyz", timeout=READYZ_TIMEOUT_S) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as exc:
        try:
            body = json.load(exc)
        except ValueError:
            return "backend unknown"
    except (OSError, ValueError):
        return "backend unknown"
    if not isinstance(body, dict) or "backend" not in body:
        return "backend unknown"
    described = f"{body['backend']} ({body.get('device', '?')})"
    capacity = body.get("capacity_by_batch")
    if body.get("batch_windows", 1) != 1 and isinstance(capacity, dict) and capacity:
        rates = ", ".join(f"{size}: {rate:.1f}" for size, rate in capacity.items())
        described += f", up to {body['batch_windows']} windows a call (audio s/s by windows: {rates})"
    return described


# --- the command ---------------------------------------------------------------------------


async def bench(
    target: Target, load: Load, levels: Sequence[int], progress: Progress, output: OutputAudio = NATIVE
) -> list[dict[str, Any]]:
    """Run each level in turn and summarize it."""
    summaries = []
    async with trio.open_nursery() as nursery:
        if progress.live:
            nursery.start_soon(progress.tick)
        for concurrency in levels:
            progress.start(concurrency)
            connect = partial(connected, target, output=output)
            level = await run_level(connect, load, concurrency, on_done=progress.advance)
            summary = summarize(level)
            progress.finish(summary)
            summaries.append(summary)
        nursery.cancel_scope.cancel()
    return summaries


def _plan(args: argparse.Namespace) -> tuple[Load, list[int]]:
    """The load and levels the arguments ask for; ValueError with a one-line reason if invalid."""
    if args.concurrency is not None and args.sweep is not None:
        raise ValueError("give --concurrency (one level) or --sweep (several), not both")
    if args.n < 1:
        raise ValueError("--n must be at least 1")
    if args.concurrency is not None:
        levels = [args.concurrency]
    elif args.sweep is not None:
        levels = parse_levels(args.sweep)
    else:  # the default sweep stops at --n, so `krt bench --n 5` runs 1-4 rather than failing
        levels = [level for level in parse_levels(DEFAULT_LEVELS) if level <= args.n]
    if levels[0] < 1 or levels[-1] > args.n:
        raise ValueError(f"every concurrency must be between 1 and --n ({args.n}), got {levels}")
    texts = read_texts(args.texts) if args.texts is not None else AGENT_REPLIES
    return Load(texts, args.n, args.mode, args.voice, args.speed), levels


def run(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 when the run measured something; 1 when the server could not be reached, nothing
    completed, or it misbehaved (stuck responses, audio after the last event); 2 on bad options."""
    try:
        load, levels = _plan(args)
        output = output_of(args)
    except (ValueError, ToolError) as exc:
        print(f"krt bench: {exc}", file=sys.stderr)
        return 2
    sweeping = args.concurrency is None
    target = resolve_target(args, args.env_file)
    server = describe_server(target)
    print(
        f"krt bench: {load.n} texts per level ({load.mode} mode, {output.format} at {output.sample_rate} Hz) "
        f"at concurrency {','.join(map(str, levels))} against {target.describe()}, {server}",
        file=sys.stderr,
    )
    try:
        summaries = trio.run(bench, target, load, levels, Progress(sys.stderr, load.n), output)
    except BaseException as exc:
        failures = list(leaves(exc))
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in failures):
            print("\nkrt bench: interrupted", file=sys.stderr)
            return 130
        failure = next((leaf for leaf in failures if isinstance(leaf, ToolError)), None)
        if failure is None:
            raise
        print(f"krt bench: {failure}", file=sys.stderr)
        return 1
    recommendation = recommend(summaries, args.p95_target_ms, load.mode) if sweeping else None
    plot = args.plot if args.plot is not None or not sweeping else DEFAULT_PLOT
    status = 0
    if plot is not None:
        from krt.metrics import plots

        title = f"krt bench: {server}, {load.mode} mode, N={load.n} texts per level"
        try:
            plots.sweep_plot(
                plot,
                summaries,
                title=title,
                p95_target_ms=args.p95_target_ms,
                recommended=recommendation.concurrency if recommendation else None,
                first_audio=load.mode == "sentences",
            )
        except OSError as exc:
            print(f"krt bench: cannot write the plot {plot}: {exc.strerror or exc}", file=sys.stderr)
            plot, status = None, 1
    if args.json:
        print(
            json.dumps(
                {
                    "url": target.url,
                    "server": server,
                    "mode": load.mode,
                    "n": load.n,
                    "voice": load.voice,
                    "audio": {"format": output.format, "sample_rate": output.sample_rate},
                    "texts_from": str(args.texts) if args.texts is not None else "built-in",
                    "p95_target_ms": args.p95_target_ms,
                    "levels": summaries,
                    "recommendation": attrs.asdict(recommendation) if recommendation else None,
                    "plot": str(plot) if plot is not None else None,
                }
            )
        )
    elif sweeping:
        print(format_table(summaries, load.mode))
        print()
        print("stalled = texts whose playback would pause (a player starting at the first byte)")
        assert recommendation is not None
        print(recommendation.message)
        if plot is not None:
            print(f"plot: {plot}")
    else:
        print(format_level(summaries[0], load.mode))
        if plot is not None:
            print(f"plot: {plot}")
    if not any(level["completed"] for level in summaries):
        print("krt bench: no response completed; see the busy and errors counts", file=sys.stderr)
        status = 1
    if any(level["stuck"] or level["leaked_bytes"] or level["late_events"] for level in summaries):
        print(
            "krt bench: the server misbehaved: stuck responses or audio after a last event", file=sys.stderr
        )
        status = 1
    return status
