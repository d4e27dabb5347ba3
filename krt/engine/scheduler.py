"""The scheduler: one model, many streams, a decoder window per turn, admission in front.

Every response becomes a *job*. A turn on the model thread is one decoder window of one
job (``pipeline.WindowSizes``: a small first window, then larger ones), so a newcomer's
first window never waits for more than the window in progress, and barge-in takes
effect within one window's compute. On a backend that decodes several windows in one
call (``batch_windows``, a GPU) a turn is one model call: the window of the due job with
the earliest deadline, and the windows of the next most urgent due jobs (up to that many
in all) whose decoded spans have the same length, stacked. A GPU decodes eight small
windows in about the time of one; a newcomer, always the most urgent, has its first
window in the next turn, beside the windows of streams already playing.

Whose turn it is: the job with the earliest *deadline*. A started job's deadline is the
moment a real-time player that began at its first audio would run dry (first audio +
audio made so far); a job with no audio yet is already late, its deadline is when it
was submitted. So newcomers go first unless a running stream is about to stall, and no
stream stalls while the machine has the capacity for all of them. A job is not given
turns more than ``AHEAD_SECONDS`` ahead of its player, so a response that will be
interrupted wastes little, and a slow reader holds back only its own stream.

Admission is decided by the schedule, not by a count of streams. A stream needs compute
only until its player is far enough ahead, and a voice-agent reply is a few seconds long,
so how many fit depends on what they say. A newcomer is taken in when the earliest-deadline
schedule of everything admitted plus the newcomer, replayed on the engine's measurements
(:mod:`krt.engine.forecast`: the cost of a first window, the audio seconds made per second
of model time, each stream's predicted remaining audio and its player's buffer, costs
inflated by ``CAPACITY_HEADROOM``), still feeds every player without a stall and gives
the newcomer its first audio within ``QUEUE_WAIT_SLA_MS``. When that holds only later
(when a response ends) and within ``QUEUE_WAIT_SLA_MS``, it waits in a FIFO queue and
is started the moment it fits; otherwise it is refused ``busy`` at once (a voice agent
would rather fall back than have its caller listen to silence), told when it would fit,
and that place is *reserved* for its client until shortly after: every later decision
counts the reservation as a stream starting then, so a client that retries when told is
not overtaken by one served meanwhile. ``MAX_CONCURRENT_JOBS`` caps the streams
synthesizing at once and ``MAX_QUEUED_REQUESTS`` the queue. A job admitted as *accepted*
(a response queued behind another of the same socket, whose client was already told it
exists) is never refused: it waits for the schedule to fit it. A stream whose reader has
taken nothing for ``PARK_AFTER_SECONDS`` is *parked*: it holds no place in the schedule
until its reader comes back, and then waits at the head of the queue.
:meth:`Scheduler.forecast` replays the same rules to predict when admitted work will end.

Withdrawing a job (barge-in, disconnect) only flags it: queued work is dropped at once,
and a window in progress on the model thread runs to its end, where the flag is
checked, and its audio is thrown away. The model thread is never abandoned.

Model calls go through a :class:`~krt.engine.runner.ModelRunner` and time is read from
Trio's clock, so the same scheduler runs on a worker thread in production and inline on
virtual time in tests.

A long download's later parts run in the *background* (``Job.background``): they take a
turn only when no other job is due (or fill a batched turn's spare places), and no
admission decision counts them, so the engine's idle time speaks them and real-time
streams are admitted and fed as if they were not there.

Capacity is measured per batch size (audio seconds made per model second in turns of
1, 2, 4, … windows; the warm-up measures each) and admission replays the schedule with
batched turns at those speeds.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Hashable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NoReturn

import attrs
import trio

from krt import PCM_BYTES_PER_SECOND
from krt.engine.forecast import (
    WINDOW_SLACK_SHARE,
    EngineMeasures,
    StreamState,
    earliest_start,
    predict_ends,
)
from krt.engine.pipeline import PcmBatch, Rendering, supply_together
from krt.engine.segmenter import predicted_audio_seconds
from krt.errors import SpeechError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from krt.config import AdmissionConfig
    from krt.engine.pipeline import SpeechPlan, WindowDecoder
    from krt.engine.runner import ModelRunner
    from krt.engine.timestamps import WordTime
    from krt.synth.windows import WindowRequest

log = logging.getLogger(__name__)

JOB_BUFFER_SECONDS = 1.0
"""Audio a job may have made and not yet seen read, besides its latest window, before it
gets no more turns: a slow client holds back only its own stream, never the engine. In
seconds, not batches (a batch is a decoder window, ~1 s to 3 s of audio). The latest
window is left out because it sits unread from its delivery until its reader (or,
through the server, its client) has it, and a stream must not lose its turn to that: a
reader that keeps up is never held back, and one that reads nothing costs the first two
windows (3.6 s of audio with the default window sizes). *Read* is what the reader says
with :meth:`Job.mark_read`."""
AHEAD_SECONDS = 8.0
"""A started job gets no turn while its player has more than this much audio ahead."""
CAPACITY_HEADROOM = 1.25
"""Admission predicts with every cost multiplied by this: what is left covers windows cut
short and the drift of a shared machine (±25 % within minutes on a 2-core host)."""
ADMISSION_HORIZON_SECONDS = 60.0
"""How far ahead admission replays the schedule; a stall predicted later than this is
left to a later decision (speech that long is a download, refilled every window)."""
RESERVATION_GRACE_SECONDS = 2.0
"""How long after the moment a refused client was told to come back its place is kept."""
RETRY_WITHIN_SLAS = 2.0
"""A refused client is told to come back when its first turn is predicted, but within
this many ``QUEUE_WAIT_SLA_MS`` (at least 1 s)."""
PARK_AFTER_SECONDS = 1.0
"""A stream whose reader has read nothing for this long, with its buffer full, is parked:
it holds no place in the schedule until its reader takes audio again."""
FIRST_WINDOW_AUDIO_GUESS = 1.0
"""Audio seconds of a first window, for forecasts made before one was measured."""
MIN_REMAINING_AUDIO = 0.5
"""What a job not yet done is assumed to have left when the text-length prediction says
it has made all of it already (speech runs longer than predicted)."""


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
    played_until: float | None = None
    """Where a real-time player of its audio would be done, counting the pauses it made
    whenever it ran dry (what the stall count is measured on)."""
    paced: bool = True
    """Held to ``AHEAD_SECONDS`` ahead of a real-time player. A download (an HTTP speech
    request) is not: it takes every turn no player needs sooner, since its deadline runs
    ahead as fast as it is made."""
    background: bool = False
    """A long download's later part: it takes only turns no other job is due for, and no
    admission decision counts it, so real-time streams are admitted and fed as if it were
    not there. It is never refused and never paced; a reader that stops holds it back."""
    first_turn_at: float | None = None
    first_batch_at: float | None = None
    """When the model delivered its first batch: where its real-time player starts (the
    server's response records when audio reached the socket, which is later)."""
    audio_made: float = 0.0
    """Seconds of audio made so far."""
    unread_seconds: float = 0.0
    """Seconds of audio delivered to the job and not yet read (see JOB_BUFFER_SECONDS)."""
    latest_batch_seconds: float = 0.0
    client: Hashable | None = None
    """Who asked (a socket, an address): whose reservation it uses up."""
    reserved_since: float | None = None
    """When its client was first refused, if it came back on a reservation (its seniority)."""
    full_since: float | None = None
    """Since when its buffer has been full (no room for another window); None while it has room."""

    @property
    def plan(self) -> SpeechPlan:
        return self.rendering.plan

    @property
    def waiting_for_first_audio(self) -> bool:
        return self.first_batch_at is None

    @property
    def deadline(self) -> float:
        """When a real-time player of this job runs dry; a job with no audio is due at once."""
        if self.first_batch_at is None:
            return self.submitted_at
        return self.first_batch_at + self.audio_made

    @property
    def done(self) -> bool:
        return self.rendering.done

    @property
    def queue_seconds(self) -> float | None:
        """How long the job waited for its first turn on the model (None until it had one)."""
        return None if self.first_turn_at is None else self.first_turn_at - self.submitted_at

    def has_room(self) -> bool:
        return self.unread_seconds - self.latest_batch_seconds < JOB_BUFFER_SECONDS

    @property
    def parks_at(self) -> float:
        """When it is parked if its reader takes nothing meanwhile (``math.inf`` while it has room)."""
        return math.inf if self.full_since is None else self.full_since + PARK_AFTER_SECONDS

    def parked(self, now: float) -> bool:
        """Its reader has read nothing for ``PARK_AFTER_SECONDS`` and its buffer is full."""
        return now >= self.parks_at

    def mark_read(self, seconds: float) -> None:
        """``seconds`` of this job's audio have reached whoever it is for: every reader
        says so, when its reader (for the server, the client) has the audio and not when
        it was handed on, so audio waiting in socket buffers for a client that stopped
        reading still holds its job back (see JOB_BUFFER_SECONDS)."""
        self.unread_seconds = max(0.0, self.unread_seconds - seconds)
        if self.has_room():
            self.full_since = None
        self.wake_engine()  # there is room again: the job may be due a turn

    def take_words(self) -> list[list[WordTime]]:
        """Word times made since the last call, a list per piece; each comes before the
        batch holding that piece's first audio. Empty unless the plan asked for them."""
        return [] if self.rendering.words is None else self.rendering.words.take()

    def __aiter__(self) -> Job:
        return self

    async def __anext__(self) -> PcmBatch:
        """The next batch in order; raises the job's SpeechError if synthesis failed."""
        try:
            item = await self.receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, SpeechError):
            raise item
        return item


