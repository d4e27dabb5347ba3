"""krt's WebSocket client: what a voice agent sees on its socket, recorded as it arrives.

``krt client``, the warm-up, tpm, every bench and the tests speak to a server through it.
Figures are taken where the spec defines them, at the client: TTFB runs from sending
``response.create`` to the first audio delta arriving, barge-in latency from sending
``response.cancel`` to ``response.canceled``. Each delta's arrival time is kept, so a
stall is computed for a player that starts at the first byte and plays in real time —
the thing a caller hears — rather than inferred from averages. Nothing here knows where
the server runs: the server bench points it at an in-process server, a remote sweep at
a URL.

The client is pull-based (one task per socket reads the frames it waits for), so every
frame is attributed in arrival order, and a frame of a response that follows that
response's last event is counted as leaked whenever it comes. The arithmetic on what
was recorded (stalls, percentiles, fairness) is in ``figures``, usable without a socket.
"""

from __future__ import annotations

import base64
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, cast

import attrs
import numpy as np
import trio
from trio_websocket import ConnectionClosed, open_websocket_url
from wsproto.utilities import LocalProtocolError

from krt import PCM_BYTES_PER_SECOND, SAMPLE_RATE
from krt.client.figures import STALL_NOISE_FLOOR_S, Stalls, first_audible_sample, stalls
from krt.media.codecs import NATIVE, OUTPUT_FORMATS, OutputAudio, StreamDecoder
from krt.wire import protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from trio_websocket import WebSocketConnection

