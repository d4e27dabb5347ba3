"""The outbox's flow control: a client that stops reading holds back only its own stream."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from krt import PCM_BYTES_PER_SECOND
from krt.engine.pipeline import SpeechPlan
from krt.server.outbox import OUTBOX_AUDIO_SECONDS, Outbox
from krt.server.responses import Response
from tests.conftest import make_config

pytestmark = pytest.mark.trio


class UnreadSocket:
    """A WebSocket whose peer never reads: every send waits until the test ends."""

    def __init__(self) -> None:
        self.sends_started = 0

    async def send_message(self, _text: str) -> None:
        self.sends_started += 1
        await trio.sleep_forever()

    async def aclose(self, _code: int = 1000) -> None:
        return None


async def test_audio_queued_for_a_client_that_does_not_read_is_bounded_in_seconds(nursery):
    config = make_config()
    socket = UnreadSocket()
    outbox = Outbox(socket, config.websocket, config.stream, lambda _response: None)  # type: ignore[arg-type]
    nursery.start_soon(outbox.run)
    response = Response("r1", SpeechPlan("voice", 1.0, ("text",)), trio.current_time())
    batch_seconds = 0.4
    batch = (bytes(int(batch_seconds * PCM_BYTES_PER_SECOND)),)
    accepted = 0

    async def produce() -> None:
        nonlocal accepted
        while True:
            await outbox.audio(response, batch)
            accepted += 1

    nursery.start_soon(produce)
    await trio.testing.wait_all_tasks_blocked()
    assert socket.sends_started == 1  # the writer holds one batch, stuck in its send
    # Then the queue takes batches up to OUTBOX_AUDIO_SECONDS and the producer waits.
    assert accepted == 1 + int(OUTBOX_AUDIO_SECONDS / batch_seconds)
    nursery.cancel_scope.cancel()
