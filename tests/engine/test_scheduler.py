"""The shared engine schedules decoder windows: earliest deadline first, capacity admission.

These run the engine inline on virtual time (``InlineRunner`` and ``autojump_clock``):
the fake model's compute is a ``MockClock.jump`` proportional to the frames it decodes
(context included), so who got which window when, and whether a real-time player of
each stream would have run dry, are exact. The last test runs the same engine with its
model on a real worker thread, as in production.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

from krt import PCM_BYTES_PER_SECOND, SAMPLE_RATE
from krt.engine.pipeline import SpeechPipeline
from krt.engine.runner import ThreadRunner
from krt.engine.scheduler import AHEAD_SECONDS, CAPACITY_HEADROOM, JOB_BUFFER_SECONDS
from krt.errors import SpeechError
from krt.synth.fake_backend import FakeBackend
from krt.synth.windows import CONTEXT_FRAMES, SAMPLES_PER_FRAME
from tests.fakes import read_all
from tests.inline_engine import engine_config, start_engine

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    from trio.testing import MockClock

    from krt.config import Config
    from krt.engine.facade import Engine
    from krt.engine.pipeline import SpeechPlan
    from krt.synth.windows import PreparedSegment, WindowRequest

pytestmark = pytest.mark.trio

LONG = (
    "{word} has a sentence long enough to be decoded in several windows of growing size, one after another."
)
"""About 6.5 s of fake audio per sentence."""


@attrs.frozen
class Window:
    owner: str
    """The first word of the segment, which names the job in these tests."""
    start: int
    stop: int
    at: float
    """Virtual time the window's compute began."""


class ClockedWindows(FakeBackend):
    """The fake backend computing on virtual time, recording every window it decodes.

    Decoding frames costs ``ratio`` × their duration (the context frames too), jumped on
    ``clock``; a segment whose text is in ``fail`` breaks in the front end like a model
    bug would.
    """

    def __init__(self, clock: MockClock, ratio: float, *, fail: Sequence[str] = ()) -> None:
        super().__init__()
        self.clock = clock
        self.ratio = ratio
        self.fail = set(fail)
        self.windows: list[Window] = []
        self._symbols = {token: symbol for symbol, token in self.vocab.items()}
        self._owners: dict[int, tuple[PreparedSegment, str]] = {}

    def prepare(self, tokens: Sequence[int], style: np.ndarray, speed: float) -> PreparedSegment:
        text = "".join(self._symbols[token] for token in tokens)
        if text in self.fail:
            raise RuntimeError(f"the model broke on {text!r}")
        segment = super().prepare(tokens, style, speed)
        self._owners[id(segment.decoder_inputs)] = (segment, text.split()[0])
        return segment

    def decode_windows(self, windows: Sequence[WindowRequest]) -> list[np.ndarray]:
        now = trio.current_time()
        for window in windows:
            owner = self._owners[id(window.segment.decoder_inputs)][1]
            self.windows.append(Window(owner, window.start, window.stop, now))
        return super().decode_windows(windows)

    def compute(self, seconds: float, windows: Sequence[WindowRequest]) -> None:
        self.clock.jump(sum(w.span_frames for w in windows) * SAMPLES_PER_FRAME / SAMPLE_RATE * self.ratio)

    def owners(self) -> list[str]:
        return [window.owner for window in self.windows]


@attrs.define
class Player:
    """A real-time player of one stream: when each batch arrived, and how long the player
    would have run dry waiting for it."""

    batches: list[bytes] = attrs.field(factory=list)
    arrivals: list[float] = attrs.field(factory=list)
    error: SpeechError | None = None
    left_at: float | None = None
    _waiters: list[tuple[float, trio.Event]] = attrs.field(factory=list)

    @property
    def seconds(self) -> float:
        return sum(map(len, self.batches)) / PCM_BYTES_PER_SECOND

    def received(self, batch: bytes) -> None:
        self.batches.append(batch)
        self.arrivals.append(trio.current_time())
        for seconds, event in self._waiters:
            if self.seconds >= seconds:
                event.set()

    async def wait_for_audio(self, seconds: float) -> None:
        """Return once this many seconds of audio have arrived."""
        event = trio.Event()
        self._waiters.append((seconds, event))
        if self.seconds >= seconds:
            event.set()
        await event.wait()

    @property
    def pcm(self) -> bytes:
        return b"".join(self.batches)

    def stalls(self) -> list[float]:
        """Seconds of silence a player that started at the first audio would have heard."""
        stalls, played_until = [], None
        for batch, arrival in zip(self.batches, self.arrivals, strict=True):
            if played_until is None:
                played_until = arrival
            elif arrival > played_until + 1e-9:
                stalls.append(arrival - played_until)
                played_until = arrival
            played_until += len(batch) / PCM_BYTES_PER_SECOND
        return stalls


