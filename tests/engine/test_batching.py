"""Windows of several streams decoded in one model call, on a fake that costs like a GPU.

A GPU decodes a small window in about the time it takes to launch its kernels, so a
call costs a fixed launch cost plus a little per window in it (``ClockedFake`` with
``launch_seconds`` and ``batch_windows``), on virtual time. The fake's audio is the same
however a segment is cut, so every stream's PCM can be compared exactly with the plain
pipeline's: what rode in which batch must never reach the wrong stream or change what
it hears. (That the real model's audio does not depend on its batch is tested on torch,
in ``test_torch_backend.py``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from krt.errors import SpeechError
from tests.engine.test_scheduler import Player, expected_pcm, long_text, play
from tests.fakes import ClockedFake
from tests.inline_engine import engine_config, start_engine

if TYPE_CHECKING:
    from trio.testing import MockClock

    from krt.config import Config
    from krt.engine.facade import Engine

pytestmark = pytest.mark.trio

LAUNCH_SECONDS = 0.05
"""What every model call costs on the GPU-like fake, however little it decodes."""
PER_WINDOW_RATIO = 0.01
"""What each window in a call adds: 1 % of the duration of the frames it decodes."""
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")


async def gpu_engine(
    nursery: trio.Nursery,
    clock: MockClock,
    batch: int,
    *,
    launch: float = LAUNCH_SECONDS,
    ratio: float = PER_WINDOW_RATIO,
    **env: str,
) -> tuple[Config, ClockedFake, Engine]:
    config = engine_config(**env)
    backend = ClockedFake(clock, ratio, batch_windows=batch, launch_seconds=launch)
    engine = await start_engine(nursery, config, backend)
    await engine.warm_up()
    backend.calls.clear()
    return config, backend, engine


async def speak_together(engine: Engine, words: tuple[str, ...], sentences: int) -> dict[str, Player]:
    """One long stream per word, all asked for at once; their players once all ended."""
    players = {word: Player() for word in words}
    async with trio.open_nursery() as streams:
        for word in words:
            streams.start_soon(play, engine, engine.plan(long_text(word, sentences)), players[word])
    return players


async def test_due_windows_of_several_streams_share_a_call_and_each_stream_hears_its_own(
    nursery, autojump_clock
):
    config, backend, engine = await gpu_engine(nursery, autojump_clock, batch=4)
    players = await speak_together(engine, WORDS[:4], 3)

    for word, player in players.items():
        assert player.error is None
        assert player.pcm == expected_pcm(config, engine.plan(long_text(word, 3))), word
        assert player.stalls() == [], word
    windows = sum(len(call.texts) for call in backend.calls)
    assert max(len(call.texts) for call in backend.calls) == 4
    assert len(backend.calls) <= windows / 2  # most windows rode with others
    assert all(len(set(call.owners)) == len(call.owners) for call in backend.calls)  # one window a stream


async def test_no_stream_starves_when_more_are_due_than_a_turn_takes(nursery, autojump_clock):
    """Six streams asking at once, two windows a turn: the earliest deadlines go first, so
    every newcomer's first window comes within three turns, and no player runs dry."""
    config, backend, engine = await gpu_engine(
        nursery,
        autojump_clock,
        batch=2,
        launch=0.1,
        ratio=0.01,
        MAX_CONCURRENT_JOBS="6",
    )
    asked = trio.current_time()
    players = await speak_together(engine, WORDS, 3)

    for word, player in players.items():
        assert player.error is None
        assert player.pcm == expected_pcm(config, engine.plan(long_text(word, 3))), word
        assert player.stalls() == [], word
        assert player.arrivals[0] - asked < 3 * 0.4, word  # a turn: a launch and two windows
    assert max(len(call.texts) for call in backend.calls) == 2


