"""A response's life: its state table, the ResponseBook, the server-wide InFlight count, the metrics line."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import trio

from krt.engine.pipeline import SpeechPlan
from krt.engine.scheduler import Job
from krt.errors import SpeechError
from krt.metrics.record import MetricsLog
from krt.server.responses import NEXT_STATES, InFlight, InvalidTransition, Response, ResponseBook, State

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.trio


class Books:
    """One connection's book over a fresh InFlight and a metrics log in ``tmp_path``."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "metrics.log"
        self.in_flight = InFlight()
        self.book = ResponseBook(self.in_flight, MetricsLog(self.path), "fake")

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def opened(self, response_id: str) -> Response:
        response = Response(response_id, SpeechPlan("fake_female", 1.0, ("Hi.",)), trio.current_time())
        self.book.open(response)
        return response


def made(response: Response) -> None:
    """Through the states a delivery takes it while all of it is made."""
    response.move(State.SPEAKING)
    response.made()


async def test_an_open_response_is_counted_and_addressable(tmp_path):
    books = Books(tmp_path)
    response = books.opened("r1")
    assert books.in_flight.count == 1
    assert "r1" in books.book
    assert books.book.get("r1") is response
    assert books.book.addressable() == [response]
    assert response.state is State.QUEUED
    assert response.outcome is None


async def test_cancel_stops_the_scope_and_retires_it_but_it_counts_until_settled(tmp_path):
    books = Books(tmp_path)
    response = books.opened("r1")
    response.cancel()

    assert response.canceled
    assert response.scope.cancel_called
    assert "r1" not in books.book  # a second cancel gets unknown_response
    assert books.in_flight.count == 1  # its response.canceled is not on the wire yet
    assert books.lines() == []
    books.book.settle(response)
    assert books.in_flight.count == 0
    assert [(line["request_id"], line["canceled"]) for line in books.lines()] == [("r1", True)]


async def test_a_completed_response_is_logged_once_and_settling_twice_changes_nothing(tmp_path):
    books = Books(tmp_path)
    response = books.opened("r1")
    made(response)
    assert "r1" in books.book  # its audio may still be queued: a cancel can still stop it
    assert books.in_flight.count == 1
    response.last_event_starting()
    assert "r1" not in books.book  # a cancel crossing its last event gets unknown_response
    assert books.in_flight.count == 1
    books.book.settle(response)
    assert "r1" not in books.book
    books.book.settle(response)

    assert books.in_flight.count == 0
    assert books.in_flight.zero.is_set()
    assert [(line["request_id"], line["canceled"]) for line in books.lines()] == [("r1", False)]


async def test_a_cancel_wins_over_a_later_end(tmp_path):
    books = Books(tmp_path)
    response = books.opened("r1")
    response.move(State.SPEAKING)
    response.cancel()
    response.made()  # its audio loop finished after the cancel
    response.fail("internal")  # or failed after it
    books.book.settle(response)
    assert response.outcome is State.CANCELED
    assert books.lines()[0]["canceled"] is True


async def test_a_failed_response_leaves_the_count_but_not_a_metrics_line(tmp_path):
    books = Books(tmp_path)
    response = books.opened("r1")
    response.fail("internal")
    # Retired at once: a barge or cancel cannot turn its queued response.error into a cancel.
    assert "r1" not in books.book
    assert books.book.addressable() == []
    books.book.settle(response)
    assert books.in_flight.count == 0
    assert books.lines() == []


async def test_abandon_all_settles_every_unsettled_response_as_canceled_but_failures_stay_failed(tmp_path):
    books = Books(tmp_path)
    done = books.opened("done")
    made(done)
    done.last_event_starting()
    books.book.settle(done)
    unsent = books.opened("unsent")  # completed, but its response.completed never left
    made(unsent)
    unsent.last_event_starting()
    books.opened("speaking").move(State.SPEAKING)
    failed = books.opened("failed")
    failed.fail("internal")
    assert books.in_flight.count == 3

    books.book.abandon_all()
    books.book.abandon_all()

    assert books.in_flight.count == 0
    assert books.in_flight.zero.is_set()
    assert books.book.addressable() == []
    assert failed.outcome is State.FAILED
    assert unsent.outcome is State.CANCELED
    assert {line["request_id"]: line["canceled"] for line in books.lines()} == {
        "done": False,
        "unsent": True,
        "speaking": True,
    }