async def play(
    engine: Engine,
    plan: SpeechPlan,
    player: Player,
    *,
    leave_after: int | None = None,
    paced: bool = True,
    client: str | None = None,
) -> None:
    try:
        async with engine.stream(plan, plan.segments[0].split()[0], paced=paced, client=client) as job:
            async for batch in job:
                player.received(b"".join(batch))
                job.mark_read(sum(map(len, batch)) / PCM_BYTES_PER_SECOND)
                if len(player.batches) == leave_after:
                    player.left_at = trio.current_time()
                    break
    except SpeechError as exc:
        player.error = exc


async def clocked_engine(
    nursery: trio.Nursery, clock: MockClock, ratio: float, **env: str
) -> tuple[Config, ClockedWindows, Engine]:
    """An engine running inline on a fake that decodes at ``1/ratio`` × real time."""
    config = engine_config(**env)
    backend = ClockedWindows(clock, ratio=ratio)
    return config, backend, await start_engine(nursery, config, backend)


def expected_pcm(config: Config, plan: SpeechPlan) -> bytes:
    pipeline = SpeechPipeline(FakeBackend(), config)
    return b"".join(chunk for batch in pipeline.rendering(plan) for chunk in batch)


def long_text(word: str, sentences: int) -> str:
    return " ".join([LONG.format(word=word)] * sentences)


async def test_one_stream_gets_a_small_first_window_then_growing_ones_and_all_its_audio(
    nursery, autojump_clock
):
    config, backend, engine = await clocked_engine(nursery, autojump_clock, 0.3)
    await engine.warm_up()
    warm_up_windows = len(backend.windows)
    plan = engine.plan(long_text("alpha", 2))
    player = Player()
    await play(engine, plan, player)

    assert player.pcm == expected_pcm(config, plan)
    sizes = [window.stop - window.start for window in backend.windows[warm_up_windows:]]
    first_window_frames = config.scheduler.priority_quantum_bytes // (2 * SAMPLES_PER_FRAME)
    assert sizes[0] <= first_window_frames * 1.25
    assert sizes[1] > sizes[0]
    assert player.stalls() == []
    stats = engine.statistics()
    assert (stats.active, stats.waiting, stats.busy_rejections) == (0, 0, 0)
    assert stats.turns >= len(sizes)  # a turn may also just flush held-back audio


async def test_a_stream_alone_takes_longer_windows_until_another_stream_comes(nursery, autojump_clock):
    """Alone on the model, a stream's later windows may pass the quantum: fewer seams,
    less context decoded, and no one waits for them. From the turn a second stream is
    active, windows are back within the quantum, so neither waits long for the other."""
    config, backend, engine = await clocked_engine(nursery, autojump_clock, 0.15)
    quantum = config.scheduler.quantum_bytes // (2 * SAMPLES_PER_FRAME)
    alpha_plan, bravo_plan = engine.plan(long_text("alpha", 4)), engine.plan(long_text("bravo", 2))
    alpha, bravo = Player(), Player()
    async with trio.open_nursery() as sessions:
        sessions.start_soon(play, engine, alpha_plan, alpha)
        await alpha.wait_for_audio(8.0)
        alone = list(backend.windows)
        sessions.start_soon(play, engine, bravo_plan, bravo)

    def inner_sizes(windows: list[Window]) -> list[int]:
        """Frames of the windows that do not end their segment (the last one of a segment
        may absorb a sliver of up to half a window, alone or not)."""
        followed = {(window.owner, window.start) for window in backend.windows}
        return [window.stop - window.start for window in windows if (window.owner, window.stop) in followed]

    assert max(inner_sizes(alone)) > quantum
    owners = backend.owners()
    first_bravo, last_bravo = owners.index("bravo"), len(owners) - owners[::-1].index("bravo")
    together = backend.windows[first_bravo + 1 : last_bravo]  # alpha's next turn decides anew
    assert "alpha" in [window.owner for window in together]
    assert max(inner_sizes(together)) <= quantum
    assert alpha.pcm == expected_pcm(config, alpha_plan) and bravo.pcm == expected_pcm(config, bravo_plan)
    assert alpha.stalls() == [] and bravo.stalls() == []


