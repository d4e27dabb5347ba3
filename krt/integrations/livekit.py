"""A LiveKit Agents TTS plugin that speaks through a krt server: ``KrtTTS``.

Install with ``pip install 'krt[livekit]'``, then give it to an ``AgentSession``::

    session = AgentSession(
        stt=..., llm=...,
        tts=KrtTTS(url="ws://tts.internal:8000", api_key=os.environ["KRT_API_KEY"], voice="female"),
        use_tts_aligned_transcript=True,  # krt's word times drive the transcript
    )

This module is the plugin: ``KrtTTS``, its pool of sockets, and LiveKit's two streams.
A socket (opened, its session agreed, read and kept alive) is
:mod:`krt.integrations.krt_socket`; a segment's bookkeeping (text sent, audio and words
heard) and the loop that speaks it to its end are :mod:`krt.integrations.livekit_segment`.

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
  ends once krt has ended all of them. The audio is krt's PCM16 at the session's rate,
  pushed as ``audio/pcm``.
- **Word times on the segment's clock.** The session asks krt for word timestamps, and
  each word becomes a ``TimedString`` of the input's own token on the segment's clock,
  pushed just before the audio it starts in: the transcript (and the agent's chat
  history, which LiveKit builds from it) holds the words heard.
- **Pooled sockets, agreed once.** Sockets come from LiveKit's ``ConnectionPool``; each
  new one agrees its session (voice, speed, PCM at ``sample_rate``, timestamps) before a
  stream may use it, so a stream starts with one message, and a refused voice, rate or
  key fails before any text is sent. ``prewarm()`` (LiveKit calls it when the agent
  starts) opens one early. A pooled socket is read all the time and kept alive, so krt
  never drops it during a call; one krt closed anyway (a drain's 1012) is skipped.
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
import contextlib
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING

import aiohttp
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    tts,
    utils,
)
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from krt.integrations.endpoint import krt_endpoint
from krt.integrations.krt_socket import (
    KEEPALIVE_INTERVAL_S,
    KrtSocket,
    SessionLost,
    SessionOptions,
    SessionRefused,
    agree_session,
    connect,
)
from krt.integrations.livekit_segment import Segment, speak

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["KrtChunkedStream", "KrtSynthesizeStream", "KrtTTS"]


class _SocketPool(utils.ConnectionPool[KrtSocket]):
    """LiveKit's pool of krt sockets, as a segment is spoken on it
    (:class:`~krt.integrations.livekit_segment.SocketPool`): it lends only open sockets,
    and one given up is replaced at once."""

    closing = False
    """Set as the plugin closes: a socket discarded then is not replaced."""

    async def acquire(self, within: float) -> KrtSocket:
        """A pooled socket that is still open: krt may have closed one while it waited
        (a drain's 1012, an idle timeout), and that one is dropped, not tried."""
        while True:
            socket = await self.get(timeout=within)
            if socket.usable:
                socket.forget_idle_events()
                return socket
            self.remove(socket)

    def discard(self, socket: KrtSocket) -> None:
        """Close a socket now (krt cancels what it has in flight) and open its replacement
        in the background, so the next request finds a warm one."""
        self.remove(socket)
        socket.close_soon()
        if not self.closing:
            self.prewarm()


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
        self._opts = SessionOptions(voice=voice, speed=speed, sample_rate=sample_rate)
        self._session = http_session
        self._own_session: aiohttp.ClientSession | None = None
        self._keepalive_interval = keepalive_interval
        self._pool = _SocketPool(
            connect_cb=self._connect,
            close_cb=self._close_socket,
            connect_timeout=connect_timeout,
        )
        self._streams: weakref.WeakSet[KrtSynthesizeStream] = weakref.WeakSet()
        self._sockets: set[KrtSocket] = set()
        """Every socket not yet closed, so aclose() leaves none behind."""

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
        self._pool.closing = True
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

    async def _connect(self, seconds: float) -> KrtSocket:
        """A new socket whose session krt has agreed (the pool's connect callback)."""
        try:
            async with asyncio.timeout(seconds):
                socket = await connect(
                    self._http_session(),
                    self._url,
                    api_key=self._api_key,
                    options=self._opts,
                    keepalive=self._keepalive_interval,
                    on_closed=self._sockets.discard,
                )
        except aiohttp.WSServerHandshakeError as e:
            raise _refused_upgrade(self._url, e.status) from None
        except TimeoutError as e:
            raise APITimeoutError(
                f"krt at {self._url} did not accept a connection within {seconds:g} s"
            ) from e
        except (aiohttp.ClientError, OSError) as e:
            raise APIConnectionError(f"cannot reach krt at {self._url}: {e}") from e
        self._sockets.add(socket)
        try:
            async with asyncio.timeout(seconds):
                await agree_session(socket)
        except BaseException as e:
            socket.close_soon()
            if isinstance(e, TimeoutError):
                raise APITimeoutError(
                    f"krt at {self._url} did not agree the session within {seconds:g} s"
                ) from e
            if isinstance(e, aiohttp.ClientError | ConnectionError):
                raise APIConnectionError(f"krt at {self._url} failed during the session update: {e}") from e
            if isinstance(e, SessionRefused):
                raise APIStatusError(str(e), status_code=400, retryable=False) from None
            if isinstance(e, SessionLost):
                raise APIConnectionError(str(e)) from None
            raise
        return socket

    async def _close_socket(self, socket: KrtSocket) -> None:
        # The pool closes removed sockets at the next get(), under its lock: waiting here
        # for krt's answer to the close would hold up the next request. aclose() waits.
        socket.close_soon()


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


class _SpeaksSegment:
    """What both streams' ``_run`` do around their segment: set up the emitter for krt's
    PCM, and speak the segment on the plugin's pooled sockets, recording each socket taken
    for LiveKit's metrics (``acquire_time``, ``connection_reused``)."""

    _krt: KrtTTS
    _conn_options: APIConnectOptions
    _acquire_time: float
    _connection_reused: bool

    def _segment(
        self,
        emitter: tts.AudioEmitter,
        request_id: str,
        *,
        incremental: bool,
        on_first_send: Callable[[], None],
    ) -> Segment:
        emitter.initialize(
            request_id=request_id,
            sample_rate=self._krt.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=incremental,
        )
        return Segment(
            emitter=emitter,
            sample_rate=self._krt.sample_rate,
            timeout=self._conn_options.timeout,
            request_id=request_id,
            incremental=incremental,
            on_first_send=on_first_send,
        )

    async def _speak(self, segment: Segment) -> None:
        await speak(segment, self._krt._pool, self._record_acquire)

    def _record_acquire(self) -> None:
        self._acquire_time = self._krt._pool.last_acquire_time
        self._connection_reused = self._krt._pool.last_connection_reused


class KrtSynthesizeStream(_SpeaksSegment, tts.SynthesizeStream):
    """One LiveKit segment: text in as the LLM writes it, krt's audio and words out."""

    def __init__(self, *, tts: KrtTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._krt = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = utils.shortuuid("krt_")

        def first_send() -> None:
            self._mark_started()
            output_emitter.start_segment(segment_id=request_id)

        segment = self._segment(output_emitter, request_id, incremental=True, on_first_send=first_send)
        # Read fresh on every attempt: LiveKit's retry replays the input into a new channel.
        reader = asyncio.create_task(self._read_input(segment), name="krt-stream-input")
        try:
            await self._speak(segment)
        finally:
            await utils.aio.gracefully_cancel(reader)

    async def _read_input(self, segment: Segment) -> None:
        async for data in self._input_ch:
            if isinstance(data, self._FlushSentinel):
                # LiveKit 1.8 speaks one segment per stream: the first flush with text ends it.
                if segment.text.strip():
                    segment.commit()
                continue
            segment.add(data)
        segment.commit()


class KrtChunkedStream(_SpeaksSegment, tts.ChunkedStream):
    """``synthesize()``: one text, one krt response on a pooled socket."""

    def __init__(self, *, tts: KrtTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._krt = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        segment = self._segment(
            output_emitter, utils.shortuuid("krt_"), incremental=False, on_first_send=lambda: None
        )
        segment.add(self._input_text)
        segment.commit()
        await self._speak(segment)
