"""The client side of every krt load measurement: what a voice agent sees on its socket.

Figures are taken where the spec defines them, at the client: TTFB runs from sending
``response.create`` to the first audio delta arriving, barge-in latency from sending
``response.cancel`` to ``response.canceled``. Each delta's arrival time is kept, so a
stall is computed for a player that starts at the first byte and plays in real time —
the thing a caller hears — rather than inferred from averages. Nothing here knows where
the server runs: ``krt bench server`` points it at an in-process server, a remote sweep
at a URL.

The client is pull-based (one task per socket reads the frames it waits for), so every
frame is attributed in arrival order, and a frame of a response that follows that
response's last event is counted as leaked whenever it comes.
"""

from __future__ import annotations

import base64
import math
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from krt import SAMPLE_RATE, protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Sequence

    from trio_websocket import WebSocketConnection

PCM_BYTES_PER_SECOND = 2 * SAMPLE_RATE
STALL_NOISE_FLOOR_S = 0.001
"""Gaps shorter than this are timer noise, not a pause anyone hears."""
RESPONSE_TIMEOUT_S = 60.0
"""A response with no last event after this long is reported stuck and its stream stops."""
FINISH_TIMEOUT_S = 10.0


# --- pure figures -------------------------------------------------------------------------


@attrs.frozen
class Stalls:
    count: int
    """Pauses a real-time player would have made."""
    seconds: float
    """Their total length."""


def stalls(schedule: Iterable[tuple[float, float]], noise_floor: float = 0.0) -> Stalls:
    """Pauses of a player fed ``(arrival time, audio seconds)`` pieces in arrival order.

    Playback starts when the first piece arrives and runs in real time; whenever a piece
    arrives after everything before it has been played, the player waits for it.
    """
    count, total = 0, 0.0
    played_until: float | None = None
    for arrived, duration in schedule:
        if played_until is None:
            played_until = arrived
        elif arrived > played_until:
            gap = arrived - played_until
            if gap > noise_floor:
                count += 1
                total += gap
            played_until = arrived
        played_until += duration
    return Stalls(count, total)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0–100), linear between ranks as numpy's default; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all shares are equal, 1/n when one stream gets everything."""
    if not values:
        raise ValueError("Jain's index of no streams")
    squares = sum(value * value for value in values)
    if squares == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * squares)


# --- one response as the client saw it -----------------------------------------------------


@attrs.define(eq=False)
class ResponseTrace:
    """Everything one response did on the wire, with client-side monotonic timestamps."""

    response_id: str
    text: str
    sent_at: float
    arrivals: list[float] = attrs.field(factory=list)
    """Arrival time of each audio delta."""
    sizes: list[int] = attrs.field(factory=list)
    """PCM bytes of each audio delta."""
    outcome: str | None = None
    """``completed``, ``canceled`` or ``error`` (``error_code`` says which): its last event."""
    timed_out: bool = False
    """The client gave up waiting for a frame it needed: the response was stuck."""
    ended_at: float | None = None
    error_code: str | None = None
    error_message: str = ""
    """The server's words for ``error_code`` (e.g. the voices it does have)."""
    cancel_sent_at: float | None = None
    leaked_bytes: int = 0
    """Audio of this response that arrived after its last event: must stay 0."""
    late_events: list[str] = attrs.field(factory=list)
    """Other events naming this response after its last event (a protocol violation)."""
    pcm: bytearray | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def ttfb(self) -> float | None:
        return self.arrivals[0] - self.sent_at if self.arrivals else None

    @property
    def audio_seconds(self) -> float:
        return sum(self.sizes) / PCM_BYTES_PER_SECOND

    @property
    def cancel_latency(self) -> float | None:
        if self.outcome != "canceled" or self.cancel_sent_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.cancel_sent_at

    def stalls(self) -> Stalls:
        durations = (size / PCM_BYTES_PER_SECOND for size in self.sizes)
        return stalls(zip(self.arrivals, durations, strict=True), STALL_NOISE_FLOOR_S)


# --- the client ----------------------------------------------------------------------------


