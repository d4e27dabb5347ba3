"""One LiveKit segment spoken as krt responses: ``Segment`` and ``speak``.

A segment is what one ``KrtTTS`` request speaks: the text as it comes (a stream's tokens,
or ``synthesize()``'s whole text), what of it has been heard, and how to speak the rest
on a socket. This module holds that bookkeeping and the loop that speaks a segment to its
end on pooled sockets; :mod:`krt.integrations.livekit` holds the plugin around it, and
:mod:`krt.integrations.krt_socket` the socket itself.

- **Text out as it comes.** A stream's text goes as ``input.append`` (at most
  ``MAX_APPEND_CHARS`` an event), its end as ``input.commit``; ``synthesize()``'s as one
  ``response.create``. A ``ping`` after the last of it is the segment's end marker: krt
  answers in order, so its ``pong`` follows the last ``response.created``, and the
  segment has ended once every response made before it has.
- **Words located in the text sent.** krt times each response's words from that
  response's first sample, at character offsets into the response's own input, a piece
  of the text sent (krt cut it into sentences and stripped it). Each word becomes a
  ``TimedString`` of the input's own whitespace token, its punctuation kept and a space
  added (LiveKit builds the transcript by concatenating them), shifted by the audio of the
  responses before it, counted in bytes as it arrives (exact, where a clock would drift).
- **The words pushed are the words heard.** A token is pushed just before the audio it
  starts in, and ``spoken_to`` follows the last one pushed: it is where the segment is
  taken up again on a new socket after a drain or a dropped connection.
- **A ``busy`` settles the socket first.** Nothing more is sent; the refused response and
  any made after it are dropped unheard (a later sentence must not be heard before it),
  a busy krt is told to stop those (``barge``), and a second ``ping`` says when every
  response on the socket has ended. Only then is the text sent again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import aiohttp
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError, utils
from livekit.agents.types import TimedString

from krt.integrations.krt_socket import Closed, KrtSocket
from krt.wire import protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from livekit.agents import tts

__all__ = ["MAX_RECOVERIES", "Segment", "SocketPool", "speak"]

logger = logging.getLogger("krt.integrations.livekit")
"""The plugin's logger: one name sets the level for all ``KrtTTS`` says."""

PCM_BYTES_PER_SAMPLE = 2
"""krt is asked for mono PCM16: LiveKit's raw PCM format, played as it comes."""
MAX_RECOVERIES = 3
"""How often one segment is taken up again (after a drain, a dropped socket or a busy
krt's wait) before its error goes to LiveKit."""
MAX_APPEND_CHARS = 4096
"""Text per ``input.append``: krt reads events of up to 64 KiB, and a character may take
12 bytes of JSON (two ``\\uXXXX`` escapes)."""
_TOKEN = re.compile(r"\S+")
_SESSION_ERRORS = frozenset({"invalid_voice", "invalid_speed", "unsupported_format"})
"""Errors that no later response of the session would escape."""


class SocketPool(Protocol):
    """Where a segment's sockets come from: open, their session agreed."""

    async def acquire(self, within: float, /) -> KrtSocket:
        """An open socket, within ``within`` seconds."""

    def put(self, socket: KrtSocket, /) -> None:
        """Back to the pool: every response on it has ended, so it is clean."""

    def discard(self, socket: KrtSocket, /) -> None:
        """Close it now (krt cancels what it has in flight) and replace it."""


@dataclass(frozen=True)
class _Token:
    """One whitespace-separated token of the text sent, timed by krt's words in it."""

    text: str
    start_ms: float
    end_ms: float
    end: int
    """Where it ends in the segment's text."""


@dataclass(eq=False)
class _Piece:
    """One krt response of the segment, as its events arrive."""

    base: int | None = None
    """Where its input starts in the segment's text (found from its first word)."""
    audio_start: int | None = None
    """Bytes of the segment's audio before its first sample."""
    audio: int = 0
    tokens: collections.deque[_Token] = field(default_factory=collections.deque)
    """Timed, not yet pushed: each goes out just before the audio it starts in."""
    ended: bool = False
    discarded: bool = False
    """Made after a response krt refused: none of it may be heard (it would be heard
    before the refused sentence), and it is sent again."""


@dataclass(frozen=True)
class _Refused:
    """krt refused a response ``busy``; the socket has settled (all its responses ended)."""

    error: protocol.ResponseError


@dataclass(frozen=True)
class _Lost:
    code: int | None


@dataclass(frozen=True)
class _Done:
    """Every response of the segment has ended: the socket is clean, back to the pool."""


_DONE = _Done()
_Outcome = _Done | _Refused | _Lost


