"""A Pipecat TTS service that speaks through a krt server: ``KrtTTSService``.

Install with ``pip install 'krt[pipecat]'``, then put it where any Pipecat TTS goes::

    tts = KrtTTSService(
        url="ws://tts.internal:8000",
        api_key=os.environ["KRT_API_KEY"],
        settings=KrtTTSService.Settings(voice="female", speed=1.1),
    )
    pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, transport.output(), assistant_agg])

Design, and why:

- **One socket per pipeline**, opened in ``setup`` and kept for the whole call, on
  Pipecat's :class:`~pipecat.services.tts_service.WebsocketTTSService` (the base Cartesia's
  and ElevenLabs' websocket services use): its receive loop reconnects a dropped socket
  with backoff and writes the service off after repeated failures, and its keepalive task
  sends krt a ``ping`` event now and then so that krt's idle timeout never closes a quiet
  call. A clean close by krt (1000 ``idle``, 1001 going away) is reconnected like a drop.
- **The session is agreed before any text is sent.** Each new socket sends one
  ``session.update`` with the voice, the speed, the word timestamps and the *pipeline's*
  output sample rate, and waits for ``session.updated``. krt renders at that rate, so the
  client never resamples. A refusal (a rate or voice this krt does not offer) writes the
  service off: speaking anyway would play audio at the wrong speed or in the wrong voice.
- **Context ids are response ids.** Pipecat gives every sentence of one LLM turn the same
  context id and calls ``run_tts`` once per sentence; krt speaks one response per
  ``response.create`` and keeps an id in use until that response's last event. So the
  first sentence of a context is the krt response whose id *is* the context id, and the
  later ones are ``<context id>#2``, ``#3``…; krt echoes the id on every event, which is
  how audio finds its context. A context ends (``TTSStoppedFrame``, then the audio context
  is closed) once Pipecat has said no more text comes for it (``flush_audio`` at the end of
  the turn, or at once for a sentence outside any turn) and every response of it has had
  its terminal event.
- **Interruptions cancel at the source.** Pipecat drops the interrupted contexts' audio
  itself; this service also sends ``response.cancel`` for each of their responses still in
  flight (not ``barge``, which would also stop uninterruptible speech), and drops anything
  that still arrives for them. Audio of a response whose context Pipecat no longer plays is
  cancelled the same way, so krt never spends the model on speech nobody will hear.
- **Word timestamps** come from krt (``response.output_audio.timestamps``, relative to the
  response's first sample) and go to Pipecat's ``add_word_timestamps``, which turns them
  into ``TTSTextFrame`` s with presentation times. They go as the input's own
  whitespace-separated tokens, punctuation included (krt's character offsets make that
  exact), since Pipecat rebuilds the bot's side of the conversation from them. Pipecat
  times a context's words from its first audio, so each response's words are shifted by
  the audio its context played before it, counted in bytes as it arrives: exact, where a
  clock would drift. A krt that sends no timestamps still works: Pipecat then emits each
  sentence's text when its context ends.
- **A draining krt loses no sentence.** A krt replica that is draining (a rolling deploy)
  refuses new responses ``busy``, saying to reconnect, and closes the socket with 1012
  once what it is speaking ends. A sentence refused so, before any of its audio, is held
  (its context stays open) and goes out first on the next socket, which the load
  balancer puts on another replica: the caller hears the whole turn, in order.
- **Errors stay local.** A ``response.error`` is a non-fatal ``ErrorFrame`` and ends that
  response (the rest of the turn is still spoken); an ``error`` event is an ``ErrorFrame``
  too, except the harmless ``unknown_response`` of a cancel that crossed its response's end.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import WebsocketTTSService
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.tracing.service_decorators import traced_tts
from pipecat.utils.types import NOT_GIVEN, NotGiven, assert_given
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from krt.protocol import WS_PATH, told_to_reconnect

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from pipecat.processors.frame_processor import FrameProcessorSetup
    from websockets.asyncio.client import ClientConnection

__all__ = ["KrtTTSService", "KrtTTSSettings", "krt_endpoint"]

TERMINAL_EVENTS = frozenset({"response.completed", "response.canceled", "response.error"})
"""The one last event of every krt response."""
SESSION_FIELDS = frozenset({"voice", "speed"})
"""Settings krt takes in a ``session.update``: changing them mid-call costs one message."""
_RESPONSE_ERROR_CATEGORIES = {
    "busy": ErrorCategory.RATE_LIMIT,
    "synthesis_failed": ErrorCategory.SERVER,
    "too_long": ErrorCategory.APPLICATION,
    "invalid_input": ErrorCategory.APPLICATION,
}
"""None of them permanent: one refused sentence says nothing about the next one."""
_TOKEN = re.compile(r"\S+")
QUIET_CONTEXT_TIMEOUT_S = 10.0
"""How long a context may go without audio before Pipecat takes it as finished (its
``stop_frame_timeout_s``, 3 s by default). A busy krt queues a response for up to
``QUEUE_WAIT_SLA_MS`` (4 s by default) before its first window, and Pipecat plays no audio
of a context it has finished, so the base class's 3 s would drop the whole reply krt
queued. krt ends every response with an event, on which a context whose turn is over ends
at once: this is only the safety net for a krt that never answers."""


def krt_endpoint(url: str) -> str:
    """krt's speech route on the server ``url`` names.

    A bare ``ws://host:port`` (or ``http://``) gets krt's one WebSocket path, so a
    deployment can configure the same address for every krt client.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else WS_PATH
    return urlunsplit(parts._replace(scheme=scheme, path=path))


