"""A LiveKit Agents TTS plugin that speaks through a krt server: ``KrtTTS``.

Install with ``pip install 'krt[livekit]'``, then give it to an ``AgentSession``::

    session = AgentSession(
        stt=..., llm=...,
        tts=KrtTTS(url="ws://tts.internal:8000", api_key=os.environ["KRT_API_KEY"], voice="female"),
        use_tts_aligned_transcript=True,  # krt's word times drive the transcript
    )

Design, and why:

- **The LLM's text goes to krt as it comes.** ``stream()`` sends every token LiveKit
  pushes as krt's incremental input (``input.append``), and the segment's end
  (``flush``/``end_input``) as ``input.commit``. krt cuts the text into sentences itself
  and starts speaking the first one while the LLM is still writing the rest; waiting
  for a whole sentence here would add the sentence splitter's delay to every reply.
  ``_mark_started`` is called when the first text goes out, so LiveKit's TTFB is krt's.
- **One LiveKit segment, one or more krt responses.** krt speaks incremental input as
  one response per sentence (ids it makes up), in order, on one socket. A stream owns
  its socket from start to end, so every response on it is its segment's; the segment
  ends once krt has ended all of them, which a ``ping`` sent after the commit tells
  (krt answers in order, so its ``pong`` follows the last ``response.created``). The
  audio is krt's PCM16 at the session's rate, pushed as ``audio/pcm``.
- **Word times on the segment's clock.** The session asks krt for word timestamps. Each
  response's words are timed from that response's first sample, and located in the
  text this stream sent by krt's character offsets (a response's input is a piece of
  it). Each becomes a ``TimedString`` of the input's own token (its punctuation kept:
  LiveKit builds the transcript, and the agent's chat history, by concatenating them,
  so a trailing space is added) shifted by the audio of the responses before it,
  counted in bytes as it arrives (exact, where a clock would drift). A word is pushed
  just before the audio it starts in, so the words pushed are the words heard.
- **Pooled sockets, agreed once.** Sockets come from LiveKit's ``ConnectionPool``; each
  new one sends a ``session.update`` (voice, speed, PCM at ``sample_rate``, timestamps)
  and waits for ``session.updated`` before a stream may use it, so a stream starts
  with one message, and a refused voice, rate or key fails before any text is sent.
  ``prewarm()`` (LiveKit calls it when the agent starts) opens one early. A pooled
  socket is read all the time (krt's pings are answered, so krt never drops it as a
  reader that stopped) and sends a ``ping`` event when quiet, so krt's idle timeout
  never closes it during a call; one krt closed anyway (a drain's 1012) is skipped.
  ``update_options`` retires the pool's sockets: the next stream opens one with the new
  session, a stream in flight keeps its own.
- **Barge-in closes the socket.** LiveKit interrupts by closing the stream (cancelling
  ``_run``). The stream's socket is then closed at once: krt cancels every response of
  a socket that goes away, so nothing more is made, and nothing of them can reach
  another stream, which never shares that socket. A replacement is opened at the same
  moment (the pool's prewarm), so the next reply starts on a warm socket, as the one
  interrupted did. (Keeping the socket would need a ``barge`` and a wait for krt to end
  every response on it before reuse, for a saving of one handshake made off the
  critical path anyway.)
- **A draining krt loses no words.** A replica that is draining (a rolling deploy)
  refuses new responses ``busy`` with ``reconnect`` and closes the socket with 1012
  once what it is speaking ends. The stream lets what that replica still speaks play
  out, then opens a new socket, which the load balancer gives to another replica, and
  sends it the text not heard yet: everything after the last word whose audio was
  pushed. LiveKit's own retry cannot do this once audio has been heard (it retries only
  a segment with no audio), so the plugin takes the segment up again itself, up to
  ``MAX_RECOVERIES`` times; a socket that drops (1006, 1011) is taken up the same way.
  Past that, or when no new socket can be had, it raises a retryable
  ``APIConnectionError`` and LiveKit's retry speaks the segment on a fresh connection
  if none of it was heard.
- **A busy krt is waited for where it says.** ``busy`` without ``reconnect`` comes with
  ``retry_after_ms``, and krt keeps this socket's place in its queue until then. The
  stream stops krt's other responses of the segment (``barge``, so no later sentence is
  spoken before the refused one), waits that long and sends the text again on the
  same socket. A wait longer than ``conn_options.timeout`` is left to LiveKit's retry
  instead (a retryable ``APIStatusError`` 429).
- **Errors say what to fix.** A wrong key is krt's HTTP 401 before the upgrade: a
  non-retryable ``APIStatusError(401)`` naming the key. A voice, speed or rate krt does
  not offer is refused at the session update: a non-retryable ``APIStatusError(400)``
  with krt's message (the voices it has). A sentence krt will not speak (``too_long``,
  ``invalid_input``) is skipped with a warning and the segment goes on; if nothing of
  the segment could be spoken, the error is raised (400, not retried: LiveKit would
  otherwise retry a segment that came out silent).
- **``synthesize()`` goes over the WebSocket too**, as one ``response.create`` with the
  whole text, on the same pooled sockets and with the same handling: a pooled socket
  saves the TCP/TLS and HTTP setup that ``/v1/audio/speech`` would pay per request,
  and only the WebSocket gives word timestamps and a drain's ``reconnect``.
  ``/v1/audio/speech`` is for clients that speak only OpenAI's API (LiveKit's own
  OpenAI plugin works against it unchanged).
- **The wire is krt's own schema.** Every event is built from :mod:`krt.wire.protocol`'s
  classes and every frame read is decoded by it, so this plugin and krt cannot drift
  apart on a field's name or type.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import logging
import re
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import aiohttp
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
    tts,
    utils,
)
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr, TimedString

from krt.integrations.endpoint import krt_endpoint
from krt.wire import protocol

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["KrtChunkedStream", "KrtSynthesizeStream", "KrtTTS"]

logger = logging.getLogger(__name__)

PCM_BYTES_PER_SAMPLE = 2
"""krt is asked for mono PCM16: LiveKit's raw PCM format, played as it comes."""
MAX_RECOVERIES = 3
"""How often one segment is taken up again (after a drain, a dropped socket or a busy
krt's wait) before its error goes to LiveKit."""
MAX_APPEND_CHARS = 4096
"""Text per ``input.append``: krt reads events of up to 64 KiB, and a character may take
12 bytes of JSON (two ``\\uXXXX`` escapes)."""
KEEPALIVE_INTERVAL_S = 60.0
"""A quiet pooled socket sends a ``ping`` event this often, well inside krt's
``WS_IDLE_TIMEOUT`` (300 s by default)."""
SOCKET_CLOSE_TIMEOUT_S = 2.0
"""Longest wait for krt to answer a close frame; the response it cancels stops at once
either way."""
_KEEPALIVE_ID = "krt-keepalive"
_TOKEN = re.compile(r"\S+")
_SESSION_ERRORS = frozenset({"invalid_voice", "invalid_speed", "unsupported_format"})
"""Errors that no later response of the session would escape."""


