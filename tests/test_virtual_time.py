"""Timing a user can hear, on virtual time: idle flush, admission, drain, send timeout.

The engine runs its model inline (``InlineRunner``) and ``ClockedFake`` advances the
``MockClock`` by each decoder window's frames (context included) × a ratio, so compute
times are exact and the clock only moves when the model computes or when every task
waits for a deadline (``autojump_clock``). Sessions run over memory streams with a real
trio-websocket client.
"""

from __future__ import annotations

import base64
import contextlib
import math
import re
from typing import TYPE_CHECKING, Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from krt import PCM_BYTES_PER_SECOND
from krt.engine.facade import WARM_UP_TEXT, Engine
from krt.engine.pipeline import SpeechPipeline, SpeechPlan
from krt.engine.scheduler import CAPACITY_HEADROOM
from krt.errors import SpeechError
from krt.g2p import tokenize
from krt.protocol import DRAINING_REASON
from krt.server.drain import drain
from krt.synth.fake_backend import SECONDS_PER_TOKEN, FakeBackend
from tests.fakes import ClockedFake, MemoryClient
from tests.inline_engine import (
    LONG_TEXT,
    engine_config,
    expected_pcm,
    metrics_lines,
    sentences,
    start_engine,
    start_state,
)

if TYPE_CHECKING:
    from krt.config import Config
    from krt.engine.scheduler import Job
    from krt.server.state import ServerState

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


def token_seconds(config: Config, plan: SpeechPlan, ratio: float) -> float:
    """The compute of the token frames of a plan alone, each token SECONDS_PER_TOKEN of
    audio: a floor for what the model spends on it (lead, tail and context come on top)."""
    backend = FakeBackend()
    phonemizer = backend.make_phonemizer()
    tokens = sum(len(tokenize(phonemizer.phonemize(text), backend.vocab)) for text in plan.segments)
    return tokens * SECONDS_PER_TOKEN / plan.speed * ratio


def created_ids(client: MemoryClient) -> list[str]:
    return [event["response"] for event in client.events if event["type"] == "response.created"]


async def try_stream(engine: Engine, plan: SpeechPlan, label: str, client: str | None = None) -> None:
    async with engine.stream(plan, label, client=client):
        pass


async def until_full(job: Job) -> None:
    """Let virtual time pass until ``job``, which nobody reads, has its buffer full: from
    then on the model has nothing to do for it. (Polled: nothing signals a full buffer.)"""
    while job.has_room():  # noqa: ASYNC110
        await trio.sleep(0.01)


# -- incremental input ------------------------------------------------------------------


async def test_buffered_input_is_spoken_exactly_flush_idle_ms_after_the_last_append(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend(), FLUSH_IDLE_MS="160")
        client = await MemoryClient.connect(nursery, state)

        first = trio.current_time()
        await client.send("input.append", text="Hello there")
        await client.expect_nothing_before(first + 0.100)
        second = trio.current_time()
        await client.send("input.append", text=" my friend")
        # The first append's deadline (first + 0.160) passes quietly: the second restarted it.
        await client.expect_nothing_before(second + 0.159)
        created, arrived = await client.next_response()

        assert created["type"] == "response.created"
        assert second + 0.160 <= arrived <= second + 0.160 + TICK
        assert bytes(client.audio[created["response"]]) == expected_pcm(state, "Hello there my friend")


async def test_input_commit_speaks_buffered_input_at_once_and_only_once(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend(), FLUSH_IDLE_MS="160")
        client = await MemoryClient.connect(nursery, state)

        sent = trio.current_time()
        await client.send("input.append", text="No sentence end here")
        await client.send("input.commit")
        created, arrived = await client.next_response()
        await client.expect_nothing_before(sent + 1.0)  # the idle flush finds nothing left

        assert created["type"] == "response.created"
        assert arrived == sent
        assert created_ids(client) == [created["response"]]
        assert bytes(client.audio[created["response"]]) == expected_pcm(state, "No sentence end here")


