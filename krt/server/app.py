"""``krt serve``: listen at once, load and warm the model, serve, drain on SIGTERM/SIGINT.

The port answers from the first moment (``/readyz`` says 503 while the model loads),
so an orchestrator can tell "starting" from "dead". A signal starts a drain: readiness
turns 503, new responses are refused as ``busy``, responses in flight may finish for
``KRT_DRAIN_SECONDS``, then the process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator  # noqa: TC003
from typing import TYPE_CHECKING

import trio

from krt.engine.facade import Engine
from krt.engine.pipeline import SpeechPipeline
from krt.metrics.record import MetricsLog
from krt.server.admin import serve_admin
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
) -> None:
    """Build the pipeline off the event loop, warm it, start the engine loop, then say ready."""
    config = state.config
    pipeline = await trio.to_thread.run_sync(build, config)
    engine = Engine(pipeline, config, runner)
    await engine.warm_up()
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


DRAIN_CLOSE_CODE = 1012
"""WebSocket "service restart": the close a draining replica sends, which tells a client
to reconnect (through its load balancer, to another replica), unlike a failure's 1006
or 1011."""
DRAIN_CLOSE_REASON = "draining: reconnect"


async def drain(state: ServerState, signals: AsyncIterator[int] | None = None) -> None:
    """Refuse new responses (``busy``, saying why), let open ones finish for up to
    ``KRT_DRAIN_SECONDS`` (or until the next of ``signals``), and close each session with
    1012 as soon as it has nothing in flight, so its client reconnects elsewhere at once;
    when the time is up, close whatever is left the same way."""
    state.in_flight.start_drain()
    state.monitor.server_changed()
    with trio.move_on_after(state.config.server.drain_seconds) as limit:
        async with trio.open_nursery() as waiting:
            if signals is not None:
                waiting.start_soon(_cancel_on_next_signal, signals, waiting.cancel_scope)
            while True:
                settled = state.in_flight.settled
                await state.close_sessions(DRAIN_CLOSE_CODE, idle_only=True, reason=DRAIN_CLOSE_REASON)
                if not state.in_flight.count:
                    break
                await settled.wait()
            waiting.cancel_scope.cancel()
    if limit.cancelled_caught:
        log.warning(
            "KRT_DRAIN_SECONDS=%s passed with %d responses in flight: closing them and exiting "
            "(a model call still running is abandoned with the process)",
            state.config.server.drain_seconds,
            state.in_flight.count,
        )
    log.info("drained; closing %d sessions and exiting", state.sessions)
    await state.close_sessions(DRAIN_CLOSE_CODE, reason=DRAIN_CLOSE_REASON)


async def _cancel_on_next_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _signum in signals:
        log.warning("second signal: exiting without waiting")
        scope.cancel()
        return


async def main(
    config: Config,
    host: str,
    port: int,
    *,
    handle_signals: bool = True,
    build: Callable[[Config], SpeechPipeline] = load_pipeline,
    runner: ModelRunner | None = None,
    task_status: trio.TaskStatus[tuple[int, ServerState]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until cancelled or drained; ``started`` gets (port, state) once ready.

    ``build`` and ``runner`` are for tests and benches: a pipeline around a backend they
    made (or already loaded), and the model run inline for virtual time; production loads
    the configured backend and runs it on a model thread.
    """
    state = ServerState(config, None, MetricsLog(config.server.metrics_log))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve, state, host, port)
        await nursery.start(serve_admin, state)
        if handle_signals:
            nursery.start_soon(drain_on_signal, state, nursery.cancel_scope)
        nursery.start_soon(drain_on_request, state, nursery.cancel_scope)
        await start_engine(state, nursery, build, runner)
        task_status.started((bound, state))


def run(args: argparse.Namespace, config: Config) -> int:
    trio.run(main, config, args.host, args.port)
    return 0
