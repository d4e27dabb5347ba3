"""One response's life, from ``response.create`` to the metrics line, in one place.

A response is *opened* when krt accepts it (just before ``response.created`` is queued)
and *settled* once its last event (``response.completed``, ``response.canceled`` or
``response.error``) is on the wire: then it leaves the server's in-flight count (which a
drain waits on) and, unless it failed, lands in the metrics log. Until it is *retired* a
``response.cancel`` or ``barge`` can stop it, even when its synthesis is done and only
its audio is still queued for a slow client. A cancel retires it at once (a second cancel
gets ``unknown_response``), and so does a failure, whose ``response.error`` is never
turned into a cancel; a completed response is retired as its last event starts out (a
cancel crossing it gets ``unknown_response``, never a second last event). A connection
that vanishes settles every unsettled response as canceled, but for failed ones.

The server-wide side is :class:`InFlight`: how many responses are open across all
connections, and whether the server is draining (then no new one may open). It is the
one record of "draining"; ``/readyz``, sessions and the drain all read it from here.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from krt import PCM_BYTES_PER_SECOND
from krt.codecs import StreamEncoder
from krt.engine.facade import Job, SpeechPlan
from krt.errors import SpeechError
from krt.metrics.record import ResponseRecord
from krt.protocol import DRAINING_REASON

if TYPE_CHECKING:
    from krt.metrics.record import MetricsLog


class Outcome(enum.Enum):
    """Where a response stands. OPEN moves once; a cancel may still turn COMPLETED into
    CANCELED while the completion is queued, FAILED and CANCELED are final."""

    OPEN = "open"
    COMPLETED = "completed"
    CANCELED = "canceled"
    FAILED = "failed"


@attrs.define(eq=False)
class Response:
    """A response from ``response.create`` (or flushed input) until its last event."""

    response_id: str
    plan: SpeechPlan
    received_at: float
    text: str = ""
    """What the client asked to be spoken (the operator console shows it)."""
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    outcome: Outcome = Outcome.OPEN
    settled: bool = False
    """Its last event is on the wire and it has been counted; nothing more happens to it."""
    first_audio_at: float | None = None
    audio_bytes: int = 0
    queue_seconds: float = 0.0
    error_code: str | None = None
    """Why it failed, when it did."""
    created_at: float = attrs.field(factory=time.time)
    """Unix time it was received (the operator console shows it)."""
    transport: str = "websocket"
    """How it came: ``websocket`` or ``http`` (the OpenAI speech endpoint)."""
    encoder: StreamEncoder | None = None
    """Converts its PCM to the session's format and rate; None for Kokoro's own PCM."""
    job: Job | None = None
    """Its synthesis in the engine: admitted before ``response.created`` when nothing is
    ahead of it on its socket, else once the responses before it are done."""
    on_audio_taken: Callable[[float], None] = lambda _seconds: None
    """Told the seconds of audio each time the client acknowledges reading some (the
    engine job's :meth:`~krt.engine.scheduler.Job.taken` while it is synthesizing)."""

    @property
    def canceled(self) -> bool:
        """Nothing more of it may reach the client but its ``response.canceled``."""
        return self.outcome is Outcome.CANCELED

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
        return None if self.first_audio_at is None else (self.first_audio_at - self.received_at) * 1000


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
            raise SpeechError("busy", DRAINING_REASON)
        self.count += 1
        self.zero = trio.Event() if self.zero.is_set() else self.zero

    def close(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.zero.set()
        self.settled.set()
        self.settled = trio.Event()


class ResponseBook:
    """One connection's responses: which can still be addressed, which are not yet settled."""

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
        """Told when a response opens and when it settles (the operator console's feed)."""
        self._addressable: dict[str, Response] = {}
        self._unsettled: list[Response] = []

    def __contains__(self, response_id: str) -> bool:
        return response_id in self._addressable

    def get(self, response_id: str) -> Response | None:
        return self._addressable.get(response_id)

    def in_flight(self) -> bool:
        """Some response has not yet had its last event sent: the connection is not idle."""
        return bool(self._unsettled)

    def addressable(self) -> list[Response]:
        return list(self._addressable.values())

    def unsettled(self) -> list[Response]:
        """Responses whose last event is not yet on the wire, in the order they were opened."""
        return list(self._unsettled)

    def open(self, response: Response) -> None:
        """Count a response the client is about to be told exists; SpeechError ``busy`` while draining."""
        self._in_flight.open()
        self._addressable[response.response_id] = response
        self._unsettled.append(response)
        self._on_change(response)

    def cancel(self, response: Response) -> None:
        """Stop it now: its scope is cancelled, and queued audio and events of it are dropped."""
        assert response.outcome is not Outcome.FAILED, "a failed response is retired at once"
        assert not response.settled, "a settled response is retired"
        response.outcome = Outcome.CANCELED
        response.scope.cancel(reason="response.cancel")
        self.retire(response)

    def refuse(self, response: Response, code: str) -> None:
        """Stop it now and fail it with ``code`` (a draining server that cannot finish it):
        its scope is cancelled and it is retired, so its ``response.error`` is its last
        word, as with any failure."""
        assert response.outcome is Outcome.OPEN, "only a response still being made is refused"
        response.outcome = Outcome.FAILED
        response.error_code = code
        response.scope.cancel(reason=code)
        self.retire(response)

    def end(self, response: Response, outcome: Outcome) -> None:
        """Its synthesis is over (completed or failed), unless it was canceled first.

        A completed response stays addressable until its last event starts out: its audio
        may still be queued for a slow client, and a cancel must stop that too. A
        failed one is retired now, so its ``response.error`` always reaches the client.
        """
        if response.outcome is Outcome.OPEN:
            response.outcome = outcome
        if response.outcome is Outcome.FAILED:
            self.retire(response)

    def retire(self, response: Response) -> None:
        """No event may address it any more (a late cancel gets ``unknown_response``)."""
        self._addressable.pop(response.response_id, None)

    def settle(self, response: Response) -> None:
        """Its last event is on the wire: it leaves the in-flight count and, unless it
        failed, lands in the metrics log. Settling twice is a no-op."""
        if response.settled:
            return
        response.settled = True
        self.retire(response)
        self._unsettled.remove(response)
        self._in_flight.close()
        if response.outcome is not Outcome.FAILED:
            self._metrics.append(self._record(response))
        self._on_change(response)

    def abandon_all(self) -> None:
        """The connection is gone: every response whose last event did not reach the client
        counts as canceled (a failed one stays failed, and unrecorded)."""
        for response in list(self._unsettled):
            if response.outcome is not Outcome.FAILED:
                response.outcome = Outcome.CANCELED
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