@dataclass
class KrtTTSSettings(TTSSettings):
    """Runtime-updatable settings of :class:`KrtTTSService`.

    Parameters:
        speed: Speech speed (1.0 is normal); ``None`` leaves it to the server's
            ``KOKORO_SPEED``.
    """

    speed: float | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)


class _SessionRefusedError(Exception):
    """krt will not speak the session this service needs (rate, voice or speed)."""


@dataclass
class _Response:
    context_id: str
    text: str
    """What was sent as ``input``: krt's word offsets index it."""
    offset_s: float | None = None
    """Where the response's first sample falls in its context's audio, fixed by its
    first audio or timestamps (krt speaks a socket's responses in order, so by then the
    responses before it in the context have all their audio in)."""
    audio_bytes: int = 0
    timed_to: int = 0
    """How far into ``text`` words have been handed to Pipecat."""
    canceled: bool = False
    held: bool = False
    """Refused by a draining krt: sent again, first thing, on the next socket."""


@dataclass
class _Context:
    in_flight: list[str] = field(default_factory=list)
    """Response ids sent and not yet ended, in order."""
    created: int = 0
    """Responses made for this context so far: the next one's id suffix."""
    closed: bool = False
    """No more text comes for this context: it ends with its last response."""
    audio_bytes: int = 0
    """Audio this context has played so far, for the next response's word offsets."""