async def test_a_finished_sentence_is_spoken_at_once_and_the_rest_waits(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend(), FLUSH_IDLE_MS="160")
        client = await MemoryClient.connect(nursery, state)

        sent = trio.current_time()
        await client.send("input.append", text="Hi there. And then")
        sentence, sentence_at = await client.next_response()
        rest, rest_at = await client.next_response()

        assert sentence["type"] == rest["type"] == "response.created"
        assert sentence_at == sent
        assert sent + 0.160 <= rest_at <= sent + 0.160 + TICK
        assert bytes(client.audio[sentence["response"]]) == expected_pcm(state, "Hi there.")
        assert bytes(client.audio[rest["response"]]) == expected_pcm(state, "And then")


# -- admission --------------------------------------------------------------------------


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
                    async for _batch in job_b:
                        pass
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
            async for _batch in job_a:
                pass
        assert engine.statistics().busy_rejections == (0 if admitted else 1)


async def test_busy_comes_instead_of_response_created_never_after_it(nursery, tmp_path, autojump_clock):
    """A response is accepted only if the engine takes it: four sockets queue three
    sentences each on a one-slot engine. A response the engine refuses gets ``busy`` and
    no ``response.created``; every response created is spoken in full, its socket's later
    ones included (they wait behind it, they are never refused)."""
    with trio.fail_after(120):
        state = await start_state(nursery, tmp_path, ClockedFake(autojump_clock, ratio=0.5))
        await state.engine.warm_up()
        assert state.engine.statistics().slots == 1
        clients = [await MemoryClient.connect(nursery, state) for _ in range(4)]
        for i, client in enumerate(clients):
            for j in range(3):
                await client.send("response.create", response_id=f"r{j}", input=sentences("alpha", 2 + i))

        async def read(client: MemoryClient) -> None:
            ended = 0
            while ended < 3:
                event = await client.receive()
                ended += event["type"] in ("response.completed", "response.error")

        async with trio.open_nursery() as readers:
            for client in clients:
                readers.start_soon(read, client)
        outcomes = [[client.event_types(f"r{j}") for j in range(3)] for client in clients]
        refused = [types for per_socket in outcomes for types in per_socket if types == ["response.error"]]
        spoken = [types for per_socket in outcomes for types in per_socket if types[0] == "response.created"]
        assert len(refused) + len(spoken) == 12
        assert refused and spoken
        assert all(types[-1] == "response.completed" for types in spoken)
        for client in clients:
            for j in range(3):
                if client.event_types(f"r{j}") == ["response.error"]:
                    (event,) = [e for e in client.events if e.get("response") == f"r{j}"]
                    assert event["code"] == "busy"
                    # When to ask again: the moment the engine predicts it would fit.
                    assert event["retry_after_ms"] > 0
                    assert f"retry in {event['retry_after_ms']} ms" in event["message"]


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
            async for _batch in job_a:
                pass
        with pytest.raises(SpeechError) as refused_d:
            await try_stream(engine, plan, "d", client="D")
        assert refused_d.value.code == "busy"
        assert refused_d.value.retry_after is not None
        assert trio.current_time() + refused_d.value.retry_after > told
        await trio.sleep_until(max(told, trio.current_time()))
        async with engine.stream(plan, "c2", client="C") as job_c:
            async for _batch in job_c:
                pass
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
            async for _batch in job_a:
                pass
            async for _batch in job_b:
                pass

        assert job_a.queue_seconds == 0
        # B's first turn came the moment the model had made all of A, none of B before.
        a_compute = backend.computed_for("alpha")
        assert a_compute >= token_seconds(config, plan_a, 0.5)
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


# -- drain ------------------------------------------------------------------------------


