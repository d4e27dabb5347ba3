"""An engine, and the server state around it, built the way the tests need them.

``start_engine`` runs the model inline (``InlineRunner``) unless told otherwise, so the
engine and whole sessions run on virtual time; ``start_state`` adds what a session
needs from the server. The helpers read back what a test asserts on: the PCM the plain
pipeline makes for a text, and the metrics log's lines.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, Unpack

import trio
import trio.testing

from krt.engine.facade import Engine
from krt.engine.pipeline import SpeechPipeline
from krt.metrics.record import MetricsLog
from krt.server.state import ServerState
from krt.synth.fake_backend import SECONDS_PER_TOKEN, FakeBackend
from krt.text.g2p import tokenize
from tests.conftest import make_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from krt.config import Config
    from krt.engine.pipeline import SpeechPlan
    from krt.engine.runner import ModelRunner
    from krt.synth.backend import Backend

NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
LONG_TEXT = " ".join(f"Sentence number {n} goes on for a while." for n in range(1, 9))
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class InlineRunner:
    """Model work on the Trio thread itself, for tests on virtual time with a fast backend.

    The work blocks the event loop while it runs, which is what makes the order of
    events exact. Before it, every other task runs until it blocks, as it would while a
    real model thread computes: a reader takes the audio of the last turn when it was
    made, not after the next turn.
    """

    async def run(self, work: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        await trio.testing.wait_all_tasks_blocked()
        return work(*args)

    def call_soon(self, callback: Callable[[Unpack[Ts]], object], *args: *Ts) -> None:
        callback(*args)


def sentences(word: str, count: int) -> str:
    """``<word> one. <word> two. …``: segments a test can tell apart by their first word."""
    return " ".join(f"{word} {number}." for number in NUMBERS[:count])


def engine_config(**env: str) -> Config:
    return make_config(KRT_BACKEND="fake", **env)


async def start_engine(
    nursery: trio.Nursery, config: Config, backend: Backend, runner: ModelRunner | None = None
) -> Engine:
    engine = Engine(SpeechPipeline(backend, config), config, runner or InlineRunner())
    await nursery.start(engine.run)
    return engine


async def start_state(nursery: trio.Nursery, tmp_path: Path, backend: Backend, **env: str) -> ServerState:
    """The server's shared state around an engine that runs its model inline."""
    config = engine_config(**env)
    engine = await start_engine(nursery, config, backend)
    return ServerState(config, engine, MetricsLog(tmp_path / "metrics.log"), ready=True)


def expected_pcm(state: ServerState, text: str) -> bytes:
    """What the plain pipeline renders for ``text`` in the session's default voice."""
    pipeline = SpeechPipeline(FakeBackend(), state.config)
    return b"".join(chunk for batch in pipeline.rendering(pipeline.plan(text, "female")) for chunk in batch)


def metrics_lines(tmp_path: Path) -> dict[str, dict[str, object]]:
    """The metrics log by request id (one line per response, or the test fails)."""
    path = tmp_path / "metrics.log"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    by_id = {record["request_id"]: record for record in records}
    assert len(by_id) == len(records), "one line per response"
    return by_id


def token_seconds(plan: SpeechPlan, ratio: float) -> float:
    """The compute of the token frames of a plan alone, each token SECONDS_PER_TOKEN of
    audio: a floor for what the model spends on it (lead, tail and context come on top)."""
    backend = FakeBackend()
    phonemizer = backend.make_phonemizer()
    tokens = sum(len(tokenize(phonemizer.phonemize(text), backend.vocab)) for text in plan.segments)
    return tokens * SECONDS_PER_TOKEN / plan.speed * ratio
