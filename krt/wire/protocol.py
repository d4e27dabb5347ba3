"""The wire schema of ``/v1/audio/speech/stream/ws``: events both ways, decode and encode.

Everything a client can send is turned into typed, frozen events in one place,
:func:`decode_client_event`, so the session never sees a raw dict and every malformed
frame becomes the same :class:`ProtocolError` (and so the same ``error`` event) whatever
went wrong. The module is pure: no trio, no I/O, so it is shared by the server, krt's own
client tool and the tests.

Unknown extra keys are ignored on purpose, at every level: OpenAI-Realtime-shaped
clients send ``event_id``, ``modalities`` and the like, and rejecting them would break
those clients for no gain. Values are checked strictly instead: cattrs' default hooks
would turn ``"input": 5`` into ``"5"`` and ``"speed": true`` into ``1.0``, which would
speak a number nobody wrote rather than tell the client its mistake.
"""

from __future__ import annotations

import base64
import json
import math
import typing
from operator import attrgetter
from typing import Any, ClassVar, Literal, NoReturn, cast

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn
from cattrs.strategies import configure_tagged_union

if typing.TYPE_CHECKING:
    from krt.errors import SpeechError

WS_PATH = "/v1/audio/speech/stream/ws"
"""The one route that speaks this protocol."""
MAX_EVENT_BYTES = 64 * 1024
"""Largest client event krt decodes; a bigger one gets an ``oversized`` error, not a close."""
MAX_WS_MESSAGE_BYTES = 1024 * 1024
"""Past this the WebSocket layer closes the socket (1009); between the two limits a frame
gets an ``oversized`` error event and the session goes on."""

AudioFormat = Literal["pcm", "opus", "mulaw", "alaw"]
"""``pcm``: signed 16-bit little-endian; ``opus``: Ogg/Opus pages; ``mulaw``/``alaw``: G.711."""

# --- error codes: every code krt sends lives here ---------------------------------------

ResponseErrorCode = Literal[
    "too_long", "busy", "invalid_voice", "invalid_speed", "invalid_input", "synthesis_failed"
]
"""``response.error`` codes: one response failed or was refused; the session goes on."""
DecodeErrorCode = Literal[
    "binary_frame", "oversized", "invalid_json", "unknown_event", "missing_field", "invalid_field"
]
"""Why a client frame could not be read at all."""
RequestErrorCode = (
    DecodeErrorCode
    | Literal[
        "unknown_response", "duplicate_response", "unsupported_format", "invalid_voice", "invalid_speed"
    ]
)
"""``error`` event codes: a frame was read but cannot be acted on (a cancel of an unknown
response, a session update krt cannot apply)."""
DRAINING_REASON = "the server is draining; reconnect to reach another replica"
"""The ``busy`` message of a response refused during a drain, for people; programs read
``ResponseError.reconnect``."""


REQUEST_ERROR_TYPE = "invalid_request_error"
"""``error.type`` of every connection-level error, as in OpenAI's realtime API."""


