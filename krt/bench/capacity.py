"""``krt bench capacity``: how many voice-agent streams a running server serves in real time.

The number a deployment is sized by. A stream is one agent's conversation on its own
socket: it joins at a random moment within ``--spread``, asks for a reply, listens to it
for as long as it plays, thinks for a moment, and asks for the next. A reply refused
``busy`` is asked again when the refusal says (``retry_after_ms``; 250 ms if it says
nothing), and its first audio counts from the first try, the wait spent refused
included: that is what the caller waits. For each stream count the report gives the
first-audio p50/p95, the longest silence a real-time player would have heard, the
replies that stalled, the refusals, and the replies and audio seconds per second.

``--non-readers N`` attaches N more connections that each ask for a long reply and then
read nothing for the whole run, as a client that hangs without closing its socket does:
what they cost the agents' first audio is what a server's handling of them is worth.

The capacity is the largest stream count that keeps first-audio p95 under
``--p95-target-ms`` with no stall and every reply spoken, found by doubling until a count
fails and then bisecting between the last that passed and the first that failed
(``--streams`` runs given counts instead). One stream alone is the floor each count is
read against: the server's own first audio with nobody else on it, measured in the same
run.
"""

from __future__ import annotations

import json
import random
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from krt.bench.sweep import describe_server, parse_levels
from krt.client.commands import ToolError, connected, leaves
from krt.client.speech import ResponseTrace
from krt.client.target import add_target_arguments, resolve_target
from krt.client.texts import AGENT_REPLIES
from krt.metrics.stats import percentile

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from krt.bench.load import Connect
    from krt.config import Config

DEFAULT_REPLIES = 4
DEFAULT_MAX_STREAMS = 16
DEFAULT_P95_TARGET_MS = 1500.0
DEFAULT_SPREAD_S = 3.0
DEFAULT_PLOT = Path("bench-capacity.png")
THINK_S = (0.2, 0.8)
"""An agent's pause between hearing a reply out and asking for the next (uniform)."""
RETRY_WITHOUT_HINT_S = 0.25
MAX_TRIES = 20
"""Tries of one reply before the bench counts it as never spoken."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--streams", metavar="COUNTS", help="comma-separated stream counts to run (default: search)"
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=DEFAULT_MAX_STREAMS,
        help=f"the largest count the search tries (default {DEFAULT_MAX_STREAMS})",
    )
    parser.add_argument(
        "--replies", type=int, default=DEFAULT_REPLIES, help=f"replies per stream (default {DEFAULT_REPLIES})"
    )
    parser.add_argument(
        "--p95-target-ms",
        type=float,
        default=DEFAULT_P95_TARGET_MS,
        metavar="MS",
        help=f"first-audio p95 a stream count must keep (default {DEFAULT_P95_TARGET_MS:g})",
    )
    parser.add_argument(
        "--spread",
        type=float,
        default=DEFAULT_SPREAD_S,
        metavar="S",
        help=f"streams join at random within this many seconds (default {DEFAULT_SPREAD_S:g})",
    )
    parser.add_argument(
        "--non-readers",
        type=int,
        default=0,
        metavar="N",
        help="connections that ask for a long reply and never read it, attached to every count",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the random arrivals and pauses")
    parser.add_argument("--voice", help="voice to ask for (default: the server's)")
    parser.add_argument("--plot", type=Path, metavar="FILE", help=f"PNG to write (default {DEFAULT_PLOT})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_target_arguments(parser)


@attrs.frozen
class Reply:
    """One reply as its caller lived it: asked at ``asked``, refused ``refusals`` times,
    and the last try's trace."""

    asked: float
    refusals: int
    trace: ResponseTrace

    @property
    def spoken(self) -> bool:
        return self.trace.outcome == "completed"

    @property
    def first_audio(self) -> float | None:
        """From the first try to the first audio: the time refused included."""
        return self.trace.arrivals[0] - self.asked if self.trace.arrivals else None