async def test_the_metrics_line_measures_the_response_on_the_trio_clock(tmp_path, autojump_clock):
    books = Books(tmp_path)
    response = books.opened("r1")
    await trio.sleep(0.25)
    response.sent(0, 960)  # the primer: its first audio, no PCM of its own
    response.queue_seconds = 0.125
    await trio.sleep(0.5)
    response.sent(48000, 48000)  # one second of PCM16 at 24 kHz
    await trio.sleep(0.75)
    made(response)
    response.last_event_starting()
    books.book.settle(response)

    (line,) = books.lines()
    assert line["ttfb_ms"] == 250.0
    assert line["wall_s"] == 1.5
    assert line["audio_s"] == 1.0
    assert line["queue_ms"] == 125.0
    assert (line["voice"], line["backend"], line["canceled"]) == ("fake_female", "fake", False)


async def test_in_flight_zero_is_set_at_zero_and_renewed_when_a_response_opens(autojump_clock):
    in_flight = InFlight()
    in_flight.open()
    first = in_flight.zero
    assert not first.is_set()
    in_flight.open()
    in_flight.close()
    assert not first.is_set()
    in_flight.close()
    assert first.is_set()

    in_flight.open()
    assert in_flight.zero is not first
    assert not in_flight.zero.is_set()
    with trio.fail_after(1):
        await first.wait()  # whoever waited for the earlier zero was let go
    with trio.move_on_after(1) as waiting:
        await in_flight.zero.wait()
    assert waiting.cancelled_caught
    in_flight.close()
    assert in_flight.zero.is_set()


async def test_start_drain_refuses_new_responses_busy_and_lets_open_ones_settle(tmp_path):
    books = Books(tmp_path)
    running = books.opened("running")
    books.in_flight.start_drain()

    with pytest.raises(SpeechError) as refused:
        books.opened("late")
    assert refused.value.code == "busy"
    assert "late" not in books.book
    assert books.in_flight.count == 1
    made(running)
    running.last_event_starting()
    books.book.settle(running)
    assert books.in_flight.count == 0
    assert books.in_flight.zero.is_set()
    assert [line["request_id"] for line in books.lines()] == ["running"]


async def test_the_state_table_allows_exactly_its_steps():
    """Every step off the table raises, so a transport cannot, say, settle a response
    still speaking or revive a settled one; every step on it is taken."""
    plan = SpeechPlan("fake_female", 1.0, ("Hi.",))
    for start in State:
        for to in State:
            response = Response("r1", plan, 0.0, state=start)
            if to in NEXT_STATES[start]:
                response.move(to)
                assert response.state is to
            else:
                with pytest.raises(InvalidTransition):
                    response.move(to)
                assert response.state is start
    assert not NEXT_STATES[State.SETTLED]
    reachable, frontier = {State.QUEUED}, [State.QUEUED]
    while frontier:
        for to in NEXT_STATES[frontier.pop()] - reachable:
            reachable.add(to)
            frontier.append(to)
    assert reachable == set(State)


async def test_only_a_response_not_yet_ending_can_be_addressed_and_cancelled():
    """A client reaches a response until its last event starts out; the connection going
    away cancels a completion still on its way, but nothing revives a failure or a
    response already settled."""
    plan = SpeechPlan("fake_female", 1.0, ("Hi.",))
    for state in (State.QUEUED, State.SPEAKING, State.MADE):
        response = Response("r1", plan, 0.0, state=state)
        assert response.addressable
        response.cancel()
        assert response.canceled and response.scope.cancel_called
    assert not Response("r1", plan, 0.0, state=State.COMPLETED).addressable
    for state in (State.CANCELED, State.FAILED, State.SETTLED):
        assert not Response("r1", plan, 0.0, state=state).addressable
        with pytest.raises(InvalidTransition):
            Response("r1", plan, 0.0, state=state).cancel()


async def test_reading_credits_the_engine_job_with_seconds_of_audio():
    """What the client acknowledged reaches the engine's job as seconds: its buffer
    empties, and the engine is woken to give it another turn."""
    woken = []
    plan = SpeechPlan("fake_female", 1.0, ("Hi.",))
    send, receive = trio.open_memory_channel[object](1)
    job = Job(None, "r1", send, receive, 0.0, lambda: woken.append(True))  # type: ignore[arg-type]
    job.unread_seconds = 2.0
    response = Response("r1", plan, 0.0, job=job)
    response.read(24000)  # half a second of PCM16 at 24 kHz
    assert job.unread_seconds == 1.5
    assert woken == [True]