@dataclass(frozen=True)
class _KrtOptions:
    voice: str
    speed: float | None
    sample_rate: int


# --- one socket ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Closed:
    """The end of a socket's events: krt's close code (1012 when it drains), or 1006 when
    the connection dropped."""

    code: int | None


class _KrtSocket:
    """One krt WebSocket: its session, a reader that turns every frame into a typed event
    from the moment it opens, and a keepalive.

    Reading all the time matters twice: krt counts audio as read only when the pings it
    sends behind it are answered (aiohttp answers them while reading), and a socket krt
    closed while it waited in the pool is known to be closed before a stream takes it.
    """

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        options: _KrtOptions,
        keepalive: float,
        on_closed: Callable[[_KrtSocket], None],
    ) -> None:
        self.ws = ws
        self.options = options
        self._on_closed = on_closed
        self.events: asyncio.Queue[protocol.ServerEvent | _Closed] = asyncio.Queue()
        self.closed: _Closed | None = None
        self._send_lock = asyncio.Lock()
        self._last_sent = time.monotonic()
        self._closing: asyncio.Task[None] | None = None
        self._reader = asyncio.create_task(self._read(), name="krt-socket-reader")
        self._keepalive = (
            asyncio.create_task(self._keep_alive(keepalive), name="krt-socket-keepalive")
            if keepalive > 0
            else None
        )

    @property
    def usable(self) -> bool:
        return self.closed is None and self._closing is None and not self.ws.closed

    def forget_idle_events(self) -> None:
        """Drop what came while the socket waited in the pool: a segment leaves it only
        once krt has ended all its responses, so that is the keepalive's pongs."""
        while not self.events.empty():
            event = self.events.get_nowait()
            if isinstance(event, _Closed):
                self.events.put_nowait(event)
                return

    async def send(self, event: protocol.ClientEvent) -> None:
        async with self._send_lock:
            await self.ws.send_str(protocol.encode(event))
            self._last_sent = time.monotonic()

    async def _read(self) -> None:
        code: int | None = None
        try:
            async for message in self.ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    event = _decode(message.data)
                    if event is not None:
                        self.events.put_nowait(event)
                elif message.type is aiohttp.WSMsgType.ERROR:
                    logger.debug("krt socket failed: %s", message.data)
                    break
            code = self.ws.close_code
        except Exception as e:  # a broken connection ends the events as a close does
            logger.debug("krt socket failed: %s", e)
        finally:
            self.closed = _Closed(code if code is not None else 1006)
            self.events.put_nowait(self.closed)

    async def _keep_alive(self, interval: float) -> None:
        while self.closed is None:
            # A timer, not synchronisation: the ping is due ``interval`` after the last send.
            await asyncio.sleep(max(0.0, self._last_sent + interval - time.monotonic()))
            if self.closed is None and time.monotonic() - self._last_sent >= interval:
                with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                    await self.send(protocol.Ping(_KEEPALIVE_ID))

    def close_soon(self) -> None:
        """Start closing now, without waiting: krt cancels whatever the socket has in flight
        as soon as the close frame arrives."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name="krt-socket-close")

    async def aclose(self) -> None:
        self.close_soon()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        try:
            async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
                await self.ws.close()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            logger.debug("closing a krt socket: %s", e)
        finally:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._on_closed(self)


def _decode(message: str) -> protocol.ServerEvent | None:
    """krt's event, or None (logged) for a frame this plugin cannot read: one odd frame
    must not cost the call."""
    try:
        return protocol.decode_server_event(message)
    except protocol.UnknownServerEvent as e:
        logger.debug("skipping a krt event newer than this plugin: %s", e)
    except ValueError as e:
        logger.warning("ignoring a krt frame that is not an event (%s): %.200r", e, message)
    return None


# --- one segment, spoken as krt responses ----------------------------------------------------


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


class _Segment:
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

    async def speak_on(self, socket: _KrtSocket) -> _Outcome:
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

    async def _pump(self, socket: _KrtSocket, marker: str) -> None:
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

    async def _send_marker(self, socket: _KrtSocket, marker: str) -> None:
        self._marker = marker
        await socket.send(protocol.Ping(marker))
        self._marker_sent = True

    def _first_send(self) -> None:
        if self._on_first_send is not None:
            self._on_first_send()
            self._on_first_send = None

    async def _receive(self, socket: _KrtSocket) -> _Outcome:
        pieces: dict[str, _Piece] = {}
        marker_seen = False
        refusal: protocol.ResponseError | None = None
        while True:
            if marker_seen and all(piece.ended for piece in pieces.values()):
                return _DONE if refusal is None else _Refused(refusal)
            event = await self._next_event(socket, pieces, marker_seen)
            if isinstance(event, _Closed):
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
        self, socket: _KrtSocket, refusal: protocol.ResponseError, pieces: dict[str, _Piece]
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
        self, socket: _KrtSocket, pieces: dict[str, _Piece], marker_seen: bool
    ) -> protocol.ServerEvent | _Closed:
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


async def _speak(segment: _Segment, krt: KrtTTS, on_acquired: Callable[[], None]) -> None:
    """Speak a segment to its end on pooled sockets, taking it up again after a drain, a
    dropped socket or a busy krt's wait."""
    recoveries = 0
    socket: _KrtSocket | None = None
    try:
        while True:
            if socket is None:
                socket = await krt._acquire(segment.timeout)
                on_acquired()
            outcome = await segment.speak_on(socket)
            if isinstance(outcome, _Done):
                krt._pool.put(socket)
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
            krt._discard(socket)
            socket = None
            why = (
                "is draining" if isinstance(outcome, _Refused) else f"closed the connection ({outcome.code})"
            )
            if recoveries > MAX_RECOVERIES:
                raise APIConnectionError(f"krt {why} {recoveries} times while speaking {segment.request_id}")
            logger.info("krt %s; the rest of %s goes out on a new connection", why, segment.request_id)
    except BaseException:
        if socket is not None:
            krt._discard(socket)
        raise
    segment.raise_if_unspoken()


