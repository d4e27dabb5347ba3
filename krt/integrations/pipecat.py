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
  refuses new responses ``busy`` with the event's ``reconnect`` field set (its message is
  for people, not read here), and closes the socket with 1012 once what it is speaking
  ends. A sentence refused so, before any of its audio, is held (its context stays open)
  and goes out first on the next socket, which the load balancer puts on another
  replica: the caller hears the whole turn, in order.
- **Errors stay local.** A ``response.error`` is a non-fatal ``ErrorFrame`` and ends that
  response (the rest of the turn is still spoken); an ``error`` event is an ``ErrorFrame``
  too, except the harmless ``unknown_response`` of a cancel that crossed its response's end.
- **The wire is krt's own schema.** Every event is built from :mod:`krt.wire.protocol`'s
  classes and encoded by it, and every frame read is decoded by it into a typed event (a
  frame that does not decode is logged and ignored), so this service and krt cannot drift
  apart on a field's name or type. What must be remembered between events (contexts,
  response ids, held sentences, audio offsets, word alignment) is
  :mod:`krt.integrations.speech_contexts`, which knows nothing of Pipecat; this module is
  the Pipecat and WebSocket glue around it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import WebsocketTTSService
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.tracing.service_decorators import traced_tts
from pipecat.utils.types import NOT_GIVEN, NotGiven, assert_given
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from krt.integrations.endpoint import krt_endpoint
from krt.integrations.speech_contexts import KrtResponse, SpeechContexts
from krt.wire import protocol

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from pipecat.processors.frame_processor import FrameProcessorSetup
    from websockets.asyncio.client import ClientConnection

__all__ = ["KrtTTSService", "KrtTTSSettings", "krt_endpoint"]