class Segment:
    """One LiveKit segment: the text as it comes, what of it has been heard, and how to
    speak the rest on a socket. Shared by the streaming and the one-shot paths; the only
    difference is how text goes out (``incremental``: ``input.append``; otherwise one
    ``response.create``)."""

    def __init__(
        self,
        *,
        emitter: tts.AudioEmitter,
        sample_rate: int,
        timeout: float,
        request_id: str,
        incremental: bool,
        on_first_send: Callable[[], None],
    ) -> None:
        self.emitter = emitter
        self.bytes_per_ms = sample_rate * PCM_BYTES_PER_SAMPLE / 1000
        self.timeout = timeout
        self.request_id = request_id
        self.incremental = incremental
        self._on_first_send: Callable[[], None] | None = on_first_send
        self.text = ""
        self.committed = False
        self.changed = asyncio.Event()
        self.audio_bytes = 0
        self.spoken_to = 0
        """``text[:spoken_to]`` has been heard (up to the last word whose audio was
        pushed): where the segment is taken up again on a new socket."""
        self.failures: list[protocol.ResponseError] = []
        self._located_to = 0
        self._queued_to = 0
        self._responses_created = 0
        self._pump_stopped = False
        self._pump_task: asyncio.Task[None] | None = None
        self._marker: str | None = None
        self._marker_sent = False

    # -- input ---------------------------------------------------------------------------

    def add(self, text: str) -> None:
        if not self.committed:
            self.text += text
            self.changed.set()

    def commit(self) -> None:
        self.committed = True
        self.changed.set()

    # -- one socket ----------------------------------------------------------------------

    async def speak_on(self, socket: KrtSocket) -> _Outcome:
        """Send what is not heard yet and play krt's answer until every response of it
        has ended (``_DONE``), krt refused one ``busy`` (after settling), or the socket
        was lost."""
        self._located_to = self._queued_to = self.spoken_to
        self._pump_stopped = False
        self._marker_sent = False
        self._marker = utils.shortuuid("krt-end-")
        self._pump_task = asyncio.create_task(self._pump(socket, self._marker), name="krt-segment-pump")
        try:
            return await self._receive(socket)
        finally:
            await self._stop_pump()

    async def _stop_pump(self) -> None:
        """Send nothing more on this socket. Cancelling a send is safe: aiohttp writes a
        frame whole before it awaits, so a frame is sent whole or not at all."""
        self._pump_stopped = True
        if self._pump_task is not None:
            await utils.aio.gracefully_cancel(self._pump_task)
            self._pump_task = None

    async def _pump(self, socket: KrtSocket, marker: str) -> None:
        """Send the segment's text as it comes; after the commit, the ``ping`` whose
        ``pong`` says krt has made every response of it. A failed send ends the pump: the
        socket's reader reports the loss."""
        sent = self.spoken_to
        self.changed.set()
        try:
            while True:
                await self.changed.wait()
                self.changed.clear()
                if self._pump_stopped:
                    return
                if self.incremental:
                    while len(self.text) > sent and not self._pump_stopped:
                        chunk = self.text[sent : sent + MAX_APPEND_CHARS]
                        self._first_send()
                        await socket.send(protocol.InputAppend(chunk))
                        sent += len(chunk)
                    if self.committed and not self._pump_stopped:
                        await socket.send(protocol.InputCommit())
                        await self._send_marker(socket, marker)
                        return
                elif self.committed:
                    rest = self.text[sent:]
                    if rest.strip():
                        self._first_send()
                        self._responses_created += 1
                        suffix = "" if self._responses_created == 1 else f"#{self._responses_created}"
                        await socket.send(
                            protocol.ResponseCreate(input=rest, response_id=self.request_id + suffix)
                        )
                    await self._send_marker(socket, marker)
                    return
        except (aiohttp.ClientError, ConnectionError) as e:
            logger.debug("sending to krt: %s", e)

    async def _send_marker(self, socket: KrtSocket, marker: str) -> None:
        self._marker = marker
        await socket.send(protocol.Ping(marker))
        self._marker_sent = True

    def _first_send(self) -> None:
        if self._on_first_send is not None:
            self._on_first_send()
            self._on_first_send = None

    async def _receive(self, socket: KrtSocket) -> _Outcome:
        pieces: dict[str, _Piece] = {}
        marker_seen = False
        refusal: protocol.ResponseError | None = None
        while True:
            if marker_seen and all(piece.ended for piece in pieces.values()):
                return _DONE if refusal is None else _Refused(refusal)
            event = await self._next_event(socket, pieces, marker_seen)
            if isinstance(event, Closed):
                return _Lost(event.code)
            if isinstance(event, protocol.Pong):
                marker_seen = marker_seen or (event.id == self._marker and self._marker_sent)
                continue
            if isinstance(event, protocol.ErrorEvent):
                _raise_request_error(event.error)
                continue
            if isinstance(event, protocol.SessionUpdated):
                continue
            piece = pieces.get(event.response)
            if piece is None:
                piece = pieces[event.response] = _Piece(discarded=refusal is not None)
            if isinstance(event, protocol.ResponseCreated):
                continue
            if isinstance(event, protocol.OutputAudioTimestamps):
                if not piece.discarded:
                    self._locate(piece, event.words)
            elif isinstance(event, protocol.OutputAudioDelta):
                if not piece.discarded:
                    self._play(piece, event.delta)
            elif isinstance(event, protocol.ResponseCompleted):
                piece.ended = True
                if not piece.discarded:
                    self._finish(piece)
            elif isinstance(event, protocol.ResponseCanceled):
                piece.ended = True
            elif isinstance(event, protocol.ResponseError):
                piece.ended = True
                if event.code == "busy":
                    if refusal is None:
                        refusal = event
                        await self._settle_after(socket, event, pieces)
                        marker_seen = False
                elif event.code in _SESSION_ERRORS:
                    raise APIStatusError(
                        f"krt refused to speak ({event.code}): {event.message}",
                        status_code=400,
                        request_id=self.request_id,
                        retryable=False,
                    )
                elif not piece.discarded:
                    self.failures.append(event)
                    logger.warning(
                        "krt did not speak part of %s (%s): %s", self.request_id, event.code, event.message
                    )

    async def _settle_after(
        self, socket: KrtSocket, refusal: protocol.ResponseError, pieces: dict[str, _Piece]
    ) -> None:
        """After a ``busy``: send nothing more here, drop the refused response and any
        made after it (a later sentence must not be heard before it), and ask for a
        ``pong`` that follows every response made so far. A busy krt is told to stop
        those later responses (``barge``); a draining one refuses them all itself and
        finishes the ones before, which are heard."""
        await self._stop_pump()
        after = False
        for response_id, piece in pieces.items():
            after = after or response_id == refusal.response
            piece.discarded = piece.discarded or after
        self._marker = utils.shortuuid("krt-settled-")
        self._marker_sent = False
        try:
            if not refusal.reconnect:
                await socket.send(protocol.Barge())
            await self._send_marker(socket, self._marker)
        except (aiohttp.ClientError, ConnectionError) as e:
            logger.debug("settling a krt socket: %s", e)  # the reader reports the loss

    async def _next_event(
        self, socket: KrtSocket, pieces: dict[str, _Piece], marker_seen: bool
    ) -> protocol.ServerEvent | Closed:
        """The socket's next event. krt owes one within ``timeout`` only while a response
        is in flight or the end-of-segment ``pong`` is due; waiting for the LLM's next
        token is not krt's delay.

        ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` loses a
        cancellation that comes as its inner wait completes, and with krt's audio always
        queued that is likely; a barge-in must never be lost.
        """
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    return await socket.events.get()
            except TimeoutError:
                owed = any(not piece.ended for piece in pieces.values()) or (
                    self._marker_sent and not marker_seen
                )
                if owed:
                    raise APITimeoutError(
                        f"krt sent nothing for {self.timeout:g} s while speaking {self.request_id}"
                    ) from None

    # -- what krt sends ------------------------------------------------------------------

    def _locate(self, piece: _Piece, words: list[protocol.WordTiming]) -> None:
        """Find krt's words in the segment's text and queue its tokens with their times.

        krt's offsets index the response's own input, a piece of the text sent (krt cut
        it, and stripped it), so the piece is found once by its first word and checked
        word by word; a word that does not match is looked for from where the last one
        was found.
        """
        spans: list[tuple[int, int, float, float]] = []
        for word in words:
            if not word.text:
                continue
            at = -1
            if piece.base is not None and self.text.startswith(word.text, piece.base + word.char_start):
                at = piece.base + word.char_start
            if at < 0:
                at = self.text.find(word.text, self._located_to)
                if at < 0:
                    continue
                piece.base = at - word.char_start
            end = at + len(word.text)
            spans.append((at, end, word.start_ms, word.end_ms))
            self._located_to = max(self._located_to, end)
        if not spans:
            return
        last_end = max(end for _start, end, _s, _e in spans)
        for token in _TOKEN.finditer(self.text, self._queued_to):
            if token.start() >= last_end:
                break
            inside = [span for span in spans if span[0] < token.end() and span[1] > token.start()]
            if inside:
                piece.tokens.append(
                    _Token(token[0], min(s[2] for s in inside), max(s[3] for s in inside), token.end())
                )
                self._queued_to = token.end()

    def _play(self, piece: _Piece, delta: str) -> None:
        try:
            pcm = base64.b64decode(delta, validate=True)
        except (binascii.Error, ValueError) as e:
            logger.warning("krt sent audio that is not base64: %s", e)
            return
        if not pcm:
            return
        if piece.audio_start is None:
            piece.audio_start = self.audio_bytes
        piece.audio += len(pcm)
        heard_ms = piece.audio / self.bytes_per_ms
        while piece.tokens and piece.tokens[0].start_ms < heard_ms:
            self._push_token(piece, piece.tokens.popleft())
        self.emitter.push(pcm)
        self.audio_bytes += len(pcm)

    def _finish(self, piece: _Piece) -> None:
        """A completed response: all of it was heard, its last words too."""
        while piece.tokens:
            self._push_token(piece, piece.tokens.popleft())

    def _push_token(self, piece: _Piece, token: _Token) -> None:
        if piece.audio_start is None:
            piece.audio_start = self.audio_bytes
        offset_ms = piece.audio_start / self.bytes_per_ms
        self.emitter.push_timed_transcript(
            TimedString(
                token.text + " ",
                start_time=(offset_ms + token.start_ms) / 1000,
                end_time=(offset_ms + token.end_ms) / 1000,
            )
        )
        self.spoken_to = max(self.spoken_to, token.end)

    def raise_if_unspoken(self) -> None:
        """Nothing of the segment was heard because krt refused it: say why, and don't
        let LiveKit retry a refusal as if it were a glitch."""
        if self.audio_bytes or not self.failures:
            return
        failure = self.failures[0]
        status, retryable = (500, True) if failure.code == "synthesis_failed" else (400, False)
        raise APIStatusError(
            f"krt did not speak the text ({failure.code}): {failure.message}",
            status_code=status,
            request_id=self.request_id,
            retryable=retryable,
        )


