"""What the whole server shares: the engine once loaded, open sessions, in-flight responses.

The HTTP routes report it (``/readyz``), sessions open responses through it, and a drain
flips it; whether the server is draining is recorded once, in :class:`InFlight`.
"""

from __future__ import annotations

import functools

import attrs
import trio

from krt.config import Config
from krt.engine.facade import Engine
from krt.metrics.record import MetricsLog
from krt.server.monitor import Monitor
from krt.server.prometheus import ServerMetrics
from krt.server.responses import InFlight, Response, ResponseBook
from krt.server.session import Session


@attrs.define
class ServerState:
    config: Config
    engine: Engine | None
    """None while the model loads."""
    metrics: MetricsLog
    ready: bool = False
    """The engine is loaded and warm."""
    in_flight: InFlight = attrs.field(factory=InFlight)
    open_sessions: set[Session] = attrs.field(factory=set)
    monitor: Monitor = attrs.field(init=False)
    """What the operator console sees (created with the state, on the Trio thread)."""
    prometheus: ServerMetrics = attrs.field(init=False)
    """What ``GET /metrics`` serves."""
    drain_requested: trio.Event = attrs.field(factory=trio.Event)
    """Set by an operator's drain command; the server then drains as on SIGTERM."""

    def __attrs_post_init__(self) -> None:
        self.monitor = Monitor(self)
        self.prometheus = ServerMetrics(self)

    def response_book(self, connection: str) -> ResponseBook:
        """The book one connection (a WebSocket session, an HTTP request) opens its
        responses in: counted in the server's in-flight total, logged to the metrics log,
        and shown on the console and Prometheus as they open and settle."""
        assert self.engine is not None, "responses open only once the model is loaded"
        return ResponseBook(
            self.in_flight,
            self.metrics,
            self.engine.describe().backend,
            functools.partial(self.response_changed, connection),
        )

    def response_changed(self, connection: str, response: Response) -> None:
        """A response opened or settled: the console's feed and the metrics see it."""
        self.monitor.response_changed(connection, response)
        self.prometheus.response_changed(response)

    @property
    def draining(self) -> bool:
        return self.in_flight.draining

    @property
    def sessions(self) -> int:
        return len(self.open_sessions)

    async def close_sessions(
        self, code: int = 1001, *, idle_only: bool = False, reason: str | None = None
    ) -> None:
        """Say goodbye to every client (1001, going away) before the process exits, so
        a voice agent reconnects elsewhere instead of guessing at an abnormal closure;
        ``idle_only``: only those with no response in flight."""
        async with trio.open_nursery() as nursery:
            for session in list(self.open_sessions):
                if not idle_only or not session.responses.in_flight():
                    nursery.start_soon(session.close, code, reason)

    def readiness(self) -> tuple[int, dict[str, object]]:
        if self.engine is None:
            return 503, {"ready": False, "draining": self.draining, "loading": True}
        info, stats = self.engine.describe(), self.engine.statistics()
        ok = self.ready and not self.draining
        body: dict[str, object] = {
            "ready": ok,
            "draining": self.draining,
            "backend": info.backend,
            "device": info.device,
            "weights": info.weights,
            "voices": {"female": info.female, "male": info.male, "all": list(info.voices)},
            "batch_windows": stats.batch_windows,
            "capacity_by_batch": {str(size): round(rate, 3) for size, rate in stats.capacity_by_batch},
        }
        return (200 if ok else 503), body
