"""What OpenAI's speech API accepts and how it answers an error, checked as OpenAI does.

``POST /v1/audio/speech`` takes a JSON body of :class:`SpeechRequest`'s fields; a field
that is missing, of the wrong type or out of range is 400 naming it (``param``), in
OpenAI's error shape (:class:`ApiError`), which its SDKs turn into their own exceptions.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, cast, get_args

import attrs

OPENAI_SPEED = (0.25, 4.0)
"""What OpenAI accepts; krt speaks MIN_SPEED-MAX_SPEED and clamps what lies beyond."""
MODELS = ("kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""Listed by ``GET /v1/models``; any model name is accepted and speaks with Kokoro."""
ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",  # Ogg Opus, under the type OpenAI sends (clients decode by it)
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
StreamFormat = Literal["audio", "sse"]


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


def parse_speech_request(body: bytes, most_chars: int) -> SpeechRequest:
    """The request, checked field by field as OpenAI does; ApiError 400 naming the field.
    ``input`` may be up to ``most_chars`` long (``OPENAI_MAX_INPUT_CHARS``), where OpenAI
    stops at 4096: a long one is spoken in parts (:mod:`krt.server.speech_parts`)."""
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
    if len(text) > most_chars:
        raise ApiError(
            400,
            f"'input' is {len(text)} characters; the limit is {most_chars} (OPENAI_MAX_INPUT_CHARS)",
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