class SpeechClient:
    """One krt WebSocket; the task that owns it sends events and reads until it has what it needs."""

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        keep_audio: bool = False,
        response_timeout: float = RESPONSE_TIMEOUT_S,
        adopt_server_responses: bool = False,
    ) -> None:
        self.ws = ws
        self.keep_audio = keep_audio
        self.adopt_server_responses = adopt_server_responses
        """Track responses the server made from ``input.append`` text (TTFB from their creation)."""
        self.response_timeout = response_timeout
        """Longest wait for a frame a response owes us before it is reported stuck."""
        self.traces: dict[str, ResponseTrace] = {}
        self.connection_errors: list[str] = []
        """Codes of connection-level ``error`` events."""
        self.stray_frames = 0
        """Frames naming a response this client never created."""
        self.closed = False
        self._prefix = f"krt-{uuid.uuid4().hex[:8]}"
        self._count = 0

    async def create(
        self, text: str, *, voice: str | None = None, speed: float | None = None
    ) -> ResponseTrace:
        self._count += 1
        response_id = f"{self._prefix}-{self._count}"
        event = protocol.ResponseCreate(text, response_id, voice, speed)
        trace = ResponseTrace(
            response_id, text, trio.current_time(), pcm=bytearray() if self.keep_audio else None
        )
        self.traces[response_id] = trace
        await self._send(protocol.encode(event))
        return trace

    async def cancel(self, trace: ResponseTrace) -> None:
        trace.cancel_sent_at = trio.current_time()
        await self._send(protocol.encode(protocol.ResponseCancel(response=trace.response_id)))

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send_message(text)
        except ConnectionClosed:
            self._closed_under(trio.current_time())

    def _closed_under(self, now: float) -> None:
        """The server went away: every response still open ends as ``disconnected``."""
        self.closed = True
        for trace in self.traces.values():
            if not trace.finished:
                trace.outcome, trace.error_code, trace.ended_at = "error", "disconnected", now

    async def receive(self) -> bool:
        """Read and record one frame; False once the connection is closed."""
        if self.closed:
            return False
        try:
            message = await self.ws.get_message()
        except ConnectionClosed:
            self._closed_under(trio.current_time())
            return False
        now = trio.current_time()
        if not isinstance(message, str):
            self.connection_errors.append("binary_frame_from_server")
            return True
        try:
            event = protocol.decode_server_event(message)
        except ValueError:
            self.connection_errors.append("undecodable_frame_from_server")
            return True
        self._record(event, now)
        return True

    def _record(self, event: protocol.ServerEvent, now: float) -> None:
        if isinstance(event, protocol.ErrorEvent):
            self.connection_errors.append(event.error.code)
            return
        if isinstance(event, protocol.SessionUpdated):
            return
        trace = self.traces.get(event.response)
        if trace is None and self.adopt_server_responses and isinstance(event, protocol.ResponseCreated):
            trace = ResponseTrace(event.response, "", now, pcm=bytearray() if self.keep_audio else None)
            self.traces[event.response] = trace
            return
        if trace is None:
            self.stray_frames += 1
            return
        if isinstance(event, protocol.OutputAudioDelta):
            pcm = base64.b64decode(event.delta)
            if trace.finished:
                trace.leaked_bytes += len(pcm)
                return
            trace.arrivals.append(now)
            trace.sizes.append(len(pcm))
            if trace.pcm is not None:
                trace.pcm += pcm
        elif trace.finished:
            # unknown_response answers a cancel that crossed the completion: allowed.
            if not (isinstance(event, protocol.ResponseError) and event.code == "unknown_response"):
                trace.late_events.append(event.TYPE)
        elif isinstance(event, protocol.ResponseCompleted):
            trace.outcome, trace.ended_at = "completed", now
        elif isinstance(event, protocol.ResponseCanceled):
            trace.outcome, trace.ended_at = "canceled", now
        elif isinstance(event, protocol.ResponseError):
            trace.outcome, trace.error_code, trace.ended_at = "error", event.code, now
            trace.error_message = event.message

    async def wait_until(self, done: Callable[[], bool]) -> bool:
        """Read frames until ``done()``; returns ``done()``, False if the connection closed first.

        Cancelling it leaves the connection usable: a frame is either read and
        recorded or not read at all.
        """
        while not done():
            if not await self.receive():
                break
        return done()

    async def wait_for(self, trace: ResponseTrace, done: Callable[[], bool]) -> bool:
        """``wait_until`` bounded by ``response_timeout``; on timeout ``trace`` is marked stuck."""
        with trio.move_on_after(self.response_timeout):
            return await self.wait_until(done)
        trace.timed_out = True
        return False

    async def speak(self, text: str, *, voice: str | None = None) -> ResponseTrace:
        """One response from create to its last event."""
        trace = await self.create(text, voice=voice)
        await self.wait_for(trace, lambda: trace.finished)
        return trace

    async def barge_at_first_audio(self, text: str, *, voice: str | None = None) -> ResponseTrace:
        """Create a response and cancel it the moment its first audio delta arrives."""
        trace = await self.create(text, voice=voice)
        if await self.wait_for(trace, lambda: bool(trace.arrivals) or trace.finished) and not trace.finished:
            await self.cancel(trace)
            await self.wait_for(trace, lambda: trace.finished)
        return trace

    async def finish(self) -> None:
        """Send ``session.end`` and read until the server closes, so late frames are counted.

        Bounded by ``FINISH_TIMEOUT_S``: a server that never closes is left to the
        WebSocket's own close handshake.
        """
        if self.closed:
            return
        await self._send(protocol.encode(protocol.SessionEnd()))
        with trio.move_on_after(FINISH_TIMEOUT_S):
            await self.wait_until(lambda: self.closed)