async def converse(
    connect: Connect,
    texts: Sequence[str],
    replies: list[Reply],
    rng: random.Random,
    *,
    spread: float,
    voice: str | None,
) -> None:
    """One agent: join within ``spread``, then ask, listen, think, ask again."""
    await trio.sleep(rng.uniform(0.0, spread))
    async with connect() as client:
        for text in texts:
            asked, refusals = trio.current_time(), 0
            while True:
                trace = await client.speak(text, voice=voice)
                if trace.error_code != "busy" or trace.told_to_reconnect or refusals + 1 >= MAX_TRIES:
                    break
                refusals += 1
                await trio.sleep(trace.retry_after if trace.retry_after is not None else RETRY_WITHOUT_HINT_S)
            replies.append(Reply(asked, refusals, trace))
            if trace.timed_out or client.closed:
                return
            if text is not texts[-1]:
                if trace.arrivals:  # the caller listens to the end, pauses included
                    await trio.sleep_until(trace.arrivals[0] + trace.audio_seconds + trace.stalls().seconds)
                await trio.sleep(rng.uniform(*THINK_S))
        await client.finish()


UNREAD_REPLY = " ".join(AGENT_REPLIES)
"""What a non-reader asks for: longer than its socket's buffers hold, so it stops reading
with most of it unsent."""


async def hang(connect: Connect, voice: str | None, *, task_status: trio.TaskStatus[None]) -> None:
    """A client that asks for a long reply and never reads an event of it."""
    async with connect() as client:
        await client.create(UNREAD_REPLY, voice=voice)
        task_status.started()
        await trio.sleep_forever()


async def run_count(
    connect: Connect,
    count: int,
    replies: int,
    *,
    spread: float,
    seed: int,
    voice: str | None,
    non_readers: int = 0,
) -> dict[str, Any]:
    """``count`` agents at once, ``replies`` each, beside ``non_readers`` hung clients;
    the figures of the run."""
    rng = random.Random(seed * 1000 + count)
    heard: list[Reply] = []
    async with trio.open_nursery() as hung:
        for _ in range(non_readers):
            await hung.start(hang, connect, voice)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for agent in range(count):
                texts = [AGENT_REPLIES[(agent * replies + k) % len(AGENT_REPLIES)] for k in range(replies)]
                agent_rng = random.Random(rng.random())
                nursery.start_soon(
                    partial(converse, connect, texts, heard, agent_rng, spread=spread, voice=voice)
                )
        wall = trio.current_time() - started
        hung.cancel_scope.cancel()
    return {**summarize(count, count * replies, heard, wall), "non_readers": non_readers}


