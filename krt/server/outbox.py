"""The one writer to a client's socket, and the one place a failed write is handled.

Everything a session says goes through a bounded queue to :meth:`Outbox.run`, the only
task that writes to the socket. It batches PCM into ``response.output_audio.delta``
frames by the ``WS_*`` knobs, sends the primer before a response's first audio when
``PRIME_STREAM`` is on, and drops, at the last moment, audio and events of a response
that was cancelled after they were queued, so nothing of a cancelled response can follow
its ``response.canceled``. A client that stops reading for ``WS_SEND_TIMEOUT`` or closes
the socket ends the outbox; the session then ends too, and only that session.

What the client has *read* is known from WebSocket pings: after every
``READ_CHECK_SECONDS`` of audio written, and after the last audio before the writer
idles, a ping goes out behind it, and the client's pong (which every WebSocket client
sends as it reads through its frames in order) proves it has read everything before.
Audio counts as read (``Response.read``) only then, not when the kernel accepted it: buffers
hold a minute of PCM or more, so a client that never reads would otherwise keep its
stream computing (and the other streams waiting) until they filled. A client that has
left audio unacknowledged for ``WS_SEND_TIMEOUT`` is dropped like one whose send blocks.
"""

from __future__ import annotations

import collections
import itertools
import logging
from typing import TYPE_CHECKING

import attrs
import trio
from trio_websocket import ConnectionClosed

from krt import PCM_BYTES_PER_SECOND
from krt.engine.facade import PcmBatch
from krt.server.responses import Response
from krt.wire import protocol

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

    from krt.config import StreamConfig, WebSocketConfig
    from krt.engine.facade import WordTime
    from krt.errors import SpeechError
    from krt.server.responses import ResponseBook

log = logging.getLogger(__name__)

OUTBOX_ITEMS = 64
OUTBOX_AUDIO_SECONDS = 1.0
"""Audio queued for the socket beyond which the synth task waits: with the engine's own
``JOB_BUFFER_SECONDS``, what a client that stops reading costs the model is a few seconds
of its own audio, never more (the rest is its kernel's buffers)."""
READ_CHECK_SECONDS = 0.25
"""Audio written between two pings: how finely a client's reading is followed. At most
four small frames a second of audio; a finer grain would only add frames."""
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
    reason: str | None = None


Outgoing = AudioOut | EventOut | Close