RESPONSE_TIMEOUT_S = 60.0
"""A response with no last event after this long is reported stuck and its stream stops."""
FINISH_TIMEOUT_S = 10.0
MAX_RECONNECTS = 3
"""Reconnections a tool makes for a draining server before it reports what it got."""


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
    """Audio of each delta, as 24 kHz PCM16 bytes whatever the session's format (so
    seconds and stalls are computed one way)."""
    first_audible_at: float | None = None
    """When a player that starts at the first byte and plays in real time reaches the first
    sample above -50 dBFS: the moment the caller hears something. Leading silence counts."""
    outcome: str | None = None
    """``completed``, ``canceled`` or ``error`` (``error_code`` says which): its last event."""
    timed_out: bool = False
    """The client gave up waiting for a frame it needed: the response was stuck."""
    ended_at: float | None = None
    error_code: str | None = None
    error_message: str = ""
    """The server's words for ``error_code`` (e.g. the voices it does have)."""
    reconnect: bool = False
    """The server refused it because it is draining: a new connection would take it."""
    retry_after: float | None = None
    """With ``busy``: seconds after which the server predicts it would take the request in."""
    cancel_sent_at: float | None = None
    leaked_bytes: int = 0
    """Audio of this response that arrived after its last event: must stay 0."""
    late_events: list[str] = attrs.field(factory=list)
    """Other events naming this response after its last event (a protocol violation)."""
    pcm: bytearray | None = None
    """PCM16 of what was heard, at ``sample_rate`` (kept when the client keeps audio)."""
    sample_rate: int = SAMPLE_RATE

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def ttfb(self) -> float | None:
        return self.arrivals[0] - self.sent_at if self.arrivals else None

    @property
    def told_to_reconnect(self) -> bool:
        """Nothing of it was heard because the server is draining: it was refused as
        ``busy`` saying to reconnect, or the socket had been closed before it went out.
        Behind a load balancer, a new connection lands on another replica."""
        if self.arrivals:
            return False
        return self.reconnect or self.error_code == "disconnected"

    @property
    def audio_seconds(self) -> float:
        return sum(self.sizes) / PCM_BYTES_PER_SECOND

    def playback_reaches(self, arrival: float) -> float:
        """When a real-time player that started at the first byte (pausing whenever it runs
        dry) starts playing a delta arriving at ``arrival`` after the ones received so far."""
        played_until = arrival
        for index, (arrived, size) in enumerate(zip(self.arrivals, self.sizes, strict=True)):
            played_until = (
                arrived if index == 0 else max(played_until, arrived)
            ) + size / PCM_BYTES_PER_SECOND
        return max(played_until, arrival)

    @property
    def first_audible(self) -> float | None:
        """Seconds from sending the request to the first sound a caller hears."""
        return None if self.first_audible_at is None else self.first_audible_at - self.sent_at

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
        output: OutputAudio = NATIVE,
    ) -> None:
        self.ws = ws
        self.output = output
        """The format and rate the session asked for; deltas are decoded to measure them."""
        self._decoders: dict[str, StreamDecoder] = {}
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
            response_id,
            text,
            trio.current_time(),
            pcm=bytearray() if self.keep_audio else None,
            sample_rate=self.output.played_rate,
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
        if isinstance(event, protocol.SessionUpdated | protocol.Pong):
            return
        trace = self.traces.get(event.response)
        if trace is None and self.adopt_server_responses and isinstance(event, protocol.ResponseCreated):
            trace = ResponseTrace(
                event.response,
                "",
                now,
                pcm=bytearray() if self.keep_audio else None,
                sample_rate=self.output.played_rate,
            )
            self.traces[event.response] = trace
            return
        if trace is None:
            self.stray_frames += 1
            return
        if isinstance(event, protocol.OutputAudioDelta):
            data = base64.b64decode(event.delta)
            if trace.finished:
                trace.leaked_bytes += len(data)
                return
            pcm, rate = self._heard(trace.response_id, data)
            if trace.first_audible_at is None and (index := first_audible_sample(pcm)) is not None:
                trace.first_audible_at = trace.playback_reaches(now) + index / rate
            trace.arrivals.append(now)
            trace.sizes.append(round(len(pcm) / 2 / rate * SAMPLE_RATE) * 2)
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
            trace.reconnect = event.reconnect
            trace.retry_after = None if event.retry_after_ms is None else event.retry_after_ms / 1000

    def _heard(self, response_id: str, data: bytes) -> tuple[bytes, int]:
        """A delta as the PCM16 a player would play, and its rate."""
        if self.output.is_native:
            return data, SAMPLE_RATE
        decoder = self._decoders.get(response_id)
        if decoder is None:
            decoder = self._decoders[response_id] = StreamDecoder(self.output)
        samples = decoder.decode(data)
        return np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes(), decoder.sample_rate

    async def use_output(self, output: OutputAudio) -> None:
        """Ask the session for ``output``; SessionRefused with the server's reason if it
        will not. Only before the first response."""
        if output.format not in OUTPUT_FORMATS:
            raise SessionRefused(
                f"{output.format} is a file format; a session streams {', '.join(OUTPUT_FORMATS)}"
            )
        audio_format = cast("protocol.AudioFormat", output.format)
        await self._send(
            protocol.encode(
                protocol.SessionUpdate(
                    protocol.SessionPatch(audio=protocol.AudioSettings(audio_format, output.sample_rate))
                )
            )
        )
        while not self.closed:
            message = await self.ws.get_message()
            event = protocol.decode_server_event(message) if isinstance(message, str) else None
            if isinstance(event, protocol.SessionUpdated):
                self.output = output
                return
            if isinstance(event, protocol.ErrorEvent):
                raise SessionRefused(event.error.message)

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


class SessionRefused(Exception):
    """The server would not set the session up as asked (a format or rate it lacks)."""


@asynccontextmanager
async def open_speech_client(
    url: str,
    *,
    api_key: str = "",
    keep_audio: bool = False,
    adopt_server_responses: bool = False,
    output: OutputAudio = NATIVE,
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
            client = SpeechClient(ws, keep_audio=keep_audio, adopt_server_responses=adopt_server_responses)
            if not output.is_native:
                await client.use_output(output)
            yield client
    except LocalProtocolError as exc:
        # python-trio/trio-websocket#184: a ping the server sent before it saw our close
        # (krt pings behind its audio) fails trio-websocket's reader once we are closing.
        # The connection is over either way; anything else is a real error.
        if "Pong" not in str(exc):
            raise
    finally:
        if ws is not None:
            await trio.aclose_forcefully(ws._stream)
