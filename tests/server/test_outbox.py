"""The outbox's flow control: a client that stops reading holds back only its own stream."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from krt import PCM_BYTES_PER_SECOND
from krt.engine.pipeline import SpeechPlan
from krt.metrics.record import MetricsLog
from krt.server.outbox import OUTBOX_AUDIO_SECONDS, Outbox
from krt.server.responses import InFlight, Response, ResponseBook, State
from tests.conftest import make_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.trio


def a_book(tmp_path: Path) -> ResponseBook:
    return ResponseBook(InFlight(), MetricsLog(tmp_path / "metrics.log"), "fake")


class UnreadSocket:
    """A WebSocket whose peer never reads: every send waits until the test ends."""

    def __init__(self) -> None:
        self.sends_started = 0

    async def send_message(self, _text: str) -> None:
        self.sends_started += 1
        await trio.sleep_forever()

    async def aclose(self, _code: int = 1000) -> None:
        return None


async def test_audio_queued_for_a_client_that_does_not_read_is_bounded_in_seconds(nursery, tmp_path):
    config = make_config()
    socket = UnreadSocket()
    outbox = Outbox(socket, config.websocket, config.stream, a_book(tmp_path))  # type: ignore[arg-type]
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


class RecordingSocket:
    """A WebSocket whose peer reads everything at once."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_message(self, text: str) -> None:
        self.sent.append(text)
        await trio.lowlevel.checkpoint()

    async def ping(self, _payload: bytes) -> None:
        await trio.lowlevel.checkpoint()  # the pong: it has read everything sent

    async def aclose(self, _code: int = 1000) -> None:
        return None


async def test_a_batch_cut_off_by_its_responses_cancel_does_not_hold_back_the_next_response(
    nursery, tmp_path
):
    """A response cancelled just as its batch reaches the outbox (the send's checkpoint
    raises) leaves nothing counted: the next response's audio goes out at once."""
    config = make_config()
    socket = RecordingSocket()
    outbox = Outbox(socket, config.websocket, config.stream, a_book(tmp_path))  # type: ignore[arg-type]
    nursery.start_soon(outbox.run)
    plan = SpeechPlan("voice", 1.0, ("text",))
    canceled, following = (
        Response("canceled", plan, trio.current_time()),
        Response("next", plan, trio.current_time()),
    )
    with trio.CancelScope() as scope:
        scope.cancel()
        await outbox.audio(canceled, (bytes(int(0.9 * OUTBOX_AUDIO_SECONDS * PCM_BYTES_PER_SECOND)),))
    sent_next = trio.Event()

    async def speak_next() -> None:
        await outbox.audio(following, (bytes(int(0.2 * OUTBOX_AUDIO_SECONDS * PCM_BYTES_PER_SECOND)),))
        sent_next.set()

    nursery.start_soon(speak_next)
    await trio.testing.wait_all_tasks_blocked()
    assert sent_next.is_set(), "the next response's audio waits for room the cancelled batch never took"
    assert [text for text in socket.sent if '"next"' in text]
    assert not [text for text in socket.sent if '"canceled"' in text]


class GatedSocket(RecordingSocket):
    """A peer that stops reading at a frame containing ``hold_at`` until ``release`` is set."""

    def __init__(self, hold_at: str) -> None:
        super().__init__()
        self.hold_at = hold_at
        self.holding = trio.Event()
        self.release = trio.Event()

    async def send_message(self, text: str) -> None:
        if self.hold_at in text and not self.release.is_set():
            self.holding.set()
            await self.release.wait()
        await super().send_message(text)


async def test_a_cancel_crossing_a_responses_last_event_is_refused_not_sent_as_a_second_end(
    nursery, tmp_path
):
    """While ``response.completed`` is on its way to a slow reader, the response can no
    longer be addressed: a client's cancel then gets ``unknown_response`` (as a cancel
    arriving just after would), never a ``response.canceled`` after the completion."""
    config = make_config()
    socket = GatedSocket(hold_at="response.completed")
    book = a_book(tmp_path)
    outbox = Outbox(socket, config.websocket, config.stream, book)  # type: ignore[arg-type]
    nursery.start_soon(outbox.run)
    response = Response("r1", SpeechPlan("voice", 1.0, ("text",)), trio.current_time())
    book.open(response)
    response.move(State.SPEAKING)
    response.made()
    await outbox.completed(response)
    await socket.holding.wait()
    assert book.get("r1") is None  # what the session looks a cancel's target up in
    assert book.in_flight()  # still counted until the event is on the wire
    socket.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert not book.in_flight()
    assert [json.loads(text)["type"] for text in socket.sent] == ["response.completed"]
