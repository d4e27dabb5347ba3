"""The shared engine on the fake backend: order, priority, fairness, admission, cancel, errors.

These run the model in a real worker thread (``ThreadRunner``, as in production), so
they run on the real clock (``autojump_clock`` would take a busy model thread for an
idle one; tests/test_virtual_time.py runs the engine inline on virtual time). They
synchronise on what the backend records and on events, never on sleeps; the only
sleeping is the fake model's own compute time, kept to a few milliseconds per segment.

Every segment text here spells ``<word> <number>.``, 10 to 14 characters: 0.65–0.91 s
of fake audio, two backend chunks (0.5 s and the rest), which the rendering hands on as
PCM batches (the head, the rest, and the 96-sample faded tail, carried into the next
segment's first batch when it does not fill a 20 ms chunk). Several tests choose quanta
that make a turn exactly one of those batches (``ONE_CHUNK_TURNS``) or exactly one segment
started (``ONE_SEGMENT_TURNS``), so the order of model turns is exact and can be reasoned
out from the scheduler's rules alone.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import attrs
import numpy as np
import pytest
import trio
import trio.testing

from krt.engine.pipeline import SpeechPipeline
from krt.engine.runner import ThreadRunner
from krt.engine.scheduler import JOB_BUFFER_BATCHES
from krt.errors import SpeechError
from krt.synth.fake_backend import FakeBackend
from tests.fakes import RecordingFake
from tests.inline_engine import engine_config, sentences
from tests.inline_engine import start_engine as start_inline_or_threaded

if TYPE_CHECKING:
    from collections.abc import Iterable

    from krt.config import Config
    from krt.engine.facade import Engine
    from krt.engine.pipeline import SpeechPlan
    from krt.engine.scheduler import Job

pytestmark = pytest.mark.trio

CHUNK_SAMPLES = 480
"""20 ms at 24 kHz: the default STREAM_CHUNK_SECONDS."""

ONE_CHUNK_TURNS = {"SCHED_QUANTUM_BYTES": "2", "PRIORITY_QUANTUM_BYTES": "2"}
"""Quanta of one sample: every turn produces exactly one shaped chunk."""
ONE_SEGMENT_TURNS = {"SCHED_QUANTUM_BYTES": "30000", "PRIORITY_QUANTUM_BYTES": "30000"}
"""Quanta of 15 000 samples: a turn finishes the segment in progress (its 96-sample tail),
starts the next and stops after that one's second chunk (11 904 + ≥ 3 600 samples), so
every turn starts exactly one segment and the recorded calls are the turns."""


async def start_engine(nursery: trio.Nursery, config: Config, backend: RecordingFake) -> Engine:
    """These tests run the model on a real thread, as production does."""
    return await start_inline_or_threaded(nursery, config, backend, ThreadRunner())


def pcm_samples(batches: Iterable[tuple[bytes, ...]]) -> np.ndarray:
    return np.frombuffer(b"".join(chunk for batch in batches for chunk in batch), dtype="<i2")


def expected_audio(config: Config, plan: SpeechPlan, segments: slice = slice(None)) -> np.ndarray:
    """What the plain pipeline renders for (some segments of) a plan, without the engine."""
    pipeline = SpeechPipeline(FakeBackend(), config)
    return pcm_samples(pipeline.rendering(attrs.evolve(plan, segments=plan.segments[segments])))


async def collect(job: Job) -> np.ndarray:
    return pcm_samples([batch async for batch in job])


async def collect_into(results: dict[str, np.ndarray], label: str, job: Job) -> None:
    results[label] = await collect(job)


async def read_into(chunks: list[tuple[bytes, ...]], engine: Engine, plan: SpeechPlan, label: str) -> None:
    """Read a job's chunks as they come, keeping them even if the iteration fails."""
    async with engine.stream(plan, label) as job:
        async for chunk in job:
            chunks.append(chunk)


