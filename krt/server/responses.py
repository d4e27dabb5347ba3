"""A response's life, from ``response.create`` to its metrics line, as one state table.

Both transports (a WebSocket session, an HTTP speech request) move their responses
through the same states, and only along :data:`NEXT_STATES`; a step off the table is a
bug and raises :class:`InvalidTransition` (the way h11 guards HTTP's states):

- ``QUEUED``: accepted (the client is told it exists), nothing of it made yet.
- ``SPEAKING``: its engine job is held and its audio flows to the client.
- ``MADE``: all of it is made; the rest of its audio and its completion are on their way.
  A cancel can still stop it: a slow client may not have heard it yet.
- ``COMPLETED``: its last event (``response.completed``, or the end of an HTTP body) is
  going out. It can no longer be addressed: a cancel crossing it gets
  ``unknown_response``, never a second last event.
- ``CANCELED``: stopped by the client (cancel, barge-in, hang-up) or by a connection
  that vanished; nothing of it follows but ``response.canceled``.
- ``FAILED``: ended by an error; nothing follows but its ``response.error``, which a
  later cancel never turns into ``response.canceled``.
- ``SETTLED``: its last event is on the wire (or its connection is gone). It has left the
  server's in-flight count, which a drain waits on, and, unless it failed, it is in the
  metrics log.

A :class:`Response` owns what is measured of it (when its first audio was sent, how much
was, how long it queued), its encoder, and the engine's read credit: audio counts as read
only when its transport says the client has it (:meth:`Response.read`), so a client
that stops reading holds back its own stream and nobody else's.

The server-wide side is :class:`InFlight`: how many responses are open across all
connections, and whether the server is draining (then no new one may open). It is the
one record of "draining"; ``/readyz``, sessions and the drain all read it from here.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

import attrs
import trio

from krt import PCM_BYTES_PER_SECOND
from krt.engine.facade import Job, SpeechPlan
from krt.errors import SpeechError
from krt.media.codecs import StreamEncoder
from krt.metrics.record import ResponseRecord
from krt.wire.protocol import DRAINING_REASON

if TYPE_CHECKING:
    from collections.abc import Callable

    from krt.metrics.record import MetricsLog


class State(enum.Enum):
    """Where a response stands (the module docstring says what each state means)."""

    QUEUED = "queued"
    SPEAKING = "speaking"
    MADE = "made"
    COMPLETED = "completed"
    CANCELED = "canceled"
    FAILED = "failed"
    SETTLED = "settled"


NEXT_STATES: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.SPEAKING, State.CANCELED, State.FAILED}),
    State.SPEAKING: frozenset({State.MADE, State.CANCELED, State.FAILED}),
    State.MADE: frozenset({State.COMPLETED, State.CANCELED}),
    # CANCELED: the connection went before the completion was on the wire.
    State.COMPLETED: frozenset({State.SETTLED, State.CANCELED}),
    State.CANCELED: frozenset({State.SETTLED}),
    State.FAILED: frozenset({State.SETTLED}),
    State.SETTLED: frozenset(),
}
"""Every step a response may take; any other is a bug."""

ADDRESSABLE = frozenset({State.QUEUED, State.SPEAKING, State.MADE})
"""States in which a ``response.cancel`` or ``barge`` reaches the response."""
ENDINGS = frozenset({State.COMPLETED, State.CANCELED, State.FAILED})
"""The states a response settles from: its outcome."""


class InvalidTransition(RuntimeError):
    """A response was moved along a step :data:`NEXT_STATES` does not allow."""


@attrs.define(eq=False)
class Response:
    """A response from ``response.create`` (or flushed input, or an HTTP request) until settled."""

    response_id: str
    plan: SpeechPlan
    received_at: float
    text: str = ""
    """What the client asked to be spoken (the operator console shows it)."""
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    """Its delivery runs inside it: a cancel is ``scope.cancel()``, not a polled flag."""
    state: State = State.QUEUED
    outcome: State | None = None
    """The ending it settled (or will settle) from: COMPLETED, CANCELED or FAILED."""
    first_audio_sent_at: float | None = None
    """When its first audio (the primer included) was written to the client."""
    audio_bytes: int = 0
    """PCM bytes of it written to the client (the primer not counted)."""
    queue_seconds: float = 0.0
    """How long its job waited for its first turn on the model."""
    error_code: str | None = None
    """Why it failed, when it did."""
    created_at: float = attrs.field(factory=time.time)
    """Unix time it was received (the operator console shows it)."""
    transport: str = "websocket"
    """How it came: ``websocket`` or ``http`` (the OpenAI speech endpoint)."""
    encoder: StreamEncoder | None = None
    """Converts its PCM to the session's format and rate; None for Kokoro's own PCM."""
    job: Job | None = None
    """Its synthesis in the engine: admitted before the client is told it exists when
    nothing is ahead of it on its connection, else once the responses before it are done."""

    def move(self, to: State) -> None:
        """Take one step of the table; InvalidTransition for any other."""
        if to not in NEXT_STATES[self.state]:
            raise InvalidTransition(f"{self.response_id}: {self.state.value} -> {to.value}")
        self.state = to
        if to in ENDINGS:
            self.outcome = to

    @property
    def addressable(self) -> bool:
        """A cancel or a barge-in still reaches it."""
        return self.state in ADDRESSABLE

    @property
    def making(self) -> bool:
        """Its audio is still being made (the engine has work for it)."""
        return self.state in (State.QUEUED, State.SPEAKING)

    @property
    def settled(self) -> bool:
        return self.state is State.SETTLED

    @property
    def canceled(self) -> bool:
        """Nothing more of it may reach the client but its ``response.canceled``."""
        return self.outcome is State.CANCELED

    # -- the steps its delivery and its client take -----------------------------------------

    def made(self) -> None:
        """All of it is made, unless a cancel or a refusal ended it first."""
        if self.state is State.SPEAKING:
            self.move(State.MADE)

    def fail(self, code: str) -> None:
        """An error ended it, unless a cancel did first (then the cancel stands)."""
        if self.making:
            self.error_code = code
            self.move(State.FAILED)

    def cancel(self, reason: str = "response.cancel") -> None:
        """Stop it now: its scope is cancelled, and what is queued of it is dropped."""
        self.move(State.CANCELED)
        self.scope.cancel(reason=reason)

    def refuse(self, code: str) -> None:
        """Fail it now with ``code`` (a draining server that cannot finish it): its scope
        is cancelled and its ``response.error`` is its last word, as with any failure."""
        self.error_code = code
        self.move(State.FAILED)
        self.scope.cancel(reason=code)

    def last_event_starting(self) -> None:
        """Its last event starts out: a completed one can no longer be canceled."""
        if self.state is State.MADE:
            self.move(State.COMPLETED)

    # -- what is measured of it ---------------------------------------------------------------

    def sent(self, pcm_bytes: int, output_bytes: int) -> None:
        """``pcm_bytes`` of its PCM went to the client as ``output_bytes`` (none yet while an
        encoder fills; no PCM for the primer): the first output bytes are its first audio."""
        if output_bytes and self.first_audio_sent_at is None:
            self.first_audio_sent_at = trio.current_time()
        self.audio_bytes += pcm_bytes

    def read(self, pcm_bytes: int) -> None:
        """The client has ``pcm_bytes`` more of its PCM: the engine may make more for it."""
        if self.job is not None:
            self.job.mark_read(pcm_bytes / PCM_BYTES_PER_SECOND)

    def output_bytes(self, pcm: bytes) -> bytes:
        """What the client is sent for ``pcm`` (maybe nothing yet, while a resampler fills)."""
        return pcm if self.encoder is None else self.encoder.encode(pcm)

    def output_tail(self) -> bytes:
        """What its encoder still holds once the last PCM is in (once; nothing for raw PCM)."""
        encoder, self.encoder = self.encoder, None
        return b"" if encoder is None else encoder.finish()

    def audio_seconds(self) -> float:
        """Audio sent to the client so far."""
        return self.audio_bytes / PCM_BYTES_PER_SECOND

    def ttfb_ms(self) -> float | None:
        """From receipt to the first audio sent, in milliseconds (None before it)."""
        if self.first_audio_sent_at is None:
            return None
        return (self.first_audio_sent_at - self.received_at) * 1000


@attrs.define
class InFlight:
    """Responses open server-wide, and whether new ones may open (not while draining)."""

    count: int = 0
    zero: trio.Event = attrs.field(factory=trio.Event)
    draining: bool = False
    settled: trio.Event = attrs.field(factory=trio.Event)
    """Set when a response settles (then replaced): a drain closes what went idle."""

    def start_drain(self) -> None:
        """From now on new responses are refused ``busy``; open ones still run."""
        self.draining = True

    def open(self) -> None:
        if self.draining:
            raise SpeechError("busy", DRAINING_REASON, reconnect=True)
        self.count += 1
        self.zero = trio.Event() if self.zero.is_set() else self.zero

    def close(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.zero.set()
        self.settled.set()
        self.settled = trio.Event()


class ResponseBook:
    """One connection's responses: which can still be addressed, which are not yet settled.

    Sessions and HTTP requests get theirs from the server's state
    (:meth:`~krt.server.state.ServerState.response_book`), so every response is counted,
    logged and shown the same way whichever transport it came by.
    """

    def __init__(
        self,
        in_flight: InFlight,
        metrics: MetricsLog,
        backend: str,
        on_change: Callable[[Response], None] = lambda _response: None,
    ) -> None:
        self._in_flight = in_flight
        self._metrics = metrics
        self._backend = backend
        self._on_change = on_change
        """Told when a response opens and when it settles (the console's feed, Prometheus)."""
        self._unsettled: list[Response] = []
        """Not yet settled, in the order they were opened."""

    def __contains__(self, response_id: str) -> bool:
        return self.get(response_id) is not None

    def get(self, response_id: str) -> Response | None:
        """The addressable response of that id: one a cancel can still reach (a connection
        holds at most a few dozen, so a scan is cheap)."""
        for response in self._unsettled:
            if response.response_id == response_id and response.addressable:
                return response
        return None

    def in_flight(self) -> bool:
        """Some response has not yet had its last event sent: the connection is not idle."""
        return bool(self._unsettled)

    def addressable(self) -> list[Response]:
        return [response for response in self._unsettled if response.addressable]

    def unsettled(self) -> list[Response]:
        """Responses whose last event is not yet on the wire, in the order they were opened."""
        return list(self._unsettled)

    def open(self, response: Response) -> None:
        """Count a response the client is about to be told exists; SpeechError ``busy`` while draining."""
        assert response.response_id not in self, "the caller refuses an id still addressable"
        self._in_flight.open()
        self._unsettled.append(response)
        self._on_change(response)

    def settle(self, response: Response) -> None:
        """Its last event is on the wire: it leaves the in-flight count and, unless it
        failed, lands in the metrics log. Settling twice is a no-op."""
        if response.settled:
            return
        response.move(State.SETTLED)
        self._unsettled.remove(response)
        self._in_flight.close()
        if response.outcome is not State.FAILED:
            self._metrics.append(self._record(response))
        self._on_change(response)

    def abandon_all(self) -> None:
        """The connection is gone: every response whose last event did not reach the client
        counts as canceled (a failed one stays failed, and unrecorded)."""
        for response in list(self._unsettled):
            if response.state is not State.CANCELED and response.state is not State.FAILED:
                response.cancel(reason="connection gone")
            self.settle(response)

    def _record(self, response: Response) -> ResponseRecord:
        return ResponseRecord(
            ts=time.time(),
            request_id=response.response_id,
            ttfb_ms=response.ttfb_ms(),
            wall_s=trio.current_time() - response.received_at,
            audio_s=response.audio_seconds(),
            canceled=response.canceled,
            voice=response.plan.voice,
            backend=self._backend,
            queue_ms=response.queue_seconds * 1000,
        )