async def _speak_mapped(segment: _Segment, krt: KrtTTS, on_acquired: Callable[[], None]) -> None:
    """:func:`_speak` with transport failures as LiveKit's errors, which it retries."""
    try:
        await _speak(segment, krt, on_acquired)
    except APIError:
        raise
    except TimeoutError as e:
        raise APITimeoutError(f"krt did not answer within {segment.timeout:g} s") from e
    except (aiohttp.ClientError, ConnectionError, OSError) as e:
        raise APIConnectionError(f"krt connection failed: {e}") from e


# --- the plugin ----------------------------------------------------------------------------


class KrtTTS(tts.TTS[None]):
    """Streams speech from a krt server over pooled WebSockets, with word-aligned
    transcripts and barge-in that stops synthesis on the server, not only playback."""

    def __init__(
        self,
        *,
        url: str = "ws://127.0.0.1:8000",
        api_key: str | None = None,
        voice: str = "female",
        speed: float | None = None,
        sample_rate: int = 24_000,
        http_session: aiohttp.ClientSession | None = None,
        keepalive_interval: float = KEEPALIVE_INTERVAL_S,
        connect_timeout: float = DEFAULT_API_CONNECT_OPTIONS.timeout,
    ) -> None:
        """Create the plugin; nothing connects until ``prewarm()`` or the first request.

        Args:
            url: The krt server, ``ws://host:port`` (or ``http://``; krt's route is added)
                or the full WebSocket URL.
            api_key: krt's ``API_KEY``, sent as a Bearer token (never in the URL, which
                proxies log).
            voice: ``female``, ``male``, a voice id or a blend (``af_heart(2)+af_bella(1)``).
            speed: 0.5 to 2.0; ``None`` leaves it to the server's ``KOKORO_SPEED``.
            sample_rate: The rate krt renders at (8000, 16000, 22050, 24000, 44100 or
                48000): krt resamples on the server, so the frames arrive at this rate and
                nothing is resampled here.
            http_session: The aiohttp session to open sockets with; by default the job's
                (``utils.http_context``), or one of the plugin's own outside a job.
            keepalive_interval: Seconds between ``ping`` events on a quiet socket, so krt's
                ``WS_IDLE_TIMEOUT`` never closes a pooled one; 0 sends none.
            connect_timeout: Longest wait for ``prewarm()``'s socket to be open and its
                session agreed (a request uses its ``conn_options.timeout``).
        """
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self._url = krt_endpoint(url)
        self._api_key = api_key
        self._opts = _KrtOptions(voice=voice, speed=speed, sample_rate=sample_rate)
        self._session = http_session
        self._own_session: aiohttp.ClientSession | None = None
        self._keepalive_interval = keepalive_interval
        self._pool = utils.ConnectionPool[_KrtSocket](
            connect_cb=self._connect,
            close_cb=self._close_socket,
            connect_timeout=connect_timeout,
        )
        self._streams: weakref.WeakSet[KrtSynthesizeStream] = weakref.WeakSet()
        self._sockets: set[_KrtSocket] = set()
        """Every socket not yet closed, so aclose() leaves none behind."""
        self._closed = False

    @property
    def model(self) -> str:
        return "kokoro"

    @property
    def provider(self) -> str:
        return "krt"

    @property
    def voice(self) -> str:
        return self._opts.voice

    @property
    def speed(self) -> float | None:
        return self._opts.speed

    def update_options(
        self, *, voice: NotGivenOr[str] = NOT_GIVEN, speed: NotGivenOr[float | None] = NOT_GIVEN
    ) -> None:
        """Change the voice or speed for the requests that start from now on.

        The pool's sockets carry the old session, so they are retired (a stream in
        flight keeps its own) and, when called on the agent's loop, one with the new
        session is opened in the background for the next request.
        """
        opts = self._opts
        if utils.is_given(voice):
            opts = replace(opts, voice=voice)
        if utils.is_given(speed):
            opts = replace(opts, speed=speed)
        if opts != self._opts:
            self._opts = opts
            self._pool.invalidate()
            with contextlib.suppress(RuntimeError):  # no running loop: the next request connects
                asyncio.get_running_loop()
                self._pool.prewarm()

    def prewarm(self) -> None:
        """Open a socket and agree its session in the background, so the first reply
        does not wait for the handshake."""
        self._pool.prewarm()

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> KrtChunkedStream:
        return KrtChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> KrtSynthesizeStream:
        stream = KrtSynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()
        await self._pool.aclose()
        await asyncio.gather(*(socket.aclose() for socket in list(self._sockets)))
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    # -- sockets -------------------------------------------------------------------------

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        try:
            self._session = utils.http_context.http_session()
        except RuntimeError:  # outside a LiveKit job: a session of our own, closed in aclose
            if self._own_session is None:
                self._own_session = aiohttp.ClientSession()
            return self._own_session
        return self._session

    async def _connect(self, seconds: float) -> _KrtSocket:
        """A new socket whose session krt has agreed (the pool's connect callback)."""
        options = self._opts
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            async with asyncio.timeout(seconds):
                ws = await self._http_session().ws_connect(
                    self._url,
                    headers=headers,
                    timeout=aiohttp.ClientWSTimeout(ws_close=SOCKET_CLOSE_TIMEOUT_S),
                )
        except aiohttp.WSServerHandshakeError as e:
            raise _refused_upgrade(self._url, e.status) from None
        except TimeoutError as e:
            raise APITimeoutError(
                f"krt at {self._url} did not accept a connection within {seconds:g} s"
            ) from e
        except (aiohttp.ClientError, OSError) as e:
            raise APIConnectionError(f"cannot reach krt at {self._url}: {e}") from e
        socket = _KrtSocket(ws, options, self._keepalive_interval, self._sockets.discard)
        self._sockets.add(socket)
        try:
            async with asyncio.timeout(seconds):
                await _agree_session(socket)
        except BaseException as e:
            socket.close_soon()
            if isinstance(e, TimeoutError):
                raise APITimeoutError(
                    f"krt at {self._url} did not agree the session within {seconds:g} s"
                ) from e
            if isinstance(e, aiohttp.ClientError | ConnectionError):
                raise APIConnectionError(f"krt at {self._url} failed during the session update: {e}") from e
            raise
        return socket

    async def _close_socket(self, socket: _KrtSocket) -> None:
        # The pool closes removed sockets at the next get(), under its lock: waiting here
        # for krt's answer to the close would hold up the next request. aclose() waits.
        socket.close_soon()

    async def _acquire(self, within: float) -> _KrtSocket:
        """A pooled socket that is still open: krt may have closed one while it waited
        (a drain's 1012, an idle timeout), and that one is dropped, not tried."""
        while True:
            socket = await self._pool.get(timeout=within)
            if socket.usable:
                socket.forget_idle_events()
                return socket
            self._pool.remove(socket)

    def _discard(self, socket: _KrtSocket) -> None:
        """Close a socket now (krt cancels what it has in flight) and open its replacement
        in the background, so the next request finds a warm one."""
        self._pool.remove(socket)
        socket.close_soon()
        if not self._closed:
            self._pool.prewarm()