@attrs.frozen
class EngineStatistics:
    active: int
    """Jobs admitted and synthesizing."""
    waiting: int
    """Jobs admitted but waiting for an active slot."""
    capacity: float
    """Audio seconds the engine makes per second of model time (exponential average; 0
    until measured)."""
    slots: int
    """Streams it admits as active at that capacity (at most MAX_CONCURRENT_JOBS)."""
    first_window_seconds: float
    """Measured compute of a response's first window (front end included): what each
    newcomer ahead adds to the predicted wait."""
    turns: int
    """Model-thread turns (decoder windows) taken since start."""
    busy_rejections: int
    """Requests refused because the predicted wait was too long or the queue was full."""
    model_seconds: float
    """Time the model thread has spent on turns since start (rates come from differences)."""
    audio_seconds: float
    """Audio made since start."""
    stalls: int = 0
    """Batches that came after their stream's real-time player would have run dry."""
    stall_seconds: float = 0.0
    """How long those players would have waited, in all."""
    parked: int = 0
    """Jobs admitted whose readers stopped taking audio: they hold no place meanwhile."""
    batch_windows: int = 1
    """The most windows one turn decodes together."""
    capacity_by_batch: tuple[tuple[int, float], ...] = ()
    """Audio seconds per model second in turns of each batch size measured (1, 2, 4, …)."""
    background: int = 0
    """Background jobs (long downloads' later parts) being spoken in the idle turns."""


