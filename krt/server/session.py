"""One WebSocket connection: a nursery of reader, synth, sender and input-flush tasks.

The reader decodes every client event at one boundary and acts on it at once, so a
cancel is never stuck behind audio. Responses are spoken in order by the synth task,
each inside its own cancel scope: barge-in is ``scope.cancel()``, not a polled flag.
The sender is the only task that writes to the socket; it batches PCM into
``response.output_audio.delta`` frames and drops, at the last moment, audio of any
response that was cancelled after it was queued, so nothing of a cancelled response
can follow its ``response.canceled``.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING

import attrs
import trio
from trio_websocket import ConnectionClosed

from krt import SAMPLE_RATE, protocol
from krt.audio import PcmChunker
from krt.engine.pipeline import SpeechPlan
from krt.engine.segmenter import count_words, cut_run_on, split_sentences
from krt.errors import SpeechError
from krt.metrics.record import ResponseRecord

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

    from krt.config import Config
    from krt.engine.scheduler import Engine
    from krt.metrics.record import MetricsLog

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 64 * 1024
"""Largest client event we decode; bigger ones get an ``oversized`` error, not a close."""
MAX_PENDING_RESPONSES = 64
"""Responses one socket may have queued; more are refused as busy."""
OUTBOX_ITEMS = 64
MAX_INCREMENTAL_WORDS = 40
"""Buffered ``input.append`` text with no sentence end is spoken once it has this many words."""


@attrs.define(eq=False)
class Response:
    """A response from ``response.create`` (or flushed input) until its last event."""

    response_id: str
    plan: SpeechPlan
    received_at: float
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    canceled: bool = False
    failed: bool = False
    finished: bool = False
    first_audio_at: float | None = None
    audio_bytes: int = 0
    queue_seconds: float = 0.0


@attrs.frozen
class AudioOut:
    """The PCM chunks (``STREAM_CHUNK_SECONDS`` each) of one engine delivery, in order."""

    response: Response
    chunks: tuple[bytes, ...]


@attrs.frozen
class EventOut:
    """A control event.

    ``droppable_for`` names the response whose cancel makes it moot; ``ends`` the
    response it is the last word on, accounted for once it is on the wire.
    """

    text: str
    droppable_for: Response | None = None
    ends: Response | None = None


@attrs.frozen
class Close:
    code: int


Outgoing = AudioOut | EventOut | Close


@attrs.define
class SessionSettings:
    voice: str = "female"
    speed: float | None = None


@attrs.define
class InFlight:
    """Responses created and not yet finished, server-wide, so a drain can wait for them."""

    count: int = 0
    zero: trio.Event = attrs.field(factory=trio.Event)

    def add(self) -> None:
        self.count += 1
        self.zero = trio.Event() if self.zero.is_set() else self.zero

    def remove(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.zero.set()


class Session:
    def __init__(
        self,
        ws: WebSocketConnection,
        engine: Engine,
        config: Config,
        metrics: MetricsLog,
        in_flight: InFlight,
        peer: str = "?",
    ) -> None:
        self.ws = ws
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.in_flight = in_flight
        self.peer = peer
        self.settings = SessionSettings()
        self.responses: dict[str, Response] = {}
        """Responses a client event may still address (cancel), by id."""
        self._unaccounted: list[Response] = []
        self._queue_send, self._queue_receive = trio.open_memory_channel[Response](MAX_PENDING_RESPONSES)
        self._out_send, self._out_receive = trio.open_memory_channel[Outgoing](OUTBOX_ITEMS)
        self._input = ""
        self._last_append = 0.0
        self._input_arrived = trio.Event()
        self._sender_done = trio.Event()

    async def run(self) -> None:
        """Serve the connection until the client leaves or ends the session.

        On ``session.end`` the queued responses are spoken and the socket closed with
        1000; on a disconnect, a send timeout or a dead sender everything is cancelled
        at once, and every job the session held is withdrawn from the engine by its own
        ``async with``. Whatever ends one session never reaches the server.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_then_stop, nursery.cancel_scope)
                nursery.start_soon(self._synth)
                nursery.start_soon(self._input_flusher)
                if await self._reader():
                    await self._sender_done.wait()
                nursery.cancel_scope.cancel(reason="session over")
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("%s: connection lost", self.peer)
        finally:
            for response in list(self._unaccounted):
                self._forget(response)

    async def _send_then_stop(self, session_scope: trio.CancelScope) -> None:
        """Once the sender stops, for any reason, nothing else in the session can be heard."""
        try:
            await self._sender()
        finally:
            session_scope.cancel(reason="sender stopped")

    async def close(self, code: int) -> None:
        """Close the socket with ``code`` within a second, whatever the sender is doing."""
        with trio.move_on_after(1):
            await self.ws.aclose(code)

    # -- outgoing ----------------------------------------------------------------------

    async def _emit(
        self, event: protocol.ServerEvent, droppable_for: Response | None = None, ends: Response | None = None
    ) -> None:
        await self._out_send.send(EventOut(protocol.encode(event), droppable_for, ends))

    async def _sender(self) -> None:
        """The only writer to the socket; ends after ``Close`` or when the outbox closes."""
        ws_config = self.config.websocket
        buffered: list[bytes] = []
        buffered_for: Response | None = None

        async def flush() -> None:
            nonlocal buffered, buffered_for
            response, pcm = buffered_for, b"".join(buffered)
            buffered, buffered_for = [], None
            if response is None or not pcm or response.canceled:
                return
            if (
                response.first_audio_at is None
                and self.config.stream.prime_stream
                and self.config.stream.prime_bytes
            ):
                await self._send_text(
                    protocol.encode_audio_delta(response.response_id, bytes(self.config.stream.prime_bytes))
                )
            await self._send_text(protocol.encode_audio_delta(response.response_id, pcm))
            if response.first_audio_at is None:
                response.first_audio_at = trio.current_time()
            response.audio_bytes += len(pcm)

        try:
            async with self._out_receive:
                while True:
                    try:
                        item = self._out_receive.receive_nowait()
                    except trio.WouldBlock:
                        await flush()  # nothing more is ready right now: never sit on audio
                        try:
                            item = await self._out_receive.receive()
                        except trio.EndOfChannel:
                            break
                    except trio.EndOfChannel:
                        break
                    if isinstance(item, Close):
                        await flush()
                        with trio.move_on_after(1):  # a client that never reads must not hold us
                            await self.ws.aclose(item.code)
                        break
                    if isinstance(item, EventOut):
                        await flush()
                        if item.droppable_for is None or not item.droppable_for.canceled:
                            await self._send_text(item.text)
                            if item.ends is not None:
                                self._account(item.ends)
                        continue
                    if item.response.canceled:
                        continue
                    if buffered_for is not item.response:
                        await flush()
                        buffered_for = item.response
                    for pcm in item.chunks:
                        buffered.append(pcm)
                        if (
                            (item.response.first_audio_at is None and ws_config.first_chunk_immediate)
                            or sum(map(len, buffered)) >= ws_config.buffer_bytes
                            or len(buffered) >= ws_config.flush_every
                        ):
                            await flush()
                            buffered_for = item.response
        except ConnectionClosed:
            log.info("%s: connection closed while sending", self.peer)
        finally:
            self._sender_done.set()

    async def _send_text(self, text: str) -> None:
        ws_config = self.config.websocket
        started = time.perf_counter()
        with trio.move_on_after(ws_config.send_timeout) as timeout:
            await self.ws.send_message(text)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if timeout.cancelled_caught:
            log.warning(
                "%s: send took over WS_SEND_TIMEOUT=%ss; dropping the client",
                self.peer,
                ws_config.send_timeout,
            )
            raise ConnectionClosed(None)
        if elapsed_ms > ws_config.long_send_log_ms:
            log.warning("%s: slow send, %.0f ms for %d bytes", self.peer, elapsed_ms, len(text))

    # -- incoming ----------------------------------------------------------------------

    async def _reader(self) -> bool:
        """Decode and act on client events; True when the client sent ``session.end``."""
        try:
            while True:
                message = await self.ws.get_message()
                try:
                    event = protocol.decode_client_event(message, MAX_EVENT_BYTES)
                except protocol.ProtocolError as exc:
                    await self._emit(exc.to_event())
                    continue
                if isinstance(event, protocol.SessionEnd):
                    await self._flush_input()
                    self._queue_send.close()
                    return True
                await self._handle(event)
        except ConnectionClosed:
            return False

    async def _handle(self, event: protocol.ClientEvent) -> None:
        if isinstance(event, protocol.ResponseCreate):
            await self._create(event.input, event.response_id, event.voice, event.speed)
        elif isinstance(event, protocol.ResponseCancel):
            response = self.responses.get(event.target)
            if response is None:
                await self._emit(
                    _request_error("unknown_response", f"no active response {event.target!r}", event)
                )
            else:
                await self._cancel(response)
        elif isinstance(event, protocol.Barge):
            self._input = ""
            for response in list(self.responses.values()):
                await self._cancel(response)
        elif isinstance(event, protocol.InputAppend):
            await self._append_input(event.text)
        elif isinstance(event, protocol.InputCommit):
            await self._flush_input()
        elif isinstance(event, protocol.SessionUpdate):
            await self._update_session(event)

    async def _update_session(self, event: protocol.SessionUpdate) -> None:
        patch = event.session
        try:
            if patch.audio is not None and patch.audio.format not in (None, "pcm"):
                raise SpeechError("invalid_input", "only format 'pcm' is supported yet; Ogg/Opus is coming")
            if patch.audio is not None and patch.audio.sample_rate not in (None, SAMPLE_RATE):
                raise SpeechError(
                    "invalid_input", f"sample_rate must be {SAMPLE_RATE} (Kokoro's native rate)"
                )
            if patch.voice is not None:
                self.engine.pipeline.backend.voices.resolve(patch.voice)
            if patch.speed is not None:
                from krt.engine.pipeline import check_speed

                check_speed(patch.speed)
        except SpeechError as exc:
            code = "unsupported_format" if exc.code == "invalid_input" else exc.code
            await self._emit(_request_error(code, exc.message, event))
            return
        if patch.voice is not None:
            self.settings.voice = patch.voice
        if patch.speed is not None:
            self.settings.speed = patch.speed
        speed = self.settings.speed if self.settings.speed is not None else self.config.voices.speed
        await self._emit(
            protocol.SessionUpdated(
                protocol.EffectiveSession(
                    self.settings.voice, speed, protocol.EffectiveAudio("pcm", SAMPLE_RATE)
                )
            )
        )

    async def _create(
        self, text: str, response_id: str | None, voice: str | None, speed: float | None
    ) -> None:
        response_id = response_id or f"resp_{uuid.uuid4().hex}"
        if response_id in self.responses:
            await self._emit(
                _request_error("duplicate_response", f"response {response_id!r} is still active", None)
            )
            return
        try:
            plan = self.engine.pipeline.plan(
                text,
                voice if voice is not None else self.settings.voice,
                speed if speed is not None else self.settings.speed,
            )
        except SpeechError as exc:
            await self._emit(protocol.ResponseError(response_id, exc.code, exc.message))
            return
        if not self.engine.accepting:
            await self._emit(protocol.ResponseError(response_id, "busy", "the server is draining"))
            return
        response = Response(response_id, plan, trio.current_time())
        try:
            self._queue_send.send_nowait(response)
        except trio.WouldBlock:
            await self._emit(
                protocol.ResponseError(
                    response_id, "busy", f"{MAX_PENDING_RESPONSES} responses already queued here"
                )
            )
            return
        self.responses[response_id] = response
        self._unaccounted.append(response)
        self.in_flight.add()
        await self._emit(protocol.ResponseCreated(response_id))

    async def _cancel(self, response: Response) -> None:
        """Stop a response now: its scope is cancelled, and the sender drops what it queued."""
        response.canceled = True
        response.scope.cancel(reason="response.cancel")
        self._retire(response)
        await self._emit(protocol.ResponseCanceled(response.response_id), ends=response)

    # -- incremental input -------------------------------------------------------------

    async def _append_input(self, text: str) -> None:
        """Speak complete sentences at once; keep the rest for more text, idle or commit.

        A stream that never ends a sentence is still cut once it holds
        ``MAX_INCREMENTAL_WORDS`` words, at its last clause mark if it has one, so a
        run-on LLM reply is spoken as it comes rather than refused as too long at the end.
        """
        self._last_append = trio.current_time()
        *complete, rest = split_sentences(self._input + text)
        if count_words(rest) >= MAX_INCREMENTAL_WORDS:
            head, rest = cut_run_on(rest)
            complete.append(head)
        self._input = ""  # the flusher must not speak ``rest`` ahead of the sentences before it
        for sentence in complete:
            if sentence.strip():
                await self._create(sentence.strip(), None, None, None)
        self._input = rest + self._input
        if self._input.strip():
            self._input_arrived.set()

    async def _flush_input(self) -> None:
        text, self._input = self._input.strip(), ""
        if text:
            await self._create(text, None, None, None)

    async def _input_flusher(self) -> None:
        """Flush buffered input after ``FLUSH_IDLE_MS`` without an ``input.append``."""
        idle = self.config.stream.flush_idle_ms / 1000
        while True:
            await self._input_arrived.wait()
            self._input_arrived = trio.Event()
            while self._input.strip():
                due = self._last_append + idle
                if trio.current_time() >= due:
                    await self._flush_input()
                    break
                await trio.sleep_until(due)

    # -- synthesis ---------------------------------------------------------------------

    async def _synth(self) -> None:
        async with self._queue_receive:
            async for response in self._queue_receive:
                if response.canceled:
                    continue
                with response.scope:
                    await self._speak(response)
        await self._out_send.send(Close(1000))

    async def _speak(self, response: Response) -> None:
        chunker = PcmChunker(self.engine.pipeline.chunk_samples)
        try:
            async with self.engine.stream(response.plan, response.response_id) as job:
                async for audio in job:
                    response.queue_seconds = job.queue_seconds or 0.0
                    await self._out_send.send(AudioOut(response, tuple(chunker.feed(audio))))
                await self._out_send.send(AudioOut(response, tuple(chunker.flush())))
        except SpeechError as exc:
            self._retire(response)
            response.failed = True
            await self._emit(
                protocol.ResponseError(response.response_id, exc.code, exc.message), response, ends=response
            )
            return
        self._retire(response)
        await self._emit(protocol.ResponseCompleted(response.response_id), response, ends=response)

    def _retire(self, response: Response) -> None:
        """No event may address this response any more (a late cancel gets unknown_response)."""
        self.responses.pop(response.response_id, None)

    def _account(self, response: Response) -> None:
        """The response's last event is sent: it leaves the in-flight count and, unless it
        failed, lands in the metrics log."""
        if response.finished:
            return
        response.finished = True
        self._unaccounted.remove(response)
        self.in_flight.remove()
        if not response.failed:
            self._record(response)

    def _forget(self, response: Response) -> None:
        """The connection is gone: count the response as canceled."""
        response.canceled = True
        self._retire(response)
        self._account(response)

    def _record(self, response: Response) -> None:
        now = trio.current_time()
        ttfb = (
            None
            if response.first_audio_at is None
            else (response.first_audio_at - response.received_at) * 1000
        )
        self.metrics.append(
            ResponseRecord(
                ts=time.time(),
                request_id=response.response_id,
                ttfb_ms=ttfb,
                wall_s=now - response.received_at,
                audio_s=response.audio_bytes / 2 / SAMPLE_RATE,
                canceled=response.canceled,
                voice=response.plan.voice,
                backend=self.engine.pipeline.backend.name,
                queue_ms=response.queue_seconds * 1000,
            )
        )


def _request_error(code: str, message: str, event: protocol.ClientEvent | None) -> protocol.ErrorEvent:
    return protocol.ErrorEvent(
        protocol.ErrorDetail(
            "invalid_request_error", code, message, event.TYPE if event is not None else None
        )
    )