async def test_a_newcomers_first_window_rides_the_next_turn(nursery, autojump_clock):
    """Three streams are playing when a fourth asks: its first window is decoded in the
    very next turn, before any of the three gets another window."""
    config, backend, engine = await gpu_engine(nursery, autojump_clock, batch=4)
    players = {word: Player() for word in WORDS[:4]}
    async with trio.open_nursery() as streams:
        for word in WORDS[:3]:
            streams.start_soon(play, engine, engine.plan(long_text(word, 4)), players[word])
        await players["alpha"].wait_for_audio(6.0)
        asked = trio.current_time()
        streams.start_soon(play, engine, engine.plan(long_text("delta", 2)), players["delta"])

    after = [owner for call in backend.calls if call.at >= asked for owner in call.owners]
    newcomer = after.index("delta")
    assert len(set(after[:newcomer])) == len(after[:newcomer])  # nobody had two windows first
    assert players["delta"].arrivals[0] - asked < 0.5
    for word, player in players.items():
        assert player.stalls() == [], word
        sentences = 2 if word == "delta" else 4
        assert player.pcm == expected_pcm(config, engine.plan(long_text(word, sentences))), word


async def test_a_stream_that_leaves_gets_no_window_after_the_turn_it_left_in(nursery, autojump_clock):
    config, backend, engine = await gpu_engine(nursery, autojump_clock, batch=4)
    players = {word: Player() for word in WORDS[:3]}
    async with trio.open_nursery() as streams:
        for word in WORDS[:3]:
            leave_after = 2 if word == "bravo" else None
            plan = engine.plan(long_text(word, 3))
            streams.start_soon(partial_play, engine, plan, players[word], leave_after)

    left_at = players["bravo"].left_at
    assert left_at is not None
    assert all(call.at < left_at for call in backend.calls if "bravo" in call.owners)
    for word in ("alpha", "charlie"):
        assert players[word].pcm == expected_pcm(config, engine.plan(long_text(word, 3)))
        assert players[word].stalls() == []
    assert engine.statistics().active == 0


async def partial_play(engine: Engine, plan, player: Player, leave_after: int | None) -> None:
    await play(engine, plan, player, leave_after=leave_after)


async def test_capacity_measured_at_each_batch_size_follows_the_cost_of_a_call(nursery, autojump_clock):
    """On a GPU-like model (a launch cost per call) the warm-up measures more audio per
    second the more windows a turn takes; on a CPU-like one (cost in proportion
    to what is decoded) about the same: what admission then counts on is what batching
    really gives on that model."""
    *_, gpu = await gpu_engine(nursery, autojump_clock, batch=8, launch=0.2, ratio=0.005)
    *_, cpu = await gpu_engine(nursery, autojump_clock, batch=4, launch=0.0, ratio=0.3)

    gpu_capacity = dict(gpu.statistics().capacity_by_batch)
    assert sorted(gpu_capacity) == [1, 2, 4, 8]
    assert gpu_capacity[1] < gpu_capacity[2] < gpu_capacity[4] < gpu_capacity[8]
    # 8 × (0.2 + 0.02) / (0.2 + 8 × 0.02) = 4.9 if every window stacked; the warm-up's
    # streams speak sentences of different lengths, whose windows often cannot.
    assert gpu_capacity[8] > 1.5 * gpu_capacity[1]
    cpu_capacity = dict(cpu.statistics().capacity_by_batch)
    assert sorted(cpu_capacity) == [1, 2, 4]
    assert max(cpu_capacity.values()) < 1.1 * min(cpu_capacity.values())


async def test_admission_takes_in_the_streams_a_batched_turn_can_feed(nursery, autojump_clock):
    """Four long streams at once on a model where one window a turn runs a little over
    real time per stream: one window a turn cannot feed them all, so some are refused;
    four windows a turn can, and all four are taken in and never stall."""
    costs = {"launch": 0.6, "ratio": 0.02, "MAX_CONCURRENT_JOBS": "4"}
    *_, single = await gpu_engine(nursery, autojump_clock, batch=1, **costs)
    config, _backend, batched = await gpu_engine(nursery, autojump_clock, batch=4, **costs)

    alone = await speak_together(single, WORDS[:4], 4)
    refused = [player for player in alone.values() if isinstance(player.error, SpeechError)]
    assert refused and all(player.error.code == "busy" for player in refused)
    together = await speak_together(batched, WORDS[:4], 4)
    for word, player in together.items():
        assert player.error is None, word
        assert player.stalls() == [], word
        assert player.pcm == expected_pcm(config, batched.plan(long_text(word, 4))), word
    assert batched.statistics().slots > single.statistics().slots
