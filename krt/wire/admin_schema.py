"""What a running krt tells its operator consoles, and what they may ask of it.

The admin socket carries JSON lines, one message each, tagged by ``type``. The server
speaks first: a :class:`Hello` (who it is, and a :class:`Snapshot` of everything live),
then events as they happen. A console sends :data:`Command` lines, each answered by a
:class:`Reply` with the same ``request`` number. ``SCHEMA_VERSION`` is in the hello: a
console that does not know it says so instead of misreading the feed.

One module, imported by the server (trio) and by the console (asyncio, Textual), so it
imports neither trio nor the engine; both ends build and read messages only through it.
"""

from __future__ import annotations

import json
import typing
from operator import attrgetter
from typing import Any, ClassVar, Literal

import attrs
import cattrs
from cattrs.strategies import configure_tagged_union

SCHEMA_VERSION = 1
MAX_LINE_BYTES = 4 * 1024 * 1024
"""Longest line either end reads. A snapshot is the longest message: it carries at most
``SNAPSHOT_RESPONSES`` responses of at most ``TEXT_PREVIEW_CHARS`` characters (~1 KiB each)."""
TEXT_PREVIEW_CHARS = 400
"""How much of a response's text the feed carries (the console shows it in the detail view)."""
SNAPSHOT_RESPONSES = 1000
"""Responses a snapshot carries at most (live ones first); a busy server's hello stays well
under ``MAX_LINE_BYTES``."""

ResponseState = Literal["queued", "speaking", "completed", "canceled", "failed"]
"""``queued`` until its first audio, ``speaking`` while its audio flows, then how it ended."""
KnobName = Literal["MAX_CONCURRENT_JOBS", "MAX_QUEUED_REQUESTS", "QUEUE_WAIT_SLA_MS"]
"""The knobs a console may change on a live server."""
KNOB_FIELDS: dict[KnobName, str] = {
    "MAX_CONCURRENT_JOBS": "max_concurrent_jobs",
    "MAX_QUEUED_REQUESTS": "max_queued_requests",
    "QUEUE_WAIT_SLA_MS": "queue_wait_sla_ms",
}
"""Each knob's field in :class:`Knobs`, and in the server's admission config alike."""


class SchemaError(ValueError):
    """A line that is not a message of this schema (or of this version of it)."""


# -- what things look like ----------------------------------------------------------------


@attrs.frozen
class Knobs:
    """The admission knobs in force (a console may change them live)."""

    max_concurrent_jobs: int
    max_queued_requests: int
    queue_wait_sla_ms: int


@attrs.frozen
class ConnectionInfo:
    connection: str
    """The server's id for the connection, unique while it runs (``c1``, ``c2``…)."""
    peer: str
    opened_at: float
    """Unix time."""


@attrs.frozen
class ResponseInfo:
    """One response as an operator sees it; sent whole whenever it changes."""

    connection: str
    response: str
    state: ResponseState
    voice: str
    speed: float
    text: str
    """Its text, cut to ``TEXT_PREVIEW_CHARS``."""
    chars: int
    """The whole text's length."""
    created_at: float
    """Unix time."""
    expected_audio_s: float
    """Predicted length of its audio, for a progress bar."""
    audio_s: float = 0.0
    """Audio sent so far."""
    queue_ms: float | None = None
    """Wait for its first turn on the model."""
    ttfb_ms: float | None = None
    """From ``response.create`` to its first audio on the wire."""
    xrt: float | None = None
    """Audio sent per second since it was created."""
    error_code: str | None = None


@attrs.frozen
class EngineSample:
    """The engine over the last second, and rolling latency over the last minutes."""

    at: float
    active: int
    waiting: int
    slots: int
    capacity: float
    """Audio seconds the engine makes per second of model time (measured)."""
    model_busy_pct: float
    """Share of the last second the model thread spent computing."""
    audio_per_s: float
    """Audio seconds made in the last second."""
    busy_refusals: int
    """Since start."""
    ttfb_p50_1m: float | None = None
    ttfb_p95_1m: float | None = None
    ttfb_p50_5m: float | None = None
    ttfb_p95_5m: float | None = None
    xrt_1m: float | None = None
    """Median xRT of the responses completed in the last minute."""
    xrt_5m: float | None = None


@attrs.frozen
class LogEntry:
    at: float
    level: str
    logger: str
    message: str


