"""What the operator console sees: the live server, as admin-schema messages.

Sessions report connections and responses here as they open and end; a ticker samples
what moves continuously (a response's audio sent, the engine's load) a few times a
second; warnings and errors come from a logging handler. Every change is *offered* to
each subscribed console's bounded queue and never waited on: a console that falls behind
loses events and, once it has caught up, gets :class:`~krt.wire.admin_schema.EventsLost` with a
fresh snapshot. Nothing here can slow the audio path.
"""

from __future__ import annotations

import collections
import importlib.metadata
import logging
import os
import statistics
import time
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

import trio

from krt import PCM_BYTES_PER_SECOND
from krt.engine.facade import predicted_audio_seconds
from krt.metrics.stats import percentile
from krt.server.responses import State
from krt.wire import admin_schema as schema

if TYPE_CHECKING:
    from collections.abc import Iterator

    from krt.engine.facade import EngineStatistics
    from krt.server.responses import Response
    from krt.server.session import Session
    from krt.server.state import ServerState

try:
    VERSION = importlib.metadata.version("krt")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "unknown"
SUBSCRIBER_QUEUE = 1024
"""Messages a console may fall behind by before it loses events."""
PROGRESS_EVERY_S = 0.25
ENGINE_EVERY_S = 1.0
RECENT_ENDED = 50
"""Ended responses a new console is shown."""
RECENT_LOGS = 100
ROLLING_WINDOWS_S = (60.0, 300.0)


class Subscription:
    """One console's queue of messages, bounded; see the module's docstring."""

    def __init__(self, monitor: Monitor, size: int) -> None:
        self._monitor = monitor
        self._send, self._receive = trio.open_memory_channel[schema.ServerMessage](size)
        self.lost = 0

    def offer(self, message: schema.ServerMessage) -> None:
        if self.lost:  # behind already: drop until the snapshot has been taken
            self.lost += 1
            return
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.lost = 1

    async def next(self) -> schema.ServerMessage:
        """The next message; after a loss, once the queue is drained, ``EventsLost``."""
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            if self.lost:
                count, self.lost = self.lost, 0
                return schema.EventsLost(count, self._monitor.snapshot())
            return await self._receive.receive()


