"""One WebSocket connection: a nursery of reader, synth, outbox and input-flush tasks.

The reader decodes every client event at one boundary and acts on it at once, so a
cancel is never stuck behind audio. Responses are spoken in order by the synth task,
each inside its own cancel scope: barge-in is ``scope.cancel()``, not a polled flag.
Speaking a response is :func:`~krt.server.delivery.deliver`'s, into the
:class:`~krt.server.outbox.Outbox` (the one writer to the socket); incremental text is
the :class:`~krt.server.input_buffer.InputBuffer`'s, and each response's life and
accounting the :class:`~krt.server.responses.ResponseBook`'s. This module reads the
client's events and wires them to the engine.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from typing import TYPE_CHECKING

import attrs
import trio
from trio_websocket import ConnectionClosed

from krt.errors import SpeechError
from krt.media.codecs import NATIVE, OutputAudio, StreamEncoder, UnsupportedOutput
from krt.server.delivery import deliver
from krt.server.input_buffer import InputBuffer
from krt.server.outbox import Outbox
from krt.server.responses import Response
from krt.wire import protocol

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

    from krt.config import Config
    from krt.engine.facade import Engine, Job
    from krt.server.responses import ResponseBook

log = logging.getLogger(__name__)

MAX_PENDING_RESPONSES = 64
"""Responses one socket may have queued; more are refused as busy."""


@attrs.define
class SessionSettings:
    """What ``session.update`` set; ``None`` speed means the server's ``KOKORO_SPEED``."""

    voice: str = "female"
    speed: float | None = None
    output: OutputAudio = NATIVE
    timestamps: bool = False