async def test_a_newcomers_first_window_comes_between_two_windows_of_a_running_stream(
    nursery, autojump_clock
):
    _config, backend, engine = await clocked_engine(nursery, autojump_clock, 0.15)
    alpha, bravo = Player(), Player()
    async with trio.open_nursery() as sessions:
        sessions.start_soon(play, engine, engine.plan(long_text("alpha", 3)), alpha)
        await alpha.wait_for_audio(2.0)  # alpha is well under way
        alpha_windows_when_bravo_came = backend.owners().count("alpha")
        sessions.start_soon(play, engine, engine.plan(long_text("bravo", 1)), bravo)

    owners = backend.owners()
    # At most the window already picked for alpha comes first; then bravo's first window.
    assert owners.index("bravo") <= alpha_windows_when_bravo_came + 1
    assert "alpha" in owners[owners.index("bravo") :]
    first_bravo = backend.windows[owners.index("bravo")]
    assert bravo.arrivals[0] - first_bravo.at < 1.0  # one small window's compute
    assert alpha.stalls() == [] and bravo.stalls() == []


@pytest.mark.parametrize("streams", [1, 2, 3])
async def test_streams_that_arrive_together_never_stall_while_the_engine_has_capacity(
    nursery, autojump_clock, streams
):
    config = engine_config()
    # The fake decodes at 10x real time before context (about 6x with it): three
    # real-time streams need half of the engine.
    backend = ClockedWindows(autojump_clock, ratio=0.1)
    engine = await start_engine(nursery, config, backend)
    await engine.warm_up()
    assert engine.statistics().slots >= streams
    warm_up_windows = len(backend.windows)
    words = ["alpha", "bravo", "charlie"][:streams]
    players = {word: Player() for word in words}
    async with trio.open_nursery() as sessions:
        for word in words:
            sessions.start_soon(play, engine, engine.plan(long_text(word, 2)), players[word])

    for word, player in players.items():
        assert player.error is None
        assert player.pcm == expected_pcm(config, engine.plan(long_text(word, 2)))
        assert player.stalls() == [], word
    # Earliest deadline first: every newcomer's first window before anyone's second.
    owners = backend.owners()[warm_up_windows:]
    assert sorted(owners[:streams]) == sorted(words)


async def test_a_download_takes_every_turn_no_player_needs_and_stalls_no_one(nursery, autojump_clock):
    """An unpaced job (an HTTP download) is made far faster than real time, where a paced
    one is held to AHEAD_SECONDS ahead of its player; a stream started beside it never
    runs dry."""
    _config, _backend, engine = await clocked_engine(nursery, autojump_clock, 0.1)
    await engine.warm_up()
    paced_alone, stream, download = Player(), Player(), Player()
    await play(engine, engine.plan(long_text("alpha", 4)), paced_alone)
    async with trio.open_nursery() as sessions:
        sessions.start_soon(play, engine, engine.plan(long_text("bravo", 4)), stream)
        sessions.start_soon(
            partial(play, engine, engine.plan(long_text("charlie", 4)), download, paced=False)
        )

    def making_time(player: Player) -> float:
        return player.arrivals[-1] - player.arrivals[0]

    assert making_time(paced_alone) > paced_alone.seconds - AHEAD_SECONDS - 1.0
    assert making_time(download) < 0.5 * download.seconds
    assert stream.stalls() == [] and engine.statistics().stalls == 0


async def play_in_background(engine: Engine, plan: SpeechPlan, player: Player) -> None:
    """Read a background job (a long download's later part) as fast as it is made."""
    job = engine.admit(plan, plan.segments[0].split()[0], paced=False, background=True)
    async with engine.hold(job):
        async for batch in job:
            player.received(b"".join(batch))
            job.mark_read(sum(map(len, batch)) / PCM_BYTES_PER_SECOND)


