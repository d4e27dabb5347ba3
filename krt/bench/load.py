"""The load shapes the benches run against a server, and the figures of each.

A stream is texts spoken back to back on one socket; a level is C such streams at once;
a barge-in run cancels responses at their first audio. ``krt bench server`` (its own
in-process server) and ``krt bench`` (any running server) both run them through here,
each passing its own way to connect, so that a level is the same load in both reports:
text i on stream i mod C, a stuck response ending its stream, the same figures.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import attrs
import trio

from krt.client.commands import pieces_of
from krt.client.figures import jain_index
from krt.client.speech import MAX_RECONNECTS, ResponseTrace, SpeechClient
from krt.metrics.stats import percentile

if TYPE_CHECKING:
    from collections.abc import Sequence

Transaction = tuple[ResponseTrace, ...]
"""The responses of one text, in the order they were created (and are played)."""

Connect = Callable[[], AbstractAsyncContextManager[SpeechClient]]
"""Opens one socket: a bench's URL and key, or a tool target with its one-line errors."""


@attrs.frozen
class Load:
    """What every level sends, so that levels differ in concurrency only."""

    texts: tuple[str, ...]
    n: int
    """Texts per level, cycling through ``texts``."""
    mode: str = "single"
    """``single``: a text is one response; ``sentences``: each sentence is its own, queued at once."""
    voice: str | None = None
    speed: float | None = None


@attrs.frozen
class StreamResult:
    """One socket's texts, spoken back to back."""

    transactions: tuple[Transaction, ...]
    connection_errors: tuple[str, ...]

    @property
    def traces(self) -> tuple[ResponseTrace, ...]:
        return tuple(trace for transaction in self.transactions for trace in transaction)

    @property
    def xrt(self) -> float:
        """Audio seconds this stream received per second it was busy."""
        traces = self.traces
        ends = [t.ended_at for t in traces if t.ended_at is not None]
        wall = max(ends) - traces[0].sent_at if ends else 0.0
        return sum(t.audio_seconds for t in traces) / wall if wall > 0 else 0.0


@attrs.frozen
class LevelResult:
    concurrency: int
    streams: tuple[StreamResult, ...]
    wall_seconds: float

    @property
    def transactions(self) -> list[Transaction]:
        return [transaction for stream in self.streams for transaction in stream.transactions]

    @property
    def traces(self) -> list[ResponseTrace]:
        return [trace for stream in self.streams for trace in stream.traces]


async def _speak_pieces(
    client: SpeechClient, pieces: Sequence[str], *, voice: str | None, speed: float | None
) -> Transaction:
    """Send the pieces at once and wait for all of them, bounded by the response timeout.

    A piece still open when the time runs out is marked stuck; a closed connection has
    already ended every open piece.
    """
    transaction = tuple([await client.create(piece, voice=voice, speed=speed) for piece in pieces])
    with trio.move_on_after(client.response_timeout):
        await client.wait_until(lambda: all(trace.finished for trace in transaction))
    for trace in transaction:
        trace.timed_out = not trace.finished
    return transaction


async def run_stream(
    connect: Connect,
    texts: Sequence[str],
    *,
    mode: str = "single",
    voice: str | None = None,
    speed: float | None = None,
    on_done: Callable[[Transaction], None] | None = None,
) -> StreamResult:
    """Speak ``texts`` one after another on one socket, each sent after the last one ended.

    A stuck response ends the stream: what follows would measure the stuck one. The
    socket is ended with ``session.end`` and read to its close, so late frames count.
    A server that drains (it closes the socket, or refuses pieces as ``busy`` saying to
    reconnect) is left for a new connection, as a voice agent behind a load balancer
    would, and the pieces it refused are sent again there (those it spoke are kept: a
    drain can land between the sentences of one text); a failure ends the stream.
    """
    transactions: list[Transaction] = []
    errors: list[str] = []
    pending = [pieces_of(text, mode) or [text.strip()] for text in texts]
    spoken: list[ResponseTrace] = []  # of the text in progress, before a drain refused the rest
    reconnects = 0
    while pending:
        async with connect() as client:
            while pending:
                transaction = await _speak_pieces(client, pending[0], voice=voice, speed=speed)
                refused = [trace for trace in transaction if trace.told_to_reconnect]
                if refused and reconnects < MAX_RECONNECTS:
                    # Draining: what it spoke is kept, what it refused is sent again elsewhere.
                    reconnects += 1
                    spoken += [trace for trace in transaction if not trace.told_to_reconnect]
                    pending[0] = [trace.text for trace in refused]
                    break
                pending.pop(0)
                transaction = (*spoken, *transaction)
                spoken = []
                transactions.append(transaction)
                if on_done is not None:
                    on_done(transaction)
                if any(trace.timed_out for trace in transaction) or client.closed:
                    pending.clear()
            await client.finish()
            errors += client.connection_errors
    return StreamResult(tuple(transactions), tuple(errors))


