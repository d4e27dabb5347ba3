"""OpenAI's speech API on krt's port: ``POST /v1/audio/speech``, ``GET /v1/models`` and
``GET /v1/audio/voices``.

Clients that already speak OpenAI's API (its SDKs, Pipecat's OpenAI TTS service, Open
WebUI, n8n) plug in by changing ``base_url``. A speech request is a response like a
WebSocket one: planned by the same engine, admitted and scheduled by the same fair turns
(so ``busy`` is 429 with ``Retry-After``), counted in the same in-flight total a drain
waits on, and logged, shown on the console and exported to Prometheus by the same
:class:`~krt.server.responses.ResponseBook`.

The body streams: its head leaves with the first audio (so an error before any audio
still gets its proper status), chunked as the audio is made, encoded per format by
:mod:`krt.codecs`. A client that hangs up mid-body cancels the synthesis at once: a task
watches the socket for its close while the audio is sent.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import uuid
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import attrs
import trio

from krt.codecs import OutputAudio, StreamEncoder
from krt.config import parse_voice_map
from krt.engine.facade import MAX_SPEED, MIN_SPEED
from krt.errors import SpeechError
from krt.server.http import RequestRefused, authorized
from krt.server.responses import Outcome, Response, ResponseBook

if TYPE_CHECKING:
    from krt.engine.facade import Engine
    from krt.server.http import FrontDoor
    from krt.server.state import ServerState

log = logging.getLogger(__name__)

SPEECH_PATH = "/v1/audio/speech"
MODELS_PATH = "/v1/models"
VOICES_PATH = "/v1/audio/voices"
ROUTES = (SPEECH_PATH, MODELS_PATH, VOICES_PATH)
MAX_INPUT_CHARS = 4096
"""OpenAI's own limit on ``input``; krt's word and audio limits apply too."""
MAX_BODY_BYTES = 64 * 1024
"""A request body over this is 413 (4096 characters of input fit many times over)."""
BODY_TIMEOUT_S = 10.0
"""A body still arriving after this is 408: a client cannot hold a connection open by
trickling its request."""
OPENAI_SPEED = (0.25, 4.0)
"""What OpenAI accepts; krt speaks MIN_SPEED-MAX_SPEED and clamps what lies beyond."""
MODELS = ("kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""Listed by ``GET /v1/models``; any model name is accepted and speaks with Kokoro."""
ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
StreamFormat = Literal["audio", "sse"]
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_UNAVAILABLE_S = 5


