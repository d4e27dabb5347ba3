"""The scheduler: one model, many streams, fair turns, admission in front.

Every response becomes a *job*. Jobs are admitted up to ``MAX_CONCURRENT_JOBS`` active
at once, up to ``MAX_QUEUED_REQUESTS`` more wait for a slot, and a job whose predicted
wait for its first audio exceeds ``QUEUE_WAIT_SLA_MS`` is refused as ``busy`` right away
(a voice agent would rather fall back than have its caller listen to silence). The
prediction uses compute times measured on this machine, per character of text.

The engine loop gives active jobs turns on the model thread. A job whose first segment
has not started goes first (time to first audio is what a caller hears), and may produce
``PRIORITY_QUANTUM_BYTES`` in its turn; the others take round-robin turns of
``SCHED_QUANTUM_BYTES``. A turn never interrupts a backend mid-chunk; with backends that
hand out one chunk per segment, a turn is one segment.

Withdrawing a job (barge-in, disconnect) only flags it: queued work is dropped at once,
and a turn in progress on the model thread runs to its next chunk boundary, where the
flag is checked, and its audio is thrown away. The model thread is never abandoned.

Model calls go through a :class:`~krt.engine.runner.ModelRunner` and time is read from
Trio's clock, so the same scheduler runs on a worker thread in production and inline on
virtual time in tests.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio

from krt.engine.pipeline import PcmBatch, Rendering
from krt.errors import SpeechError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from krt.config import AdmissionConfig, SchedulerConfig
    from krt.engine.pipeline import SpeechPlan
    from krt.engine.runner import ModelRunner

log = logging.getLogger(__name__)

JOB_BUFFER_BATCHES = 8
"""Batches a job may have waiting for its session before it gets no more turns, so a
slow client holds back only its own stream, never the engine."""

INITIAL_SECONDS_PER_CHAR = 0.02
"""Used until the first measured turn; warm-up replaces it before the server is ready."""


@attrs.define(eq=False)
class Job:
    """One response's synthesis, from admission to its last batch; iterate it for PCM."""

    rendering: Rendering
    label: str
    send: trio.MemorySendChannel[PcmBatch | SpeechError]
    receive: trio.MemoryReceiveChannel[PcmBatch | SpeechError]
    submitted_at: float
    wake_engine: Callable[[], None]
    withdrawn: bool = False
    """Its reader left (done, cancelled, disconnected): nothing more is made or delivered."""
    first_turn_at: float | None = None

    @property
    def plan(self) -> SpeechPlan:
        return self.rendering.plan

    @property
    def waiting_for_first_segment(self) -> bool:
        return not self.rendering.started

    @property
    def done(self) -> bool:
        return self.rendering.done

    @property
    def queue_seconds(self) -> float | None:
        """How long the job waited for its first turn on the model (None until it had one)."""
        return None if self.first_turn_at is None else self.first_turn_at - self.submitted_at

    def remaining_chars(self) -> int:
        return self.rendering.remaining_chars()

    def has_room(self) -> bool:
        return self.send.statistics().current_buffer_used < JOB_BUFFER_BATCHES

    def __aiter__(self) -> Job:
        return self

    async def __anext__(self) -> PcmBatch:
        """The next batch in order; raises the job's SpeechError if synthesis failed."""
        try:
            item = await self.receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        self.wake_engine()  # there is room again: the job may be due a turn
        if isinstance(item, SpeechError):
            raise item
        return item


@attrs.frozen
class EngineStatistics:
    active: int
    """Jobs admitted and synthesizing."""
    waiting: int
    """Jobs admitted but waiting for an active slot."""
    seconds_per_char: float
    """Measured model compute per character of text (exponential average)."""
    turns: int
    """Model-thread turns taken since start."""
    busy_rejections: int
    """Requests refused because the predicted wait was too long or the queue was full."""


@attrs.frozen
class TurnResult:
    chars: int
    error: SpeechError | None


