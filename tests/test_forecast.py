"""The drain's forecast: the scheduler's rules replayed on its measurements."""

from __future__ import annotations

import math

import pytest

from krt.engine.forecast import EngineMeasures, StreamState, predict_ends

MEASURES = EngineMeasures(
    capacity=2.0, first_window_seconds=0.5, first_window_audio=1.0, slots=4, ahead_seconds=8.0, headroom=1.0
)


def test_a_short_response_ends_when_its_compute_is_done():
    (ends,) = predict_ends([StreamState([10.0])], MEASURES, now=0.0, horizon=60.0, busy_until=0.0)
    assert ends == [pytest.approx(0.5 + 9.0 / 2.0)]  # first window, then 9 s at 2 s per s


def test_a_long_paced_response_ends_with_its_player_not_its_compute():
    """Never more than AHEAD_SECONDS ahead of its player: 60 s of audio cannot end before
    its player is within 8 s of the end, however fast the engine is."""
    fast = EngineMeasures(20.0, 0.1, 1.0, 4, 8.0, 1.0)
    (paced,) = predict_ends([StreamState([60.0])], fast, now=0.0, horizon=120.0, busy_until=0.0)
    (download,) = predict_ends(
        [StreamState([60.0], paced=False)], fast, now=0.0, horizon=120.0, busy_until=0.0
    )
    assert paced[0] >= 0.1 + 60.0 - 8.0 - 2.0  # within one window of the player's bound
    assert download[0] == pytest.approx(0.1 + 59.0 / 20.0)


def test_a_response_queued_behind_another_on_its_socket_waits_for_it_and_the_queue():
    """One slot: the second socket waits for the first response to end; the first
    socket's next response then queues behind it, as the scheduler's FIFO does."""
    one_slot = EngineMeasures(2.0, 0.5, 1.0, 1, 8.0, 1.0)
    first, second = predict_ends(
        [StreamState([3.0, 3.0]), StreamState([3.0], active=False)], one_slot, 0.0, 60.0, busy_until=0.0
    )
    assert first[0] == pytest.approx(0.5 + 1.0)
    assert second[0] == pytest.approx(first[0] + 0.5 + 1.0)
    assert first[1] == pytest.approx(second[0] + 0.5 + 1.0)


def test_headroom_inflates_costs_and_the_horizon_cuts_off_with_inf():
    cautious = EngineMeasures(2.0, 0.5, 1.0, 4, 8.0, 1.25)
    (ends,) = predict_ends([StreamState([10.0, 10.0])], cautious, now=100.0, horizon=10.0, busy_until=101.0)
    assert ends[0] == pytest.approx(101.0 + 1.25 * (0.5 + 4.5))
    assert ends[1] == math.inf


def test_with_no_capacity_measured_everything_is_kept():
    unmeasured = EngineMeasures(0.0, 0.0, 1.0, 1, 8.0, 1.25)
    (ends,) = predict_ends([StreamState([30.0, 30.0])], unmeasured, now=5.0, horizon=1.0, busy_until=5.0)
    assert ends == [5.0, 5.0]
