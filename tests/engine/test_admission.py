"""Admission, on virtual time: which streams the engine takes in, when, and when it says busy.

The warm-up calibrates the capacity and the cost of a newcomer's first window; a
newcomer is refused ``busy`` when its first turn would come after ``QUEUE_WAIT_SLA_MS``,
or past the concurrency and queue limits, and is told when to come back (and kept its
place when it does); a job waiting for a slot starts the moment the one ahead is done.
The engine runs its model inline (``InlineRunner``) and ``ClockedFake`` advances the
``MockClock`` by each decoder window's frames (context included) × a ratio, so compute
times are exact and the clock only moves when the model computes or when every task
waits for a deadline (``autojump_clock``). What a session's client hears of admission
(``busy`` instead of ``response.created``) is in ``tests/server/test_session.py``.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import TYPE_CHECKING

import pytest
import trio

from krt import PCM_BYTES_PER_SECOND
from krt.engine.facade import WARM_UP_TEXT, Engine
from krt.engine.pipeline import SpeechPipeline, SpeechPlan
from krt.engine.scheduler import CAPACITY_HEADROOM
from krt.errors import SpeechError
from krt.synth.fake_backend import FakeBackend
from tests.fakes import ClockedFake, read_all
from tests.inline_engine import LONG_TEXT, engine_config, sentences, start_engine, token_seconds

if TYPE_CHECKING:
    from krt.config import Config

pytestmark = pytest.mark.trio

TICK = 1e-9
"""Autojumps land on a deadline give or take float rounding; nothing else may pass."""


def warm_up_plan(config: Config) -> SpeechPlan:
    """What ``Engine.warm_up`` renders: its text, in the female voice at the default speed."""
    pipeline = SpeechPipeline(FakeBackend(), config)
    return SpeechPlan(pipeline.voices.female, pipeline.resolve_speed(None), (WARM_UP_TEXT,))


def turn_costs(config: Config, plan: SpeechPlan, ratio: float) -> list[tuple[float, float]]:
    """(audio seconds, compute seconds) of each batch the plain pipeline renders for
    ``plan`` on ClockedFake's model: what each engine turn makes and costs while the
    scheduler leaves its windows as they are (a response's first turn, the warm-up). A
    last turn that computes but finds no audio left counts as a batch of none."""
    meter = ClockedFake(None, ratio)
    rendering = SpeechPipeline(meter, config).rendering(plan)
    costs = []
    while True:
        before = meter.computed
        batch = next(rendering, None)
        if batch is None and meter.computed == before:
            return costs
        costs.append((sum(map(len, batch or ())) / PCM_BYTES_PER_SECOND, meter.computed - before))


async def try_stream(engine: Engine, plan: SpeechPlan, label: str, client: str | None = None) -> None:
    async with engine.stream(plan, label, client=client):
        pass


@pytest.mark.parametrize("ratio", [0.5, 0.2, 0.1])
async def test_warm_up_calibrates_capacity_and_first_window_from_the_clocked_compute(
    nursery, autojump_clock, ratio
):
    with trio.fail_after(60):  # virtual seconds: two runs of the warm-up sentence at 2x real time
        config = engine_config()
        engine = await start_engine(nursery, config, ClockedFake(autojump_clock, ratio=ratio))
        unmeasured = engine.statistics()
        assert (unmeasured.capacity, unmeasured.slots) == (0.0, config.admission.max_concurrent_jobs)
        costs = turn_costs(config, warm_up_plan(config), ratio)
        first_compute = costs[0][1]
        later_audio = sum(audio for audio, _compute in costs[1:])
        later_compute = sum(compute for _audio, compute in costs[1:])
        started = trio.current_time()
        await engine.warm_up()

        # Two runs of the warm-up text (on a real model the first pays for lazy set-up).
        assert trio.current_time() - started == pytest.approx(2 * (first_compute + later_compute), abs=TICK)
        stats = engine.statistics()
        # What a newcomer ahead will cost, and the audio per second of a stream's later windows.
        assert stats.first_window_seconds == pytest.approx(first_compute, abs=TICK)
        assert stats.capacity == pytest.approx(later_audio / later_compute, rel=1e-9)
        # Each window's context is computed and thrown away: less than the raw 1/ratio.
        assert stats.capacity < 1 / ratio
        sustainable = max(1, math.floor(stats.capacity / CAPACITY_HEADROOM))
        assert stats.slots == min(config.admission.max_concurrent_jobs, sustainable)
        if ratio >= 1 / (2 * CAPACITY_HEADROOM):
            assert stats.slots == 1  # such a model never sustains two streams in real time
        assert (stats.active, stats.waiting, stats.busy_rejections) == (0, 0, 0)


@pytest.mark.parametrize(("margin_ms", "admitted"), [(-25, False), (25, True)])
async def test_a_newcomer_is_busy_when_its_first_turn_would_come_after_the_sla(
    nursery, autojump_clock, margin_ms, admitted
):
    with trio.fail_after(30):
        ratio = 0.2
        # B would wait for A's first window. A's first sentence is the warm-up's, so that
        # window is the very one the warm-up measured; admission predicts it with headroom.
        first_window = turn_costs(engine_config(), warm_up_plan(engine_config()), ratio)[0][1]
        predicted = first_window * CAPACITY_HEADROOM
        sla_ms = math.floor(predicted * 1000) + margin_ms
        config = engine_config(QUEUE_WAIT_SLA_MS=str(sla_ms))
        engine = await start_engine(nursery, config, ClockedFake(autojump_clock, ratio=ratio))
        await engine.warm_up()
        plan_a = engine.plan(f"{WARM_UP_TEXT} {sentences('alpha', 2)}")
        plan_b = engine.plan(sentences("bravo", 2))
        assert plan_a.segments[0] == WARM_UP_TEXT
        assert turn_costs(config, plan_a, ratio)[0][1] == pytest.approx(first_window, abs=TICK)

        async with engine.stream(plan_a, "a") as job_a:
            if admitted:
                async with engine.stream(plan_b, "b") as job_b:
                    await read_all(job_b)
                # On a calibrated model B really waits A's first window, no more.
                assert job_b.queue_seconds == pytest.approx(first_window, abs=TICK)
            else:
                with pytest.raises(SpeechError) as refused:
                    await try_stream(engine, plan_b, "b")
                assert refused.value.code == "busy"
                assert f"QUEUE_WAIT_SLA_MS={sla_ms}" in refused.value.message
                # Told to come back when it would fit: once A's compute is done, past the SLA.
                assert refused.value.retry_after is not None
                assert refused.value.retry_after > sla_ms / 1000
                said = re.search(r"retry in (\d+) ms", refused.value.message)
                assert said is not None and int(said[1]) == math.ceil(refused.value.retry_after * 1000)
            await read_all(job_a)
        assert engine.statistics().busy_rejections == (0 if admitted else 1)


async def test_a_refused_client_that_comes_back_when_told_is_not_overtaken(nursery, autojump_clock):
    """One stream at a time and no queue. C, refused while A speaks, is told when to come
    back; D asks the moment A is done (as a client that sends its next request when its
    last one ends would) and is refused, although the engine is idle: C's place is kept
    (until 2 s after the time C was told). C, back, is taken in at once."""
    with trio.fail_after(60):
        config = engine_config(MAX_CONCURRENT_JOBS="1", MAX_QUEUED_REQUESTS="0", QUEUE_WAIT_SLA_MS="100000")
        engine = await start_engine(nursery, config, ClockedFake(autojump_clock, ratio=0.2))
        await engine.warm_up()
        plan = engine.plan(sentences("alpha", 3))

        async with engine.stream(plan, "a", client="A") as job_a:
            with pytest.raises(SpeechError) as refused_c:
                await try_stream(engine, plan, "c1", client="C")
            assert refused_c.value.retry_after is not None
            told = trio.current_time() + refused_c.value.retry_after
            await read_all(job_a)
        with pytest.raises(SpeechError) as refused_d:
            await try_stream(engine, plan, "d", client="D")
        assert refused_d.value.code == "busy"
        assert refused_d.value.retry_after is not None
        assert trio.current_time() + refused_d.value.retry_after > told
        await trio.sleep_until(max(told, trio.current_time()))
        async with engine.stream(plan, "c2", client="C") as job_c:
            await read_all(job_c)
        assert job_c.queue_seconds == 0
        assert engine.statistics().busy_rejections == 2


async def test_a_job_waiting_for_a_slot_starts_when_the_one_ahead_finishes(nursery, autojump_clock):
    with trio.fail_after(30):
        config = engine_config(MAX_CONCURRENT_JOBS="1", QUEUE_WAIT_SLA_MS="100000")
        backend = ClockedFake(autojump_clock, ratio=0.5)
        engine = await start_engine(nursery, config, backend)
        await engine.warm_up()
        plan_a = engine.plan(sentences("alpha", 4))
        plan_b = engine.plan(sentences("bravo", 1))

        async with engine.stream(plan_a, "a") as job_a, engine.stream(plan_b, "b") as job_b:
            assert (engine.statistics().active, engine.statistics().waiting) == (1, 1)
            await read_all(job_a)
            await read_all(job_b)

        assert job_a.queue_seconds == 0
        # B's first turn came the moment the model had made all of A, none of B before.
        a_compute = backend.computed_for("alpha")
        assert a_compute >= token_seconds(plan_a, 0.5)
        assert job_b.queue_seconds == pytest.approx(a_compute, abs=TICK)


async def test_the_engine_is_busy_at_exactly_its_concurrency_and_queue_limits(nursery, autojump_clock):
    with trio.fail_after(30):
        config = engine_config(
            MAX_CONCURRENT_JOBS="2", MAX_QUEUED_REQUESTS="3", QUEUE_WAIT_SLA_MS="100000000"
        )
        # Fast enough that MAX_CONCURRENT_JOBS, not the capacity, is what limits the slots.
        engine = await start_engine(nursery, config, ClockedFake(autojump_clock, ratio=0.1))
        await engine.warm_up()
        assert engine.statistics().slots == 2
        plan = engine.plan(LONG_TEXT)

        async with contextlib.AsyncExitStack() as streams:
            jobs = [await streams.enter_async_context(engine.stream(plan, f"j{n}")) for n in range(5)]
            # Decided at admission, before any virtual time passes (a job nobody reads is
            # parked after PARK_AFTER_SECONDS and would leave its place).
            stats = engine.statistics()
            assert (stats.slots, stats.active, stats.waiting, stats.busy_rejections) == (2, 2, 3, 0)
            for label in ("j5", "j6"):
                with pytest.raises(SpeechError) as refused:
                    await try_stream(engine, plan, label)
                assert refused.value.code == "busy"
                assert "3 requests are already waiting" in refused.value.message
            assert engine.statistics().busy_rejections == 2

            engine.withdraw(jobs[0])  # the first leaves; the oldest waiting one moves up
            stats = engine.statistics()
            assert (stats.active, stats.waiting) == (2, 2)
            await streams.enter_async_context(engine.stream(plan, "j7"))
            assert (engine.statistics().active, engine.statistics().waiting) == (2, 3)
        assert engine.statistics().busy_rejections == 2


async def test_queue_maxsize_caps_the_jobs_even_with_a_free_slot(nursery, autojump_clock):
    with trio.fail_after(10):
        config = engine_config(MAX_CONCURRENT_JOBS="4", QUEUE_MAXSIZE="2", QUEUE_WAIT_SLA_MS="100000000")
        engine = await start_engine(nursery, config, ClockedFake(autojump_clock, ratio=0.5))
        plan = engine.plan(LONG_TEXT)

        async with engine.stream(plan, "a"), engine.stream(plan, "b"):
            stats = engine.statistics()
            assert (stats.slots, stats.active) == (4, 2)  # unmeasured: every slot allowed, two free
            with pytest.raises(SpeechError) as refused:
                await try_stream(engine, plan, "c")
            assert refused.value.code == "busy"
            assert "2 responses are already in the engine" in refused.value.message
            assert engine.statistics().active == 2
        assert engine.statistics().busy_rejections == 1