class ApiError(Exception):
    """An answer in OpenAI's error shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    @property
    def body(self) -> dict[str, object]:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(self.status)
        if kind is None:
            kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@attrs.frozen
class SpeechRequest:
    model: str
    input: str
    voice: str
    response_format: ResponseFormat = "mp3"
    speed: float = 1.0
    stream_format: StreamFormat = "audio"


def parse_speech_request(body: bytes) -> SpeechRequest:
    """The request, checked field by field as OpenAI does; ApiError 400 naming the field."""
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ApiError(400, "the body must be a JSON object")
    model = _field(fields, "model", str)
    text = _field(fields, "input", str)
    voice = _field(fields, "voice", str)
    if not text.strip():
        raise ApiError(400, "'input' is empty", param="input")
    if len(text) > MAX_INPUT_CHARS:
        raise ApiError(
            400,
            f"'input' is {len(text)} characters; the limit is {MAX_INPUT_CHARS}",
            param="input",
            code="string_above_max_length",
        )
    response_format = _choice(fields, "response_format", RESPONSE_FORMATS, "mp3")
    stream_format = _choice(fields, "stream_format", get_args(StreamFormat), "audio")
    speed = fields.get("speed", 1.0)
    if type(speed) not in (int, float) or not math.isfinite(speed):
        raise ApiError(400, "'speed' must be a number", param="speed")
    if not OPENAI_SPEED[0] <= speed <= OPENAI_SPEED[1]:
        raise ApiError(400, f"'speed' must be between {OPENAI_SPEED[0]} and {OPENAI_SPEED[1]}", param="speed")
    if "instructions" in fields and not isinstance(fields["instructions"], str | None):
        raise ApiError(400, "'instructions' must be a string", param="instructions")
    return SpeechRequest(
        model,
        text,
        voice,
        cast("ResponseFormat", response_format),
        float(speed),
        cast("StreamFormat", stream_format),
    )


def _field(fields: dict[str, Any], name: str, kind: type[str]) -> str:
    value = fields.get(name)
    if value is None:
        raise ApiError(
            400, f"missing required parameter '{name}'", param=name, code="missing_required_parameter"
        )
    if not isinstance(value, kind):
        raise ApiError(400, f"'{name}' must be a string", param=name)
    return value


def _choice(fields: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = fields.get(name)
    if value is None:
        return default
    if value not in choices:
        raise ApiError(400, f"'{name}' must be one of {', '.join(choices)}", param=name)
    return str(value)


# --- the routes ----------------------------------------------------------------------------


async def serve(door: FrontDoor, path: str, state: ServerState, peer: str) -> None:
    """Answer one /v1 request; every failure is an OpenAI error object."""
    try:
        await _route(door, path, state, peer)
    except RequestRefused as refused:
        raise ApiError(refused.status, refused.reason) from None


async def _route(door: FrontDoor, path: str, state: ServerState, peer: str) -> None:
    method = door.request_head.method
    allowed = "POST" if path == SPEECH_PATH else "GET"
    if method.decode("latin-1") != allowed and not (allowed == "GET" and method == b"HEAD"):
        raise ApiError(405, f"{path} takes {allowed}", headers=(("Allow", allowed),))
    if not authorized(door.request_head, state.config.auth.api_key):
        log.warning("%s: refused %s: missing or wrong API key", peer, path)
        raise ApiError(
            401,
            "missing or wrong API key (send Authorization: Bearer KEY)",
            code="invalid_api_key",
            headers=(("WWW-Authenticate", 'Bearer realm="krt"'),),
        )
    engine = _available(state)
    if path == MODELS_PATH:
        models = [{"id": model, "object": "model", "created": 0, "owned_by": "krt"} for model in MODELS]
        await door.respond(200, {"object": "list", "data": models})
    elif path == VOICES_PATH:
        await door.respond(200, _voices(engine, state))
    else:
        await _speak(door, engine, state, peer)


def _available(state: ServerState) -> Engine:
    if state.engine is None:
        raise ApiError(
            503, "the model is still loading", headers=(("Retry-After", str(RETRY_AFTER_UNAVAILABLE_S)),)
        )
    if state.draining:
        raise ApiError(
            503, "the server is draining", headers=(("Retry-After", str(RETRY_AFTER_UNAVAILABLE_S)),)
        )
    return state.engine


def _voices(engine: Engine, state: ServerState) -> dict[str, object]:
    info = engine.describe()
    openai = {}
    for name, voice in parse_voice_map(state.config.voices.openai_voices).items():
        try:
            openai[name] = engine.resolve_voice(voice)
        except SpeechError:
            continue  # a mapping to a voice this weight source lacks: not offered
    return {
        "voices": list(info.voices),
        "aliases": {"female": info.female, "male": info.male},
        "openai": openai,
    }


def _krt_speed(speed: float) -> float:
    """OpenAI's 0.25-4.0 in krt's 0.5-2.0: beyond those, the nearest krt can speak."""
    return min(max(speed, MIN_SPEED), MAX_SPEED)


async def _speak(door: FrontDoor, engine: Engine, state: ServerState, peer: str) -> None:
    received = None
    with trio.move_on_after(BODY_TIMEOUT_S):
        received = await door.read_body(MAX_BODY_BYTES)
    if received is None:
        raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s")
    request = parse_speech_request(received)
    voices = parse_voice_map(state.config.voices.openai_voices)
    try:
        plan = engine.plan(request.input, voices.get(request.voice, request.voice), _krt_speed(request.speed))
    except SpeechError as exc:
        raise ApiError(400, exc.message, param=_param_of(exc), code=exc.code) from None
    response_format = request.response_format
    response = Response(
        f"speech_{uuid.uuid4().hex}",
        plan,
        trio.current_time(),
        request.input,
        transport="http",
        encoder=StreamEncoder(OutputAudio(response_format), state.config.encoding),
    )
    connection = state.monitor.new_connection_id()
    book = ResponseBook(
        state.in_flight,
        state.metrics,
        engine.describe().backend,
        functools.partial(state.response_changed, connection),
    )
    try:
        book.open(response)
    except SpeechError as exc:  # draining since the check above
        raise ApiError(503, exc.message, code=exc.code) from None
    body = (
        _SseBody(door) if request.stream_format == "sse" else _AudioBody(door, CONTENT_TYPES[response_format])
    )
    try:
        error = await _stream(door, engine, response, body, peer)
        if error is None:
            book.end(response, Outcome.COMPLETED if body.finished else Outcome.CANCELED)
            book.settle(response)
            return
        response.error_code = error.code
        book.end(response, Outcome.FAILED)
        book.settle(response)
        if error.code == "busy":
            retry_after = RETRY_AFTER_BUSY_S if error.retry_after is None else math.ceil(error.retry_after)
            raise ApiError(429, error.message, code="busy", headers=(("Retry-After", str(retry_after)),))
        if not door.started:
            raise ApiError(500, error.message, code=error.code)
        await body.fail(error)  # mid-body: the client sees the stream cut short
    finally:
        book.abandon_all()  # the connection failed under it: it counts as canceled


async def _stream(
    door: FrontDoor, engine: Engine, response: Response, body: _Body, peer: str
) -> SpeechError | None:
    """Synthesize into the body until it is done, the synthesis fails (returned), or the
    client hangs up (the body is then left unfinished)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on_hangup, door, nursery.cancel_scope, peer)
        try:
            client = ("http", peer.rpartition(":")[0])  # a refusal keeps its place for this address
            async with engine.stream(response.plan, response.response_id, paced=False, client=client) as job:
                async for batch in job:
                    response.queue_seconds = job.queue_seconds or 0.0
                    pcm = b"".join(batch)
                    await body.audio(response, response.output_bytes(pcm))
                    response.audio_bytes += len(pcm)
                await body.audio(response, response.output_tail())
                await body.done(response)
        except SpeechError as exc:
            return exc
        finally:
            nursery.cancel_scope.cancel()
    return None