class Session:
    def __init__(
        self,
        ws: WebSocketConnection,
        engine: Engine,
        config: Config,
        responses: ResponseBook,
        peer: str = "?",
    ) -> None:
        self._ws = ws
        self.engine = engine
        self.peer = peer
        self.settings = SessionSettings()
        self._encoding = config.encoding
        self.responses = responses
        self.outbox = Outbox(ws, config.websocket, config.stream, responses, peer)
        self._websocket = config.websocket
        self._last_heard = trio.current_time()
        """When the client last sent anything, or last had a response in flight."""
        self.input = InputBuffer(config.stream.flush_idle_ms / 1000)
        self._queue_send, self._queue_receive = trio.open_memory_channel[Response](MAX_PENDING_RESPONSES)
        self._speaking: Response | None = None
        """The response the synth task is on (None between responses)."""
        self._input_arrived = trio.Event()
        self._input_lock = trio.Lock()
        """Held while buffered input becomes responses, so an idle flush cannot overtake
        the sentences of the append that came before it."""

    async def run(self) -> None:
        """Serve the connection until the client leaves or ends the session.

        On ``session.end`` the queued responses are spoken and the socket closed with
        1000; on a disconnect, a send timeout or a dead outbox everything is cancelled
        at once, and every job the session held is withdrawn from the engine by its own
        ``async with``. Whatever ends one session never reaches the server.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_then_stop, nursery.cancel_scope)
                nursery.start_soon(self._synth)
                nursery.start_soon(self._input_flusher)
                nursery.start_soon(self._keepalive)
                if await self._reader():
                    await self.outbox.done.wait()
                nursery.cancel_scope.cancel(reason="session over")
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("%s: connection lost", self.peer)
        finally:
            for response in self.responses.unsettled():
                if response.job is not None:  # admitted and still queued here: nothing holds it
                    self.engine.withdraw(response.job)
            self.responses.abandon_all()

    async def _write_then_stop(self, session_scope: trio.CancelScope) -> None:
        """Once the outbox stops, for any reason, nothing else in the session can be heard."""
        try:
            await self.outbox.run()
        finally:
            session_scope.cancel(reason="outbox stopped")

    async def close(self, code: int, reason: str | None = None) -> None:
        """Close the socket with ``code`` within a second, whatever the outbox is doing."""
        await self.outbox.close_now(code, reason)

    async def cancel_response(self, response_id: str) -> bool:
        """Cancel as a ``response.cancel`` from the client would (the operator console's
        command); False when no such response can be cancelled."""
        response = self.responses.get(response_id)
        if response is None:
            return False
        await self._cancel(response)
        return True

    # -- incoming ----------------------------------------------------------------------

    async def _reader(self) -> bool:
        """Decode and act on client events; True when the client sent ``session.end``."""
        try:
            while True:
                message = await self._ws.get_message()
                self._last_heard = trio.current_time()
                try:
                    event = protocol.decode_client_event(message, protocol.MAX_EVENT_BYTES)
                except protocol.ProtocolError as exc:
                    await self._refuse_frame(exc)
                    continue
                if isinstance(event, protocol.SessionEnd):
                    await self._flush_input()
                    self._queue_send.close()
                    return True
                await self._handle(event)
        except ConnectionClosed:
            return False

    async def _refuse_frame(self, error: protocol.ProtocolError) -> None:
        """The ``error`` for a frame krt could not read, and for a ``response.create`` whose
        id could be read (and names no response of this session), that response's one
        terminal event too."""
        await self.outbox.event(error.to_event())
        if error.response_id is not None and self.responses.get(error.response_id) is None:
            await self.outbox.event(protocol.ResponseError(error.response_id, error.code, error.message))

    async def _handle(self, event: protocol.ClientEvent) -> None:
        if isinstance(event, protocol.ResponseCreate):
            await self._create(event.input, event.response_id, event.voice, event.speed, event.timestamps)
        elif isinstance(event, protocol.ResponseCancel):
            response = self.responses.get(event.target)
            if response is None:
                await self.outbox.event(
                    protocol.request_error(
                        "unknown_response", f"no active response {event.target!r}", event.TYPE
                    )
                )
            else:
                await self._cancel(response)
        elif isinstance(event, protocol.Barge):
            self.input.clear()
            for response in self.responses.addressable():
                await self._cancel(response)
        elif isinstance(event, protocol.InputAppend):
            await self._append_input(event.text)
        elif isinstance(event, protocol.InputCommit):
            await self._flush_input()
        elif isinstance(event, protocol.SessionUpdate):
            await self._update_session(event)
        elif isinstance(event, protocol.Ping):
            await self.outbox.event(protocol.Pong(event.id))

    async def _update_session(self, event: protocol.SessionUpdate) -> None:
        patch = event.session
        output = self.settings.output
        if patch.audio is not None:
            try:
                output = OutputAudio(
                    patch.audio.format or output.format, patch.audio.sample_rate or output.sample_rate
                )
            except UnsupportedOutput as exc:
                await self._refuse_update("unsupported_format", str(exc))
                return
        if patch.voice is not None:
            try:
                self.engine.resolve_voice(patch.voice)
            except SpeechError as exc:
                await self._refuse_update("invalid_voice", exc.message)
                return
        try:
            speed = self.engine.resolve_speed(patch.speed if patch.speed is not None else self.settings.speed)
        except SpeechError as exc:
            await self._refuse_update("invalid_speed", exc.message)
            return
        if patch.voice is not None:
            self.settings.voice = patch.voice
        if patch.speed is not None:
            self.settings.speed = patch.speed
        if patch.timestamps is not None:
            self.settings.timestamps = patch.timestamps
        self.settings.output = output
        await self.outbox.event(
            protocol.SessionUpdated(
                protocol.EffectiveSession(
                    self.settings.voice,
                    speed,
                    protocol.EffectiveAudio(output.format, output.sample_rate),
                    self.settings.timestamps,
                )
            )
        )

    async def _refuse_update(self, code: protocol.RequestErrorCode, message: str) -> None:
        await self.outbox.event(protocol.request_error(code, message, protocol.SessionUpdate.TYPE))

    async def _create(
        self,
        text: str,
        response_id: str | None,
        voice: str | None,
        speed: float | None,
        timestamps: bool | None = None,
    ) -> None:
        response_id = response_id or f"resp_{uuid.uuid4().hex}"
        if response_id in self.responses:
            await self.outbox.event(
                protocol.request_error("duplicate_response", f"response {response_id!r} is still active")
            )
            return
        try:
            plan = self.engine.plan(
                text,
                voice if voice is not None else self.settings.voice,
                speed if speed is not None else self.settings.speed,
                timestamps=timestamps if timestamps is not None else self.settings.timestamps,
            )
            if self._queue_send.statistics().current_buffer_used >= MAX_PENDING_RESPONSES:
                raise SpeechError("busy", f"{MAX_PENDING_RESPONSES} responses already queued here")
            output = self.settings.output
            encoder = None if output.is_native else StreamEncoder(output, self._encoding)
            response = Response(response_id, plan, trio.current_time(), text, encoder=encoder)
            if self._speaking is None and not self._queue_send.statistics().current_buffer_used:
                # Nothing ahead of it here: the engine decides now, so that ``busy`` comes
                # instead of ``response.created``, never after it.
                response.job = self.engine.admit(plan, response_id, client=self)
            try:
                self.responses.open(response)
            except SpeechError:
                if response.job is not None:
                    self.engine.withdraw(response.job)
                raise
        except SpeechError as exc:
            await self.outbox.event(protocol.ResponseError.of(response_id, exc))
            return
        self._queue_send.send_nowait(response)  # room was checked with no await since
        await self.outbox.event(protocol.ResponseCreated(response_id))

    async def refuse(self, response: Response, error: SpeechError) -> None:
        """Fail a response that has not ended, now, with ``error`` (a drain that predicts it
        cannot end in time): it stops at once and its ``response.error`` is its last event.
        One that ended meanwhile (made, cancelled, failed) is left as it is, and a session
        that is gone has no one to tell."""
        if not response.making:
            return
        response.refuse(error.code)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.outbox.event(protocol.ResponseError.of(response.response_id, error), ends=response)

    def pending_work(self) -> tuple[Job | None, list[Response]]:
        """What this socket still has to make, in order: the job of the response the
        engine is on (None when none is in the engine) and the responses still being
        made, that response first. Responses already made (their last audio maybe still
        queued for the client, or still being read off a job the engine is done with) are
        left out: they end by themselves."""
        making = [
            response
            for response in self.responses.unsettled()
            if response.making and not (response.job is not None and response.job.withdrawn)
        ]
        return (making[0].job if making else None), making

    async def _cancel(self, response: Response) -> None:
        """Stop a response now: its scope is cancelled, and the outbox drops what it queued."""
        response.cancel()
        await self.outbox.event(protocol.ResponseCanceled(response.response_id), ends=response)

    # -- incremental input -------------------------------------------------------------

    async def _append_input(self, text: str) -> None:
        async with self._input_lock:
            for piece in self.input.append(text, trio.current_time()):
                await self._create(piece, None, None, None)
        if self.input.pending:
            self._input_arrived.set()

    async def _flush_input(self) -> None:
        async with self._input_lock:
            text = self.input.take()
            if text:
                await self._create(text, None, None, None)

    async def _input_flusher(self) -> None:
        """Flush buffered input after ``FLUSH_IDLE_MS`` without an ``input.append``."""
        while True:
            await self._input_arrived.wait()
            self._input_arrived = trio.Event()
            while (due := self.input.flush_due()) is not None:
                if trio.current_time() >= due:
                    await self._flush_input()
                    break
                await trio.sleep_until(due)

    # -- keepalive ---------------------------------------------------------------------

    async def _keepalive(self) -> None:
        """Ping an idle client every ``WS_PING_INTERVAL``, so proxies keep the socket open
        and a peer that is gone is found (no pong within ``WS_SEND_TIMEOUT``: dropped);
        close a connection idle for ``WS_IDLE_TIMEOUT`` with 1000 and the reason "idle".
        Idle: no client event, and no response in flight."""
        interval = self._websocket.ping_interval or math.inf
        last_ping = trio.current_time()
        while True:
            now = trio.current_time()
            if self.responses.in_flight():
                self._last_heard = last_ping = now
            idle_at = self._last_heard + self._websocket.idle_timeout
            if now >= idle_at:
                log.info("%s: idle for WS_IDLE_TIMEOUT=%ss; closing", self.peer, self._websocket.idle_timeout)
                await self.outbox.close_after_queued(1000, "idle")
                return
            if now >= max(last_ping, self._last_heard) + interval:
                last_ping = now
                if not await self.outbox.keepalive():
                    log.warning("%s: no pong within WS_SEND_TIMEOUT; dropping the client", self.peer)
                    await self.outbox.close_now(1001, "no pong")
                    return
                continue
            await trio.sleep_until(min(idle_at, max(last_ping, self._last_heard) + interval))

    # -- synthesis ---------------------------------------------------------------------

    async def _synth(self) -> None:
        """Speak the queued responses in order, each to its end (or its cancel)."""
        async with self._queue_receive:
            async for response in self._queue_receive:
                if response.job is None and response.making:  # its stream was taken in with the one ahead
                    response.job = self.engine.admit(response.plan, response.response_id, accepted=True)
                self._speaking = response
                try:
                    if response.job is not None:
                        await deliver(response, self.engine, self.outbox)
                finally:
                    self._speaking = None
        await self.outbox.close_after_queued(1000)
