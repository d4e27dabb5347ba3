"""The one writer to a client's socket, and the one place a failed write is handled.

Everything a session says goes through a bounded queue to :meth:`Outbox.run`, the only
task that writes to the socket. It batches PCM into ``response.output_audio.delta``
frames by the ``WS_*`` knobs, sends the primer before a response's first audio when
``PRIME_STREAM`` is on, and drops, at the last moment, audio and events of a response
that was cancelled after they were queued, so nothing of a cancelled response can follow
its ``response.canceled``. A client that stops reading for ``WS_SEND_TIMEOUT`` or closes
the socket ends the outbox; the session then ends too, and only that session.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import trio
from trio_websocket import ConnectionClosed

from krt import PCM_BYTES_PER_SECOND, protocol
from krt.engine.facade import PcmBatch
from krt.server.responses import Response

if TYPE_CHECKING:
    from collections.abc import Callable

    from trio_websocket import WebSocketConnection

    from krt.config import StreamConfig, WebSocketConfig

log = logging.getLogger(__name__)

OUTBOX_ITEMS = 64
OUTBOX_AUDIO_SECONDS = 1.0
"""Audio queued for the socket beyond which the synth task waits: with the engine's own
``JOB_BUFFER_SECONDS``, what a client that stops reading costs the model is a few seconds
of its own audio, never more (the rest is its kernel's buffers)."""
CLOSE_TIMEOUT_S = 1.0
"""A client that never reads must not hold a close (or a drain) for longer than this."""


@attrs.frozen
class AudioOut:
    """The PCM chunks of one engine delivery, in order."""

    response: Response
    chunks: PcmBatch


@attrs.frozen
class EventOut:
    """A control event.

    ``droppable_for`` names the response whose cancel makes it moot; ``ends`` the
    response it is the last word on, settled once it is on the wire.
    """

    text: str
    droppable_for: Response | None = None
    ends: Response | None = None


@attrs.frozen
class Close:
    code: int


Outgoing = AudioOut | EventOut | Close


class Outbox:
    def __init__(
        self,
        ws: WebSocketConnection,
        websocket: WebSocketConfig,
        stream: StreamConfig,
        on_last_event_sent: Callable[[Response], None],
        peer: str = "?",
    ) -> None:
        self.ws = ws
        self._websocket = websocket
        self._primer = bytes(stream.prime_bytes) if stream.prime_stream else b""
        self._on_last_event_sent = on_last_event_sent
        self._peer = peer
        self._send, self._receive = trio.open_memory_channel[Outgoing](OUTBOX_ITEMS)
        self._audio_queued = 0
        """PCM bytes in the queue, not yet taken by the writer."""
        self._audio_taken = trio.Event()
        self.done = trio.Event()
        """Set once the writer has stopped, for whatever reason."""

    async def event(
        self, event: protocol.ServerEvent, droppable_for: Response | None = None, ends: Response | None = None
    ) -> None:
        await self._send.send(EventOut(protocol.encode(event), droppable_for, ends))

    async def audio(self, response: Response, batch: PcmBatch) -> None:
        """Queue one batch; waits while ``OUTBOX_AUDIO_SECONDS`` of audio are queued
        already (one batch always goes in, however large)."""
        size = sum(map(len, batch))
        while self._audio_queued and self._audio_queued + size > OUTBOX_AUDIO_SECONDS * PCM_BYTES_PER_SECOND:
            if self._audio_taken.is_set():
                self._audio_taken = trio.Event()
            await self._audio_taken.wait()
        self._audio_queued += size
        await self._send.send(AudioOut(response, batch))

    async def close_after_queued(self, code: int) -> None:
        """Close with ``code`` once everything queued before this is sent."""
        await self._send.send(Close(code))

    async def close_now(self, code: int) -> None:
        """Close the socket with ``code`` within a second, whatever the writer is doing."""
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self.ws.aclose(code)

    async def run(self) -> None:
        """Write until ``Close`` or the connection fails; ``done`` is set either way."""
        try:
            async with self._receive:
                await self._write_all()
        except ConnectionClosed:
            log.info("%s: connection closed while sending", self._peer)
        finally:
            self.done.set()

    async def _write_all(self) -> None:
        buffered: list[bytes] = []
        buffered_for: Response | None = None

        async def flush() -> None:
            nonlocal buffered, buffered_for
            response, pcm = buffered_for, b"".join(buffered)
            buffered, buffered_for = [], None
            if response is None or not pcm or response.canceled:
                return
            if response.first_audio_at is None and self._primer:
                await self._write(protocol.encode_audio_delta(response.response_id, self._primer))
            await self._write(protocol.encode_audio_delta(response.response_id, pcm))
            if response.first_audio_at is None:
                response.first_audio_at = trio.current_time()
            response.audio_bytes += len(pcm)

        while True:
            try:
                item = self._receive.receive_nowait()
            except trio.WouldBlock:
                await flush()  # nothing more is ready right now: never sit on audio
                try:
                    item = await self._receive.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            if isinstance(item, Close):
                await flush()
                await self.close_now(item.code)
                return
            if isinstance(item, EventOut):
                await flush()
                if item.droppable_for is None or not item.droppable_for.canceled:
                    await self._write(item.text)
                    if item.ends is not None:
                        self._on_last_event_sent(item.ends)
                continue
            self._audio_queued -= sum(map(len, item.chunks))
            self._audio_taken.set()
            if item.response.canceled:
                continue
            if buffered_for is not item.response:
                await flush()
                buffered_for = item.response
            for pcm in item.chunks:
                buffered.append(pcm)
                if (
                    (item.response.first_audio_at is None and self._websocket.first_chunk_immediate)
                    or sum(map(len, buffered)) >= self._websocket.buffer_bytes
                    or len(buffered) >= self._websocket.flush_every
                ):
                    await flush()
                    buffered_for = item.response

    async def _write(self, text: str) -> None:
        """One frame, bounded by ``WS_SEND_TIMEOUT``; a client too slow for it is dropped."""
        started = trio.current_time()
        with trio.move_on_after(self._websocket.send_timeout) as timeout:
            await self.ws.send_message(text)
        if timeout.cancelled_caught:
            log.warning(
                "%s: send took over WS_SEND_TIMEOUT=%ss; dropping the client",
                self._peer,
                self._websocket.send_timeout,
            )
            raise ConnectionClosed(None)
        elapsed_ms = (trio.current_time() - started) * 1000
        if elapsed_ms > self._websocket.long_send_log_ms:
            log.warning("%s: slow send, %.0f ms for %d bytes", self._peer, elapsed_ms, len(text))