def _raise_request_error(error: protocol.ErrorDetail) -> None:
    """krt could not act on an event this plugin sent: a bug or a version mismatch, which
    a retry would repeat."""
    if error.code == "unknown_response":
        return  # nothing here cancels by id; harmless either way
    raise APIStatusError(
        f"krt refused {error.event_type or 'an event'} ({error.code}): {error.message}",
        status_code=400,
        retryable=False,
    )


async def _speak_to_end(segment: Segment, pool: SocketPool, on_acquired: Callable[[], None]) -> None:
    """Speak a segment to its end on pooled sockets, taking it up again after a drain, a
    dropped socket or a busy krt's wait."""
    recoveries = 0
    socket: KrtSocket | None = None
    try:
        while True:
            if socket is None:
                socket = await pool.acquire(segment.timeout)
                on_acquired()
            outcome = await segment.speak_on(socket)
            if isinstance(outcome, _Done):
                pool.put(socket)
                socket = None
                break
            recoveries += 1
            if isinstance(outcome, _Refused) and not outcome.error.reconnect:
                wait_ms = outcome.error.retry_after_ms
                if recoveries > MAX_RECOVERIES or wait_ms is None or wait_ms / 1000 > segment.timeout:
                    raise APIStatusError(
                        f"krt is busy: {outcome.error.message}",
                        status_code=429,
                        request_id=segment.request_id,
                        body={"retry_after_ms": wait_ms},
                    )
                logger.info(
                    "krt is busy; %s goes again in %d ms, where krt keeps its place",
                    segment.request_id,
                    wait_ms,
                )
                await asyncio.sleep(wait_ms / 1000)  # krt's word on when it takes the text in
                continue
            pool.discard(socket)
            socket = None
            why = (
                "is draining" if isinstance(outcome, _Refused) else f"closed the connection ({outcome.code})"
            )
            if recoveries > MAX_RECOVERIES:
                raise APIConnectionError(f"krt {why} {recoveries} times while speaking {segment.request_id}")
            logger.info("krt %s; the rest of %s goes out on a new connection", why, segment.request_id)
    except BaseException:
        if socket is not None:
            pool.discard(socket)
        raise
    segment.raise_if_unspoken()


async def speak(segment: Segment, pool: SocketPool, on_acquired: Callable[[], None]) -> None:
    """Speak a segment to its end on ``pool``'s sockets, calling ``on_acquired`` as each
    is taken: :func:`_speak_to_end`, with transport failures as LiveKit's errors, which
    it retries."""
    try:
        await _speak_to_end(segment, pool, on_acquired)
    except APIError:
        raise
    except TimeoutError as e:
        raise APITimeoutError(f"krt did not answer within {segment.timeout:g} s") from e
    except (aiohttp.ClientError, ConnectionError, OSError) as e:
        raise APIConnectionError(f"krt connection failed: {e}") from e
