"""What the console knows about the server: the admin feed folded into plain state.

The screen only draws this; every message of the feed changes it in one place, so what
the operator sees after a reconnect or a lost-events snapshot is exactly what a console
that saw every event would show.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import attrs

from krt.wire import admin_schema as schema

if TYPE_CHECKING:
    from collections.abc import Iterable

HISTORY = 300
"""Engine samples kept for the plots: five minutes at one a second."""
ENDED_KEPT = 50
"""Ended responses kept on screen, newest last."""
LOGS_KEPT = 200


@attrs.define
class ServerView:
    hello: schema.Hello | None = None
    ready: bool = False
    draining: bool = False
    knobs: schema.Knobs | None = None
    connections: dict[str, schema.ConnectionInfo] = attrs.field(factory=dict)
    responses: dict[tuple[str, str], schema.ResponseInfo] = attrs.field(factory=dict)
    """By (connection, response id), in the order they were first seen."""
    engine: schema.EngineSample | None = None
    history: collections.deque[schema.EngineSample] = attrs.field(
        factory=lambda: collections.deque(maxlen=HISTORY)
    )
    logs: collections.deque[schema.LogEntry] = attrs.field(
        factory=lambda: collections.deque(maxlen=LOGS_KEPT)
    )
    lost_events: int = 0
    """Events the server dropped for this console since it attached (it was too slow)."""

    def apply(self, message: schema.ServerMessage) -> None:
        if isinstance(message, schema.Hello):  # a (new) server: nothing of the last one stays
            self.hello = message
            self.lost_events = 0
            self.history.clear()
            self.logs.clear()
            self.engine = None
            self._take(message.snapshot)
        elif isinstance(message, schema.EventsLost):
            self.lost_events += message.count
            self._take(message.snapshot)
        elif isinstance(message, schema.ConnectionOpened):
            self.connections[message.connection.connection] = message.connection
        elif isinstance(message, schema.ConnectionClosed):
            self.connections.pop(message.connection, None)
        elif isinstance(message, schema.ResponseUpdated):
            self._update(message.response)
        elif isinstance(message, schema.EngineUpdated):
            self.engine = message.engine
            self.history.append(message.engine)
        elif isinstance(message, schema.ServerUpdated):
            self.ready, self.draining, self.knobs = message.ready, message.draining, message.knobs
        elif isinstance(message, schema.LogRecorded):
            self.logs.append(message.entry)

    def _take(self, snapshot: schema.Snapshot) -> None:
        self.ready, self.draining, self.knobs = snapshot.ready, snapshot.draining, snapshot.knobs
        self.connections = {info.connection: info for info in snapshot.connections}
        self.responses = {}
        for response in snapshot.responses:
            self._update(response)
        if snapshot.engine is not None:
            self.engine = snapshot.engine
            if not self.history or self.history[-1] != snapshot.engine:
                self.history.append(snapshot.engine)
        for entry in snapshot.logs:
            if entry not in self.logs:
                self.logs.append(entry)

    def _update(self, response: schema.ResponseInfo) -> None:
        self.responses[(response.connection, response.response)] = response
        ended = [key for key, info in self.responses.items() if info.state not in ("queued", "speaking")]
        for key in ended[: max(0, len(ended) - ENDED_KEPT)]:
            del self.responses[key]

    def live(self) -> list[schema.ResponseInfo]:
        return [info for info in self.responses.values() if info.state in ("queued", "speaking")]

    def series(self, field: str) -> list[float]:
        """One engine figure over the kept history (missing values as 0), for a plot."""
        return [_number(getattr(sample, field)) for sample in self.history]

    def responses_of(self, connection: str) -> Iterable[schema.ResponseInfo]:
        return (info for info in self.responses.values() if info.connection == connection)


def _number(value: float | None) -> float:
    return 0.0 if value is None else float(value)