@attrs.frozen
class Snapshot:
    """Everything live, for a console that attaches or lost events."""

    ready: bool
    draining: bool
    knobs: Knobs
    connections: tuple[ConnectionInfo, ...] = ()
    responses: tuple[ResponseInfo, ...] = ()
    """Live responses and the most recent ended ones."""
    engine: EngineSample | None = None
    logs: tuple[LogEntry, ...] = ()
    """The most recent warnings and errors."""


# -- server → console -----------------------------------------------------------------------


@attrs.frozen
class Hello:
    TYPE: ClassVar[str] = "hello"
    schema: int
    version: str
    pid: int
    backend: str
    device: str
    weights: str
    female: str
    male: str
    voices: tuple[str, ...]
    started_at: float
    uptime_s: float
    snapshot: Snapshot


@attrs.frozen
class ConnectionOpened:
    TYPE: ClassVar[str] = "connection.opened"
    connection: ConnectionInfo


@attrs.frozen
class ConnectionClosed:
    TYPE: ClassVar[str] = "connection.closed"
    connection: str
    at: float


@attrs.frozen
class ResponseUpdated:
    TYPE: ClassVar[str] = "response.updated"
    response: ResponseInfo


@attrs.frozen
class EngineUpdated:
    TYPE: ClassVar[str] = "engine.updated"
    engine: EngineSample


@attrs.frozen
class ServerUpdated:
    """Readiness, draining or the knobs changed."""

    TYPE: ClassVar[str] = "server.updated"
    ready: bool
    draining: bool
    knobs: Knobs


@attrs.frozen
class LogRecorded:
    TYPE: ClassVar[str] = "log"
    entry: LogEntry


@attrs.frozen
class EventsLost:
    """The console fell behind and ``count`` events were dropped; a snapshot follows."""

    TYPE: ClassVar[str] = "events.lost"
    count: int
    snapshot: Snapshot


@attrs.frozen
class Reply:
    TYPE: ClassVar[str] = "reply"
    request: int
    ok: bool
    message: str
    """What was done, or why not."""


ServerMessage = (
    Hello
    | ConnectionOpened
    | ConnectionClosed
    | ResponseUpdated
    | EngineUpdated
    | ServerUpdated
    | LogRecorded
    | EventsLost
    | Reply
)

# -- console → server -----------------------------------------------------------------------


@attrs.frozen
class CancelResponse:
    TYPE: ClassVar[str] = "cancel"
    request: int
    connection: str
    response: str


@attrs.frozen
class CloseConnection:
    TYPE: ClassVar[str] = "close"
    request: int
    connection: str


@attrs.frozen
class Drain:
    TYPE: ClassVar[str] = "drain"
    request: int


@attrs.frozen
class SetKnob:
    TYPE: ClassVar[str] = "set"
    request: int
    knob: KnobName
    value: int


Command = CancelResponse | CloseConnection | Drain | SetKnob

# -- the wire --------------------------------------------------------------------------------

_converter = cattrs.Converter()
configure_tagged_union(ServerMessage, _converter, tag_generator=attrgetter("TYPE"), tag_name="type")
configure_tagged_union(Command, _converter, tag_generator=attrgetter("TYPE"), tag_name="type")


def encode(message: ServerMessage | Command) -> bytes:
    """One line, newline included."""
    union: Any = Command if isinstance(message, typing.get_args(Command)) else ServerMessage
    text = json.dumps(_converter.unstructure(message, union), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace") + b"\n"  # a lone surrogate stays valid JSON


def decode_server_message(line: bytes | str) -> ServerMessage:
    return typing.cast("ServerMessage", _decode(line, ServerMessage))


def decode_command(line: bytes | str) -> Command:
    return typing.cast("Command", _decode(line, Command))


def _decode(line: bytes | str, union: Any) -> object:
    if len(line) > MAX_LINE_BYTES:
        raise SchemaError(f"line over {MAX_LINE_BYTES} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # "[[[[…" nests past the parser's stack
        raise SchemaError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SchemaError("a message is a JSON object")
    if obj.get("type") == Hello.TYPE and obj.get("schema") != SCHEMA_VERSION:
        raise SchemaError(
            f"the server speaks admin schema {obj.get('schema')!r}; this console knows {SCHEMA_VERSION}"
        )
    try:
        return _converter.structure(obj, union)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"not a valid {obj.get('type')!r} message: {exc}") from None
