"""``krt serve``: listen at once, load and warm the model, serve, drain on SIGTERM/SIGINT.

The port answers from the first moment (``/readyz`` says 503 while the model loads),
so an orchestrator can tell "starting" from "dead". A signal starts a drain
(:mod:`krt.server.drain`), then the process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

import trio

from krt.engine.facade import WARM_UP_TEXT, Engine
from krt.engine.pipeline import SpeechPipeline
from krt.metrics.record import MetricsLog
from krt.server.admin import serve_admin
from krt.server.drain import drain
from krt.server.listener import serve
from krt.server.state import ServerState
from krt.synth.loading import load_backend

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from krt.config import Config
    from krt.engine.runner import ModelRunner

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default 8000; 0 = any free port)"
    )


def load_pipeline(config: Config) -> SpeechPipeline:
    """The configured backend and the pipeline around it (blocking: seconds on CPU)."""
    backend = load_backend(config)
    log.info("backend %s on %s: %s", backend.name, backend.device, backend.source)
    return SpeechPipeline(backend, config)


async def start_engine(
    state: ServerState,
    nursery: trio.Nursery,
    build: Callable[[Config], SpeechPipeline] = load_pipeline,
    runner: ModelRunner | None = None,
    warm_up_text: str = WARM_UP_TEXT,
) -> None:
    """Build the pipeline off the event loop, warm it, start the engine loop, then say ready."""
    config = state.config
    pipeline = await trio.to_thread.run_sync(build, config)
    engine = Engine(pipeline, config, runner)
    await engine.warm_up(warm_up_text)
    await nursery.start(engine.run)
    state.engine = engine
    state.ready = True
    state.monitor.engine_loaded()
    log.info("ready")


async def drain_on_signal(state: ServerState, scope: trio.CancelScope) -> None:
    """On SIGTERM/SIGINT drain, then end the server (``scope``); a second signal cuts the wait."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info(
                "%s: draining (%d responses in flight)", signal.Signals(signum).name, state.in_flight.count
            )
            break
        await drain(state, signals)
    scope.cancel(reason="drained")


async def drain_on_request(state: ServerState, scope: trio.CancelScope) -> None:
    """When an operator asks for a drain (``krt console``), drain as on SIGTERM, then end
    the server (``scope``)."""
    await state.drain_requested.wait()
    log.info("draining at an operator's request (%d responses in flight)", state.in_flight.count)
    await drain(state)
    scope.cancel(reason="drained")


async def main(
    config: Config,
    host: str,
    port: int,
    *,
    handle_signals: bool = True,
    build: Callable[[Config], SpeechPipeline] = load_pipeline,
    runner: ModelRunner | None = None,
    warm_up_text: str = WARM_UP_TEXT,
    task_status: trio.TaskStatus[tuple[int, ServerState]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until cancelled or drained; ``started`` gets (port, state) once ready.

    ``build``, ``runner`` and ``warm_up_text`` are for tests and benches: a pipeline around
    a backend they made (or already loaded), the model run inline for virtual time, and a
    shorter warm-up for a backend already warm whose capacity the test does not need
    measured closely; production loads the configured backend, runs it on a model thread
    and warms it up on the sentence admission is sized by.
    """
    state = ServerState(config, None, MetricsLog(config.server.metrics_log))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve, state, host, port)
        await nursery.start(serve_admin, state)
        if handle_signals:
            nursery.start_soon(drain_on_signal, state, nursery.cancel_scope)
        nursery.start_soon(drain_on_request, state, nursery.cancel_scope)
        await start_engine(state, nursery, build, runner, warm_up_text)
        task_status.started((bound, state))


def run(args: argparse.Namespace, config: Config) -> int:
    trio.run(main, config, args.host, args.port)
    return 0
