"""A drain (SIGTERM, or an operator's drain), as the clients of a replica hear it.

New responses are refused ``busy`` with ``reconnect``; every accepted response that the
engine's schedule says can end within ``KRT_DRAIN_SECONDS`` is spoken in full, and the
others are refused at the signal; each socket is closed with 1012 as soon as it has
nothing in flight, and whatever is left when the limit passes is cut. Sessions run over
memory streams with a real trio-websocket client, the model inline on virtual time
(``ClockedFake``), so every moment asserted is exact. (The front door's part, refusing a
new WebSocket with 503 while draining, is in ``test_http.py``.)
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from krt.engine.scheduler import CAPACITY_HEADROOM
from krt.server.drain import drain
from krt.synth.fake_backend import FakeBackend
from krt.wire.protocol import DRAINING_REASON
from tests.fakes import ClockedFake, MemoryClient
from tests.inline_engine import LONG_TEXT, expected_pcm, metrics_lines, sentences, start_state, token_seconds

if TYPE_CHECKING:
    from krt.engine.scheduler import Job
    from krt.server.state import ServerState

pytestmark = pytest.mark.trio

TICK = 1e-9
"""Autojumps land on a deadline give or take float rounding; nothing else may pass."""


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


async def until_full(job: Job) -> None:
    """Let virtual time pass until ``job``, which nobody reads, has its buffer full: from
    then on the model has nothing to do for it. (Polled: nothing signals a full buffer.)"""
    while job.has_room():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def test_a_drain_speaks_accepted_responses_refuses_new_ones_and_closes_each_socket_when_done(
    nursery, tmp_path, autojump_clock
):
    """Behind a load balancer, a 1012 close ("service restart") sends a client to another
    replica: an idle one goes at once, one with responses in flight (one speaking, one
    queued behind it) as soon as both are spoken, and a new response in between is
    refused busy, saying why."""
    with trio.fail_after(30):
        backend = ClockedFake(autojump_clock, ratio=0.5)
        state = await start_state(nursery, tmp_path, backend, KRT_DRAIN_SECONDS="30")
        speaking = await MemoryClient.connect(nursery, state)
        idle = await MemoryClient.connect(nursery, state)
        text = sentences("alpha", 3)

        sent = trio.current_time()
        for name in ("first", "second"):
            await speaking.send("response.create", response_id=name, input=text)
        await speaking.receive_until("response.created", "second")
        draining = TimedDrain()
        drain_started = trio.current_time()
        await nursery.start(draining.run, state)
        assert state.draining
        assert state.readiness()[0] == 503
        await speaking.send("response.create", response_id="late", input="Too late.")
        idle_code = await idle.receive_until_closed()
        speaking_code = await speaking.receive_until_closed()
        await speaking.ended.wait()
        await idle.ended.wait()

        for name in ("first", "second"):
            assert speaking.event_types(name)[-1] == "response.completed"
            assert bytes(speaking.audio[name]) == expected_pcm(state, text)
        assert len(speaking.audio["first"]) == len(speaking.audio["second"]) > 0
        (refused,) = [event for event in speaking.events if event.get("response") == "late"]
        assert (refused["type"], refused["code"]) == ("response.error", "busy")
        assert refused["message"] == DRAINING_REASON
        assert refused["reconnect"] is True
        assert (speaking_code, idle_code) == (1012, 1012)
        assert idle.closed_at == drain_started
        # Closed the moment the last event was out: exactly the compute of both after they
        # were sent (all the model did; at least the frames of every token of each).
        compute = backend.computed
        assert state.engine is not None
        assert compute >= 2 * token_seconds(state.engine.plan(text), ratio=0.5)
        assert speaking.closed_at == pytest.approx(sent + compute, abs=TICK)
        assert state.in_flight.count == 0
        assert state.sessions == 0


async def test_a_response_that_cannot_end_in_time_is_refused_at_the_signal_not_cut_at_the_limit(
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
        assert engine is not None
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
            assert refused["reconnect"] is True
            assert client.arrivals[-1] == started  # at the signal, not at the limit
            assert client.closed_at == started
            assert engine.statistics().waiting == 0  # r1's job left the engine
        await draining.done.wait()
        assert "r1" not in metrics_lines(tmp_path)  # refused, not spoken: no metrics line


async def test_the_drain_limit_still_cuts_a_response_that_runs_slower_than_predicted(
    nursery, tmp_path, autojump_clock
):
    """The forecast keeps r1 (it would end in ~1 s), then the machine turns six times
    slower: KRT_DRAIN_SECONDS still bounds the drain, r1 is closed with 1012 and counts
    as canceled."""
    with trio.fail_after(60):
        backend = ClockedFake(autojump_clock, ratio=0.5)
        state = await start_state(nursery, tmp_path, backend, KRT_DRAIN_SECONDS="3")
        assert state.engine is not None
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
        assert client.closed_at is not None
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
    assert state.engine is not None
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


async def test_a_drain_finishes_every_accepted_response_that_fits_and_refuses_the_rest_at_the_signal(
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
        assert refusal["reconnect"] is True
        # Refused only when late in a quiet run too, by more than the headroom the
        # forecast keeps for a drifting machine (a kept one cut at the limit is worse).
        assert quiet_ended[rid] - quiet_first_audio > drain_seconds / CAPACITY_HEADROOM, rid


async def test_a_drain_returns_as_soon_as_its_sessions_are_closed(nursery, tmp_path, autojump_clock):
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