class Scheduler:
    """Admission and fair turns on the model; the engine facade opens streams through it."""

    def __init__(self, runner: ModelRunner, admission: AdmissionConfig, quanta: SchedulerConfig) -> None:
        self.runner = runner
        self.admission = admission
        self.quanta = quanta
        self._active: collections.deque[Job] = collections.deque()
        self._waiting: collections.deque[Job] = collections.deque()
        self._wakeup = trio.Event()
        self._in_turn: Job | None = None
        self._turn_started = 0.0
        self._turn_estimate = 0.0
        self._seconds_per_char = INITIAL_SECONDS_PER_CHAR
        self._turns = 0
        self._busy = 0

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(
            len(self._active), len(self._waiting), self._seconds_per_char, self._turns, self._busy
        )

    # -- admission ---------------------------------------------------------------------

    def predicted_wait(self) -> float:
        """Seconds until a job submitted now would start its first segment.

        With a free slot, it waits for the rest of the turn in progress and the first
        segments already queued (they share its priority). Without one, it also waits for
        a slot: the active jobs share the model, so the first to finish needs about its
        remaining work times their number, and each job already waiting takes a slot first.
        """
        per_char = self._seconds_per_char
        wait = per_char * sum(
            len(job.plan.segments[0]) for job in self._active if job.waiting_for_first_segment
        )
        if self._in_turn is not None:
            wait += max(0.0, self._turn_estimate - (trio.current_time() - self._turn_started))
        if len(self._active) < self.admission.max_concurrent_jobs:
            return wait
        shortest = min(job.remaining_chars() for job in self._active) * per_char
        return wait + shortest * len(self._active) * (len(self._waiting) + 1)

    def _admit(self, job: Job) -> None:
        queued = len(self._active) + len(self._waiting)
        slot_free = len(self._active) < self.admission.max_concurrent_jobs
        if queued >= self.admission.queue_maxsize or (
            not slot_free and len(self._waiting) >= self.admission.max_queued_requests
        ):
            self._busy += 1
            raise SpeechError("busy", f"{queued} responses are already in the engine; try again shortly")
        wait = self.predicted_wait()
        if wait * 1000 > self.admission.queue_wait_sla_ms:
            self._busy += 1
            raise SpeechError(
                "busy",
                f"predicted wait {wait * 1000:.0f} ms exceeds QUEUE_WAIT_SLA_MS={self.admission.queue_wait_sla_ms}",
            )
        (self._active if slot_free else self._waiting).append(job)
        self._wakeup.set()

    def _release(self, job: Job) -> None:
        job.withdrawn = True
        if job is not self._in_turn:
            # Paused between turns: close the segment now rather than whenever the job
            # is garbage-collected, so a backend's per-segment state is freed at once.
            job.rendering.close()
        for queue in (self._active, self._waiting):
            if job in queue:
                queue.remove(job)
        while self._waiting and len(self._active) < self.admission.max_concurrent_jobs:
            self._active.append(self._waiting.popleft())
        self._wakeup.set()

    @asynccontextmanager
    async def stream(self, rendering: Rendering, label: str) -> AsyncIterator[Job]:
        """Admit a job and yield it; iterate it for its PCM, in order.

        Raises SpeechError("busy") when refused. Leaving the block for any reason —
        the last chunk read, a cancel scope, a disconnect — withdraws the job: nothing
        more is computed for it and anything still in flight is discarded.
        """
        # Unbounded in type only: the loop gives a job no turn while JOB_BUFFER_BATCHES
        # wait, so it never holds more than that plus one quantum.
        send, receive = trio.open_memory_channel[PcmBatch | SpeechError](math.inf)
        job = Job(rendering, label, send, receive, trio.current_time(), self._wakeup_soon)
        self._admit(job)
        try:
            with receive:
                yield job
        finally:
            self._release(job)
            send.close()

    def _wakeup_soon(self) -> None:
        self._wakeup.set()

    # -- the loop ----------------------------------------------------------------------

    def _pick(self) -> Job | None:
        """Whose turn it is: the oldest job still waiting for its first segment, else the
        next in round-robin order among jobs with room for more audio."""
        ready = [job for job in self._active if not job.withdrawn and job.has_room()]
        if not ready:
            return None
        newcomer = next((job for job in ready if job.waiting_for_first_segment), None)
        return newcomer if newcomer is not None else self._rotate(ready[0])

    def _rotate(self, job: Job) -> Job:
        self._active.remove(job)
        self._active.append(job)
        return job

    def _deliver(self, job: Job, batch: PcmBatch) -> None:
        """On the Trio thread, as soon as the model thread has a batch: TTFB is not a turn."""
        if not job.withdrawn:
            job.send.send_nowait(batch)

    def _turn(self, job: Job) -> TurnResult:
        """Runs on the model thread: produce up to one quantum of this job's PCM.

        Each batch is handed to the Trio side the moment it exists; the withdrawn flag
        is read between batches, which is as fine as a backend's chunks allow (a batch is
        what one backend chunk became).
        """
        first = job.waiting_for_first_segment
        quantum = self.quanta.priority_quantum_bytes if first else self.quanta.quantum_bytes
        produced = 0
        chars_before = job.rendering.chars_started
        error: SpeechError | None = None
        try:
            while produced < quantum and not job.withdrawn:
                batch = next(job.rendering, None)
                if batch is None:
                    break
                self.runner.call_soon(self._deliver, job, batch)
                produced += sum(map(len, batch))
        except SpeechError as exc:
            error = exc
        except Exception as exc:  # a backend bug fails this job, never the engine loop
            log.exception("turn of %s failed", job.label)
            error = SpeechError("synthesis_failed", f"synthesis failed: {exc}")
        return TurnResult(job.rendering.chars_started - chars_before, error)

    def _estimate_turn(self, job: Job) -> float:
        return job.rendering.upcoming_chars() * self._seconds_per_char

    def _measure(self, chars: int, seconds: float) -> None:
        if chars > 0 and seconds > 0:
            self._seconds_per_char = 0.7 * self._seconds_per_char + 0.3 * (seconds / chars)

    def calibrate(self, seconds_per_char: float) -> None:
        """Replace the estimate with a measured speed (the warm-up's second, warm run)."""
        self._seconds_per_char = seconds_per_char

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The engine loop; runs until cancelled (a turn in progress is finished first)."""
        task_status.started()
        while True:
            job = self._pick()
            if job is None:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            if job.first_turn_at is None:
                job.first_turn_at = trio.current_time()
            self._in_turn = job
            started = self._turn_started = trio.current_time()
            self._turn_estimate = self._estimate_turn(job)
            try:
                result = await self.runner.run(self._turn, job)
            finally:
                self._in_turn = None
                if job.withdrawn:
                    # Withdrawn during the turn (``_release`` leaves a job in its turn
                    # alone): the model is done with it now, even when this loop is being
                    # cancelled, so its segment is closed here, on the Trio thread.
                    job.rendering.close()
            self._turns += 1
            self._measure(result.chars, trio.current_time() - started)
            if job.withdrawn:
                continue
            if result.error is not None:
                job.send.send_nowait(result.error)
                job.send.close()
                self._release(job)
            elif job.done:
                job.send.close()
                self._release(job)