async def run_level(
    connect: Connect,
    load: Load,
    concurrency: int,
    *,
    on_done: Callable[[Transaction], None] | None = None,
) -> LevelResult:
    """``load.n`` texts over ``concurrency`` sockets at once; text i goes to socket i mod C."""
    shares = [
        [load.texts[i % len(load.texts)] for i in range(load.n) if i % concurrency == k]
        for k in range(concurrency)
    ]
    results: list[StreamResult | None] = [None] * concurrency

    async def one(k: int) -> None:
        results[k] = await run_stream(
            connect, shares[k], mode=load.mode, voice=load.voice, speed=load.speed, on_done=on_done
        )

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for k in range(concurrency):
            nursery.start_soon(one, k)
    wall = trio.current_time() - started
    return LevelResult(concurrency, tuple(r for r in results if r is not None), wall)


def summarize_level(level: LevelResult) -> dict[str, object]:
    """The figures of one concurrency level, ready for a table row or a JSON line."""
    traces = level.traces
    ttfbs = [t.ttfb * 1000 for t in traces if t.ttfb is not None]
    audible = [t.first_audible * 1000 for t in traces if t.first_audible is not None]
    stalled = [t.stalls() for t in traces]
    # A stream refused outright (every response busy) has no rate to speak of: it shows in
    # the busy count, not as an xRT of 0 that would read like a stalled stream.
    per_stream = [stream.xrt for stream in level.streams if any(t.audio_seconds for t in stream.traces)]
    audio = sum(t.audio_seconds for t in traces)
    errors = [t for t in traces if t.outcome == "error" and t.error_code != "busy"]
    return {
        "concurrency": level.concurrency,
        "responses": len(traces),
        "completed": sum(t.outcome == "completed" for t in traces),
        "ttfb_p50_ms": _round(percentile(ttfbs, 50), 1),
        "ttfb_p95_ms": _round(percentile(ttfbs, 95), 1),
        "audible_p50_ms": _round(percentile(audible, 50), 1),
        "audible_p95_ms": _round(percentile(audible, 95), 1),
        "audio_s": round(audio, 2),
        "wall_s": round(level.wall_seconds, 2),
        "aggregate_xrt": round(audio / level.wall_seconds, 2) if level.wall_seconds > 0 else None,
        "stream_xrt": [round(x, 2) for x in per_stream],
        "fairness": round(jain_index(per_stream), 3) if per_stream else None,
        "stalled_responses": sum(s.count > 0 for s in stalled),
        "stall_s": round(sum(s.seconds for s in stalled), 3),
        "busy": sum(t.error_code == "busy" for t in traces),
        "errors": len(errors) + sum(len(s.connection_errors) for s in level.streams),
        "stuck": sum(t.timed_out for t in traces),
        "leaked_bytes": sum(t.leaked_bytes for t in traces),
        "late_events": sum(len(t.late_events) for t in traces),
    }


async def run_barge_in(
    connect: Connect, text: str, n: int, *, voice: str | None = None
) -> list[ResponseTrace]:
    """``n`` responses of ``text`` on one socket, each cancelled at its first audio delta.

    The socket is ended with ``session.end`` and read to its close, so audio of a
    cancelled response that straggles in after ``response.canceled`` is counted.
    """
    traces: list[ResponseTrace] = []
    async with connect() as client:
        for _ in range(n):
            trace = await client.barge_at_first_audio(text, voice=voice)
            traces.append(trace)
            if trace.timed_out or client.closed:
                break
        await client.finish()
    return traces


def summarize_barge_in(traces: Sequence[ResponseTrace]) -> dict[str, object]:
    latencies = [t.cancel_latency * 1000 for t in traces if t.cancel_latency is not None]
    return {
        "responses": len(traces),
        "canceled": sum(t.outcome == "canceled" for t in traces),
        "cancel_p50_ms": _round(percentile(latencies, 50), 1),
        "cancel_p95_ms": _round(percentile(latencies, 95), 1),
        "cancel_max_ms": _round(max(latencies, default=None), 1),
        "leaked_bytes": sum(t.leaked_bytes for t in traces),
        "late_events": sum(len(t.late_events) for t in traces),
        "stuck": sum(t.timed_out for t in traces),
        "not_canceled": [t.error_code or t.outcome for t in traces if t.outcome != "canceled"],
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