class TimedDrain:
    """``drain(state)`` in a task of its own, noting the virtual time it returns at."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.returned_at: float | None = None

    async def run(self, state: ServerState, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """``started`` once the drain refuses new responses (its first, synchronous step)."""
        task_status.started()
        await drain(state)
        self.returned_at = trio.current_time()
        self.done.set()


async def test_drain_closes_idle_sockets_at_once_and_busy_ones_once_their_last_response_is_done(
    nursery, tmp_path, autojump_clock
):
    """Behind a load balancer, a 1012 close ("service restart") sends a client to another
    replica: an idle one goes at once, one with a response in flight as soon as that
    response is done, and a new response in between is refused busy, saying why."""
    with trio.fail_after(30):
        backend = ClockedFake(autojump_clock, ratio=0.5)
        state = await start_state(nursery, tmp_path, backend, KRT_DRAIN_SECONDS="30")
        speaking = await MemoryClient.connect(nursery, state)
        idle = await MemoryClient.connect(nursery, state)
        text = sentences("alpha", 3)

        sent = trio.current_time()
        await speaking.send("response.create", response_id="r1", input=text)
        await speaking.receive_until("response.created", "r1")
        draining = TimedDrain()
        drain_started = trio.current_time()
        await nursery.start(draining.run, state)
        assert state.draining
        assert state.readiness()[0] == 503
        await speaking.send("response.create", response_id="r2", input="Too late.")
        idle_code = await idle.receive_until_closed()
        speaking_code = await speaking.receive_until_closed()
        await speaking.ended.wait()
        await idle.ended.wait()

        assert speaking.event_types("r1")[-1] == "response.completed"
        assert bytes(speaking.audio["r1"]) == expected_pcm(state, text)
        (refused,) = [event for event in speaking.events if event.get("response") == "r2"]
        assert (refused["type"], refused["code"]) == ("response.error", "busy")
        assert "reconnect" in refused["message"]
        assert (speaking_code, idle_code) == (1012, 1012)
        assert idle.closed_at == drain_started
        # Closed the moment r1's last event was out: exactly its compute after it was sent
        # (all the model did; at least the frames of every token of r1).
        compute = backend.computed
        assert compute >= token_seconds(state.config, state.engine.plan(text), ratio=0.5)
        assert speaking.closed_at == pytest.approx(sent + compute, abs=TICK)
        assert state.in_flight.count == 0
        assert state.sessions == 0


async def test_drain_refuses_at_the_signal_a_response_that_cannot_end_in_time(
    nursery, tmp_path, autojump_clock
):
    """r1 waits for the only slot, which a stream that reads nothing holds: the schedule
    cannot end it within KRT_DRAIN_SECONDS, so it is refused at the signal (saying to
    reconnect), not cut at the limit, and its socket, idle then, is closed at once."""
    with trio.fail_after(30):
        state = await start_state(
            nursery,
            tmp_path,
            ClockedFake(autojump_clock, ratio=0.5),
            KRT_DRAIN_SECONDS="0.5",
            MAX_CONCURRENT_JOBS="1",
            QUEUE_WAIT_SLA_MS="100000",
        )
        engine = state.engine
        await engine.warm_up()
        client = await MemoryClient.connect(nursery, state)

        async with engine.stream(engine.plan(LONG_TEXT), "hog") as hog:
            await until_full(hog)
            await client.send("response.create", response_id="r1", input="Waiting for a slot.")
            await client.receive_until("response.created", "r1")
            assert engine.statistics().waiting == 1
            started = trio.current_time()
            draining = TimedDrain()
            await nursery.start(draining.run, state)
            code = await client.receive_until_closed()
            await client.ended.wait()

            assert code == 1012
            assert client.event_types("r1") == ["response.created", "response.error"]
            refused = client.events[-1]
            assert (refused["code"], refused["message"]) == ("busy", DRAINING_REASON)
            assert client.arrivals[-1] == started  # at the signal, not at the limit
            assert client.closed_at == started
            assert engine.statistics().waiting == 0  # r1's job left the engine
        await draining.done.wait()
        assert "r1" not in metrics_lines(tmp_path)  # refused, not spoken: no metrics line


async def test_drain_limit_still_cuts_a_response_that_runs_slower_than_predicted(
    nursery, tmp_path, autojump_clock
):
    """The forecast keeps r1 (it would end in ~1 s), then the machine turns six times
    slower: KRT_DRAIN_SECONDS still bounds the drain, r1 is closed with 1012 and counts
    as canceled."""
    with trio.fail_after(60):
        backend = ClockedFake(autojump_clock, ratio=0.5)
        state = await start_state(nursery, tmp_path, backend, KRT_DRAIN_SECONDS="3")
        await state.engine.warm_up()
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="r1", input=sentences("alpha", 3))
        await client.receive_until("response.output_audio.delta", "r1")

        started = trio.current_time()
        draining = TimedDrain()
        await nursery.start(draining.run, state)
        backend.ratio = 3.0
        code = await client.receive_until_closed()
        await draining.done.wait()

        assert code == 1012
        assert "response.error" not in client.event_types("r1")  # it was kept
        assert "response.completed" not in client.event_types("r1")
        # Cut at the limit, give or take the one window the inline model was inside.
        assert started + 3 <= client.closed_at <= started + 3 + 6
        assert metrics_lines(tmp_path)["r1"]["canceled"] is True


async def run_four_sockets(
    nursery, tmp_path, clock, *, drain_seconds: float | None
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, bytes], dict[str, float], float]:
    """Four sockets each queue three sentences at once; with ``drain_seconds`` a drain
    starts at the first audio. Per response: its events, its audio, when its last
    event arrived; and when the first audio came (and the drain started)."""
    env = {"QUEUE_WAIT_SLA_MS": "100000"}
    if drain_seconds is not None:
        env["KRT_DRAIN_SECONDS"] = str(drain_seconds)
    state = await start_state(nursery, tmp_path, ClockedFake(clock, ratio=0.5), **env)
    await state.engine.warm_up()
    clients = [await MemoryClient.connect(nursery, state) for _ in range(4)]
    ids = {client: [f"s{i}r{j}" for j in range(3)] for i, client in enumerate(clients)}
    for i, client in enumerate(clients):
        for j, response_id in enumerate(ids[client]):
            text = sentences(("alpha", "bravo", "charlie", "delta")[i], 2 + j)
            await client.send("response.create", response_id=response_id, input=text)
    ended: dict[str, float] = {}
    first_audio = trio.Event()

    async def read(client: MemoryClient) -> None:
        with contextlib.suppress(ConnectionClosed):
            while len([e for e in ids[client] if e in ended]) < 3:
                event = await client.receive()
                if event["type"] == "response.output_audio.delta":
                    first_audio.set()
                if event["type"] in ("response.completed", "response.error", "response.canceled"):
                    ended[event["response"]] = trio.current_time()

    async with trio.open_nursery() as readers:
        for client in clients:
            readers.start_soon(read, client)
        await first_audio.wait()
        drain_started = trio.current_time()
        if drain_seconds is not None:
            draining = TimedDrain()
            await nursery.start(draining.run, state)
    events = {
        rid: [e for e in client.events if e.get("response") == rid]
        for client in clients
        for rid in ids[client]
    }
    audio = {rid: bytes(client.audio.get(rid, b"")) for client in clients for rid in ids[client]}
    return events, audio, ended, drain_started


async def test_drain_finishes_every_accepted_response_that_fits_and_refuses_the_rest_at_the_signal(
    nursery, tmp_path, autojump_clock
):
    """Four sockets with three responses each, a drain at the first audio. Every
    response either completes, sounding exactly as in a quiet run, or is refused at the
    signal (busy, reconnect); a socket's refusals are its last responses; none is cut
    at the limit; and a refused one ends late in a quiet run too."""
    with trio.fail_after(120):
        quiet_events, quiet_audio, quiet_ended, quiet_first_audio = await run_four_sockets(
            nursery, tmp_path / "quiet", autojump_clock, drain_seconds=None
        )
        assert all(events[-1]["type"] == "response.completed" for events in quiet_events.values())

    drain_seconds = 6.0
    with trio.fail_after(120):
        events, audio, ended, drain_started = await run_four_sockets(
            nursery, tmp_path / "drained", autojump_clock, drain_seconds=drain_seconds
        )
    kept = [rid for rid in events if events[rid][-1]["type"] == "response.completed"]
    refused = [rid for rid in events if events[rid][-1]["type"] == "response.error"]
    assert sorted(kept + refused) == sorted(events)  # nothing canceled, nothing cut
    assert kept and refused  # the limit falls among them: both sides are exercised
    for rid in kept:
        assert audio[rid] == quiet_audio[rid], rid
        assert ended[rid] - drain_started <= drain_seconds
    for rid in refused:
        assert ended[rid] == drain_started, rid  # at the signal, not later
        socket, number = rid[:2], int(rid[3])
        later = [f"{socket}r{j}" for j in range(number, 3)]
        assert all(other in refused for other in later)  # a socket keeps its first ones
        (refusal,) = [e for e in events[rid] if e["type"] == "response.error"]
        assert (refusal["code"], refusal["message"]) == ("busy", DRAINING_REASON)
        # Refused only when late in a quiet run too, by more than the headroom the
        # forecast keeps for a drifting machine (a kept one cut at the limit is worse).
        assert quiet_ended[rid] - quiet_first_audio > drain_seconds / CAPACITY_HEADROOM, rid


async def test_drain_returns_as_soon_as_its_sessions_are_closed(nursery, tmp_path, autojump_clock):
    with trio.fail_after(30):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="r1", input="Hello.")
        await client.receive_until("response.completed", "r1")

        started = trio.current_time()
        draining = TimedDrain()
        await nursery.start(draining.run, state)
        code = await client.receive_until_closed()
        await draining.done.wait()

        assert code == 1012
        assert client.closed_at == started
        # Nothing is in flight and the client answers the close at once, so the drain
        # returns at once too, not CLOSE_TIMEOUT_S (1 s) later.
        assert draining.returned_at == started


# -- send timeout -----------------------------------------------------------------------


async def test_a_client_that_stops_reading_costs_only_itself_however_much_its_socket_buffers(
    nursery, tmp_path, autojump_clock
):
    """The memory streams under these clients take every byte at once, as a kernel's
    socket buffers take a minute of PCM: only what the client acknowledges reading (its
    pongs) counts as read, so a client that stops reading holds its stream back after a
    few seconds of audio, and while it stays attached the others stream exactly as fast
    as they would without it."""
    ratio = 0.25

    async def bravo_speaks(state: ServerState) -> list[float]:
        """When each of bravo's deltas arrived, counted from its request."""
        bravo = await MemoryClient.connect(nursery, state)
        asked = trio.current_time()
        await bravo.send("response.create", response_id="bravo", input=LONG_TEXT)
        await bravo.receive_until("response.completed", "bravo")
        assert bytes(bravo.audio["bravo"]) == expected_pcm(state, LONG_TEXT)
        return [
            arrived - asked
            for arrived, event in zip(bravo.arrivals, bravo.events, strict=True)
            if event["type"] == "response.output_audio.delta"
        ]

    with trio.fail_after(300):
        alone_backend = ClockedFake(autojump_clock, ratio)
        alone = await bravo_speaks(await start_state(nursery, tmp_path, alone_backend))

        backend = ClockedFake(autojump_clock, ratio)
        state = await start_state(nursery, tmp_path, backend, WS_SEND_TIMEOUT="600")
        alpha = await MemoryClient.connect(nursery, state)  # never reads after this
        await alpha.send("response.create", response_id="alpha", input=f"{LONG_TEXT} {LONG_TEXT} {LONG_TEXT}")
        await trio.sleep(30)  # virtual: long enough to compute all 75 s of it, unbounded
        alpha_made = backend.made
        # Its first two windows (1.2 s, then up to twice that), not 75 s: the second
        # window was due while the first was still in flight, the third never was.
        first_window = state.config.scheduler.priority_quantum_bytes / PCM_BYTES_PER_SECOND
        assert 0 < alpha_made <= first_window + 2 * first_window

        beside_alpha = await bravo_speaks(state)
        assert not alpha.ended.is_set()  # attached all along
        assert beside_alpha == pytest.approx(alone, abs=TICK)
        assert backend.made == pytest.approx(alpha_made + alone_backend.made)