class Outbox:
    def __init__(
        self,
        ws: WebSocketConnection,
        websocket: WebSocketConfig,
        stream: StreamConfig,
        responses: ResponseBook,
        peer: str = "?",
    ) -> None:
        self.ws = ws
        self._websocket = websocket
        self._primer = bytes(stream.prime_bytes) if stream.prime_stream else b""
        self._responses = responses
        """Where a response settles once its last event is on the wire."""
        self._peer = peer
        self._send, self._receive = trio.open_memory_channel[Outgoing](OUTBOX_ITEMS)
        self._audio_queued = 0
        """PCM bytes in the queue, not yet taken by the writer."""
        self._audio_dequeued = trio.Event()
        self.done = trio.Event()
        """Set once the writer has stopped, for whatever reason."""
        self._frame_numbers = itertools.count(1)
        self._unread: collections.deque[tuple[int, Response, int]] = collections.deque()
        """(frame number, response, PCM bytes) of the audio frames written and not yet
        acknowledged, oldest first."""
        self._unread_since: float | None = None
        """When the client last acknowledged anything, or when the oldest unacknowledged
        frame was written if later; None while nothing is unacknowledged."""
        self._unread_pending = trio.Event()
        self._unpinged_bytes = 0
        self._ping_payloads = itertools.count(1)
        self._checks: trio.Nursery | None = None

    @property
    def primer_seconds(self) -> float:
        """Silence sent before each response's first audio (``PRIME_STREAM``)."""
        return len(self._primer) / PCM_BYTES_PER_SECOND

    async def event(
        self, event: protocol.ServerEvent, droppable_for: Response | None = None, ends: Response | None = None
    ) -> None:
        await self._send.send(EventOut(protocol.encode(event), droppable_for, ends))

    # -- the delivery sink (krt.server.delivery.Sink) ---------------------------------------

    async def words(self, response: Response, words: list[WordTime]) -> None:
        """Word times from the response's first sample as the client gets it (after any primer)."""
        offset_ms = self.primer_seconds * 1000
        timings = [
            protocol.WordTiming(
                word.text,
                round(offset_ms + word.start * 1000, 1),
                round(offset_ms + word.end * 1000, 1),
                word.char_start,
                word.char_end,
            )
            for word in words
        ]
        await self.event(protocol.OutputAudioTimestamps(response.response_id, timings), response)

    async def completed(self, response: Response) -> None:
        await self.event(protocol.ResponseCompleted(response.response_id), response, ends=response)

    async def failed(self, response: Response, error: SpeechError) -> None:
        await self.event(protocol.ResponseError.of(response.response_id, error), response, ends=response)

    async def audio(self, response: Response, batch: PcmBatch) -> None:
        """Queue one batch; waits while ``OUTBOX_AUDIO_SECONDS`` of audio are queued
        already (one batch always goes in, however large)."""
        size = sum(map(len, batch))
        while self._audio_queued and self._audio_queued + size > OUTBOX_AUDIO_SECONDS * PCM_BYTES_PER_SECOND:
            if self._audio_dequeued.is_set():
                self._audio_dequeued = trio.Event()
            await self._audio_dequeued.wait()
        self._audio_queued += size
        try:
            await self._send.send(AudioOut(response, batch))
        except BaseException:
            # Not queued (a cancelled response's batch, cut off at the send's checkpoint):
            # counted as queued, it would hold every later batch of the session back.
            self._audio_queued -= size
            raise

    async def close_after_queued(self, code: int, reason: str | None = None) -> None:
        """Close with ``code`` once everything queued before this is sent."""
        await self._send.send(Close(code, reason))

    async def close_now(self, code: int, reason: str | None = None) -> None:
        """Close the socket with ``code`` within a second, whatever the writer is doing."""
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self.ws.aclose(code, reason)

    async def keepalive(self) -> bool:
        """Ping an idle client; False when its pong did not come within ``WS_SEND_TIMEOUT``
        (the peer is gone, or a proxy holds a dead socket open)."""
        payload = b"keepalive-%d" % next(self._ping_payloads)
        with trio.move_on_after(self._websocket.send_timeout):
            await self.ws.ping(payload)
            return True
        return False

    async def run(self) -> None:
        """Write until ``Close``, the connection fails or the client stops reading;
        ``done`` is set either way."""
        try:
            async with self._receive, trio.open_nursery() as checks:
                self._checks = checks
                checks.start_soon(self._drop_when_not_reading, checks.cancel_scope)
                try:
                    await self._write_all()
                except ConnectionClosed:
                    log.info("%s: connection closed while sending", self._peer)
                finally:
                    checks.cancel_scope.cancel(reason="outbox stopped")
        finally:
            self.done.set()

    # -- what the client has read --------------------------------------------------------

    async def _written(self, response: Response, pcm_bytes: int) -> None:
        """Note an audio frame on the wire, and ping behind it when it is due."""
        if not self._unread:
            self._unread_since = trio.current_time()
            self._unread_pending.set()
        self._unread.append((next(self._frame_numbers), response, pcm_bytes))
        self._unpinged_bytes += pcm_bytes
        if self._unpinged_bytes >= READ_CHECK_SECONDS * PCM_BYTES_PER_SECOND:
            await self._ping_behind_last_frame()

    async def _ping_behind_last_frame(self) -> None:
        """Ask the client to acknowledge every frame written so far (if any is unasked).

        The ping must be on the wire before whatever the writer sends next: a client
        that closes on ``response.completed`` must not be sent a ping after it, since
        some clients (trio-websocket, python-trio/trio-websocket#184) fail when a ping
        reaches them after their close. ``start`` returns once the pinging task has
        queued its frame on the connection's send lock, which is first in, first out.
        """
        if not self._unpinged_bytes or not self._unread or self._checks is None:
            return
        self._unpinged_bytes = 0
        payload = next(self._ping_payloads).to_bytes(8, "big")
        await self._checks.start(self._await_pong, self._unread[-1][0], payload)

    async def _await_pong(
        self, frame: int, payload: bytes, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()  # runs on, without a checkpoint, into the send of the ping
        try:
            await self.ws.ping(payload)
        except ConnectionClosed:
            return
        self._acknowledged(frame)

    def _acknowledged(self, through_frame: int) -> None:
        """The client has read every frame up to ``through_frame``: its audio is read."""
        progressed = False
        while self._unread and self._unread[0][0] <= through_frame:
            _frame, response, pcm_bytes = self._unread.popleft()
            response.read(pcm_bytes)
            progressed = True
        if progressed:
            self._unread_since = trio.current_time() if self._unread else None

    async def _drop_when_not_reading(self, outbox_scope: trio.CancelScope) -> None:
        """End the outbox once audio has gone unacknowledged for ``WS_SEND_TIMEOUT``."""
        timeout = self._websocket.send_timeout
        while True:
            since = self._unread_since
            if since is None:
                self._unread_pending = trio.Event()
                await self._unread_pending.wait()
                continue
            if trio.current_time() >= since + timeout:
                log.warning(
                    "%s: no audio read for WS_SEND_TIMEOUT=%ss (%.1f s unacknowledged); dropping the client",
                    self._peer,
                    timeout,
                    sum(pcm_bytes for _frame, _response, pcm_bytes in self._unread) / PCM_BYTES_PER_SECOND,
                )
                outbox_scope.cancel(reason="client not reading")
                return
            await trio.sleep_until(since + timeout)

    # -- writing --------------------------------------------------------------------------

    async def _write_all(self) -> None:
        buffered: list[bytes] = []
        buffered_for: Response | None = None

        async def flush() -> None:
            nonlocal buffered, buffered_for
            response, pcm = buffered_for, b"".join(buffered)
            buffered, buffered_for = [], None
            if response is None or not pcm or response.canceled:
                return
            if response.first_audio_sent_at is None and self._primer:
                await self._write_audio(response, response.output_bytes(self._primer), 0)
            await self._write_audio(response, response.output_bytes(pcm), len(pcm))
            await self._written(response, len(pcm))

        while True:
            try:
                item = self._receive.receive_nowait()
            except trio.WouldBlock:
                await flush()  # nothing more is ready right now: never sit on audio
                await self._ping_behind_last_frame()  # and have the last of it acknowledged
                try:
                    item = await self._receive.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            if isinstance(item, Close):
                await flush()
                await self.close_now(item.code, item.reason)
                return
            if isinstance(item, EventOut):
                await flush()
                await self._ping_behind_last_frame()  # before the event: it may end a response
                if item.droppable_for is None or not item.droppable_for.canceled:
                    if item.ends is not None:
                        item.ends.last_event_starting()
                    if item.ends is not None and not item.ends.canceled:
                        await self._write_audio(item.ends, item.ends.output_tail(), 0)
                    await self._write(item.text)
                    if item.ends is not None:
                        self._responses.settle(item.ends)
                continue
            self._audio_queued -= sum(map(len, item.chunks))
            self._audio_dequeued.set()
            if item.response.canceled:
                continue
            if buffered_for is not item.response:
                await flush()
                buffered_for = item.response
            for pcm in item.chunks:
                buffered.append(pcm)
                if (
                    (item.response.first_audio_sent_at is None and self._websocket.first_chunk_immediate)
                    or sum(map(len, buffered)) >= self._websocket.buffer_bytes
                    or len(buffered) >= self._websocket.flush_every
                ):
                    await flush()
                    buffered_for = item.response

    async def _write_audio(self, response: Response, payload: bytes, pcm_bytes: int) -> None:
        """One audio delta of a response's output bytes, made of ``pcm_bytes`` of its PCM."""
        if payload:
            await self._write(protocol.encode_audio_delta(response.response_id, payload))
        response.sent(pcm_bytes, len(payload))

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