class Monitor:
    """The live registry behind the admin socket; one per server."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._started_unix = time.time()
        self._started = trio.current_time()
        self._next_connection = 0
        self._sessions: dict[str, tuple[schema.ConnectionInfo, Session]] = {}
        self._live: dict[tuple[str, str], tuple[Response, schema.ResponseInfo]] = {}
        self._ended: collections.deque[schema.ResponseInfo] = collections.deque(maxlen=RECENT_ENDED)
        self._logs: collections.deque[schema.LogEntry] = collections.deque(maxlen=RECENT_LOGS)
        self._latencies: collections.deque[tuple[float, float, float | None]] = collections.deque()
        """(trio time, TTFB ms, xRT or None) of responses settled in the longest rolling window."""
        self._engine: schema.EngineSample | None = None
        self._subscribers: set[Subscription] = set()

    # -- subscribing -----------------------------------------------------------------------

    @contextmanager
    def subscribe(self, size: int = SUBSCRIBER_QUEUE) -> Iterator[Subscription]:
        subscription = Subscription(self, size)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    def _publish(self, message: schema.ServerMessage) -> None:
        for subscription in self._subscribers:
            subscription.offer(message)

    def hello(self) -> schema.Hello:
        engine = self._state.engine
        info = engine.describe() if engine is not None else None
        return schema.Hello(
            schema=schema.SCHEMA_VERSION,
            version=VERSION,
            pid=os.getpid(),
            backend=info.backend if info else "loading",
            device=info.device if info else "",
            weights=info.weights if info else "",
            female=info.female if info else "",
            male=info.male if info else "",
            voices=info.voices if info else (),
            started_at=self._started_unix,
            uptime_s=trio.current_time() - self._started,
            snapshot=self.snapshot(),
        )

    def snapshot(self) -> schema.Snapshot:
        return schema.Snapshot(
            ready=self._state.ready,
            draining=self._state.draining,
            knobs=self.knobs(),
            connections=tuple(info for info, _session in self._sessions.values()),
            responses=self._snapshot_responses(),
            engine=self._engine,
            logs=tuple(self._logs),
        )

    def _snapshot_responses(self) -> tuple[schema.ResponseInfo, ...]:
        """The recent ended responses, then the live ones: at most ``SNAPSHOT_RESPONSES``,
        live ones first to stay."""
        live = [self._describe(response, connection) for (connection, _), (response, _) in self._live.items()]
        live = live[: schema.SNAPSHOT_RESPONSES]
        room = schema.SNAPSHOT_RESPONSES - len(live)
        ended = list(self._ended)[len(self._ended) - room :] if room else []
        return (*ended, *live)

    def knobs(self) -> schema.Knobs:
        admission = self._state.engine.admission if self._state.engine else self._state.config.admission
        return schema.Knobs(
            admission.max_concurrent_jobs, admission.max_queued_requests, admission.queue_wait_sla_ms
        )

    # -- what sessions report ----------------------------------------------------------------

    def new_connection_id(self) -> str:
        self._next_connection += 1
        return f"c{self._next_connection}"

    def connection_opened(self, connection: str, peer: str, session: Session) -> None:
        info = schema.ConnectionInfo(connection, peer, time.time())
        self._sessions[connection] = (info, session)
        self._publish(schema.ConnectionOpened(info))

    def connection_closed(self, connection: str) -> None:
        if self._sessions.pop(connection, None) is not None:
            self._publish(schema.ConnectionClosed(connection, time.time()))

    def session(self, connection: str) -> Session | None:
        entry = self._sessions.get(connection)
        return entry[1] if entry else None

    def response_changed(self, connection: str, response: Response) -> None:
        """A response opened or settled (sessions call this; the ticker covers the rest)."""
        info = self._describe(response, connection)
        key = (connection, response.response_id)
        if response.settled:
            if key in self._live and self._live[key][0] is response:  # not a newer one reusing its id
                del self._live[key]
            self._ended.append(info)
            self._record_latency(info)
        else:
            self._live[key] = (response, info)
        self._publish(schema.ResponseUpdated(info))

    def _record_latency(self, info: schema.ResponseInfo) -> None:
        """TTFB of every response that was heard (canceled ones too, as in the metrics log);
        xRT of completed ones only (a cancel cuts it short)."""
        now = trio.current_time()
        if info.ttfb_ms is not None:
            self._latencies.append((now, info.ttfb_ms, info.xrt if info.state == "completed" else None))
        horizon = now - max(ROLLING_WINDOWS_S)
        while self._latencies and self._latencies[0][0] < horizon:
            self._latencies.popleft()

    def server_changed(self) -> None:
        """Readiness, draining or the knobs changed."""
        self._publish(schema.ServerUpdated(self._state.ready, self._state.draining, self.knobs()))

    def engine_loaded(self) -> None:
        """The model is loaded and warm: consoles attached while it loaded learn what it
        is (backend, device, voices) from a fresh hello."""
        self._publish(self.hello())

    def log(self, entry: schema.LogEntry) -> None:
        self._logs.append(entry)
        self._publish(schema.LogRecorded(entry))

    # -- sampling ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sample responses' progress and the engine until cancelled."""
        last_engine = trio.current_time()
        previous = self._state.engine.statistics() if self._state.engine else None
        while True:
            await trio.sleep(PROGRESS_EVERY_S)
            self._sample_responses()
            now = trio.current_time()
            engine = self._state.engine
            if engine is not None and now - last_engine >= ENGINE_EVERY_S:
                stats = engine.statistics()
                if previous is not None:
                    self._engine = self._engine_sample(stats, previous, now - last_engine)
                    self._publish(schema.EngineUpdated(self._engine))
                previous, last_engine = stats, now

    def _sample_responses(self) -> None:
        for key, (response, published) in list(self._live.items()):
            info = self._describe(response, key[0])
            if info != published:
                self._live[key] = (response, info)
                self._publish(schema.ResponseUpdated(info))

    def _engine_sample(
        self, stats: EngineStatistics, previous: EngineStatistics, elapsed: float
    ) -> schema.EngineSample:
        now = trio.current_time()
        recent = {
            window: [row for row in self._latencies if row[0] >= now - window] for window in ROLLING_WINDOWS_S
        }
        short, long = (recent[window] for window in ROLLING_WINDOWS_S)
        short_xrt = [xrt for _, _, xrt in short if xrt is not None]
        long_xrt = [xrt for _, _, xrt in long if xrt is not None]
        return schema.EngineSample(
            at=time.time(),
            active=stats.active,
            waiting=stats.waiting,
            slots=stats.slots,
            capacity=stats.capacity,
            model_busy_pct=min(100.0, 100 * (stats.model_seconds - previous.model_seconds) / elapsed),
            audio_per_s=(stats.audio_seconds - previous.audio_seconds) / elapsed,
            busy_refusals=stats.busy_rejections,
            ttfb_p50_1m=percentile([ttfb for _, ttfb, _ in short], 50),
            ttfb_p95_1m=percentile([ttfb for _, ttfb, _ in short], 95),
            ttfb_p50_5m=percentile([ttfb for _, ttfb, _ in long], 50),
            ttfb_p95_5m=percentile([ttfb for _, ttfb, _ in long], 95),
            xrt_1m=statistics.median(short_xrt) if short_xrt else None,
            xrt_5m=statistics.median(long_xrt) if long_xrt else None,
        )

    def _describe(self, response: Response, connection: str) -> schema.ResponseInfo:
        now = trio.current_time()
        audio_s = response.audio_bytes / PCM_BYTES_PER_SECOND
        age = now - response.received_at
        return schema.ResponseInfo(
            connection=connection,
            response=response.response_id,
            state=_state_of(response),
            voice=response.plan.voice,
            speed=response.plan.speed,
            text=response.text[: schema.TEXT_PREVIEW_CHARS],
            chars=len(response.text),
            created_at=response.created_at,
            expected_audio_s=predicted_audio_seconds(len(response.text), response.plan.speed),
            audio_s=round(audio_s, 3),
            queue_ms=round(response.queue_seconds * 1000, 1)
            if response.first_audio_sent_at is not None
            else None,
            ttfb_ms=None if (ttfb := response.ttfb_ms()) is None else round(ttfb, 1),
            xrt=round(audio_s / age, 2) if audio_s and age > 0 else None,
            error_code=response.error_code,
        )


def _state_of(response: Response) -> schema.ResponseState:
    if response.outcome is State.CANCELED:
        return "canceled"
    if response.outcome is State.FAILED:
        return "failed"
    if response.settled:
        return "completed"
    return "queued" if response.first_audio_sent_at is None else "speaking"


class MonitorLogHandler(logging.Handler):
    """Warnings and errors, from any thread, onto the monitor (on the Trio thread)."""

    def __init__(self, monitor: Monitor) -> None:
        super().__init__(logging.WARNING)
        self._monitor = monitor
        self._token = trio.lowlevel.current_trio_token()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = schema.LogEntry(record.created, record.levelname, record.name, record.getMessage())
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._monitor.log, entry)
        except Exception:  # a bad format string in someone's log call: logging's own report
            self.handleError(record)