TERMINAL_EVENTS = (protocol.ResponseCompleted, protocol.ResponseCanceled, protocol.ResponseError)
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
QUIET_CONTEXT_TIMEOUT_S = 10.0
"""How long a context may go without audio before Pipecat takes it as finished (its
``stop_frame_timeout_s``, 3 s by default). A busy krt queues a response for up to
``QUEUE_WAIT_SLA_MS`` (4 s by default) before its first window, and Pipecat plays no audio
of a context it has finished, so the base class's 3 s would drop the whole reply krt
queued. krt ends every response with an event, on which a context whose turn is over ends
at once: this is only the safety net for a krt that never answers."""


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
        self._speech = SpeechContexts()
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
        resent: list[KrtResponse] = []
        for response in self._speech.held():
            response_id = response.response_id
            # Looked up again each time: an interruption during a send forgets its sentences.
            if self._speech.responses.get(response_id) is not response or not response.held:
                continue
            try:
                await websocket.send(_create_event(response))
            except ConnectionClosed as e:
                logger.warning(f"{self}: resending {response_id} to krt: {e}")
                for sent in resent:  # died with this socket before any of it was read
                    sent.held = True
                return False
            response.held = False
            resent.append(response)
            logger.info(f"{self}: resent {response_id}, which a draining krt refused, on a new connection")
        return True

    def _session_update(self) -> str:
        patch = protocol.SessionPatch(
            voice=assert_given(self._settings.voice),
            speed=assert_given(self._settings.speed),
            audio=protocol.AudioSettings(format="pcm", sample_rate=self.sample_rate),
            # Left out rather than false: without it krt keeps its own default.
            timestamps=True if self._word_timestamps else None,
        )
        return protocol.encode(protocol.SessionUpdate(patch))

    def _read_handshake(self, message: str | bytes, confirmed: asyncio.Event) -> None:
        event = self._decode(message)
        if isinstance(event, protocol.SessionUpdated):
            rate = event.session.audio.sample_rate
            if rate != self.sample_rate:
                raise _SessionRefusedError(f"asked for {self.sample_rate} Hz, krt would send {rate} Hz")
            confirmed.set()
        elif isinstance(event, protocol.ErrorEvent):
            raise _SessionRefusedError(f"{event.error.code}: {event.error.message}")

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
        lost = self._speech.drop_socket(keep_held=not self._disconnecting)
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
        spared = self._waiting | self._speech.held_context_ids()
        for context_id in self.get_audio_contexts():
            if context_id not in spared:
                await self.remove_audio_context(context_id)
        if self._turn_context_id is not None and self._turn_context_id not in spared:
            self._turn_context_id = None
            self._turn_context_id = self.create_context_id()

    async def _send_keepalive(self) -> None:
        websocket = self._open_socket()
        if websocket is not None:
            await websocket.send(protocol.encode(protocol.Ping()))

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
        for stale in [other for other in self._speech.contexts if other != context_id]:
            await self._finish_if_done(stale)  # contexts that went quiet and were never flushed
        # Two tries: a socket krt has just closed can look open until its send fails,
        # and the sentence then goes on the next socket.
        for attempt in (1, 2):
            websocket = await self._socket_when_ready(context_id)
            # Looked up after the wait: a reconnect forgets the old socket's contexts.
            context = self._speech.open(context_id)
            if context_id != self._turn_context_id:
                # A sentence outside any turn (a TextFrame with no LLM response around
                # it) is its own context; nothing else will flush it.
                context.closed = True
            if websocket is None:
                yield ErrorFrame(error=f"{self}: not connected to krt at {self._url}; not speaking [{text}]")
                await self._finish_if_done(context_id)
                return
            response = self._speech.start_response(context_id, text)
            try:
                await websocket.send(_create_event(response))
            except ConnectionClosed as e:
                self._speech.forget(response.response_id)
                if attempt == 1:
                    continue
                yield ErrorFrame(error=f"{self}: sending to krt failed: {e}", exception=e)
                await self._finish_if_done(context_id)
                return
            await self.start_tts_usage_metrics(text)
            yield None
            return

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn is over: its context ends once krt has finished its responses."""
        context_id = context_id or self.get_active_audio_context_id()
        if not context_id:
            return
        context = self._speech.contexts.get(context_id)
        if context is not None:
            context.closed = True
            await self._finish_if_done(context_id)
        else:
            # Nothing of it went to krt (a service written off is given no text): it ends
            # now, not after the quiet timeout, which waits for audio that cannot come.
            await self._finish_audio_context(context_id)

    async def _finish_if_done(self, context_id: str) -> None:
        # A context that went quiet and is not the turn in progress gets no more text
        # either: Pipecat would not reopen it (and flushes only open contexts).
        abandoned = not self.audio_context_available(context_id) and context_id != self._turn_context_id
        if self._speech.end_context_if_done(context_id, abandoned=abandoned):
            await self._finish_audio_context(context_id)

    async def _finish_audio_context(self, context_id: str) -> None:
        """End a context Pipecat still plays: TTSStoppedFrame after its audio, then close it."""
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        for response_id in self._speech.interrupt(context_id):
            await self._cancel_response(response_id)
        await super().on_audio_context_interrupted(context_id)

    async def on_audio_context_completed(self, context_id: str) -> None:
        # Also reached when a context went quiet for ``stop_frame_timeout_s`` mid-turn:
        # Pipecat then reopens it with a new word clock from its next audio, so the
        # offsets start over, minus what a response in flight has already played.
        self._speech.restart_clock(context_id)
        await super().on_audio_context_completed(context_id)
        await self._finish_if_done(context_id)

    async def _cancel_response(self, response_id: str) -> None:
        if not self._speech.cancel(response_id):
            return  # ended, already canceled, or held and never taken by krt
        websocket = self._open_socket()
        if websocket is None:
            self._speech.forget(response_id)  # it died with the socket
            return
        try:
            await websocket.send(protocol.encode(protocol.ResponseCancel(response=response_id)))
        except Exception as e:
            # The receive loop finds the dead socket and reconnects; the response died with it.
            logger.warning(f"{self}: cancelling krt response {response_id}: {e}")

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

    def _decode(self, message: str | bytes) -> protocol.ServerEvent | None:
        """krt's event, or None (logged) for a frame this service cannot read: one bad
        frame must not cost the call."""
        try:
            return protocol.decode_server_event(message.decode() if isinstance(message, bytes) else message)
        except protocol.UnknownServerEvent as e:
            logger.debug(f"{self}: skipping an event newer than this service: {e}")
            return None
        except ValueError as e:  # UnicodeDecodeError included
            logger.warning(f"{self}: ignoring a krt frame that is not an event ({e}): {message!r:.200}")
            return None

    async def _handle_message(self, message: str | bytes) -> None:
        event = self._decode(message)
        if isinstance(event, protocol.OutputAudioDelta):
            await self._on_audio(event)
        elif isinstance(event, protocol.OutputAudioTimestamps):
            await self._on_timestamps(event)
        elif isinstance(event, TERMINAL_EVENTS):
            await self._on_end(event)
        elif isinstance(event, protocol.ErrorEvent):
            await self._on_error(event.error)
        # response.created, session.updated (a settings change applied) and pong need nothing.

    async def _playable(self, response_id: str) -> KrtResponse | None:
        """The live response an event is for, or None when nothing of it may be played."""
        response = self._speech.playable(response_id)
        if response is None:
            return None
        context_id = response.context_id
        # Pipecat reopens a context that went quiet only for the turn in progress.
        if not self.audio_context_available(context_id) and context_id != self._turn_context_id:
            # Pipecat finished the context while krt was still making it (no audio for
            # ``stop_frame_timeout_s``): what is left of it will not be heard, and says so.
            await self._cancel_response(response_id)
            await self.push_error(
                f"{self}: krt response {response_id} came after Pipecat finished its context "
                f"(no audio for {self._stop_frame_timeout_s:g} s); not played"
            )
            return None
        return response

    async def _on_audio(self, event: protocol.OutputAudioDelta) -> None:
        response = await self._playable(event.response)
        if response is None:
            return
        try:
            audio = base64.b64decode(event.delta, validate=True)
        except (binascii.Error, ValueError) as e:
            logger.warning(f"{self}: krt sent audio that is not base64: {e}")
            return
        if not audio:
            return
        self._speech.hear(response, len(audio))
        frame = TTSAudioRawFrame(
            audio=audio, sample_rate=self.sample_rate, num_channels=1, context_id=response.context_id
        )
        await self.append_to_audio_context(response.context_id, frame)

    async def _on_timestamps(self, event: protocol.OutputAudioTimestamps) -> None:
        response = await self._playable(event.response)
        if response is None:
            return
        word_times = self._speech.timed_tokens(response, event.words, self.sample_rate)
        if word_times:
            await self.add_word_timestamps(word_times, response.context_id)

    async def _on_end(
        self, event: protocol.ResponseCompleted | protocol.ResponseCanceled | protocol.ResponseError
    ) -> None:
        response_id = event.response
        if isinstance(event, protocol.ResponseError) and self._speech.hold_if_draining(event):
            logger.info(f"{self}: krt is draining; {response_id} goes out again on the next connection")
            if self._speech.only_held_left():
                await self._drop_socket()  # nothing else to hear on it: reconnect now
            return
        response = self._speech.forget(response_id)
        if response is None:
            return
        if isinstance(event, protocol.ResponseError) and not response.canceled:
            await self.push_error(
                error_msg=f"{self}: krt did not speak response {response_id}: {event.code}: {event.message}",
                category=_RESPONSE_ERROR_CATEGORIES.get(event.code, ErrorCategory.UNKNOWN),
            )
        await self._finish_if_done(response.context_id)

    async def _on_error(self, error: protocol.ErrorDetail) -> None:
        if error.code == "unknown_response" and error.event_type == protocol.ResponseCancel.TYPE:
            logger.debug(f"{self}: a cancel crossed its response's end: {error.message}")
            return
        await self.push_error(
            error_msg=f"{self}: krt refused {error.event_type or 'an event'}: {error.code}: {error.message}"
        )


def _create_event(response: KrtResponse) -> str:
    return protocol.encode(protocol.ResponseCreate(input=response.text, response_id=response.response_id))