@asynccontextmanager
async def open_speech_client(
    url: str, *, api_key: str = "", keep_audio: bool = False, adopt_server_responses: bool = False
) -> AsyncIterator[SpeechClient]:
    """Connect (with the API key as a Bearer header when given) and close on exit.

    After a close the server started (``session.end``), trio-websocket 0.12's client
    reader stops at the server's TCP close without closing its own socket, which then
    leaks until garbage collection; the socket is closed here once the connection is done.
    """
    headers = [(b"authorization", f"Bearer {api_key}".encode())] if api_key else None
    ws = None
    try:
        async with open_websocket_url(
            url, extra_headers=headers, connect_timeout=10, disconnect_timeout=5
        ) as ws:
            yield SpeechClient(ws, keep_audio=keep_audio, adopt_server_responses=adopt_server_responses)
    finally:
        if ws is not None:
            await trio.aclose_forcefully(ws._stream)


# --- load shapes ---------------------------------------------------------------------------


@attrs.frozen
class StreamResult:
    """One socket's sequential responses."""

    traces: tuple[ResponseTrace, ...]
    connection_errors: tuple[str, ...]

    @property
    def xrt(self) -> float:
        """Audio seconds this stream received per second it was busy."""
        ends = [t.ended_at for t in self.traces if t.ended_at is not None]
        wall = max(ends) - self.traces[0].sent_at if ends else 0.0
        return sum(t.audio_seconds for t in self.traces) / wall if wall > 0 else 0.0


@attrs.frozen
class LevelResult:
    concurrency: int
    streams: tuple[StreamResult, ...]
    wall_seconds: float

    @property
    def traces(self) -> list[ResponseTrace]:
        return [trace for stream in self.streams for trace in stream.traces]


async def run_stream(
    url: str,
    texts: Sequence[str],
    *,
    voice: str | None = None,
    api_key: str = "",
    on_done: Callable[[ResponseTrace], None] | None = None,
) -> StreamResult:
    """Speak ``texts`` one after another on one socket, each sent after the last one ended.

    A stuck response ends the stream: what follows would measure the stuck one.
    """
    traces: list[ResponseTrace] = []
    async with open_speech_client(url, api_key=api_key) as client:
        for text in texts:
            trace = await client.speak(text, voice=voice)
            traces.append(trace)
            if on_done is not None:
                on_done(trace)
            if trace.timed_out or client.closed:
                break
        await client.finish()
        return StreamResult(tuple(traces), tuple(client.connection_errors))


async def run_level(
    url: str,
    texts: Sequence[str],
    concurrency: int,
    n: int,
    *,
    voice: str | None = None,
    api_key: str = "",
    on_done: Callable[[ResponseTrace], None] | None = None,
) -> LevelResult:
    """``n`` responses over ``concurrency`` sockets at once; response i goes to socket i mod C."""
    shares = [[texts[i % len(texts)] for i in range(n) if i % concurrency == k] for k in range(concurrency)]
    results: list[StreamResult | None] = [None] * concurrency

    async def one(k: int) -> None:
        results[k] = await run_stream(url, shares[k], voice=voice, api_key=api_key, on_done=on_done)

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
    url: str, text: str, n: int, *, voice: str | None = None, api_key: str = ""
) -> list[ResponseTrace]:
    """``n`` responses of ``text`` on one socket, each cancelled at its first audio delta.

    The socket is ended with ``session.end`` and read to its close, so audio of a
    cancelled response that straggles in after ``response.canceled`` is counted.
    """
    traces: list[ResponseTrace] = []
    async with open_speech_client(url, api_key=api_key) as client:
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
