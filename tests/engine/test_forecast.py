"""The drain's forecast: the scheduler's rules replayed on its measurements."""

from __future__ import annotations

import math

import attrs
import pytest

from krt.engine.forecast import EngineMeasures, StreamState, earliest_start, predict_ends, replay

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


# -- admission: when a newcomer fits ----------------------------------------------------

ADMISSION = EngineMeasures(
    capacity=2.0, first_window_seconds=0.5, first_window_audio=1.0, slots=8, ahead_seconds=8.0, headroom=1.0
)


def start_of(admitted, audio, measures=ADMISSION, *, max_streams=8, within=4.0):
    return earliest_start(
        admitted, audio, measures, 0.0, 60.0, 0.0, max_streams=max_streams, first_turn_within=within
    )


def test_a_short_reply_fits_beside_a_stream_far_ahead_of_its_player():
    """Twice real time, one stream 6 s ahead: a newcomer of 3 s needs 1.5 s of compute
    and nobody runs dry meanwhile, although a count of streams (2 / 1.25) would say one."""
    ahead = StreamState([4.0], played_until=6.0, submitted_at=-5.0)
    assert start_of([ahead], 3.0) == 0.0


def test_a_newcomer_that_would_make_a_player_run_dry_waits_for_its_end():
    """A stream 0.2 s from running dry goes before any newcomer's first window (0.5 s):
    it would stall, so the newcomer starts when that stream's compute is done."""
    (ends,) = predict_ends([StreamState([3.0], played_until=0.2)], ADMISSION, 0.0, 60.0, 0.0)
    start = start_of([StreamState([3.0], played_until=0.2, submitted_at=-1.0)], 3.0)
    assert start == pytest.approx(ends[0])


def test_long_streams_past_the_capacity_never_fit_together():
    """Two unending streams at 1.6x real time cannot both be fed: the second waits for
    the first to end, and with no end in the horizon it is not started at all."""
    slow = attrs.evolve(ADMISSION, capacity=1.6)
    assert start_of([StreamState([300.0], played_until=1.0, submitted_at=-1.0)], 300.0, slow) is None
    assert start_of([StreamState([10.0], played_until=1.0, submitted_at=-1.0)], 300.0, slow) > 0


def test_long_streams_past_one_window_a_turn_fit_when_a_batched_turn_feeds_them():
    """Two unending streams at 1.6x real time one window a turn fit together on a model
    that makes 1.8x the audio per second with two windows a turn (a GPU): a turn of both
    windows costs their sum / 1.8, and each player is fed. Newcomers asking together have
    their first windows in one turn."""
    playing = StreamState([300.0], played_until=3.0, submitted_at=-1.0)
    single = attrs.evolve(ADMISSION, capacity=1.6)
    assert start_of([playing], 300.0, single) is None
    assert start_of([playing], 300.0, attrs.evolve(single, batch_speedup=(1.0, 1.8))) == 0.0
    (first, second) = replay(
        [StreamState([5.0]), StreamState([5.0])],
        attrs.evolve(ADMISSION, batch_speedup=(1.0, 2.0)),
        0.0,
        60.0,
        0.0,
    )
    assert first.first_turn == second.first_turn == 0.0  # both first windows in one turn
    assert first.ends[0] == pytest.approx(second.ends[0])


def test_a_reservation_starting_later_keeps_its_place():
    """A refused client told to come back at t=2 counts from then: a newcomer now that
    would starve it waits, one that leaves room for it goes now."""
    slow = attrs.evolve(ADMISSION, capacity=1.2)
    reserved = StreamState([20.0], submitted_at=2.0, starts_at=2.0)
    assert start_of([], 20.0, slow) == 0.0
    assert start_of([reserved], 20.0, slow) != 0.0
    assert start_of([reserved], 0.5, slow) == 0.0


def test_the_stream_cap_and_the_first_turn_limit_hold():
    ahead = StreamState([4.0], played_until=6.0, submitted_at=-5.0)
    assert start_of([ahead], 3.0, max_streams=1) == pytest.approx(
        predict_ends([ahead], ADMISSION, 0, 60, 0)[0][0]
    )
    # Replies made whole in a first window each: three of them (1.5 s) go before a fourth.
    whole = attrs.evolve(ADMISSION, first_window_audio=3.0)
    newcomers = [StreamState([3.0], submitted_at=-1.0) for _ in range(3)]
    assert start_of(newcomers, 3.0, whole, within=1.4) != 0.0
    assert start_of(newcomers, 3.0, whole, within=1.5) == 0.0


def test_replay_counts_the_silence_of_a_player_that_runs_dry():
    slow = attrs.evolve(ADMISSION, capacity=0.5)  # half real time: every later window is late
    (outcome,) = replay([StreamState([5.0])], slow, 0.0, 60.0, 0.0)
    assert outcome.first_turn == 0.0
    assert outcome.stall_seconds > 0
    (fast,) = replay([StreamState([5.0])], ADMISSION, 0.0, 60.0, 0.0)
    assert fast.stall_seconds == 0