async def test_a_client_whose_pongs_stop_is_dropped_ws_send_timeout_after_its_audio_went_unread(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(30):
        state = await start_state(nursery, tmp_path, ClockedFake(autojump_clock, 0.25), WS_SEND_TIMEOUT="2")
        alpha = await MemoryClient.connect(nursery, state)
        await alpha.send("response.create", response_id="alpha", input=LONG_TEXT)
        await alpha.receive_until("response.output_audio.delta", "alpha")
        assert alpha.session is not None
        response = alpha.session.responses.get("alpha")
        assert response is not None and response.first_audio_at is not None
        # The reader holds the first audio: nothing after it is read, not even a pong.
        # Everything the server writes still goes through (the memory stream takes it all).
        await alpha.ended.wait()
        assert alpha.ended_at == pytest.approx(response.first_audio_at + 2, abs=TICK)
        assert state.in_flight.count == 0
        assert state.engine is not None and state.engine.statistics().active == 0


async def test_a_client_that_stops_reading_is_dropped_after_ws_send_timeout_and_others_go_on(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(30):
        state = await start_state(nursery, tmp_path, FakeBackend(), WS_SEND_TIMEOUT="2")
        stuck = await MemoryClient.connect(nursery, state, lockstep=True)
        reader = await MemoryClient.connect(nursery, state)
        engine = state.engine

        sent = trio.current_time()
        # Three times LONG_TEXT: more audio than the outbox and the job's buffer hold, so
        # the stuck client's job is still in the engine when its sends block.
        await stuck.send("response.create", response_id="stuck", input=f"{LONG_TEXT} {LONG_TEXT} {LONG_TEXT}")
        await trio.sleep(1.5)  # virtual; nobody reads the stuck client's frames
        # Its reader took nothing for PARK_AFTER_SECONDS: it is parked and holds no place.
        assert (engine.statistics().active, engine.statistics().parked) == (0, 1)
        await reader.send("response.create", response_id="r1", input=LONG_TEXT)
        await reader.receive_until("response.completed", "r1")
        await stuck.ended.wait()

        assert stuck.ended_at == pytest.approx(sent + 2, abs=TICK)
        assert bytes(reader.audio["r1"]) == expected_pcm(state, LONG_TEXT)
        # It held up nobody: r1's first audio came the moment it was asked for (the model
        # computes in no time), and a player started then never ran dry.
        deltas = [
            (arrived, event)
            for arrived, event in zip(reader.arrivals, reader.events, strict=True)
            if event["type"] == "response.output_audio.delta" and event["response"] == "r1"
        ]
        assert deltas[0][0] == pytest.approx(sent + 1.5, abs=TICK)
        played = 0.0
        for arrived, event in deltas:
            assert arrived <= deltas[0][0] + played + TICK
            played += len(base64.b64decode(event["delta"])) / PCM_BYTES_PER_SECOND
        stats = engine.statistics()
        assert (stats.active, stats.waiting, stats.parked) == (0, 0, 0)
        assert state.sessions == 1
        assert state.in_flight.count == 0
        await reader.send("response.create", response_id="r2", input="Still here.")
        await reader.receive_until("response.completed", "r2")
