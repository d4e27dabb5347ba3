"""``GET /metrics``: what an operator's Prometheus scrapes, in its text format.

Two kinds of figure, from two places:

- per response (TTFB and queue-wait histograms, responses by outcome, audio sent), observed
  once each response settles, from the same :class:`~krt.server.responses.Response` the
  metrics log and the operator console read, so the three always agree;
- the engine's and the server's state (streams active and waiting, busy refusals, audio
  made, model-thread busy time, stalls, open connections), read at scrape time from
  :meth:`Engine.statistics` and the server state, never kept twice.

Each server has its own registry (tests run many servers in one process, and the global
one would mix them). Labels are bounded: ``voice`` is a voice id, or ``blend`` for any
blend (a client could otherwise mint a new series per request).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from krt.server.responses import Response
    from krt.server.state import ServerState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
"""Seconds: fine where a voice agent's TTFB lives (0.1-1 s), coarse beyond."""


class ServerMetrics:
    def __init__(self, state: ServerState) -> None:
        self._state = state
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["backend", "voice", "transport"]
        self._ttfb = Histogram(
            "krt_ttfb_seconds",
            "From a request to its first audio bytes leaving the server.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._queue_wait = Histogram(
            "krt_queue_wait_seconds",
            "From a request's admission to its first turn on the model.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._responses = Counter(
            "krt_responses",
            "Responses settled, by outcome (completed, canceled, failed).",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self._audio_sent = Counter(
            "krt_audio_sent_seconds", "Audio sent to clients.", labels, registry=self.registry
        )
        self.registry.register(_StateCollector(state))

    def response_changed(self, response: Response) -> None:
        """Observe a response once, when it settles (the hook the console's feed shares)."""
        if not response.settled or response.outcome is None:
            return
        labels = (self._backend(), self._voice_label(response.plan.voice), response.transport)
        self._responses.labels(*labels, response.outcome.value).inc()
        ttfb = response.ttfb_ms()
        if ttfb is not None:
            self._ttfb.labels(*labels).observe(ttfb / 1000)
            self._queue_wait.labels(*labels).observe(response.queue_seconds)
        self._audio_sent.labels(*labels).inc(response.audio_seconds())

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _backend(self) -> str:
        engine = self._state.engine
        return engine.describe().backend if engine is not None else "none"

    def _voice_label(self, voice: str) -> str:
        engine = self._state.engine
        return voice if engine is not None and voice in engine.describe().voices else "blend"


class _StateCollector(Collector):
    """The engine's counters and the server's gauges, read when Prometheus scrapes."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        return []  # read at collect time; nothing to register up front

    def collect(self) -> Iterator[Metric]:
        state = self._state
        yield GaugeMetricFamily("krt_open_connections", "WebSocket sessions open.", value=state.sessions)
        yield GaugeMetricFamily(
            "krt_responses_in_flight", "Responses accepted and not yet settled.", value=state.in_flight.count
        )
        yield GaugeMetricFamily("krt_draining", "1 while the server drains.", value=int(state.draining))
        engine = state.engine
        if engine is None:
            return
        backend = engine.describe().backend
        stats = engine.statistics()
        families = (
            (GaugeMetricFamily, "krt_streams_active", "Streams admitted and synthesizing.", stats.active),
            (
                GaugeMetricFamily,
                "krt_streams_waiting",
                "Streams admitted, waiting for a slot.",
                stats.waiting,
            ),
            (
                GaugeMetricFamily,
                "krt_engine_slots",
                "Unending streams the measured capacity sustains (admission goes by the schedule).",
                stats.slots,
            ),
            (
                GaugeMetricFamily,
                "krt_engine_capacity",
                "Audio seconds made per model second.",
                stats.capacity,
            ),
            (CounterMetricFamily, "krt_busy_refusals", "Requests refused as busy.", stats.busy_rejections),
            (
                CounterMetricFamily,
                "krt_model_busy_seconds",
                "Model thread time on turns.",
                stats.model_seconds,
            ),
            (CounterMetricFamily, "krt_audio_made_seconds", "Audio the model made.", stats.audio_seconds),
            (CounterMetricFamily, "krt_stalls", "Audio after its player would have run dry.", stats.stalls),
            (CounterMetricFamily, "krt_stall_seconds", "How long those players waited.", stats.stall_seconds),
        )
        for family_type, name, documentation, value in families:
            family = family_type(name, documentation, labels=["backend"])
            family.add_metric([backend], value)
            yield family