@attrs.frozen
class TurnResult:
    audio_seconds: float
    error: SpeechError | None
    served: bool = True
    """False for a job picked for a turn whose window could not share its model call."""


def _planned_seconds(plan: SpeechPlan) -> float:
    """How long all of ``plan`` is predicted to play."""
    return predicted_audio_seconds(sum(map(len, plan.segments)), plan.speed)


def _remaining_seconds(job: Job) -> float:
    """Audio ``job`` is predicted still to make (never nothing while it is not done)."""
    return 0.0 if job.done else max(_planned_seconds(job.plan) - job.audio_made, MIN_REMAINING_AUDIO)


@attrs.frozen
class Reservation:
    """The place kept for a refused client: a stream of ``audio`` seconds starting at
    ``start_at``, counted in every admission decision until ``expires_at``."""

    audio: float
    start_at: float
    expires_at: float
    since: float
    """When its client was first refused: older reservations go first."""


def _batch_seconds(batch: PcmBatch) -> float:
    return sum(map(len, batch)) / PCM_BYTES_PER_SECOND


class Scheduler:
    """Admission and earliest-deadline turns on the model; the engine facade opens streams through it."""

    def __init__(
        self, runner: ModelRunner, admission: AdmissionConfig, decoder: WindowDecoder | None = None
    ) -> None:
        self.runner = runner
        self.admission = admission
        self._decoder = decoder
        self.batch_windows = 1 if decoder is None else max(1, decoder.batch_windows)
        """The most jobs one turn takes a window of."""
        self._active: collections.deque[Job] = collections.deque()
        self._waiting: collections.deque[Job] = collections.deque()
        self._parked: list[Job] = []
        """Admitted jobs whose readers stopped taking audio (see PARK_AFTER_SECONDS)."""
        self._background: collections.deque[Job] = collections.deque()
        """Background jobs (``Job.background``), in the order they came."""
        self._reservations: dict[Hashable, Reservation] = {}
        """Places kept for refused clients, by client."""
        self._wakeup = trio.Event()
        self._in_turn: tuple[Job, ...] = ()
        self._turn_started = 0.0
        self._turn_estimate = 0.0
        self._capacity_at: dict[int, float] = {}
        """Audio seconds per model second by the windows a turn decoded together; unknown
        until measured (the warm-up measures them before the server is ready)."""
        self._first_window_seconds: float | None = None
        """Unknown until measured, then an exponential average."""
        self._seconds_per_frame: float | None = None
        """Model time per decoded frame, context included; unknown until measured."""
        self._first_window_audio: float | None = None
        """Audio seconds a first window makes; unknown until measured."""
        self._turns = 0
        self._busy = 0
        self._model_seconds = 0.0
        self._audio_seconds = 0.0
        self._stalls = 0
        self._stall_seconds = 0.0

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(
            len(self._active),
            len(self._waiting),
            self._capacity or 0.0,
            self.slots(),
            self._first_window_seconds or 0.0,
            self._turns,
            self._busy,
            self._model_seconds,
            self._audio_seconds,
            self._stalls,
            self._stall_seconds,
            len(self._parked),
            self.batch_windows,
            tuple(sorted(self._capacity_at.items())),
            len(self._background),
        )

    @property
    def _capacity(self) -> float | None:
        """Audio seconds per model second, one window per turn."""
        return self._capacity_at.get(1)

    def _batch_speedup(self) -> tuple[float, ...]:
        """For 1, 2, … ``batch_windows`` windows a turn: how many times the audio per model
        second of one window a turn. A size not measured counts as the largest measured
        below it (never slower than a smaller batch, which it could be split into)."""
        single = self._capacity
        speedups = [1.0]
        for size in range(2, self.batch_windows + 1):
            measured = self._capacity_at.get(size)
            ratio = measured / single if measured and single else 1.0
            speedups.append(max(speedups[-1], ratio))
        return tuple(speedups)

    # -- admission ---------------------------------------------------------------------

    def slots(self) -> int:
        """Streams of unending speech the measured capacity sustains in real time (at least
        one, at most ``MAX_CONCURRENT_JOBS``): a figure for operators. Admission itself
        goes by the schedule, and takes in more streams of short replies than this."""
        single = self._capacity
        if single is None:
            return self.admission.max_concurrent_jobs
        speedup = self._batch_speedup()
        sustainable = 1
        for streams in range(2, self.admission.max_concurrent_jobs + 1):
            if single * speedup[min(streams, self.batch_windows) - 1] / CAPACITY_HEADROOM < streams:
                break
            sustainable = streams
        return min(self.admission.max_concurrent_jobs, sustainable)

    def _measures(self, slots: int) -> EngineMeasures:
        return EngineMeasures(
            capacity=self._capacity or 0.0,
            first_window_seconds=self._first_window_seconds or 0.0,
            first_window_audio=self._first_window_audio or FIRST_WINDOW_AUDIO_GUESS,
            slots=slots,
            ahead_seconds=AHEAD_SECONDS,
            headroom=CAPACITY_HEADROOM,
            batch_speedup=self._batch_speedup(),
        )

    def _busy_until(self, now: float) -> float:
        """When the model thread will be free of the window in progress."""
        if not self._in_turn:
            return now
        return now + max(0.0, self._turn_estimate - (now - self._turn_started))

    def _scheduled(self, now: float, deciding: Job) -> list[StreamState]:
        """What admission must keep fed when deciding on ``deciding``: the active streams
        that are not parked, then the reservations of refused clients, each starting when
        told. A client back with a reservation of its own yields only to older ones, so two
        refused clients never hold each other off."""
        senior_to = math.inf if deciding.reserved_since is None else deciding.reserved_since
        states = [self._stream_state(job, (), now) for job in self._active if not job.parked(now)]
        for client, reservation in self._reservations.items():
            if client != deciding.client and reservation.since < senior_to:
                start = max(now, reservation.start_at)
                states.append(StreamState([reservation.audio], submitted_at=start, starts_at=start))
        return states

    def _start_at(self, job: Job, now: float, scheduled: list[StreamState]) -> float | None:
        """When ``job`` can start with every player still fed (see ``earliest_start``);
        ``now`` for any job while no capacity is measured yet, if there is room."""
        if self._capacity is None:
            active = sum(1 for other in self._active if not other.parked(now))
            return now if active < self.admission.max_concurrent_jobs else None
        return earliest_start(
            scheduled,
            _remaining_seconds(job),
            self._measures(len(scheduled) + 1),
            now,
            ADMISSION_HORIZON_SECONDS,
            self._busy_until(now),
            max_streams=self.admission.max_concurrent_jobs,
            first_turn_within=self.admission.queue_wait_sla_ms / 1000,
            paced=job.paced,
        )

    def _admit(self, job: Job, *, accepted: bool = False) -> None:
        """Start ``job`` now if the schedule fits it, queue it if it will fit within
        ``QUEUE_WAIT_SLA_MS``, or refuse it ``busy`` (with a reservation for its client). An
        ``accepted`` job is never refused; it waits for the schedule to fit it."""
        now = trio.current_time()
        self._expire_reservations(now)
        reserved = self._reservations.pop(job.client, None) if job.client is not None else None
        if reserved is not None:
            job.reserved_since = reserved.since
        if accepted:
            self._enqueue(job, first=False)
            return
        queued = len(self._active) + len(self._waiting)
        if queued >= self.admission.queue_maxsize:
            self._refuse(job, None, f"{queued} responses are already in the engine; try again shortly")
        start = None
        if not self._waiting or reserved is not None:
            start = self._start_at(job, now, self._scheduled(now, job))
        if start is not None and start <= now:
            self._active.append(job)
            self._wakeup.set()
            return
        if len(self._waiting) >= self.admission.max_queued_requests:
            self._refuse(job, start, f"{len(self._waiting)} requests are already waiting")
        sla = self.admission.queue_wait_sla_ms / 1000
        if start is None and self._waiting:  # behind the queue: when it would start is theirs to say
            start = self._queue_start(job, now)
        if (start is not None and start - now <= sla) or self._capacity is None:
            self._enqueue(job, first=reserved is not None)
            return
        self._refuse(
            job,
            start,
            "the engine cannot start this without a stall within "
            f"QUEUE_WAIT_SLA_MS={self.admission.queue_wait_sla_ms}",
        )

    def _queue_start(self, job: Job, now: float) -> float | None:
        """When ``job`` would start behind the queue: every waiting job counted as if it
        started now (the queue goes first), then the earliest moment it fits after them."""
        waiting = [self._stream_state(other, (), now) for other in self._waiting]
        for state in waiting:
            state.active = True
        return self._start_at(job, now, [*self._scheduled(now, job), *waiting])

    def _refuse(self, job: Job, start: float | None, why: str) -> NoReturn:
        """Refuse ``job`` ``busy``, telling its client when to come back and keeping that
        place for it (the moment it would fit, or a guess when none is predicted)."""
        now = trio.current_time()
        self._busy += 1
        wait = (start - now) if start is not None else self._fallback_retry(now)
        # The prediction's costs carry the headroom; the client is told the expected time,
        # so the engine does not idle waiting for it (come early, it is decided afresh),
        # but no later than RETRY_WITHIN_SLAS × the SLA: a prediction that far out assumes
        # every admitted stream is heard to its end, and barge-in, hang-ups and parked
        # readers (a client that stopped reading looks like a listener until its buffer
        # fills) end streams early.
        most = max(RETRY_WITHIN_SLAS * self.admission.queue_wait_sla_ms / 1000, 1.0)
        retry_after = min(max(wait / CAPACITY_HEADROOM, 0.1), most)
        if job.client is not None:
            self._reservations[job.client] = Reservation(
                audio=_remaining_seconds(job),
                start_at=now + retry_after,
                expires_at=now + retry_after + RESERVATION_GRACE_SECONDS,
                since=now if job.reserved_since is None else job.reserved_since,
            )
        raise SpeechError(
            "busy",
            f"{why}; retry in {math.ceil(retry_after * 1000)} ms (your place is kept until then)",
            retry_after=retry_after,
        )

    def _fallback_retry(self, now: float) -> float:
        """When to come back if no fitting moment was predicted: when the first admitted
        response is predicted to end, or after the SLA if none is."""
        ends = predict_ends(
            [self._stream_state(job, (), now) for job in (*self._active, *self._waiting)],
            self._measures(self.admission.max_concurrent_jobs),
            now,
            ADMISSION_HORIZON_SECONDS,
            self._busy_until(now),
        )
        soonest = min((end[0] for end in ends if end and end[0] < math.inf), default=None)
        return self.admission.queue_wait_sla_ms / 1000 if soonest is None else soonest - now

    def _expire_reservations(self, now: float) -> None:
        for client in [c for c, r in self._reservations.items() if r.expires_at <= now]:
            del self._reservations[client]

    def _enqueue(self, job: Job, *, first: bool) -> None:
        """Put ``job`` in the queue (at its head when its place was reserved, or it is a
        parked stream back) and start whoever fits."""
        if first:
            self._waiting.appendleft(job)
        else:
            self._waiting.append(job)
        self._fill_slots()
        self._wakeup.set()

    def _release(self, job: Job) -> None:
        if job.withdrawn:
            return
        job.withdrawn = True
        if job not in self._in_turn:
            # Paused between turns: close the segment now rather than whenever the job
            # is garbage-collected, so a backend's per-segment state is freed at once.
            job.rendering.close()
        for queue in (self._active, self._waiting, self._parked, self._background):
            if job in queue:
                queue.remove(job)
        self._fill_slots()
        self._wakeup.set()

    def _fill_slots(self) -> None:
        """Start waiting jobs, in order, while the schedule fits the one at the head; with
        nothing active, the head starts whatever the schedule says (accepted work is never
        left waiting on a prediction alone)."""
        now = trio.current_time()
        self._expire_reservations(now)
        while self._waiting:
            head = self._waiting[0]
            if any(not job.parked(now) for job in self._active):
                start = self._start_at(head, now, self._scheduled(now, head))
                if start is None or start > now:
                    return
            self._active.append(self._waiting.popleft())

    def _park_and_unpark(self, now: float) -> None:
        """Park active streams whose readers stopped; queue parked ones whose readers came
        back (at the head of the queue: they were admitted once already)."""
        for job in [job for job in self._active if job.parked(now)]:
            self._active.remove(job)
            self._parked.append(job)
        for job in [job for job in self._parked if job.has_room()]:
            self._parked.remove(job)
            # Its player ran dry through its reader's own pause: it now has what the reader
            # has yet to take, and is due like a stream that far ahead, not long overdue.
            if job.first_batch_at is not None:
                job.first_batch_at = now + job.unread_seconds - job.audio_made
                job.played_until = job.deadline
            self._waiting.appendleft(job)
        self._fill_slots()

    def admit(
        self,
        rendering: Rendering,
        label: str,
        *,
        paced: bool = True,
        accepted: bool = False,
        client: Hashable | None = None,
        background: bool = False,
    ) -> Job:
        """Admit a job now (SpeechError ``busy`` when refused, unless ``accepted`` or
        ``background``); it takes turns from now on, or once the schedule fits it, or (in
        the ``background``) whenever no other job is due. ``client`` (a socket, an
        address) is who a refusal keeps a place for. Whoever admitted it must
        :meth:`hold` it or :meth:`withdraw` it."""
        # Unbounded in type only: the loop gives a job no turn while JOB_BUFFER_SECONDS
        # of audio wait, so it never holds more than that plus one window.
        send, receive = trio.open_memory_channel[PcmBatch | SpeechError](math.inf)
        job = Job(
            rendering,
            label,
            send,
            receive,
            trio.current_time(),
            self._wakeup_soon,
            paced=paced and not background,
            client=client,
            background=background,
        )
        if background:
            rendering.windows.stay_small()
            self._background.append(job)
            self._wakeup.set()
        else:
            self._admit(job, accepted=accepted)
        return job

    @asynccontextmanager
    async def hold(self, job: Job) -> AsyncIterator[Job]:
        """Yield an admitted job to iterate; leaving the block for any reason (the last
        chunk read, a cancel scope, a disconnect) withdraws it."""
        try:
            with job.receive:
                yield job
        finally:
            self.withdraw(job)

    @asynccontextmanager
    async def stream(
        self, rendering: Rendering, label: str, *, paced: bool = True, client: Hashable | None = None
    ) -> AsyncIterator[Job]:
        """Admit a job and hold it: :meth:`admit` and :meth:`hold` in one."""
        async with self.hold(self.admit(rendering, label, paced=paced, client=client)) as job:
            yield job

    def withdraw(self, job: Job) -> None:
        """Nothing more is computed for ``job`` and anything still in flight is discarded
        (a second call does nothing)."""
        self._release(job)
        job.send.close()

    def forecast(
        self, streams: Sequence[tuple[Job | None, Sequence[SpeechPlan]]], horizon: float
    ) -> list[list[float]]:
        """Seconds from now until each response of ``streams`` ends, as the schedule
        predicts (:mod:`krt.engine.forecast`); ``math.inf`` past ``horizon``.

        A stream is its job in the engine (None when it has none right now) and the plans
        of the responses queued behind it; the answer lists the job's end (when
        there is one), then theirs. Every other job in the engine competes as a stream of
        its own.
        """
        now = trio.current_time()
        named = {job for job, _queued in streams if job is not None}
        others = [(job, ()) for job in (*self._active, *self._waiting, *self._parked) if job not in named]
        states = [self._stream_state(job, queued, now) for job, queued in (*streams, *others)]
        # The schedule keeps about as many streams going as it does now: one ending
        # makes room for the next.
        measures = self._measures(max(1, len(self._active)))
        busy_until = self._busy_until(now)
        ends = predict_ends(states, measures, now, horizon, busy_until)
        return [[end - now for end in stream_ends] for stream_ends in ends[: len(streams)]]

    def _stream_state(self, job: Job | None, queued: Sequence[SpeechPlan], now: float) -> StreamState:
        after = [_planned_seconds(plan) for plan in queued]
        if job is None or job.withdrawn:
            return StreamState(after, active=False, submitted_at=now)
        return StreamState(
            [_remaining_seconds(job), *after],
            played_until=None if job.first_batch_at is None else job.deadline,
            paced=job.paced,
            active=job in self._active,
            submitted_at=job.submitted_at,
        )

    def _wakeup_soon(self) -> None:
        self._wakeup.set()

    # -- the loop ----------------------------------------------------------------------

    def _due(self, job: Job, now: float) -> bool:
        return (
            not job.withdrawn
            and job.has_room()
            and (not job.paced or job.first_batch_at is None or job.deadline - now <= AHEAD_SECONDS)
        )

    def _pick(self) -> list[Job]:
        """Whose turn it is: the earliest deadlines among jobs that may have one (the oldest
        first on a tie, so newcomers go in order of arrival), as many as a turn decodes;
        background jobs, by the same rule among themselves (a new download's first window
        before an old one's next), only where no other job is due."""
        now = trio.current_time()
        ready = sorted((job for job in self._active if self._due(job, now)), key=lambda job: job.deadline)
        ready.extend(
            sorted((job for job in self._background if self._due(job, now)), key=lambda job: job.deadline)
        )
        return ready[: self.batch_windows]

    def _next_due_in(self) -> float:
        """Seconds until a job held back for being far enough ahead is due again, or one
        whose reader stopped is to be parked."""
        now = trio.current_time()
        ahead = [
            job.deadline - AHEAD_SECONDS - now
            for job in self._active
            if not job.withdrawn and job.has_room() and job.first_batch_at is not None and job.paced
        ]
        parking = [job.parks_at - now for job in self._active]  # the same sum `parked` compares
        return max(0.0, min(ahead + parking, default=math.inf))

    def _deliver(self, job: Job, batch: PcmBatch) -> None:
        """On the Trio thread, as soon as the model thread has a batch."""
        if job.withdrawn:
            return
        now = trio.current_time()
        if job.first_batch_at is None:
            job.first_batch_at = now
        seconds = _batch_seconds(batch)
        if job.played_until is None or now > job.played_until:
            # A stall is a player that ran dry: not a reader that stopped, not a background job.
            if job.played_until is not None and job.unread_seconds == 0 and not job.background:
                self._stalls += 1
                self._stall_seconds += now - job.played_until
            job.played_until = now  # a player that ran dry resumes with this batch
        job.played_until += seconds
        job.audio_made += seconds
        job.unread_seconds += seconds
        job.latest_batch_seconds = seconds
        if job.full_since is None and not job.has_room():
            job.full_since = now
        job.send.send_nowait(batch)

    def _turn(self, jobs: Sequence[Job]) -> list[TurnResult]:
        """Runs on the model thread: the next window of each of ``jobs`` that can share a
        model call with the most urgent one's, each handed to the Trio side the moment it
        exists; the others are not served this turn (``TurnResult.served``).

        One call a turn: a window whose decoded span has another length would need a
        call of its own, which on a GPU costs about as much as the whole stack, and the
        most urgent stream's next turn would wait for it. The front end of any job
        starting a sentence runs first, inside the turn (it is ~5 % of a window's compute).
        """
        if len(jobs) == 1 or self._decoder is None:
            return [self._next_batch(job) for job in jobs]
        results: dict[Job, TurnResult] = {}
        windows: list[tuple[Job, WindowRequest]] = []
        for job in jobs:
            if job.withdrawn:  # left while this turn waited for the model thread
                continue
            try:
                window = job.rendering.next_window()
            except SpeechError as exc:
                results[job] = TurnResult(0.0, exc)
                continue
            if window is None:  # ending: what it has left needs no model call
                results[job] = self._next_batch(job)
            else:
                windows.append((job, window))
        riders = [(job, window) for job, window in windows if window.span_frames == windows[0][1].span_frames]
        for _group in supply_together(self._decoder, [(job.rendering, window) for job, window in riders]):
            for job, _window in riders:
                results[job] = self._next_batch(job)
        return [results.get(job, TurnResult(0.0, None, served=False)) for job in jobs]

    def _next_batch(self, job: Job) -> TurnResult:
        """The job's next batch, delivered the moment it exists."""
        error: SpeechError | None = None
        seconds = 0.0
        if job.withdrawn:  # left while this turn waited for the model thread
            return TurnResult(seconds, error)
        try:
            batch = next(job.rendering, None)
            if batch is not None:
                self.runner.call_soon(self._deliver, job, batch)
                seconds = _batch_seconds(batch)
        except SpeechError as exc:
            error = exc
        except Exception as exc:  # a backend bug fails this job, never the engine loop
            log.exception("turn of %s failed", job.label)
            error = SpeechError("synthesis_failed", f"synthesis failed: {exc}")
        return TurnResult(seconds, error)

    def _size_window(self, job: Job, now: float) -> None:
        """Cap a started stream's next window to what its own player can wait for.

        Only its own: capping windows so that every other player is served in time as
        well was measured worse under load (onnx, 2 cores, c=2): every window shrinks
        towards the size where its context costs as much as its audio, the engine makes
        ~1.2 audio seconds per second instead of ~2, and every stream stalls. Contention
        is admission's to prevent, with the capacity measured at full-size windows.

        Not on a backend that decodes several windows a call: such a call costs about
        the same whatever its windows' lengths (a GPU's is bound by its kernel launches,
        and one window of a stack hardly moves it), so a shorter window would not come
        sooner, only carry less audio, and its player would need another call sooner.

        A stream with no other stream active or waiting may take a longer window (see
        ``WindowSizes.serve_alone``): fewer seams, less context decoded. A background job
        never does, and its windows stay at the first window's size
        (``WindowSizes.stay_small``): a newcomer arriving during its turn waits for no more
        than that.
        """
        alone = len(self._active) == 1 and not self._waiting
        job.rendering.windows.serve_alone(alone and not job.background)
        per_frame = self._seconds_per_frame
        if job.first_batch_at is None or per_frame is None or self.batch_windows > 1 or job.background:
            job.rendering.windows.limit_compute(None, 0.0)
            return
        budget = (job.deadline - now) * WINDOW_SLACK_SHARE
        if budget < job.rendering.windows.smallest_cost_frames() * per_frame:
            # Too late for any window to keep this player going: a small one would only
            # spend more on context, so it gets a full one and catches up sooner.
            job.rendering.windows.limit_compute(None, 0.0)
            return
        job.rendering.windows.limit_compute(budget, per_frame)

    def _estimate_turn(self, jobs: Sequence[Job], new: Sequence[bool]) -> float:
        """Model seconds the turn about to start should take: what admission predicts with."""
        seconds = sum(
            (self._first_window_seconds or 0.0)
            if started_now
            else job.rendering.windows.expected_cost_frames() * (self._seconds_per_frame or 0.0)
            for job, started_now in zip(jobs, new, strict=True)
        )
        return seconds / self._batch_speedup()[len(jobs) - 1]

    def _measure(
        self, new: Sequence[bool], results: Sequence[TurnResult], frames: Sequence[int], seconds: float
    ) -> None:
        """Update the estimates from a turn (``frames``: what each job decoded in it).

        A turn of one window says what one window costs: the model time per frame, and,
        when it started a response, the first window's cost and audio. A turn with no new
        response says the capacity with as many streams due as it picked, whether or not
        their windows could share its call: what admission counts on is what a batched
        turn really makes, not what a full stack would. (A batched turn that started a
        response says neither cleanly; the warm-up measured both.)
        """
        audio_seconds = sum(result.audio_seconds for result in results)
        decoding = [count for count in frames if count > 0]
        if audio_seconds <= 0 or seconds <= 0 or not decoding:
            # No model call (a response's leftover chunk): its microseconds say nothing of
            # the model's speed, and counted would claim a huge capacity.
            return
        if len(decoding) == 1:  # first windows too: their front end makes the estimate cautious
            per_frame = seconds / decoding[0]
            previous = self._seconds_per_frame
            self._seconds_per_frame = per_frame if previous is None else 0.8 * previous + 0.2 * per_frame
        if any(new):
            if len(decoding) == 1:
                made = next(
                    result.audio_seconds for result, started in zip(results, new, strict=True) if started
                )
                previous_first = self._first_window_seconds
                self._first_window_seconds = (
                    seconds if previous_first is None else 0.7 * previous_first + 0.3 * seconds
                )
                previous_audio = self._first_window_audio
                self._first_window_audio = (
                    made if previous_audio is None else 0.7 * previous_audio + 0.3 * made
                )
            return
        picked = len(frames)
        previous_capacity = self._capacity_at.get(picked)
        rate = audio_seconds / seconds
        self._capacity_at[picked] = (
            rate if previous_capacity is None else 0.8 * previous_capacity + 0.2 * rate
        )

    def reconfigure(self, admission: AdmissionConfig) -> None:
        """New admission knobs, from the next decision on: more slots take in waiting
        jobs at once; fewer let active jobs finish and admit no one until they do."""
        self.admission = admission
        self._fill_slots()
        self._wakeup.set()

    def calibrate(
        self,
        first_window_seconds: float,
        capacity: float | None,
        seconds_per_frame: float | None,
        first_window_audio: float | None = None,
        batched_capacity: dict[int, float] | None = None,
    ) -> None:
        """Replace the estimates with measured ones (the warm-up's second, warm run); a
        warm-up that fits in one window measures only the first. ``batched_capacity``:
        the capacity measured at more windows a turn, by batch size."""
        self._first_window_seconds = first_window_seconds
        if first_window_audio:
            self._first_window_audio = first_window_audio
        if capacity is not None and seconds_per_frame is not None:
            self._capacity_at[1] = capacity
            self._seconds_per_frame = seconds_per_frame
        self._capacity_at.update(batched_capacity or {})
        self._fill_slots()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The engine loop; runs until cancelled (which only the process ending does: a
        model call in progress is then abandoned to its thread, see ``ThreadRunner``)."""
        task_status.started()
        while True:
            self._park_and_unpark(trio.current_time())
            jobs = self._pick()
            if not jobs:
                self._wakeup = trio.Event()
                with trio.move_on_after(self._next_due_in()):
                    await self._wakeup.wait()
                continue
            now = trio.current_time()
            new = [job.waiting_for_first_audio for job in jobs]
            for job in jobs:
                self._size_window(job, now)
            frames_before = [job.rendering.windows.frames_decoded for job in jobs]
            self._in_turn = tuple(jobs)
            started = self._turn_started = now
            self._turn_estimate = self._estimate_turn(jobs, new)
            turn_ended = False
            try:
                results = await self.runner.run(self._turn, jobs)
                turn_ended = True
            finally:
                # A turn abandoned because the process is ending stays "in turn": its
                # thread may still be inside the segments, which ``_release`` must then
                # leave to it (closing a running generator raises).
                if turn_ended:
                    self._in_turn = ()
                    for job in jobs:
                        if job.withdrawn:
                            # Withdrawn during the turn (``_release`` leaves a job in its
                            # turn alone): the model is done with it now, so its segment is
                            # closed here, on the Trio thread.
                            job.rendering.close()
            self._turns += 1
            elapsed = trio.current_time() - started
            self._model_seconds += elapsed
            self._audio_seconds += sum(result.audio_seconds for result in results)
            frames = [
                job.rendering.windows.frames_decoded - before
                for job, before in zip(jobs, frames_before, strict=True)
            ]
            for job, result in zip(jobs, results, strict=True):
                if job.first_turn_at is None and result.served:
                    job.first_turn_at = started
            self._measure(
                [starting and result.served for starting, result in zip(new, results, strict=True)],
                results,
                frames,
                elapsed,
            )
            for job, result in zip(jobs, results, strict=True):
                self._settle(job, result)

    def _settle(self, job: Job, result: TurnResult) -> None:
        """After a turn: end the job that failed or is done."""
        if job.withdrawn:
            return
        if result.error is not None:
            job.send.send_nowait(result.error)
            job.send.close()
            self._release(job)
        elif job.done:
            job.send.close()
            self._release(job)