async def _agree_session(socket: _KrtSocket) -> None:
    options = socket.options
    patch = protocol.SessionPatch(
        voice=options.voice,
        speed=options.speed,
        audio=protocol.AudioSettings(format="pcm", sample_rate=options.sample_rate),
        timestamps=True,
    )
    await socket.send(protocol.SessionUpdate(patch))
    while True:
        event = await socket.events.get()
        if isinstance(event, protocol.SessionUpdated):
            audio = event.session.audio
            if (audio.format, audio.sample_rate) != ("pcm", options.sample_rate):
                raise APIStatusError(
                    f"asked krt for PCM at {options.sample_rate} Hz, it would send "
                    f"{audio.format} at {audio.sample_rate} Hz",
                    status_code=400,
                    retryable=False,
                )
            return
        if isinstance(event, protocol.ErrorEvent):
            raise APIStatusError(
                f"krt refused the session ({event.error.code}): {event.error.message}",
                status_code=400,
                retryable=False,
            )
        if isinstance(event, _Closed):
            raise APIConnectionError(f"krt closed the connection ({event.code}) before agreeing the session")


def _refused_upgrade(url: str, status: int) -> APIStatusError:
    if status in (401, 403):
        return APIStatusError(
            f"krt at {url} refused the API key (HTTP {status}): give KrtTTS(api_key=...) the server's API_KEY",
            status_code=status,
            retryable=False,
        )
    if status == 503:
        return APIStatusError(
            f"krt at {url} is not ready or is draining (HTTP 503); another connection may reach another replica",
            status_code=status,
        )
    return APIStatusError(f"krt at {url} refused the WebSocket upgrade (HTTP {status})", status_code=status)