async def _cancel_on_hangup(door: FrontDoor, scope: trio.CancelScope, peer: str) -> None:
    """A client that closes its end (or resets) stops its synthesis at once."""
    try:
        while await door.stream.receive_some(4096):
            pass  # nothing more is expected on a one-request connection
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    log.info("%s: client hung up mid-speech; canceling", peer)
    scope.cancel(reason="client hung up")


def _param_of(error: SpeechError) -> str | None:
    return {"invalid_voice": "voice", "invalid_speed": "speed"}.get(error.code, "input")


# --- bodies ---------------------------------------------------------------------------------


class _Body:
    """How audio goes out: its head leaves with the first bytes."""

    def __init__(self, door: FrontDoor) -> None:
        self._door = door
        self.finished = False

    async def _start_once(self, response: Response, headers: list[tuple[str, str]]) -> None:
        if not self._door.started:
            await self._door.start(
                200, [*headers, ("Cache-Control", "no-store"), ("X-Request-Id", response.response_id)]
            )

    async def audio(self, response: Response, data: bytes) -> None:
        raise NotImplementedError

    async def done(self, response: Response) -> None:
        raise NotImplementedError

    async def fail(self, error: SpeechError) -> None:
        """The body is under way: all that can be said is that it is cut short."""


class _AudioBody(_Body):
    def __init__(self, door: FrontDoor, content_type: str) -> None:
        super().__init__(door)
        self._content_type = content_type

    async def audio(self, response: Response, data: bytes) -> None:
        if not data:
            return
        await self._start_once(response, [("Content-Type", self._content_type)])
        await self._door.send(data)
        if response.first_audio_at is None:
            response.first_audio_at = trio.current_time()

    async def done(self, response: Response) -> None:
        await self._start_once(response, [("Content-Type", self._content_type)])
        await self._door.end()
        self.finished = True


class _SseBody(_Body):
    """OpenAI's ``stream_format: "sse"``: ``speech.audio.delta`` events of base64 audio,
    then ``speech.audio.done``."""

    async def audio(self, response: Response, data: bytes) -> None:
        if not data:
            return
        await self._event(response, {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        if response.first_audio_at is None:
            response.first_audio_at = trio.current_time()

    async def done(self, response: Response) -> None:
        characters = len(response.text)
        usage = {"input_tokens": characters, "output_tokens": 0, "total_tokens": characters}
        await self._event(response, {"type": "speech.audio.done", "usage": usage})
        await self._door.end()
        self.finished = True

    async def fail(self, error: SpeechError) -> None:
        await self._door.send(
            _sse({"type": "error", "error": {"message": error.message, "code": error.code}})
        )
        await self._door.end()

    async def _event(self, response: Response, event: dict[str, object]) -> None:
        await self._start_once(response, [("Content-Type", "text/event-stream")])
        await self._door.send(_sse(event))


def _sse(event: dict[str, object]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