def summarize(count: int, asked: int, replies: Sequence[Reply], wall: float) -> dict[str, Any]:
    first = [reply.first_audio * 1000 for reply in replies if reply.first_audio is not None]
    stalls = [reply.trace.stalls() for reply in replies]
    spoken = [reply for reply in replies if reply.spoken]
    audio = sum(reply.trace.audio_seconds for reply in spoken)
    return {
        "streams": count,
        "replies": asked,
        "spoken": len(spoken),
        "first_audio_p50_ms": _ms(percentile(first, 50)),
        "first_audio_p95_ms": _ms(percentile(first, 95)),
        "longest_silence_ms": _ms(max((s.longest * 1000 for s in stalls), default=0.0)),
        "stalled": sum(s.count > 0 for s in stalls),
        "busy": sum(reply.refusals for reply in replies)
        + sum(not r.spoken and r.trace.error_code == "busy" for r in replies),
        "refused_twice": sum(reply.refusals >= 2 for reply in replies),
        "errors": sum(not reply.spoken for reply in replies) + (asked - len(replies)),
        "replies_per_s": round(len(spoken) / wall, 3) if wall > 0 else None,
        "audio_per_s": round(audio / wall, 3) if wall > 0 else None,
        "wall_s": round(wall, 2),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def passes(level: dict[str, Any], target_ms: float) -> bool:
    """Every reply spoken, none stalled, first-audio p95 within the target."""
    p95 = level["first_audio_p95_ms"]
    return level["errors"] == 0 and level["stalled"] == 0 and p95 is not None and p95 <= target_ms


async def search(
    run: Any, max_streams: int, target_ms: float, counts: Sequence[int] | None
) -> tuple[list[dict[str, Any]], int]:
    """Run the given counts, or double from 1 until a count fails and bisect; the levels
    run (by count) and the largest count that passed (0 if none)."""
    levels: dict[int, dict[str, Any]] = {}

    async def ok(count: int) -> bool:
        if count not in levels:
            levels[count] = await run(count)
        return passes(levels[count], target_ms)

    if counts:
        for count in counts:
            await ok(count)
        best = max((c for c, level in levels.items() if passes(level, target_ms)), default=0)
        return [levels[c] for c in sorted(levels)], best
    good, bad = 0, None
    count = 1
    while count <= max_streams:
        if not await ok(count):
            bad = count
            break
        good, count = count, count * 2
    if bad is None and good < max_streams and not await ok(max_streams):
        bad = max_streams
    elif bad is None:
        good = max_streams
    while bad is not None and bad - good > 1:
        middle = (good + bad) // 2
        if await ok(middle):
            good = middle
        else:
            bad = middle
    return [levels[c] for c in sorted(levels)], good


COLUMNS = (
    ("streams", "streams", "{}"),
    ("replies", "replies", "{}"),
    ("first_audio_p50_ms", "1st audio p50 ms", "{:.0f}"),
    ("first_audio_p95_ms", "p95 ms", "{:.0f}"),
    ("longest_silence_ms", "longest silence ms", "{:.0f}"),
    ("stalled", "stalled", "{}"),
    ("busy", "busy", "{}"),
    ("refused_twice", "refused 2+", "{}"),
    ("errors", "unspoken", "{}"),
    ("replies_per_s", "replies/s", "{:.2f}"),
    ("audio_per_s", "audio s/s", "{:.2f}"),
)


def format_table(levels: Sequence[dict[str, Any]], target_ms: float) -> str:
    header = [title for _key, title, _fmt in COLUMNS] + ["ok"]
    rows = [
        [("-" if level[key] is None else fmt.format(level[key])) for key, _title, fmt in COLUMNS]
        + ["yes" if passes(level, target_ms) else "no"]
        for level in levels
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 when the run measured something, 1 when the server could not be reached or
    spoke nothing, 2 on bad options."""
    del config
    try:
        counts = parse_levels(args.streams) if args.streams else None
        if args.replies < 1 or args.max_streams < 1 or args.spread < 0 or args.non_readers < 0:
            raise ValueError(
                "--replies and --max-streams must be at least 1, --spread and --non-readers at least 0"
            )
    except ValueError as exc:
        print(f"krt bench capacity: {exc}", file=sys.stderr)
        return 2
    target = resolve_target(args, args.env_file)
    server = describe_server(target)
    print(
        f"krt bench capacity: {args.replies} replies per stream, joining within {args.spread:g} s, "
        f"{args.non_readers} non-reading clients attached, "
        f"first-audio p95 target {args.p95_target_ms:g} ms, against {target.describe()}, {server}",
        file=sys.stderr,
    )

    async def one(count: int) -> dict[str, Any]:
        level = await run_count(
            partial(connected, target),
            count,
            args.replies,
            spread=args.spread,
            seed=args.seed,
            voice=args.voice,
            non_readers=args.non_readers,
        )
        print(
            f"krt bench capacity: {count} streams: first audio p95 {level['first_audio_p95_ms']} ms, "
            f"stalled {level['stalled']}, busy {level['busy']}, unspoken {level['errors']}",
            file=sys.stderr,
        )
        return level

    try:
        levels, best = trio.run(search, one, args.max_streams, args.p95_target_ms, counts)
    except BaseException as exc:
        failure = next((leaf for leaf in leaves(exc) if isinstance(leaf, ToolError)), None)
        if failure is None:
            raise
        print(f"krt bench capacity: {failure}", file=sys.stderr)
        return 1
    plot = args.plot or DEFAULT_PLOT
    title = f"krt bench capacity: {server}, {args.replies} replies per stream"
    if args.non_readers:
        title += f", {args.non_readers} non-reading clients attached"
    from krt.metrics import plots

    try:
        plots.capacity_plot(plot, levels, title=title, p95_target_ms=args.p95_target_ms, capacity=best)
    except OSError as exc:
        print(f"krt bench capacity: cannot write the plot {plot}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    floor = next((level for level in levels if level["streams"] == 1), None)
    if args.json:
        print(
            json.dumps(
                {
                    "server": server,
                    "target_ms": args.p95_target_ms,
                    "levels": levels,
                    "capacity": best,
                    "plot": str(plot),
                }
            )
        )
    else:
        print(format_table(levels, args.p95_target_ms))
        print()
        if floor is not None:
            print(f"floor: one stream alone, first audio p50 {floor['first_audio_p50_ms']} ms")
        print(
            f"capacity: {best} streams keep first-audio p95 under {args.p95_target_ms:g} ms with no stall"
            if best
            else f"capacity: no stream count kept first-audio p95 under {args.p95_target_ms:g} ms with no stall"
        )
        print(f"plot: {plot}")
    return 0 if any(level["spoken"] for level in levels) else 1
