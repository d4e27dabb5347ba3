"""OpenAI's speech API on krt's port: ``POST /v1/audio/speech``, ``GET /v1/models`` and
``GET /v1/audio/voices``.

Clients that already speak OpenAI's API (its SDKs, Pipecat's OpenAI TTS service, Open
WebUI, n8n) plug in by changing ``base_url``. A speech request is a response like a
WebSocket one: planned by the same engine, admitted and scheduled by the same fair turns
(so ``busy`` is 429 with ``Retry-After``), delivered by the same
:func:`~krt.server.delivery.deliver` into an HTTP body (:mod:`krt.server.speech_body`),
and counted, logged and shown through the same :class:`~krt.server.responses.ResponseBook`.
The request's fields are checked in :mod:`krt.server.openai_schema`. A client that hangs
up mid-body cancels the synthesis at once: a task watches the socket for its close while
the audio is sent.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import TYPE_CHECKING

import trio

from krt.config import parse_voice_map
from krt.engine.facade import MAX_SPEED, MIN_SPEED
from krt.errors import SpeechError
from krt.media.codecs import OutputAudio, StreamEncoder
from krt.server.delivery import deliver
from krt.server.http import RequestRefused, authorized
from krt.server.openai_schema import CONTENT_TYPES, MODELS, ApiError, parse_speech_request
from krt.server.responses import Response
from krt.server.speech_body import AudioBody, SseBody
from krt.server.speech_parts import SpokenParts, check_words

if TYPE_CHECKING:
    from krt.engine.facade import Engine
    from krt.server.http import FrontDoor
    from krt.server.state import ServerState

log = logging.getLogger(__name__)

SPEECH_PATH = "/v1/audio/speech"
MODELS_PATH = "/v1/models"
VOICES_PATH = "/v1/audio/voices"
ROUTES = (SPEECH_PATH, MODELS_PATH, VOICES_PATH)
BODY_BYTES_PER_CHAR = 6
"""JSON writes a character as at most six bytes (``\\u00e9``)."""
BODY_BYTES_BESIDES_INPUT = 4096


def max_body_bytes(most_chars: int) -> int:
    """The longest request body: ``OPENAI_MAX_INPUT_CHARS`` of input, escaped, and the
    other fields; a longer one is 413 before it is read."""
    return most_chars * BODY_BYTES_PER_CHAR + BODY_BYTES_BESIDES_INPUT


BODY_TIMEOUT_S = 10.0
"""A body still arriving after this is 408: a client cannot hold a connection open by
trickling its request."""
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_UNAVAILABLE_S = 5


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
        "stand_ins": info.stand_ins,
    }


def _krt_speed(speed: float) -> float:
    """OpenAI's 0.25-4.0 in krt's 0.5-2.0: beyond those, the nearest krt can speak."""
    return min(max(speed, MIN_SPEED), MAX_SPEED)


async def _speak(door: FrontDoor, engine: Engine, state: ServerState, peer: str) -> None:
    most_chars = state.config.server.openai_max_input_chars
    received = None
    with trio.move_on_after(BODY_TIMEOUT_S):
        received = await door.read_body(max_body_bytes(most_chars))
    if received is None:
        raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s")
    request = parse_speech_request(received, most_chars)
    voices = parse_voice_map(state.config.voices.openai_voices)
    response_id = f"speech_{uuid.uuid4().hex}"
    try:
        check_words(request.input, state.config.segments)
        spoken = SpokenParts(
            engine,
            request.input,
            voices.get(request.voice, request.voice),
            _krt_speed(request.speed),
            response_id,
            state.config.segments,
        )
        client = ("http", peer.rpartition(":")[0])  # a refusal keeps its place for this address
        plan, job = spoken.first(client)
    except SpeechError as exc:
        if exc.code == "busy":
            raise _refusal(exc) from None
        raise ApiError(400, exc.message, param=_param_of(exc), code=exc.code) from None
    response = Response(
        response_id,
        plan,
        trio.current_time(),
        request.input,
        transport="http",
        encoder=StreamEncoder(OutputAudio(request.response_format), state.config.encoding),
        job=job,
    )
    book = state.response_book(state.monitor.new_connection_id())
    try:
        book.open(response)
    except SpeechError as exc:  # draining since the check above
        engine.withdraw(job)
        raise ApiError(503, exc.message, code=exc.code) from None
    body = (
        SseBody(door, book)
        if request.stream_format == "sse"
        else AudioBody(door, book, CONTENT_TYPES[request.response_format])
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_hangup, door, response, peer)
            await deliver(response, engine, body, spoken.following)
            nursery.cancel_scope.cancel()
        if body.error is not None and not door.started:
            raise _refusal(body.error)
    finally:
        book.abandon_all()  # the connection failed under it, or its client hung up: canceled


def _refusal(error: SpeechError) -> ApiError:
    """A synthesis error before the body started, as OpenAI would answer it."""
    if error.code == "busy":
        retry_after = RETRY_AFTER_BUSY_S if error.retry_after is None else math.ceil(error.retry_after)
        return ApiError(429, error.message, code="busy", headers=(("Retry-After", str(retry_after)),))
    return ApiError(500, error.message, code=error.code)


async def _cancel_on_hangup(door: FrontDoor, response: Response, peer: str) -> None:
    """A client that closes its end (or resets) stops its synthesis at once."""
    try:
        while await door.stream.receive_some(4096):
            pass  # nothing more is expected on a one-request connection
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    if response.addressable:
        log.info("%s: client hung up mid-speech; canceling", peer)
        response.cancel(reason="client hung up")


def _param_of(error: SpeechError) -> str | None:
    return {"invalid_voice": "voice", "invalid_speed": "speed"}.get(error.code, "input")