class KrtTTSService(WebsocketTTSService):
    """Streams speech from a krt server over one WebSocket, with word timestamps and
    barge-in that stops synthesis on the server, not only playback."""

    Settings = KrtTTSSettings
    _settings: KrtTTSSettings

    def __init__(
        self,
        *,
        url: str = "ws://127.0.0.1:8000",
        api_key: str | None = None,
        sample_rate: int | None = None,
        settings: KrtTTSSettings | None = None,
        word_timestamps: bool = True,
        keepalive_interval: float = 60.0,
        session_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        """Create the service; nothing connects until the pipeline starts.

        Args:
            url: The krt server, ``ws://host:port`` (krt's route is added) or the full
                WebSocket URL.
            api_key: krt's ``API_KEY``, sent as a Bearer token (never in the URL, which
                proxies log).
            sample_rate: Output rate to ask krt for; ``None`` (the usual) takes the
                pipeline's output rate.
            settings: Voice (default ``"female"``) and speed.
            word_timestamps: Ask krt for word timestamps, so Pipecat emits each word as
                it is heard; without them each sentence's text comes at its end.
            keepalive_interval: Seconds between ``ping`` events, well inside krt's
                ``WS_IDLE_TIMEOUT`` (300 s by default); 0 sends none.
            session_timeout: Longest wait for krt to accept the session on a new socket.
            **kwargs: Passed on to :class:`WebsocketTTSService` (``text_aggregation_mode``,
                ``text_transforms``, ``reconnect_on_error``…); ``stop_frame_timeout_s``
                defaults to :data:`QUIET_CONTEXT_TIMEOUT_S`, above krt's queue wait.
        """
        kwargs.setdefault("stop_frame_timeout_s", QUIET_CONTEXT_TIMEOUT_S)
        store = KrtTTSSettings(model=None, voice="female", language=None, speed=None)
        if settings is not None:
            store.apply_update(settings)
        super().__init__(
            # Words come timed from krt; the base class would otherwise push each
            # sentence's text before it is heard.
            push_text_frames=False,
            push_start_frame=True,
            sample_rate=sample_rate,
            settings=store,
            **kwargs,
        )
        self._url = krt_endpoint(url)
        self._api_key = api_key
        self._word_timestamps = word_timestamps
        self._keepalive_interval = keepalive_interval
        self._session_timeout = session_timeout
        self._receive_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        """Set while a socket is open and its session agreed."""
        self._responses: dict[str, _Response] = {}
        self._contexts: dict[str, _Context] = {}
        self._waiting: set[str] = set()
        """Contexts whose sentence waits for a socket."""

    def can_generate_metrics(self) -> bool:
        return True

    # -- connection ----------------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]  # pipecat's own LSP break
        await super().setup(setup)
        await self._connect()

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        await self._connect_websocket()
        if self._websocket is not None and self._receive_task is None:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))
        if self._websocket is not None and self._keepalive_interval > 0:
            self._create_keepalive_task(self._keepalive_interval)

    async def _disconnect(self) -> None:
        await super()._disconnect()  # type: ignore[no-untyped-call]
        if self._receive_task is not None:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._cancel_keepalive_task()  # type: ignore[no-untyped-call]
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        if self._open_socket() is not None:
            return
        self._ready.clear()
        try:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            logger.debug(f"{self}: connecting to krt at {self._url}")
            websocket: ClientConnection = await self._websocket_connect(self._url, additional_headers=headers)
            self._websocket = websocket
            await websocket.send(self._session_update())
            confirmed = asyncio.Event()

            async def on_message(message: str | bytes) -> None:
                self._read_handshake(message, confirmed)

            if not await self._receive_until_confirmed(
                aiter(websocket), confirmed, on_message, self._session_timeout
            ):
                raise ConnectionError("krt closed the connection before session.updated")
            if not await self._send_held(websocket):
                return
        except asyncio.CancelledError:
            # Cancelled mid-handshake (an interruption during an on-demand connect): a
            # socket left open with no session agreed would look connected and never
            # become ready, and every later sentence would wait on it in vain. Aborted,
            # not closed: a close handshake with a peer that hangs would hold the
            # interruption up for the close timeout.
            websocket_opened, self._websocket = self._websocket, None
            if websocket_opened is not None:
                websocket_opened.transport.abort()
            raise
        except _SessionRefusedError as refusal:
            await self._drop_socket()
            await self.push_error(
                error_msg=f"{self}: krt refused the session: {refusal}",
                category=ErrorCategory.INVALID_REQUEST,
            )
            await self._call_event_handler("on_connection_error", str(refusal))
            return
        except Exception as e:
            await self._drop_socket()
            await self.push_error(error_msg=f"{self}: cannot connect to krt at {self._url}: {e}", exception=e)
            await self._call_event_handler("on_connection_error", str(e))
            return
        self._ready.set()
        await self._call_event_handler("on_connected")

    async def _send_held(self, websocket: ClientConnection) -> bool:
        """Send the sentences a draining krt refused, in order, before anything newer;
        False when the new socket failed too (the receive loop reconnects again)."""
        resent: list[_Response] = []
        for response_id, response in list(self._responses.items()):
            # Looked up again each time: an interruption during a send forgets its sentences.
            if self._responses.get(response_id) is not response or not response.held:
                continue
            try:
                await websocket.send(self._create_event(response_id, response.text))
            except ConnectionClosed as e:
                logger.warning(f"{self}: resending {response_id} to krt: {e}")
                for sent in resent:  # died with this socket before any of it was read
                    sent.held = True
                return False
            response.held = False
            resent.append(response)
            logger.info(f"{self}: resent {response_id}, which a draining krt refused, on a new connection")
        return True

    @staticmethod
    def _create_event(response_id: str, text: str) -> str:
        return json.dumps({"type": "response.create", "response_id": response_id, "input": text})

    def _session_update(self) -> str:
        session: dict[str, Any] = {
            "voice": assert_given(self._settings.voice),
            "audio": {"format": "pcm", "sample_rate": self.sample_rate},
        }
        speed = assert_given(self._settings.speed)
        if speed is not None:
            session["speed"] = speed
        if self._word_timestamps:
            session["timestamps"] = True
        return json.dumps({"type": "session.update", "session": session})

    def _read_handshake(self, message: str | bytes, confirmed: asyncio.Event) -> None:
        event = _parse(message)
        kind = event.get("type") if event else None
        if kind == "session.updated":
            audio = _field(_field(event, "session"), "audio")
            rate = audio.get("sample_rate", self.sample_rate)
            if rate != self.sample_rate:
                raise _SessionRefusedError(f"asked for {self.sample_rate} Hz, krt would send {rate} Hz")
            confirmed.set()
        elif kind == "error":
            detail = _field(event, "error")
            raise _SessionRefusedError(f"{detail.get('code')}: {detail.get('message')}")

    async def _drop_socket(self) -> None:
        websocket, self._websocket = self._websocket, None
        if websocket is not None:
            try:
                await websocket.close()
            except Exception as e:
                logger.debug(f"{self}: closing a failed krt socket: {e}")

    async def _disconnect_websocket(self) -> None:
        self._ready.clear()
        # krt ends a connection's responses with it: nothing more comes for them, and
        # the base class has closed their contexts after the audio that did arrive.
        # Sentences a draining krt refused are kept, with their contexts, for the next
        # socket; not when the pipeline is ending.
        held = {} if self._disconnecting else {rid: r for rid, r in self._responses.items() if r.held}
        lost = sum(not (response.canceled or response.held) for response in self._responses.values())
        self._responses = held
        kept = self._held_context_ids()
        self._contexts = {
            context_id: context for context_id, context in self._contexts.items() if context_id in kept
        }
        for context in self._contexts.values():
            context.in_flight = [response_id for response_id in context.in_flight if response_id in held]
        if lost and not self._disconnecting:
            await self.push_error(f"{self}: krt connection lost with {lost} response(s) unfinished")
        try:
            await self.stop_all_metrics()  # type: ignore[no-untyped-call]
            if self._websocket is not None:
                logger.debug(f"{self}: disconnecting from krt")
                await self._websocket.close()
        except Exception as e:
            logger.debug(f"{self}: closing the krt socket: {e}")
        finally:
            self._websocket = None
            await self._call_event_handler("on_disconnected")

    def _open_socket(self) -> ClientConnection | None:
        websocket = cast("ClientConnection | None", self._websocket)
        if websocket is None or websocket.state is not State.OPEN:
            return None
        return websocket

    async def _socket_when_ready(self, context_id: str) -> ClientConnection | None:
        """The open socket, waiting out a reconnect in progress (up to ``session_timeout``).

        A sentence that comes while the socket is down is sent on the next one rather
        than lost (its context is spared when the old socket's contexts are closed); if
        no receive loop is running (the first connect failed) it connects here, as
        Pipecat's other websocket services do.
        """
        if self._ready.is_set() and (websocket := self._open_socket()) is not None:
            return websocket
        # krt closed the socket and the receive loop has not seen it yet.
        self._ready.clear()
        self._waiting.add(context_id)
        try:
            if self._receive_task is None or self._receive_task.done():
                self._receive_task = None
                await self._connect()
            await asyncio.wait_for(self._ready.wait(), self._session_timeout)
        except TimeoutError:
            return None
        finally:
            self._waiting.discard(context_id)
        return self._open_socket()

    async def _close_connection_contexts(self) -> None:
        # The base class closes every open context when the socket is replaced: what
        # was in flight on the old socket will never come. A context whose sentence is
        # waiting for the new socket has sent nothing on the old one, so it stays open
        # (and so does the turn it belongs to).
        # Nor does a context whose sentence a draining krt refused: it is sent again.
        spared = self._waiting | self._held_context_ids()
        for context_id in self.get_audio_contexts():
            if context_id not in spared:
                await self.remove_audio_context(context_id)
        if self._turn_context_id is not None and self._turn_context_id not in spared:
            self._turn_context_id = None
            self._turn_context_id = self.create_context_id()

    def _held_context_ids(self) -> set[str]:
        """Contexts with a sentence a draining krt refused: they outlive the socket."""
        return {response.context_id for response in self._responses.values() if response.held}

    async def _send_keepalive(self) -> None:
        websocket = self._open_socket()
        if websocket is not None:
            await websocket.send(json.dumps({"type": "ping"}))

    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:  # type: ignore[override]
        changed = await super()._update_settings(delta)
        websocket = self._open_socket()
        if changed.keys() & SESSION_FIELDS and websocket is not None:
            # krt applies a session update to every response created after it; one
            # already speaking keeps its voice.
            await websocket.send(self._session_update())
        if unhandled := sorted(changed.keys() - SESSION_FIELDS):
            logger.warning(f"{self}: krt cannot change {', '.join(unhandled)} during a call")
        return changed

    # -- speaking ------------------------------------------------------------------------

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        for stale in [other for other in self._contexts if other != context_id]:
            await self._finish_if_done(stale)  # contexts that went quiet and were never flushed
        # Two tries: a socket krt has just closed can look open until its send fails,
        # and the sentence then goes on the next socket.
        for attempt in (1, 2):
            websocket = await self._socket_when_ready(context_id)
            # Looked up after the wait: a reconnect forgets the old socket's contexts.
            context = self._contexts.setdefault(context_id, _Context())
            if context_id != self._turn_context_id:
                # A sentence outside any turn (a TextFrame with no LLM response around
                # it) is its own context; nothing else will flush it.
                context.closed = True
            if websocket is None:
                yield ErrorFrame(error=f"{self}: not connected to krt at {self._url}; not speaking [{text}]")
                await self._finish_if_done(context_id)
                return
            context.created += 1
            response_id = context_id if context.created == 1 else f"{context_id}#{context.created}"
            self._responses[response_id] = _Response(context_id, text)
            context.in_flight.append(response_id)
            try:
                await websocket.send(self._create_event(response_id, text))
            except ConnectionClosed as e:
                self._forget(response_id)
                if attempt == 1:
                    continue
                yield ErrorFrame(error=f"{self}: sending to krt failed: {e}", exception=e)
                await self._finish_if_done(context_id)
                return
            await self.start_tts_usage_metrics(text)
            yield None
            return

    def _forget(self, response_id: str) -> None:
        response = self._responses.pop(response_id, None)
        context = self._contexts.get(response.context_id) if response else None
        if context is not None and response_id in context.in_flight:
            context.in_flight.remove(response_id)

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn is over: its context ends once krt has finished its responses."""
        context_id = context_id or self.get_active_audio_context_id()
        if not context_id:
            return
        context = self._contexts.get(context_id)
        if context is not None:
            context.closed = True
            await self._finish_if_done(context_id)
        else:
            # Nothing of it went to krt (a service written off is given no text): it ends
            # now, not after the quiet timeout, which waits for audio that cannot come.
            await self._finish_audio_context(context_id)

    async def _finish_if_done(self, context_id: str) -> None:
        context = self._contexts.get(context_id)
        if context is None or context.in_flight:
            return
        # A context that went quiet and is not the turn in progress gets no more text
        # either: Pipecat would not reopen it (and flushes only open contexts).
        abandoned = not self.audio_context_available(context_id) and context_id != self._turn_context_id
        if not (context.closed or abandoned):
            return
        del self._contexts[context_id]
        await self._finish_audio_context(context_id)

    async def _finish_audio_context(self, context_id: str) -> None:
        """End a context Pipecat still plays: TTSStoppedFrame after its audio, then close it."""
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        context = self._contexts.pop(context_id, None)
        if context is not None:
            for response_id in context.in_flight:
                await self._cancel_response(response_id)
        await super().on_audio_context_interrupted(context_id)

    async def on_audio_context_completed(self, context_id: str) -> None:
        # Also reached when a context went quiet for ``stop_frame_timeout_s`` mid-turn:
        # Pipecat then reopens it with a new word clock from its next audio, so the
        # offsets start over, minus what a response in flight has already played.
        context = self._contexts.get(context_id)
        if context is not None:
            context.audio_bytes = 0
            for response_id in context.in_flight:
                if (response := self._responses.get(response_id)) is not None:
                    response.offset_s = -self._seconds(response.audio_bytes) if response.audio_bytes else None
        await super().on_audio_context_completed(context_id)
        await self._finish_if_done(context_id)

    async def _cancel_response(self, response_id: str) -> None:
        response = self._responses.get(response_id)
        if response is None or response.canceled:
            return
        if response.held:
            self._forget(response_id)  # krt never took it: there is nothing to cancel
            return
        response.canceled = True
        websocket = self._open_socket()
        if websocket is None:
            self._forget(response_id)  # it died with the socket
            return
        try:
            await websocket.send(json.dumps({"type": "response.cancel", "response": response_id}))
        except Exception as e:
            # The receive loop finds the dead socket and reconnects; the response died with it.
            logger.warning(f"{self}: cancelling krt response {response_id}: {e}")

    def _seconds(self, audio_bytes: int) -> float:
        return audio_bytes / (2 * self.sample_rate)

    # -- receiving -----------------------------------------------------------------------

    async def _receive_messages(self) -> None:
        # Returns on a clean close (krt's 1000 "idle", 1001 going away) and raises on a
        # broken one; the base class's receive loop reconnects after either.
        try:
            async for message in self._get_websocket():
                await self._handle_message(message)
        finally:
            self._ready.clear()

    def _get_websocket(self) -> ClientConnection:
        websocket = cast("ClientConnection | None", self._websocket)
        if websocket is None:
            raise ConnectionError(f"{self}: not connected to krt")
        return websocket

    async def _handle_message(self, message: str | bytes) -> None:
        event = _parse(message)
        if event is None:
            logger.warning(f"{self}: ignoring a krt frame that is not a JSON event: {message!r:.200}")
            return
        kind = event.get("type")
        if kind == "response.output_audio.delta":
            await self._on_audio(event)
        elif kind == "response.output_audio.timestamps":
            await self._on_timestamps(event)
        elif kind in TERMINAL_EVENTS:
            await self._on_end(kind, event)
        elif kind == "error":
            await self._on_error(_field(event, "error"))
        # response.created, session.updated (a settings change applied), pong and event
        # types newer than this module need nothing.

    async def _playable(self, event: dict[str, Any]) -> _Response | None:
        """The live response an event is for, or None when nothing of it may be played."""
        response_id = event.get("response")
        response = self._responses.get(response_id) if isinstance(response_id, str) else None
        if response is None or response.canceled:
            return None
        context_id = response.context_id
        # Pipecat reopens a context that went quiet only for the turn in progress.
        if not self.audio_context_available(context_id) and context_id != self._turn_context_id:
            # Pipecat finished the context while krt was still making it (no audio for
            # ``stop_frame_timeout_s``): what is left of it will not be heard, and says so.
            await self._cancel_response(cast("str", response_id))
            await self.push_error(
                f"{self}: krt response {response_id} came after Pipecat finished its context "
                f"(no audio for {self._stop_frame_timeout_s:g} s); not played"
            )
            return None
        return response

    def _place(self, response: _Response) -> float:
        if response.offset_s is None:
            context = self._contexts.get(response.context_id)
            response.offset_s = self._seconds(context.audio_bytes) if context else 0.0
        return response.offset_s

    async def _on_audio(self, event: dict[str, Any]) -> None:
        response = await self._playable(event)
        if response is None:
            return
        try:
            audio = base64.b64decode(event.get("delta", ""), validate=True)
        except (binascii.Error, ValueError, TypeError) as e:
            logger.warning(f"{self}: krt sent audio that is not base64: {e}")
            return
        if not audio:
            return
        self._place(response)
        response.audio_bytes += len(audio)
        context = self._contexts.get(response.context_id)
        if context is not None:
            context.audio_bytes += len(audio)
        frame = TTSAudioRawFrame(
            audio=audio, sample_rate=self.sample_rate, num_channels=1, context_id=response.context_id
        )
        await self.append_to_audio_context(response.context_id, frame)

    async def _on_timestamps(self, event: dict[str, Any]) -> None:
        response = await self._playable(event)
        words = event.get("words")
        if response is None or not isinstance(words, list):
            return
        word_times = [
            (token, self._place(response) + start_ms / 1000)
            for token, start_ms in _tokens(response, [word for word in words if isinstance(word, dict)])
        ]
        if word_times:
            await self.add_word_timestamps(word_times, response.context_id)

    async def _on_end(self, kind: str, event: dict[str, Any]) -> None:
        response_id = event.get("response")
        response = self._responses.get(response_id) if isinstance(response_id, str) else None
        if response is None:
            return
        if (
            kind == "response.error"
            and told_to_reconnect(event.get("code"), str(event.get("message", "")))
            and not (response.canceled or response.audio_bytes)
        ):
            # Still in its context's flight, so the context waits for it.
            response.held = True
            logger.info(f"{self}: krt is draining; {response_id} goes out again on the next connection")
            if all(other.held for other in self._responses.values()):
                await self._drop_socket()  # nothing else to hear on it: reconnect now
            return
        self._forget(cast("str", response_id))
        if kind == "response.error" and not response.canceled:
            code = event.get("code")
            await self.push_error(
                error_msg=f"{self}: krt did not speak response {response_id}: {code}: {event.get('message')}",
                category=_RESPONSE_ERROR_CATEGORIES.get(str(code), ErrorCategory.UNKNOWN),
            )
        await self._finish_if_done(response.context_id)

    async def _on_error(self, detail: dict[str, Any]) -> None:
        code, event_type = detail.get("code"), detail.get("event_type")
        if code == "unknown_response" and event_type == "response.cancel":
            logger.debug(f"{self}: a cancel crossed its response's end: {detail.get('message')}")
            return
        await self.push_error(
            error_msg=f"{self}: krt refused {event_type or 'an event'}: {code}: {detail.get('message')}"
        )


def _tokens(response: _Response, words: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """krt's words as Pipecat wants them: the input's whitespace-separated tokens (with
    their punctuation, as the LLM wrote them), each at the start of its first word.

    krt times words of the client's text without the marks around them ("there" of
    "there,"); Pipecat rebuilds the bot's transcript from these tokens, so a mark left
    out would be lost from the conversation. krt's character offsets make the match
    exact; a word without them is taken as krt wrote it.
    """
    text, tokens = response.text, []
    timed = [
        (word["char_start"], word["char_end"], float(word["start_ms"]))
        for word in words
        if isinstance(word.get("char_start"), int)
        and isinstance(word.get("char_end"), int)
        and isinstance(word.get("start_ms"), int | float)
        and 0 <= word["char_start"] < word["char_end"] <= len(text)
    ]
    if len(timed) < len(words):
        return [
            (word["text"].strip(), float(word["start_ms"]))
            for word in words
            if isinstance(word.get("text"), str)
            and word["text"].strip()
            and isinstance(word.get("start_ms"), int | float)
        ]
    for token in _TOKEN.finditer(text, response.timed_to):
        starts = [start_ms for begin, end, start_ms in timed if begin < token.end() and end > token.start()]
        if starts:
            tokens.append((token[0], min(starts)))
            response.timed_to = token.end()
    return tokens


def _parse(message: str | bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(message)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _field(event: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """A nested object of a krt event, empty when absent or malformed."""
    value = event.get(name) if event else None
    return value if isinstance(value, dict) else {}