class ProtocolError(Exception):
    """A client frame krt cannot read; answered with an ``error`` event, never a close.

    A bad event must not end a healthy session (a voice agent would lose its call over
    one typo), so this carries everything the ``error`` event needs and nothing more.
    """

    def __init__(
        self,
        code: DecodeErrorCode,
        message: str,
        event_type: str | None = None,
        response_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code: DecodeErrorCode = code
        self.message = message
        self.event_type = event_type
        """The client's ``type`` when it could be read, so the client can match the error."""
        self.response_id = response_id
        """The ``response_id`` of a ``response.create`` that could not be read, when the id
        itself could: that response also gets its terminal ``response.error``, so a client
        waiting on the id is never left waiting."""

    def to_event(self) -> ErrorEvent:
        return request_error(self.code, self.message, self.event_type)


# --- client -> server -------------------------------------------------------------------


@attrs.frozen
class AudioSettings:
    format: AudioFormat | None = None
    sample_rate: int | None = None


@attrs.frozen
class SessionPatch:
    """A partial update: a field left out (or null) keeps the session's current value."""

    voice: str | None = None
    speed: float | None = None
    audio: AudioSettings | None = None
    timestamps: bool | None = None
    """Send ``response.output_audio.timestamps`` for every response of the session."""


@attrs.frozen
class SessionUpdate:
    TYPE: ClassVar[str] = "session.update"
    session: SessionPatch


@attrs.frozen
class ResponseCreate:
    """One utterance; without ``response_id`` the session makes one up."""

    TYPE: ClassVar[str] = "response.create"
    input: str
    response_id: str | None = None
    voice: str | None = None
    speed: float | None = None
    timestamps: bool | None = None
    """Word timestamps for this response alone; unset: the session's setting."""


@attrs.frozen
class InputAppend:
    TYPE: ClassVar[str] = "input.append"
    text: str


@attrs.frozen
class InputCommit:
    TYPE: ClassVar[str] = "input.commit"


@attrs.frozen
class ResponseCancel:
    """Names its response as ``response`` (the seed's key) or ``response_id``.

    Both spellings are accepted because clients built against ``response.create``
    naturally reuse ``response_id``; ``response`` wins when both are given.
    """

    TYPE: ClassVar[str] = "response.cancel"
    response: str | None = None
    response_id: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.response is None and self.response_id is None:
            raise ValueError("response.cancel needs 'response' or 'response_id'")

    @property
    def target(self) -> str:
        return cast("str", self.response if self.response is not None else self.response_id)


@attrs.frozen
class Barge:
    TYPE: ClassVar[str] = "barge"


@attrs.frozen
class SessionEnd:
    TYPE: ClassVar[str] = "session.end"


@attrs.frozen
class Ping:
    """A client's keepalive, or its check that the session still answers: ``pong`` comes
    back, in order with everything else the session sends, with the same ``id``."""

    TYPE: ClassVar[str] = "ping"
    id: str | None = None


ClientEvent = (
    SessionUpdate | ResponseCreate | InputAppend | InputCommit | ResponseCancel | Barge | SessionEnd | Ping
)

# --- server -> client -------------------------------------------------------------------


@attrs.frozen
class EffectiveAudio:
    format: str
    sample_rate: int


@attrs.frozen
class EffectiveSession:
    """The whole session after an update, so a client never has to merge partial echoes."""

    voice: str
    speed: float
    audio: EffectiveAudio
    timestamps: bool


@attrs.frozen
class SessionUpdated:
    TYPE: ClassVar[str] = "session.updated"
    session: EffectiveSession


@attrs.frozen
class ResponseCreated:
    TYPE: ClassVar[str] = "response.created"
    response: str


@attrs.frozen
class OutputAudioDelta:
    """Base64 audio in the session's format (PCM16 at 24 kHz unless it asked otherwise);
    hot paths use :func:`encode_audio_delta`, which skips this object."""

    TYPE: ClassVar[str] = "response.output_audio.delta"
    response: str
    delta: str


@attrs.frozen
class WordTiming:
    """One word of the client's own input, and when it is heard.

    ``text`` is ``input[char_start:char_end]`` exactly as the client sent it (a "$5" the
    model spoke as "five dollars" is one word); times are milliseconds from the
    response's first audio sample, as played (speed included).
    """

    text: str
    start_ms: float
    end_ms: float
    char_start: int
    char_end: int


@attrs.frozen
class OutputAudioTimestamps:
    """The words of one segment, sent before that segment's first audio delta."""

    TYPE: ClassVar[str] = "response.output_audio.timestamps"
    response: str
    words: list[WordTiming]


@attrs.frozen
class ResponseCompleted:
    TYPE: ClassVar[str] = "response.completed"
    response: str


@attrs.frozen
class ResponseCanceled:
    """The last frame of its response: nothing of that response may follow it."""

    TYPE: ClassVar[str] = "response.canceled"
    response: str


@attrs.frozen
class ResponseError:
    """One response failed (``too_long``, ``busy``, …); the session carries on."""

    TYPE: ClassVar[str] = "response.error"
    response: str
    code: str
    message: str
    retry_after_ms: int | None = None
    """With ``busy`` from a replica that is not draining: when the same request is
    predicted to be taken in; its place is kept for this socket until shortly after."""
    reconnect: bool = False
    """With ``busy`` from a replica that is draining (sent only when true): nothing is
    wrong with the request, and a new connection, which a load balancer gives to another
    replica, takes it. A client sends it again there rather than failing it."""

    @classmethod
    def of(cls, response: str, error: SpeechError) -> ResponseError:
        retry_after = None if error.retry_after is None else math.ceil(error.retry_after * 1000)
        return cls(response, error.code, error.message, retry_after, error.reconnect)


@attrs.frozen
class Pong:
    TYPE: ClassVar[str] = "pong"
    id: str | None = None


@attrs.frozen
class ErrorDetail:
    type: str
    code: str
    message: str
    event_type: str | None = None


@attrs.frozen
class ErrorEvent:
    """A connection-level error (a frame krt could not read); the connection stays open."""

    TYPE: ClassVar[str] = "error"
    error: ErrorDetail


def request_error(code: RequestErrorCode, message: str, event_type: str | None = None) -> ErrorEvent:
    """The ``error`` event for a client frame krt read but cannot act on, or could not read."""
    return ErrorEvent(ErrorDetail(REQUEST_ERROR_TYPE, code, message, event_type))


ServerEvent = (
    SessionUpdated
    | ResponseCreated
    | OutputAudioDelta
    | OutputAudioTimestamps
    | ResponseCompleted
    | ResponseCanceled
    | ResponseError
    | ErrorEvent
    | Pong
)

CLIENT_EVENT_TYPES: frozenset[str] = frozenset(cl.TYPE for cl in typing.get_args(ClientEvent))
SERVER_EVENT_TYPES: frozenset[str] = frozenset(cl.TYPE for cl in typing.get_args(ServerEvent))

# --- the converter ----------------------------------------------------------------------
# Hooks must be registered before configure_tagged_union: it captures each member's hook
# when it is called.


class _FieldRequirementError(ValueError):
    """A strict hook's refusal, worded to follow "field 'x' " in the client's message."""


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise _FieldRequirementError("must be a string")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # A JSON escape such as "\ud800" would otherwise blow up much later,
            # inside G2P or a log line, far from the client that sent it.
            raise _FieldRequirementError("must be valid Unicode (it has a lone surrogate)") from None
    return value


def _structure_int(value: object, _: type) -> int:
    if type(value) is not int:  # bool is an int subclass and must not pass
        raise _FieldRequirementError("must be an integer")
    return value


def _structure_bool(value: object, _: type) -> bool:
    # cattrs' default is bool(value): "false" would turn timestamps on.
    if type(value) is not bool:
        raise _FieldRequirementError("must be true or false")
    return value


def _structure_float(value: object, _: type) -> float:
    # JSON has one number type, so 1 is as good a speed as 1.0; true is not.
    if type(value) not in (int, float) or not math.isfinite(number := float(cast("float", value))):
        raise _FieldRequirementError("must be a finite number")
    return number


def _structure_object_factory(cl: type) -> Any:
    """Only JSON objects become events: cattrs alone would read ``[]`` as an empty one."""
    structure_fields: Any = make_dict_structure_fn(cl, _converter)

    def structure_object(value: object, _: type) -> Any:
        if not isinstance(value, dict):
            raise _FieldRequirementError("must be an object")
        return structure_fields(value, cl)

    return structure_object


def _is_literal(tp: object) -> bool:
    return typing.get_origin(tp) is Literal


def _structure_literal_factory(tp: object) -> Any:
    """Word Literal refusals like the others (cattrs' own says "not in literal typing...").

    krt's literals are all strings, hence the plain ``str`` check.
    """
    choices = typing.get_args(tp)
    requirement = "must be one of " + ", ".join(json.dumps(choice) for choice in choices)

    def structure_literal(value: object, _: type) -> object:
        if type(value) is not str or value not in choices:
            raise _FieldRequirementError(requirement)
        return value

    return structure_literal


_converter = cattrs.Converter(omit_if_default=True)
_converter.register_structure_hook(str, _structure_str)
_converter.register_structure_hook(int, _structure_int)
_converter.register_structure_hook(float, _structure_float)
_converter.register_structure_hook(bool, _structure_bool)
_converter.register_structure_hook_factory(attrs.has, _structure_object_factory)
_converter.register_structure_hook_factory(_is_literal, _structure_literal_factory)
_structure_response_cancel_fields = _structure_object_factory(ResponseCancel)


def _structure_response_cancel(value: object, cl: type) -> ResponseCancel:
    # A bare KeyError naming both spellings reads as a missing field in _failures, which
    # is what the client got wrong; the post-init ValueError would only say "invalid".
    if isinstance(value, dict) and value.get("response") is None and value.get("response_id") is None:
        raise KeyError("response", "response_id")
    return cast("ResponseCancel", _structure_response_cancel_fields(value, cl))


_converter.register_structure_hook(ResponseCancel, _structure_response_cancel)
configure_tagged_union(ClientEvent, _converter, tag_generator=attrgetter("TYPE"), tag_name="type")
configure_tagged_union(ServerEvent, _converter, tag_generator=attrgetter("TYPE"), tag_name="type")

# --- decoding ---------------------------------------------------------------------------


def decode_client_event(message: str | bytes, max_bytes: int) -> ClientEvent:
    """The one boundary client input crosses; anything wrong with it is a ProtocolError.

    ``max_bytes`` is measured in UTF-8 bytes, as on the wire, so a text of many-byte
    characters cannot slip past a limit meant to bound memory and parse time.
    """
    if not isinstance(message, str):
        raise ProtocolError(
            "binary_frame", "binary frames are not accepted; send each event as a JSON text frame"
        )
    if len(message) > max_bytes or len(message.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError(
            "oversized",
            f"the message is larger than the limit of {max_bytes} bytes",
            *_created_response(message),
        )
    try:
        obj = _parse_object(message)
    except ProtocolError as exc:
        # JSON but for a NaN or Infinity somewhere: a create's id may still be readable.
        _type, exc.response_id = _created_response(message, lenient=True)
        raise
    event_type = _read_type(obj, CLIENT_EVENT_TYPES)
    try:
        return cast("ClientEvent", _structure(obj, ClientEvent, event_type))
    except ProtocolError as exc:
        exc.response_id = _created_id(obj)
        raise


def _created_id(obj: object) -> str | None:
    """The ``response_id`` of a ``response.create`` object, when it is readable."""
    if not isinstance(obj, dict) or obj.get("type") != ResponseCreate.TYPE:
        return None
    response_id = obj.get("response_id")
    return response_id if isinstance(response_id, str) else None


def _created_response(message: str, *, lenient: bool = False) -> tuple[str | None, str | None]:
    """(type, response_id) of a frame krt refuses (oversized, or with ``lenient`` JSON
    but for NaN or Infinity constants), when it is a ``response.create`` whose id can be
    read. Parsing it costs a few milliseconds at most: the socket refuses any message
    over ``MAX_WS_MESSAGE_BYTES``."""
    try:
        obj = json.loads(message, parse_constant=_ignore_constant if lenient else _reject_constant)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(obj, dict) or obj.get("type") != ResponseCreate.TYPE:
        return None, None
    return ResponseCreate.TYPE, _created_id(obj)


class UnknownServerEvent(ValueError):
    """A well-formed event of a type this krt does not know, as a newer server may send:
    a client skips it quietly, where junk is worth a warning."""


def decode_server_event(message: str) -> ServerEvent:
    """Read a server frame (for krt's clients and tests); junk raises ValueError, and an
    event of a type newer than this module :class:`UnknownServerEvent`."""
    try:
        obj = _parse_object(message)
        tag = obj.get("type")
        if isinstance(tag, str) and tag not in SERVER_EVENT_TYPES:
            raise UnknownServerEvent(f"unknown event type {_preview(tag)}")
        event_type = _read_type(obj, SERVER_EVENT_TYPES)
        return cast("ServerEvent", _structure(obj, ServerEvent, event_type))
    except ProtocolError as exc:
        raise ValueError(exc.message) from exc


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _ignore_constant(_name: str) -> None:
    return None


def _parse_object(message: str) -> dict[str, Any]:
    try:
        obj = json.loads(message, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deep enough to recurse out
        raise ProtocolError("invalid_json", f"the message is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("invalid_json", f"an event must be a JSON object, not {_json_kind(obj)}")
    return obj


def _read_type(obj: dict[str, Any], known: frozenset[str]) -> str:
    """Check the tag up front so an unknown type gets a message listing the known ones."""
    tag = obj.get("type")
    if isinstance(tag, str) and tag in known:
        return tag
    choices = ", ".join(sorted(known))
    if tag is None:
        raise ProtocolError("unknown_event", f"the event has no 'type'; known types: {choices}")
    if not isinstance(tag, str):
        raise ProtocolError("unknown_event", f"'type' must be a string; known types: {choices}")
    raise ProtocolError("unknown_event", f"unknown event type {_preview(tag)}; known types: {choices}", tag)


def _structure(obj: dict[str, Any], union: object, event_type: str) -> object:
    try:
        return _converter.structure(obj, cast("type[object]", union))
    except (cattrs.BaseValidationError, KeyError, ValueError, TypeError) as exc:
        failures = list(_failures(exc, (), obj))
        message = f"{event_type}: " + "; ".join(sentence for _, sentence in failures)
        raise ProtocolError(failures[0][0], message, event_type) from exc


def _failures(
    exc: BaseException, path: tuple[str, ...], obj: dict[str, Any]
) -> typing.Iterator[tuple[DecodeErrorCode, str]]:
    """Walk cattrs' nested exception groups, naming each bad field by its dotted path."""
    if isinstance(exc, cattrs.ClassValidationError):
        with_notes, without_notes = exc.group_exceptions()
        for error, note in with_notes:
            yield from _failures(error, (*path, note.name), obj)
        for unnoted in without_notes:
            yield from _failures(unnoted, path, obj)
    elif isinstance(exc, KeyError):
        # cattrs' KeyErrors arrive noted, so the path already ends in the field;
        # response.cancel's arrives bare, at the top, naming the keys it wanted.
        names = [".".join(path)] if path else [str(key) for key in exc.args]
        alternatives = "".join(f" (or '{name}')" for name in names[1:])
        yield "missing_field", f"missing required field '{names[0]}'{alternatives}"
    else:
        requirement = str(exc) if isinstance(exc, _FieldRequirementError) else f"is invalid ({exc})"
        value: object = obj
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        shown = (
            _json_kind(value) if isinstance(value, dict | list) else f"{_json_kind(value)} {_preview(value)}"
        )
        subject = f"field '{'.'.join(path)}'" if path else "the event"
        yield "invalid_field", f"{subject} {requirement} (got {shown})"


_JSON_KINDS = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string"}


def _json_kind(value: object) -> str:
    return _JSON_KINDS.get(type(value)) or ("array" if isinstance(value, list) else "object")


def _preview(value: object, limit: int = 40) -> str:
    """Quote a client value without echoing a whole paragraph back."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- encoding ---------------------------------------------------------------------------

Event = ClientEvent | ServerEvent


def encode(event: Event) -> str:
    """Compact JSON with ``type`` first (people read these frames in logs), no null options.

    Client events encode too, for krt's client tool; :func:`decode_client_event` reads
    back exactly what this writes.
    """
    return json.dumps(
        {"type": event.TYPE, **_converter.unstructure(event)}, separators=(",", ":"), allow_nan=False
    )


_AUDIO_DELTA_HEAD = '{"type":"' + OutputAudioDelta.TYPE + '","response":'


def encode_audio_delta(response_id: str, pcm: bytes) -> str:
    """``encode(OutputAudioDelta(response_id, b64(pcm)))`` without the object and dict.

    Audio frames are almost all of the traffic; the base64 alphabet needs no JSON
    escaping, so only the id goes through json.dumps (for quotes and non-ASCII).
    """
    return f'{_AUDIO_DELTA_HEAD}{json.dumps(response_id)},"delta":"{base64.b64encode(pcm).decode("ascii")}"}}'