async def test_a_background_job_takes_only_turns_no_stream_is_due_for(nursery, autojump_clock):
    """A long download's part beside a real-time stream: the stream's first window comes
    after at most the background window in progress, the stream never runs dry, and the
    background job still gets all its audio, from the turns the stream does not need."""
    config, backend, engine = await clocked_engine(nursery, autojump_clock, 0.25)
    await engine.warm_up()
    alone, stream, download = Player(), Player(), Player()
    arrived: dict[str, float] = {}

    async def start_stream(word: str, player: Player) -> None:
        arrived[word] = trio.current_time()
        await play(engine, engine.plan(long_text(word, 3)), player)

    await start_stream("alpha", alone)
    async with trio.open_nursery() as sessions:
        sessions.start_soon(play_in_background, engine, engine.plan(long_text("charlie", 6)), download)
        await download.wait_for_audio(3.0)  # the download is under way
        sessions.start_soon(start_stream, "bravo", stream)

    owners = backend.owners()
    bravo_first = owners.index("bravo")
    assert set(owners[bravo_first - 2 : bravo_first]) <= {"charlie"}  # it had the engine to itself
    # The download's windows all stay at a first window's size, so the stream waits for
    # at most one of those, context included, at the fake's 0.25 s of compute a second.
    first_window = config.scheduler.priority_quantum_bytes / PCM_BYTES_PER_SECOND
    frames = [w.stop - w.start for w in backend.windows if w.owner == "charlie"]
    assert (
        max(frames) * SAMPLES_PER_FRAME / SAMPLE_RATE <= 1.5 * first_window
    )  # a segment's end may ride along
    background_window = (1.5 * first_window + 2 * CONTEXT_FRAMES * SAMPLES_PER_FRAME / SAMPLE_RATE) * 0.25
    first_alone = alone.arrivals[0] - arrived["alpha"]
    assert stream.arrivals[0] - arrived["bravo"] <= first_alone + background_window
    assert stream.stalls() == [] and engine.statistics().stalls == 0
    assert download.pcm == expected_pcm(config, engine.plan(long_text("charlie", 6)))
    assert download.arrivals[-1] > stream.arrivals[-1]  # it yielded, and finished after


async def test_a_background_job_never_takes_a_real_time_streams_place(nursery, autojump_clock):
    """With room for one stream (MAX_CONCURRENT_JOBS=1), a download running in the
    background leaves it free: a stream is admitted at once and is never refused."""
    config, _backend, engine = await clocked_engine(nursery, autojump_clock, 0.25, MAX_CONCURRENT_JOBS="1")
    await engine.warm_up()
    stream, download = Player(), Player()
    async with trio.open_nursery() as sessions:
        sessions.start_soon(play_in_background, engine, engine.plan(long_text("charlie", 6)), download)
        await download.wait_for_audio(1.0)
        await play(engine, engine.plan(long_text("bravo", 2)), stream)
        assert stream.error is None and stream.stalls() == []
        assert engine.statistics().busy_rejections == 0
    assert download.pcm == expected_pcm(config, engine.plan(long_text("charlie", 6)))


async def test_the_engine_counts_what_a_player_would_hear_as_stalls(nursery, autojump_clock):
    """A model slower than real time: every gap a player would hear is one of the engine's
    stalls (``krt_stalls_total``), and their seconds add up."""
    _config, _backend, engine = await clocked_engine(nursery, autojump_clock, 1.5)
    player = Player()
    await play(engine, engine.plan(long_text("alpha", 2)), player)
    heard = player.stalls()
    assert heard
    statistics = engine.statistics()
    assert statistics.stalls == len(heard)
    assert statistics.stall_seconds == pytest.approx(sum(heard), abs=1e-6)


async def test_the_stream_nearest_to_running_dry_goes_first(nursery, autojump_clock):
    _config, backend, engine = await clocked_engine(nursery, autojump_clock, 0.25)
    alpha, bravo = Player(), Player()
    async with trio.open_nursery() as sessions:
        sessions.start_soon(play, engine, engine.plan(long_text("alpha", 3)), alpha)
        # Let alpha build up several seconds of audio ahead of its player.
        await alpha.wait_for_audio(5.0)
        sessions.start_soon(play, engine, engine.plan(long_text("bravo", 2)), bravo)
        await bravo.wait_for_audio(0.01)
        alpha_ahead = alpha.arrivals[0] + alpha.seconds
        taken = len(backend.windows)

    # After bravo's first window, bravo (whose player has less audio ahead) keeps the
    # model until its player is as far ahead as alpha's; alpha never stalls meanwhile.
    after = backend.windows[taken:]
    bravo_run = next((i for i, w in enumerate(after) if w.owner == "alpha"), len(after))
    assert bravo_run >= 1
    assert all(w.owner == "bravo" for w in after[:bravo_run])
    bravo_ahead_at_switch = (
        bravo.arrivals[0]
        + sum(
            len(b) for b, at in zip(bravo.batches, bravo.arrivals, strict=True) if at <= after[bravo_run].at
        )
        / PCM_BYTES_PER_SECOND
    )
    assert bravo_ahead_at_switch >= alpha_ahead - 1e-6
    assert alpha.stalls() == [] and bravo.stalls() == []


