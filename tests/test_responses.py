"""A response's life in the ResponseBook, the server-wide InFlight count, and the metrics line."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import trio

from krt.engine.pipeline import SpeechPlan
from krt.errors import SpeechError
from krt.metrics.record import MetricsLog
from krt.server.responses import InFlight, Outcome, Response, ResponseBook

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


async def test_an_open_response_is_counted_and_addressable(tmp_path):
    books = Books(tmp_path)
    response = books.opened("r1")
    assert books.in_flight.count == 1
    assert "r1" in books.book
    assert books.book.get("r1") is response
    assert books.book.addressable() == [response]
    assert response.outcome is Outcome.OPEN


async def test_cancel_stops_the_scope_and_retires_it_but_it_counts_until_settled(tmp_path):
    books = Books(tmp_path)
    response = books.opened("r1")
    books.book.cancel(response)

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
    books.book.end(response, Outcome.COMPLETED)
    assert "r1" in books.book  # its audio may still be queued: a cancel can still stop it
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
    books.book.cancel(response)
    books.book.end(response, Outcome.COMPLETED)  # its audio loop finished after the cancel
    books.book.settle(response)
    assert response.outcome is Outcome.CANCELED
    assert books.lines()[0]["canceled"] is True


async def test_a_failed_response_leaves_the_count_but_not_a_metrics_line(tmp_path):
    books = Books(tmp_path)
    response = books.opened("r1")
    books.book.end(response, Outcome.FAILED)
    # Retired at once: a barge or cancel cannot turn its queued response.error into a cancel.
    assert "r1" not in books.book
    assert books.book.addressable() == []
    books.book.settle(response)
    assert books.in_flight.count == 0
    assert books.lines() == []


async def test_abandon_all_settles_every_unsettled_response_as_canceled_but_failures_stay_failed(tmp_path):
    books = Books(tmp_path)
    done = books.opened("done")
    books.book.end(done, Outcome.COMPLETED)
    books.book.settle(done)
    unsent = books.opened("unsent")  # completed, but its response.completed never left
    books.book.end(unsent, Outcome.COMPLETED)
    books.opened("speaking")
    failed = books.opened("failed")
    books.book.end(failed, Outcome.FAILED)
    assert books.in_flight.count == 3

    books.book.abandon_all()
    books.book.abandon_all()

    assert books.in_flight.count == 0
    assert books.in_flight.zero.is_set()
    assert books.book.addressable() == []
    assert failed.outcome is Outcome.FAILED
    assert {line["request_id"]: line["canceled"] for line in books.lines()} == {
        "done": False,
        "unsent": True,
        "speaking": True,
    }


async def test_the_metrics_line_measures_the_response_on_the_trio_clock(tmp_path, autojump_clock):
    books = Books(tmp_path)
    response = books.opened("r1")
    await trio.sleep(0.25)
    response.first_audio_at = trio.current_time()
    response.queue_seconds = 0.125
    response.audio_bytes = 48000  # one second of PCM16 at 24 kHz
    await trio.sleep(1.25)
    books.book.end(response, Outcome.COMPLETED)
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
    books.book.end(running, Outcome.COMPLETED)
    books.book.settle(running)
    assert books.in_flight.count == 0
    assert books.in_flight.zero.is_set()
    assert [line["request_id"] for line in books.lines()] == ["running"]