class KrtSynthesizeStream(tts.SynthesizeStream):
    """One LiveKit segment: text in as the LLM writes it, krt's audio and words out."""

    def __init__(self, *, tts: KrtTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._krt = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = utils.shortuuid("krt_")
        output_emitter.initialize(
            request_id=request_id,
            sample_rate=self._krt.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )

        def first_send() -> None:
            self._mark_started()
            output_emitter.start_segment(segment_id=request_id)

        segment = _Segment(
            emitter=output_emitter,
            sample_rate=self._krt.sample_rate,
            timeout=self._conn_options.timeout,
            request_id=request_id,
            incremental=True,
            on_first_send=first_send,
        )
        # Read fresh on every attempt: LiveKit's retry replays the input into a new channel.
        reader = asyncio.create_task(self._read_input(segment), name="krt-stream-input")
        try:
            await _speak_mapped(segment, self._krt, self._record_acquire)
        finally:
            await utils.aio.gracefully_cancel(reader)

    async def _read_input(self, segment: _Segment) -> None:
        async for data in self._input_ch:
            if isinstance(data, self._FlushSentinel):
                # LiveKit 1.8 speaks one segment per stream: the first flush with text ends it.
                if segment.text.strip():
                    segment.commit()
                continue
            segment.add(data)
        segment.commit()

    def _record_acquire(self) -> None:
        self._acquire_time = self._krt._pool.last_acquire_time
        self._connection_reused = self._krt._pool.last_connection_reused


class KrtChunkedStream(tts.ChunkedStream):
    """``synthesize()``: one text, one krt response on a pooled socket."""

    def __init__(self, *, tts: KrtTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._krt = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = utils.shortuuid("krt_")
        output_emitter.initialize(
            request_id=request_id,
            sample_rate=self._krt.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        segment = _Segment(
            emitter=output_emitter,
            sample_rate=self._krt.sample_rate,
            timeout=self._conn_options.timeout,
            request_id=request_id,
            incremental=False,
            on_first_send=lambda: None,
        )
        segment.add(self._input_text)
        segment.commit()
        await _speak_mapped(segment, self._krt, self._record_acquire)

    def _record_acquire(self) -> None:
        self._acquire_time = self._krt._pool.last_acquire_time
        self._connection_reused = self._krt._pool.last_connection_reused