async def stream_job(
    engine: Engine,
    plan: SpeechPlan,
    label: str,
    results: dict[str, np.ndarray],
    *,
    begin: trio.Event | None = None,
    leave_after: int | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A session's side of one job: admitted before ``started``; reads once ``begin`` is set."""
    chunks: list[tuple[bytes, ...]] = []
    async with engine.stream(plan, label) as job:
        task_status.started()
        if begin is not None:
            await begin.wait()
        async for chunk in job:
            chunks.append(chunk)
            if len(chunks) == leave_after:
                break
    results[label] = pcm_samples(chunks)


async def try_stream(engine: Engine, plan: SpeechPlan, label: str) -> None:
    async with engine.stream(plan, label):
        pass


def longest_run(owners: list[str]) -> int:
    longest = run = 0
    for index, owner in enumerate(owners):
        run = run + 1 if index and owners[index - 1] == owner else 1
        longest = max(longest, run)
    return longest


# -- one job ----------------------------------------------------------------------------


async def test_a_single_job_streams_all_its_audio_in_order_and_ends_cleanly(nursery):
    with trio.fail_after(10):
        config = engine_config()
        backend = RecordingFake(compute_ratio=0.005)
        engine = await start_engine(nursery, config, backend)
        plan = engine.plan(sentences("alpha", 4))

        async with engine.stream(plan, "a") as job:
            assert engine.statistics().active == 1
            audio = await collect(job)  # the iteration ends by itself after the last chunk

        np.testing.assert_array_equal(audio, expected_audio(config, plan))
        assert backend.calls == list(plan.segments)
        await trio.testing.wait_all_threads_completed()
        stats = engine.statistics()
        assert (stats.active, stats.waiting, stats.busy_rejections) == (0, 0, 0)
        assert stats.turns > 0
        assert backend.unfinished == 0


# -- priority and fairness --------------------------------------------------------------


async def test_a_new_job_gets_its_first_segment_right_after_the_turn_in_progress(nursery):
    with trio.fail_after(10):
        config = engine_config(**ONE_SEGMENT_TURNS)
        backend = RecordingFake(compute_ratio=0.002, hold=["alpha three."])
        engine = await start_engine(nursery, config, backend)
        plan_a = engine.plan(sentences("alpha", 6))
        plan_c = engine.plan(sentences("charlie", 6))
        plan_b = engine.plan(sentences("bravo", 2))
        results: dict[str, np.ndarray] = {}
        try:
            async with (
                engine.stream(plan_a, "a") as job_a,
                engine.stream(plan_c, "c") as job_c,
                trio.open_nursery() as sessions,
            ):
                sessions.start_soon(collect_into, results, "a", job_a)
                sessions.start_soon(collect_into, results, "c", job_c)
                await backend.reached("alpha three.")  # the model thread is in A's third turn
                await sessions.start(stream_job, engine, plan_b, "b", results)
                backend.release()
        finally:
            backend.release()

        # Round robin alone would have given C its third turn before B's first.
        assert backend.calls[:6] == [
            "alpha one.",
            "charlie one.",
            "alpha two.",
            "charlie two.",
            "alpha three.",
            "bravo one.",
        ]
        for label, plan in (("a", plan_a), ("b", plan_b), ("c", plan_c)):
            np.testing.assert_array_equal(results[label], expected_audio(config, plan))


@pytest.mark.parametrize(
    ("quantum_bytes", "most_in_a_row"),
    [
        # One chunk per turn: a segment takes three turns, so starts strictly alternate.
        ("2", 1),
        # One segment started per turn (ONE_SEGMENT_TURNS): strict alternation too.
        ("30000", 1),
        # 1 s of audio per turn: a turn always reaches the end of the segment it is in
        # (segments are < 1 s) and stops within the next one (two segments are > 1 s),
        # so it starts one or two segments; then the other job has its turn.
        ("48000", 2),
    ],
)
async def test_two_long_jobs_take_turns_and_neither_starves(nursery, quantum_bytes, most_in_a_row):
    with trio.fail_after(10):
        config = engine_config(SCHED_QUANTUM_BYTES=quantum_bytes, PRIORITY_QUANTUM_BYTES=quantum_bytes)
        backend = RecordingFake(compute_ratio=0.002)
        engine = await start_engine(nursery, config, backend)
        plan_a = engine.plan(sentences("alpha", 8))
        plan_b = engine.plan(sentences("bravo", 8))
        results: dict[str, np.ndarray] = {}

        async with (
            engine.stream(plan_a, "a") as job_a,
            engine.stream(plan_b, "b") as job_b,
            trio.open_nursery() as readers,
        ):
            readers.start_soon(collect_into, results, "a", job_a)
            readers.start_soon(collect_into, results, "b", job_b)

        owners = [text.split()[0] for text in backend.calls]
        # Only while both jobs have segments left to start could one of them starve.
        both_have_work = next(
            end
            for end in range(len(owners))
            if 8 in (owners[:end].count("alpha"), owners[:end].count("bravo"))
        )
        assert longest_run(owners[:both_have_work]) <= most_in_a_row, owners
        if most_in_a_row == 1:
            assert backend.calls == [
                text for pair in zip(plan_a.segments, plan_b.segments, strict=True) for text in pair
            ]
        np.testing.assert_array_equal(results["a"], expected_audio(config, plan_a))
        np.testing.assert_array_equal(results["b"], expected_audio(config, plan_b))


# -- admission --------------------------------------------------------------------------


@pytest.mark.parametrize("first_leaves_early", [False, True], ids=["first-finishes", "first-leaves"])
async def test_a_second_job_waits_for_the_only_slot_and_a_third_is_busy(nursery, first_leaves_early):
    with trio.fail_after(10):
        config = engine_config(
            MAX_CONCURRENT_JOBS="1", MAX_QUEUED_REQUESTS="1", QUEUE_WAIT_SLA_MS="600000", **ONE_CHUNK_TURNS
        )
        backend = RecordingFake(compute_ratio=0.002)
        engine = await start_engine(nursery, config, backend)
        plan_a = engine.plan(sentences("alpha", 4))
        plan_b = engine.plan(sentences("bravo", 3))
        plan_c = engine.plan(sentences("charlie", 1))
        results: dict[str, np.ndarray] = {}
        begin = trio.Event()

        async with trio.open_nursery() as sessions:
            leave_after = 1 if first_leaves_early else None
            await sessions.start(
                partial(stream_job, begin=begin, leave_after=leave_after), engine, plan_a, "a", results
            )
            await sessions.start(stream_job, engine, plan_b, "b", results)
            stats = engine.statistics()
            assert (stats.active, stats.waiting) == (1, 1)

            with pytest.raises(SpeechError) as refused:
                await try_stream(engine, plan_c, "c")
            assert refused.value.code == "busy"
            assert engine.statistics().busy_rejections == 1
            begin.set()

        owners = [text.split()[0] for text in backend.calls]
        assert "bravo" in owners
        assert "alpha" not in owners[owners.index("bravo") :]  # B's model work only once A is gone
        assert "charlie" not in owners
        np.testing.assert_array_equal(results["b"], expected_audio(config, plan_b))
        if first_leaves_early:
            # A left after one chunk: it never got all its segments.
            assert len(backend.started("alpha")) < len(plan_a.segments)
        else:
            np.testing.assert_array_equal(results["a"], expected_audio(config, plan_a))
        stats = engine.statistics()
        assert (stats.active, stats.waiting, stats.busy_rejections) == (0, 0, 1)


async def test_a_full_engine_queue_refuses_busy_even_with_free_slots(nursery):
    with trio.fail_after(10):
        config = engine_config(MAX_CONCURRENT_JOBS="4", QUEUE_MAXSIZE="2", QUEUE_WAIT_SLA_MS="600000")
        backend = RecordingFake()
        engine = await start_engine(nursery, config, backend)
        plans = [engine.plan(sentences(word, 1)) for word in ("alpha", "bravo", "charlie")]

        async with engine.stream(plans[0], "a") as job_a, engine.stream(plans[1], "b") as job_b:
            with pytest.raises(SpeechError) as refused:
                await try_stream(engine, plans[2], "c")
            assert refused.value.code == "busy"
            assert engine.statistics().busy_rejections == 1
            await collect(job_a)
            await collect(job_b)

        await try_stream(engine, plans[2], "c")  # room again once the others are done
        assert engine.statistics().busy_rejections == 1


# -- the wait SLA -----------------------------------------------------------------------

FORTY_CHARACTERS = "alpha one two three four five six seven."
"""One first segment of 8 words (FIRST_SEGMENT_MAX_WORDS): 2.6 s of fake audio."""


@pytest.mark.parametrize(
    ("compute_ratio", "admitted"),
    [
        # 2.6 s × 0.05 = 130 ms measured for A's first segment, which B would wait behind.
        (0.05, False),
        # Pure numpy: a few ms.
        (0.0, True),
    ],
    ids=["slow-engine", "fast-engine"],
)
async def test_a_job_that_would_wait_past_the_sla_behind_first_segments_is_busy(
    nursery, compute_ratio, admitted
):
    with trio.fail_after(10):
        config = engine_config(QUEUE_WAIT_SLA_MS="50")
        backend = RecordingFake(compute_ratio=compute_ratio)
        engine = await start_engine(nursery, config, backend)
        await engine.warm_up(FORTY_CHARACTERS)  # measures this engine on this very segment
        plan_a = engine.plan(FORTY_CHARACTERS)
        plan_b = engine.plan(sentences("bravo", 1))

        # An idle engine admits A however slow it is: nothing is ahead of it.
        async with engine.stream(plan_a, "a") as job_a:
            if admitted:
                async with engine.stream(plan_b, "b") as job_b:
                    np.testing.assert_array_equal(await collect(job_b), expected_audio(config, plan_b))
            else:
                with pytest.raises(SpeechError) as refused:
                    await try_stream(engine, plan_b, "b")
                assert refused.value.code == "busy"
                assert "QUEUE_WAIT_SLA_MS" in refused.value.message
            assert engine.statistics().busy_rejections == (0 if admitted else 1)
            np.testing.assert_array_equal(await collect(job_a), expected_audio(config, plan_a))

        # Idle again: the same engine, however slow, admits B now.
        async with engine.stream(plan_b, "b") as job_b:
            np.testing.assert_array_equal(await collect(job_b), expected_audio(config, plan_b))
        assert engine.statistics().busy_rejections == (0 if admitted else 1)


@pytest.mark.parametrize(
    ("first_job_segments", "admitted"),
    [
        # ≈ 100 characters ahead (A's first segment, then all of A for the slot): ≈ 325 ms.
        (8, False),
        # 20 characters ahead: ≈ 65 ms.
        (1, True),
    ],
)
async def test_a_job_that_would_wait_past_the_sla_for_a_slot_is_busy(nursery, first_job_segments, admitted):
    with trio.fail_after(10):
        config = engine_config(MAX_CONCURRENT_JOBS="1", MAX_QUEUED_REQUESTS="4", QUEUE_WAIT_SLA_MS="150")
        backend = RecordingFake(compute_ratio=0.05)
        engine = await start_engine(nursery, config, backend)
        await engine.warm_up()  # ≈ 3.25 ms per character
        plan_a = engine.plan(sentences("alpha", first_job_segments))
        plan_b = engine.plan(sentences("bravo", 1))

        async with engine.stream(plan_a, "a") as job_a:
            if admitted:
                async with engine.stream(plan_b, "b") as job_b:
                    assert engine.statistics().waiting == 1
                    np.testing.assert_array_equal(await collect(job_a), expected_audio(config, plan_a))
                    np.testing.assert_array_equal(await collect(job_b), expected_audio(config, plan_b))
            else:
                with pytest.raises(SpeechError) as refused:
                    await try_stream(engine, plan_b, "b")
                assert refused.value.code == "busy"
                assert engine.statistics().waiting == 0
                np.testing.assert_array_equal(await collect(job_a), expected_audio(config, plan_a))
        assert engine.statistics().busy_rejections == (0 if admitted else 1)


# -- cancel, slow readers, failures -----------------------------------------------------


@pytest.mark.parametrize("how", ["break", "cancel-scope"])
async def test_leaving_a_job_stops_its_turn_at_the_next_chunk_and_others_go_on(nursery, how):
    with trio.fail_after(10):
        # A whole job per round-robin turn: only the cancel flag can stop A mid-turn.
        config = engine_config(SCHED_QUANTUM_BYTES="100000000", PRIORITY_QUANTUM_BYTES="2")
        backend = RecordingFake(compute_ratio=0.005, hold=["alpha two."])
        engine = await start_engine(nursery, config, backend)
        plan_a = engine.plan(sentences("alpha", 6))
        plan_b = engine.plan(sentences("bravo", 3))
        results: dict[str, np.ndarray] = {}
        try:
            async with trio.open_nursery() as sessions:
                with trio.CancelScope() as scope:
                    async with engine.stream(plan_a, "a") as job_a:
                        await sessions.start(stream_job, engine, plan_b, "b", results)
                        async for _chunk in job_a:
                            # A's next turn is on the model thread, at its second segment.
                            await backend.reached("alpha two.")
                            if how == "break":
                                break
                            scope.cancel()
                backend.release()
        finally:
            backend.release()

        assert backend.started("alpha") == ["alpha one.", "alpha two."]
        np.testing.assert_array_equal(results["b"], expected_audio(config, plan_b))
        await trio.testing.wait_all_threads_completed()
        stats = engine.statistics()
        assert (stats.active, stats.waiting) == (0, 0)
        assert backend.unfinished == 0  # A's interrupted segment was closed, not left open


async def test_an_unread_job_does_not_hold_up_another_and_is_not_computed_ahead(nursery):
    with trio.fail_after(10):
        config = engine_config(**ONE_CHUNK_TURNS)
        backend = RecordingFake(compute_ratio=0.002)
        engine = await start_engine(nursery, config, backend)
        plan_a = engine.plan(sentences("alpha", 8))
        plan_b = engine.plan(sentences("bravo", 6))

        async with engine.stream(plan_a, "a") as job_a, engine.stream(plan_b, "b") as job_b:
            np.testing.assert_array_equal(await collect(job_b), expected_audio(config, plan_b))
            # A got turns until JOB_BUFFER_BATCHES of its chunks waited: 8 chunks of three per
            # segment is the start of its third segment. Without the limit, round robin would
            # have started six of A's segments by the time B's eighteen chunks were done.
            assert len(backend.started("alpha")) <= 3
            assert job_a.receive.statistics().current_buffer_used <= JOB_BUFFER_BATCHES
            np.testing.assert_array_equal(await collect(job_a), expected_audio(config, plan_a))


async def test_a_model_failure_ends_that_job_with_synthesis_failed_and_the_engine_goes_on(nursery):
    with trio.fail_after(10):
        config = engine_config()
        backend = RecordingFake(compute_ratio=0.002, fail=["alpha two."])
        engine = await start_engine(nursery, config, backend)
        plan_a = engine.plan(sentences("alpha", 3))
        plan_b = engine.plan(sentences("bravo", 3))
        plan_c = engine.plan(sentences("charlie", 2))
        results: dict[str, np.ndarray] = {}
        chunks_a: list[tuple[bytes, ...]] = []

        async with trio.open_nursery() as sessions:
            await sessions.start(stream_job, engine, plan_b, "b", results)
            with pytest.raises(SpeechError) as failed:
                await read_into(chunks_a, engine, plan_a, "a")
            assert failed.value.code == "synthesis_failed"
            assert "the model broke" in failed.value.message

        # A's first segment arrived before the error, but for the part of a chunk it left
        # for the next segment to fill; nothing of A after it was tried.
        pipeline = SpeechPipeline(FakeBackend(), config)
        first_segment = sum(
            chunk.size for chunk in pipeline.render_segment(plan_a, plan_a.segments[0], last=False)
        )
        whole_chunks = first_segment // CHUNK_SAMPLES * CHUNK_SAMPLES
        np.testing.assert_array_equal(pcm_samples(chunks_a), expected_audio(config, plan_a)[:whole_chunks])
        assert backend.started("alpha") == ["alpha one.", "alpha two."]
        np.testing.assert_array_equal(results["b"], expected_audio(config, plan_b))
        async with engine.stream(plan_c, "c") as job_c:
            np.testing.assert_array_equal(await collect(job_c), expected_audio(config, plan_c))
        await trio.testing.wait_all_threads_completed()
        stats = engine.statistics()
        assert (stats.active, stats.waiting, stats.busy_rejections) == (0, 0, 0)