async def test_admission_starts_a_stream_only_when_the_schedule_keeps_every_player_fed(
    nursery, autojump_clock
):
    config = engine_config(MAX_CONCURRENT_JOBS="8", MAX_QUEUED_REQUESTS="1", QUEUE_WAIT_SLA_MS="600000")
    # 3x real time before the context decoded around windows: one stream fits, two would stall.
    backend = ClockedWindows(autojump_clock, ratio=1 / 3)
    engine = await start_engine(nursery, config, backend)
    await engine.warm_up()
    stats = engine.statistics()
    assert CAPACITY_HEADROOM < stats.capacity < 2 * CAPACITY_HEADROOM  # measured, context included
    assert stats.slots == max(1, int(stats.capacity // CAPACITY_HEADROOM)) == 1

    alpha, bravo, charlie = Player(), Player(), Player()
    async with trio.open_nursery() as sessions:
        sessions.start_soon(play, engine, engine.plan(long_text("alpha", 1)), alpha)
        await trio.testing.wait_all_tasks_blocked()
        sessions.start_soon(play, engine, engine.plan(long_text("bravo", 1)), bravo)
        await trio.testing.wait_all_tasks_blocked()
        assert (engine.statistics().active, engine.statistics().waiting) == (1, 1)
        sessions.start_soon(play, engine, engine.plan(long_text("charlie", 1)), charlie)

    assert charlie.error is not None and charlie.error.code == "busy"
    assert charlie.error.retry_after is not None and charlie.error.retry_after > 0
    owners = backend.owners()
    # bravo began only once alpha was far enough ahead to spare the compute (not when
    # alpha was done: alpha still had a window to make), and nobody ran dry.
    assert owners.index("bravo") > 0 and "alpha" in owners[owners.index("bravo") :]
    assert alpha.stalls() == [] and bravo.stalls() == []  # a wait and busy rather than stalls


async def test_a_newcomer_is_busy_when_the_first_windows_ahead_of_it_pass_the_sla(nursery, autojump_clock):
    backend = ClockedWindows(autojump_clock, ratio=0.25)
    sla_ms = 1000
    config = engine_config(QUEUE_WAIT_SLA_MS=str(sla_ms))
    engine = await start_engine(nursery, config, backend)
    await engine.warm_up()
    first_window = engine.statistics().first_window_seconds
    assert 0 < first_window < sla_ms / 1000
    players = [Player() for _ in range(4)]
    async with trio.open_nursery() as sessions:
        for index, player in enumerate(players):  # four newcomers at the same instant
            sessions.start_soon(play, engine, engine.plan(long_text(f"w{index}", 1)), player)

    # Each newcomer waits for the first windows of those ahead of it.
    admitted = [player for player in players if player.error is None]
    assert 1 <= len(admitted) <= 1 + int(sla_ms / 1000 // first_window) < len(players)
    for player in players:
        if player.error is not None:
            assert player.error.code == "busy"
            assert "QUEUE_WAIT_SLA_MS" in player.error.message
    assert engine.statistics().busy_rejections == len(players) - len(admitted)


async def test_leaving_a_stream_stops_its_model_work_at_once(nursery, autojump_clock):
    config, backend, engine = await clocked_engine(nursery, autojump_clock, 0.25)
    alpha, bravo = Player(), Player()
    async with trio.open_nursery() as sessions:
        sessions.start_soon(partial(play, leave_after=2), engine, engine.plan(long_text("alpha", 3)), alpha)
        sessions.start_soon(play, engine, engine.plan(long_text("bravo", 2)), bravo)
    assert alpha.left_at is not None
    assert all(window.at < alpha.left_at for window in backend.windows if window.owner == "alpha")
    assert bravo.pcm == expected_pcm(config, engine.plan(long_text("bravo", 2)))
    stats = engine.statistics()
    assert (stats.active, stats.waiting) == (0, 0)


async def test_an_unread_stream_is_not_computed_far_ahead_and_holds_up_no_one(nursery, autojump_clock):
    config, backend, engine = await clocked_engine(nursery, autojump_clock, 0.1)
    bravo = Player()
    async with engine.stream(engine.plan(long_text("alpha", 6)), "alpha"):  # never read
        await play(engine, engine.plan(long_text("bravo", 2)), bravo)
        await trio.sleep(30)
        made = sum(
            (w.stop - w.start) * SAMPLES_PER_FRAME / SAMPLE_RATE
            for w in backend.windows
            if w.owner == "alpha"
        )
    assert bravo.stalls() == []
    # Alpha's reader took nothing, so alpha's last turn came while it had less than
    # JOB_BUFFER_SECONDS unread besides its latest window: it made under that plus its
    # last two windows (each up to 1.5 windows where it takes in the end of a segment),
    # not its whole 40 s.
    largest = config.scheduler.quantum_bytes / PCM_BYTES_PER_SECOND  # SCHED_QUANTUM_BYTES
    assert made < JOB_BUFFER_SECONDS + 2 * 1.5 * largest


async def test_a_model_failure_ends_that_stream_with_synthesis_failed_and_the_engine_goes_on(
    nursery, autojump_clock
):
    config = engine_config()
    text_a = "alpha one two three. alpha four five six."
    backend = ClockedWindows(autojump_clock, ratio=0.25, fail=["alpha four five six."])
    engine = await start_engine(nursery, config, backend)
    alpha, bravo = Player(), Player()
    async with trio.open_nursery() as sessions:
        sessions.start_soon(play, engine, engine.plan(text_a), alpha)
        sessions.start_soon(play, engine, engine.plan(long_text("bravo", 1)), bravo)
    assert alpha.error is not None and alpha.error.code == "synthesis_failed"
    assert "the model broke" in alpha.error.message
    assert alpha.batches  # the first sentence was spoken before the failure
    assert bravo.error is None
    assert bravo.pcm == expected_pcm(config, engine.plan(long_text("bravo", 1)))
    charlie = Player()
    await play(engine, engine.plan("charlie speaks after it."), charlie)
    assert charlie.error is None and charlie.batches
    stats = engine.statistics()
    assert (stats.active, stats.waiting, stats.busy_rejections) == (0, 0, 0)


async def test_on_a_real_model_thread_streams_finish_and_a_leaver_frees_its_slot(nursery):
    """The production runner: model work on a worker thread, the Trio side reading."""
    with trio.fail_after(20):
        config = engine_config(MAX_CONCURRENT_JOBS="1", MAX_QUEUED_REQUESTS="1", QUEUE_WAIT_SLA_MS="600000")
        engine = await start_engine(nursery, config, FakeBackend(compute_ratio=0.01), ThreadRunner())
        alpha, bravo = Player(), Player()
        async with trio.open_nursery() as sessions:
            sessions.start_soon(
                partial(play, leave_after=1), engine, engine.plan(long_text("alpha", 3)), alpha
            )
            await trio.testing.wait_all_tasks_blocked()
            sessions.start_soon(play, engine, engine.plan(long_text("bravo", 1)), bravo)
        assert alpha.left_at is not None
        assert bravo.error is None
        assert bravo.pcm == expected_pcm(config, engine.plan(long_text("bravo", 1)))
        await trio.testing.wait_all_threads_completed()
        stats = engine.statistics()
        assert (stats.active, stats.waiting, stats.busy_rejections) == (0, 0, 0)


async def test_capacity_is_measured_on_model_work_only(nursery):
    """A response's last batch is the chunker's leftover, made with no model call: counted
    as a turn, its microseconds would claim a huge capacity and admit streams that stall.
    (Real time and a model thread: on virtual time such a turn takes no time at all.)"""
    with trio.fail_after(20):
        config = engine_config()
        engine = await start_engine(nursery, config, FakeBackend(compute_ratio=0.05), ThreadRunner())
        for word in ("alpha", "bravo", "charlie", "delta"):
            await play(engine, engine.plan(long_text(word, 1)), Player())
        # The fake decodes 20x faster than real time, context frames included: no more.
        assert 0 < engine.statistics().capacity <= 20.0


class GatedPrepare(FakeBackend):
    """A model whose calls block until the test releases them, as a stuck one would, and
    then fail: the engine they were called for is gone, and nothing may call back into it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release, self.left = threading.Event(), threading.Event(), threading.Event()

    def prepare(self, tokens: Sequence[int], style: np.ndarray, speed: float) -> PreparedSegment:
        self.entered.set()
        try:
            self.release.wait()
            raise SpeechError("synthesis_failed", "released after the engine was gone")
        finally:
            self.left.set()


async def test_a_turn_abandoned_as_the_process_ends_is_left_to_its_thread():
    """Shutting down with a model call in progress: the engine loop is cancelled and the
    call abandoned, and then the stream leaves. Its segment is still running on the model
    thread, so leaving must not close it: Python refuses to close a running generator, and
    that error would replace the cancellation and end the stream's connection with a
    traceback instead of quietly."""
    backend = GatedPrepare()
    with trio.fail_after(10):
        async with trio.open_nursery() as streams:
            async with trio.open_nursery() as engine_loop:
                engine = await start_engine(engine_loop, engine_config(), backend, ThreadRunner())
                player = Player()
                streams.start_soon(play, engine, engine.plan("A sentence the model is stuck on."), player)
                await trio.to_thread.run_sync(backend.entered.wait)
                engine_loop.cancel_scope.cancel()
            streams.cancel_scope.cancel()
        assert player.batches == [] and player.error is None
        backend.release.set()
        await trio.to_thread.run_sync(backend.left.wait)


# -- admission by schedule ---------------------------------------------------------------

SHORT = "{word} says a short reply of about two seconds."


async def speak_back_to_back(
    engine: Engine, word: str, replies: int, players: list[Player], refusals: list[int], gap: float = 0.0
) -> None:
    """A voice agent's turns: each reply asked for when the last one has been heard,
    retried when refused ``busy`` after the time the refusal names (as a client should)."""
    for _ in range(replies):
        player, tries = Player(), 0
        while True:
            await play(engine, engine.plan(SHORT.format(word=word)), player, client=word)
            if player.error is None:
                break
            assert player.error.code == "busy" and player.error.retry_after is not None
            tries += 1
            await trio.sleep(player.error.retry_after)
            player = Player()
        players.append(player)
        refusals.append(tries)
        await trio.sleep(gap + player.seconds)  # its caller listens, then the agent answers again


async def test_three_clients_back_to_back_are_served_without_a_stall_where_a_count_admits_one(
    nursery, autojump_clock
):
    """A model at ~2x real time, context included: ``floor(capacity / 1.25)`` is one
    stream, yet three agents speaking short replies back to back all fit the schedule: no
    player runs dry and no request is refused more than once."""
    with trio.fail_after(120):  # virtual seconds
        _config, _backend, engine = await clocked_engine(nursery, autojump_clock, 0.4)
        await engine.warm_up()
        assert engine.statistics().slots == 1
        players: dict[str, list[Player]] = {word: [] for word in ("alpha", "bravo", "charlie")}
        refusals: list[int] = []
        async with trio.open_nursery() as agents:
            for offset, (word, heard) in enumerate(players.items()):
                agents.start_soon(speak_back_to_back, engine, word, 4, heard, refusals, offset * 0.3)
        spoken = [player for heard in players.values() for player in heard]
        assert len(spoken) == 12
        assert all(player.stalls() == [] for player in spoken)
        assert max(refusals) <= 1
        assert engine.statistics().stalls == 0


async def test_a_refused_stream_could_not_have_started_in_time_without_a_stall(nursery, autojump_clock):
    """Long replies arriving close together on a slow model: those taken in never stall.
    The one refused, asked for again as accepted work (which waits for the schedule and is
    never refused), really waits past the SLA for its first audio."""
    with trio.fail_after(120):  # virtual seconds
        sla = 2.0
        _config, _backend, engine = await clocked_engine(
            nursery, autojump_clock, 0.45, QUEUE_WAIT_SLA_MS=str(int(sla * 1000))
        )
        await engine.warm_up()
        players = [Player() for _ in range(4)]
        async with trio.open_nursery() as streams:
            for word, player in zip(("alpha", "bravo", "charlie", "delta"), players, strict=True):
                streams.start_soon(play, engine, engine.plan(long_text(word, 2)), player)
                await trio.sleep(0.4)
        admitted = [player for player in players if player.error is None]
        refused = [player for player in players if player.error is not None]
        assert admitted and refused
        assert all(player.stalls() == [] for player in admitted)
        assert all(player.error.code == "busy" for player in refused)
        assert all(player.error.retry_after > sla for player in refused)

        # The same again, the last one accepted instead: it is held until it fits.
        async with trio.open_nursery() as streams:
            for word, player in zip(("alpha", "bravo", "charlie"), [Player() for _ in range(3)], strict=True):
                streams.start_soon(play, engine, engine.plan(long_text(word, 2)), player)
                await trio.sleep(0.4)
            asked = trio.current_time()
            job = engine.admit(engine.plan(long_text("delta", 2)), "delta", accepted=True)
            async with engine.hold(job):
                await read_all(job)
        assert job.first_batch_at is not None and job.first_batch_at - asked > sla


async def test_a_stream_nobody_reads_is_parked_and_frees_its_place(nursery, autojump_clock):
    """One stream at a time: a response whose reader takes nothing holds the engine only
    until it is parked (PARK_AFTER_SECONDS after its buffer filled); the next one is then
    taken in at once and plays without a stall, and the parked one, read again, waits
    for the schedule to fit it and gets all of its audio."""
    with trio.fail_after(120):  # virtual seconds
        config, _backend, engine = await clocked_engine(
            nursery, autojump_clock, 0.2, MAX_CONCURRENT_JOBS="1", QUEUE_WAIT_SLA_MS="1000"
        )
        await engine.warm_up()
        silent_plan = engine.plan(long_text("alpha", 3))
        silent = engine.admit(silent_plan, "alpha", client="A")
        async with engine.hold(silent):
            with pytest.raises(SpeechError):  # while it holds the one place
                await play_and_raise(engine, engine.plan(long_text("bravo", 1)))
            await trio.sleep(5)  # virtual: its buffer fills, then it is parked
            assert (engine.statistics().active, engine.statistics().parked) == (0, 1)
            bravo = Player()
            async with trio.open_nursery() as others:
                others.start_soon(play, engine, engine.plan(long_text("bravo", 1)), bravo)
                await bravo.wait_for_audio(0.01)
                pcm = b"".join(b"".join(batch) for batch in await read_all(silent))  # its reader is back
        assert bravo.error is None and bravo.stalls() == []
        assert pcm == expected_pcm(config, silent_plan)
        assert engine.statistics().parked == 0


async def test_a_far_refusal_says_come_back_soon_and_a_hung_reader_is_parked_by_then(nursery, autojump_clock):
    """One place, taken by a long response whose client never reads: the newcomer's
    first turn is predicted at that response's end, as if it were heard out, but the
    refusal says to come back within twice the SLA. By then the hung stream is parked,
    and the newcomer, back when told, is served without a stall."""
    with trio.fail_after(120):  # virtual seconds
        config, _backend, engine = await clocked_engine(
            nursery, autojump_clock, 0.2, MAX_CONCURRENT_JOBS="1", QUEUE_WAIT_SLA_MS="1000"
        )
        await engine.warm_up()
        hung = engine.admit(engine.plan(long_text("alpha", 6)), "alpha", client="A")
        async with engine.hold(hung):
            await trio.sleep(0.5)  # its first window is out; nothing is read
            newcomer = Player()
            await play(engine, engine.plan(long_text("bravo", 1)), newcomer, client="B")
            assert newcomer.error is not None and newcomer.error.code == "busy"
            told = newcomer.error.retry_after
            assert told is not None and 0 < told <= 2 * 1.0  # though alpha is 35 s of audio
            await trio.sleep(told)
            newcomer, plan = Player(), engine.plan(long_text("bravo", 1))
            await play(engine, plan, newcomer, client="B")
            assert engine.statistics().parked == 1
        assert newcomer.error is None and newcomer.stalls() == []
        assert newcomer.pcm == expected_pcm(config, plan)


async def play_and_raise(engine: Engine, plan: SpeechPlan) -> None:
    async with engine.stream(plan, "refused"):
        pass
