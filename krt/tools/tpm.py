"""``krt tpm``: completed transactions per minute against a running server.

As in the seed's ``test/tpm.py``: in ``single`` mode a transaction is one response with
the whole text, counted when it completes; in ``sentences`` mode it is every sentence of
the text sent as its own response, counted when all of them have completed. Clients run
back to back for ``--duration`` seconds; a transaction still running at the end is not
counted.
"""

from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING

import attrs
import trio

from krt.client.commands import ToolError, add_mode_arguments, connected, pieces_of
from krt.client.target import add_target_arguments, resolve_target
from krt.client.texts import AGENT_REPLIES
from krt.metrics.stats import percentile

if TYPE_CHECKING:
    import argparse

    from krt.client.target import Target
    from krt.config import Config


@attrs.define
class Tally:
    transactions: int = 0
    failed: int = 0
    busy: int = 0
    ttfbs: list[float] = attrs.field(factory=list)
    audio_seconds: float = 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_mode_arguments(parser)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    parser.add_argument("--clients", type=int, default=1, help="concurrent connections (default 1)")
    add_target_arguments(parser)


async def one_client(
    target: Target, mode: str, voice: str, speed: float | None, deadline: float, tally: Tally
) -> None:
    async with connected(target) as client:
        for text in itertools.cycle(AGENT_REPLIES):
            with trio.move_on_at(deadline):
                traces = [
                    await client.create(piece, voice=voice, speed=speed) for piece in pieces_of(text, mode)
                ]
                await client.wait_until(lambda: all(trace.finished for trace in traces))  # noqa: B023
            if not all(trace.finished for trace in traces):
                break  # the clock ran out mid-transaction: not counted
            if all(trace.outcome == "completed" for trace in traces):
                tally.transactions += 1
                tally.ttfbs += [trace.ttfb for trace in traces if trace.ttfb is not None]
                tally.audio_seconds += sum(trace.audio_seconds for trace in traces)
            else:
                tally.failed += 1
                tally.busy += any(trace.error_code == "busy" for trace in traces)
            if client.closed:
                break


async def measure(target: Target, args: argparse.Namespace) -> tuple[Tally, float]:
    tally = Tally()
    started = trio.current_time()
    deadline = started + args.duration
    async with trio.open_nursery() as nursery:
        for _ in range(args.clients):
            nursery.start_soon(one_client, target, args.mode, args.voice, args.speed, deadline, tally)
    return tally, trio.current_time() - started


def _first(group: BaseExceptionGroup[ToolError]) -> ToolError:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, ToolError)
    return leaf


def run(args: argparse.Namespace, config: Config) -> int:
    target = resolve_target(args, args.env_file)
    print(
        f"krt tpm: {args.mode} mode, {args.clients} client(s), {args.duration:.0f} s against {target.url}",
        file=sys.stderr,
    )
    refused: ToolError | None = None
    try:
        tally, elapsed = trio.run(measure, target, args)
    except* ToolError as group:  # the clients' nursery wraps a failed connection
        refused = _first(group)
    if refused is not None:
        print(f"krt tpm: {refused}", file=sys.stderr)
        return 1
    p50, p95 = percentile(tally.ttfbs, 50), percentile(tally.ttfbs, 95)
    print(
        f"transactions: {tally.transactions} in {elapsed:.1f} s  ->  {tally.transactions * 60 / elapsed:.1f} TPM"
    )
    print(
        f"failed: {tally.failed} (busy {tally.busy})   audio: {tally.audio_seconds:.1f} s "
        f"({tally.audio_seconds / elapsed:.2f} audio-s per s)"
    )
    if p50 is not None and p95 is not None:
        print(f"TTFB p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    return 0 if tally.transactions and not tally.failed else 1
