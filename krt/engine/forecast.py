"""The scheduler's rules replayed on its measurements: when admitted work ends, and
whether a newcomer fits.

Two decisions need the schedule's future rather than its present:

- *admission*: a newcomer is taken in when the schedule of everything admitted plus the
  newcomer still keeps every player fed (:func:`earliest_start`), queued when that holds
  a little later, refused only when it will not hold in time;
- a *drain* keeps, at the signal, the accepted responses that can end within
  ``KRT_DRAIN_SECONDS`` and refuses the rest at once (:func:`predict_ends`).

Both are a short simulation of the engine's own schedule from its present state:

- a turn is one window of each of the streams with the earliest deadlines among those
  that may have one, as many as a turn decodes together (a stream with no audio yet is
  due at once; a paced one is not computed more than ``AHEAD_SECONDS`` ahead of its
  player; none before it starts);
- a response's first window costs the measured first-window compute and makes the
  measured first-window audio; later windows cost their audio / the measured capacity;
  a turn of several windows costs their sum / the speedup measured at that batch size,
  and every window in it arrives when the turn ends;
- at most ``slots`` streams are active; a stream whose response ends hands its slot to
  the oldest waiting stream, and its own next response (queued behind it on the same
  socket) waits at the back like any newcomer;
- a response ends when its last window is made (a client that reads gets it at once);
- a player runs dry (a stall) when a window comes after all the audio before it has
  played.

Costs are inflated by the headroom admission keeps (``CAPACITY_HEADROOM``): the machine
drifts by a quarter within minutes, and a stream admitted (or a response kept) on a
prediction that then misses is worse for its caller than a wait or a refusal.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Sequence

LATER_WINDOW_SECONDS = 2.0
"""Audio of one later window in the replay, as the scheduler makes them at full size (a
window's cost is linear in its audio)."""
WINDOW_SLACK_SHARE = 0.9
"""A started stream's next window is sized to compute in this share of the time its
player (in a turn of several windows, the most urgent player in it) has left, down to
half the full size (as ``WindowSizes`` does). (Dividing it among
the started streams was measured worse: windows shrink to the minimum, whose context
costs as much as the window, and near capacity the streams fall behind for good.)"""
STALL_TOLERANCE_SECONDS = 0.05
"""Predicted silence a newcomer may add to the streams already admitted (and have itself)
and still fit: rounding, not a stall anyone hears."""


@attrs.define
class StreamState:
    """One stream as the replay starts: what it still has to make, in order.

    ``remaining`` holds the audio seconds still to make of its current response (first)
    and of each response queued behind it. ``played_until`` is where its current
    response's real-time player runs dry, or None when that response has no audio yet.
    """

    remaining: list[float]
    played_until: float | None = None
    paced: bool = True
    active: bool = True
    """Holds a slot now (else it waits for one, in the order given)."""
    submitted_at: float = 0.0
    """When its current response reached the engine: the order newcomers are served in."""
    starts_at: float = -math.inf
    """No turn before this: a newcomer whose start is being tried later."""


@attrs.frozen
class EngineMeasures:
    capacity: float
    """Audio seconds made per second of model time (later windows)."""
    first_window_seconds: float
    first_window_audio: float
    """Audio seconds a response's first window makes."""
    slots: int
    ahead_seconds: float
    headroom: float
    batch_speedup: tuple[float, ...] = (1.0,)
    """Audio per model second of a turn of 1, 2, … windows, over that of one window: as
    many entries as windows a turn may decode."""


@attrs.frozen
class StreamOutcome:
    """What the replay predicts for one stream."""

    ends: list[float]
    """When each of its responses ends (``math.inf`` past the horizon)."""
    first_turn: float | None
    """When its current response's first window begins (None past the horizon, or when
    it had audio already)."""
    stall_seconds: float
    """How long its players would wait, in all, for windows that came after they ran dry."""


def replay(
    streams: Sequence[StreamState], measures: EngineMeasures, now: float, horizon: float, busy_until: float
) -> list[StreamOutcome]:
    """The schedule from ``now`` to ``now + horizon``; ``busy_until`` is when the model
    thread is free of the window in progress. With no capacity measured yet there is
    nothing to predict with: every response ends ``now`` and nothing stalls."""
    if measures.capacity <= 0:
        return [StreamOutcome([now] * len(stream.remaining), None, 0.0) for stream in streams]
    ends: list[list[float]] = [[] for _ in streams]
    first_turn: list[float | None] = [None] * len(streams)
    stalls = [0.0] * len(streams)
    states = [attrs.evolve(stream, remaining=list(stream.remaining)) for stream in streams]
    waiting = collections.deque(
        i for i, stream in enumerate(states) if not stream.active and stream.remaining
    )
    active = {i for i, stream in enumerate(states) if stream.active and stream.remaining}
    first_cost = measures.first_window_seconds * measures.headroom
    per_audio_second = measures.headroom / measures.capacity
    t = max(now, busy_until)
    limit = now + horizon

    def fill_slots() -> None:
        while waiting and len(active) < measures.slots:
            active.add(waiting.popleft())

    def deadline(i: int) -> float:
        played = states[i].played_until
        return states[i].submitted_at if played is None else played

    def due_at(i: int) -> float:
        """When stream ``i`` may next have a turn."""
        stream = states[i]
        if stream.played_until is None or not stream.paced:
            return stream.starts_at
        return max(stream.starts_at, stream.played_until - measures.ahead_seconds)

    fill_slots()
    while active and t <= limit:
        due = [i for i in active if due_at(i) <= t]
        if not due:
            t = min(due_at(i) for i in active)
            continue
        turn = sorted(due, key=lambda k: (deadline(k), states[k].submitted_at, k))
        turn = turn[: len(measures.batch_speedup)]
        made_by: list[tuple[int, float, bool]] = []
        cost = 0.0
        # Windows are sized to what the most urgent player in the turn can wait for, at
        # what a turn of this many windows costs per audio second.
        turn_rate = per_audio_second * len(turn) / measures.batch_speedup[len(turn) - 1]
        slack = min((p - t for k in turn if (p := states[k].played_until) is not None), default=math.inf)
        for i in turn:
            stream = states[i]
            played = stream.played_until
            starting = played is None and stream.remaining[0] > 1e-9
            if stream.remaining[0] <= 1e-9:  # all made already: it ends as soon as it is read
                made = 0.0
            elif played is None:
                if not ends[i]:
                    first_turn[i] = t
                made = min(stream.remaining[0], measures.first_window_audio)
                cost += first_cost
            else:
                fits_slack = slack * WINDOW_SLACK_SHARE / turn_rate
                made = min(
                    stream.remaining[0], max(LATER_WINDOW_SECONDS / 2, min(LATER_WINDOW_SECONDS, fits_slack))
                )
                cost += made * per_audio_second
            made_by.append((i, made, starting))
        t += cost / measures.batch_speedup[len(turn) - 1]
        for i, made, starting in made_by:
            stream = states[i]
            if starting:
                stream.played_until = t + made
            elif made > 0 and stream.played_until is not None:
                if t > stream.played_until and t <= limit:
                    stalls[i] += t - stream.played_until
                stream.played_until = max(stream.played_until, t) + made
            stream.remaining[0] -= made
            if stream.remaining[0] > 1e-9:
                continue
            ends[i].append(t if t <= limit else math.inf)
            stream.remaining.pop(0)
            stream.played_until = None
            stream.submitted_at = t
            active.discard(i)
            if stream.remaining:
                waiting.append(i)
            fill_slots()
    for i, stream in enumerate(states):
        ends[i] += [math.inf] * len(stream.remaining)
    return [StreamOutcome(*outcome) for outcome in zip(ends, first_turn, stalls, strict=True)]


def predict_ends(
    streams: Sequence[StreamState], measures: EngineMeasures, now: float, horizon: float, busy_until: float
) -> list[list[float]]:
    """For each stream, the predicted end time of each of its responses (current first);
    ``math.inf`` for one that would not end by ``now + horizon``; ``now`` for all when no
    capacity is measured yet (kept: a drain's limit still bounds them)."""
    return [outcome.ends for outcome in replay(streams, measures, now, horizon, busy_until)]


def earliest_start(
    admitted: Sequence[StreamState],
    newcomer_audio: float,
    measures: EngineMeasures,
    now: float,
    horizon: float,
    busy_until: float,
    *,
    max_streams: int,
    first_turn_within: float,
    paced: bool = True,
) -> float | None:
    """The earliest moment (``now`` or later, within ``horizon``) a newcomer of
    ``newcomer_audio`` seconds can start so that the schedule keeps every player fed: it
    adds no stall to the streams ``admitted`` (every one active; those starting later say
    so in ``starts_at``), has none itself that it would not have alone, has its first
    turn within ``first_turn_within`` of its start, and never runs more than
    ``max_streams`` at once. None when no such moment comes within the horizon.

    The moments tried are now and each predicted end of an admitted response: only an
    end frees compute (a stream far ahead of its player frees it too, but briefly).
    """
    everyone = attrs.evolve(measures, slots=len(admitted) + 1)
    base = replay(admitted, everyone, now, horizon, busy_until)
    base_stall = sum(outcome.stall_seconds for outcome in base)
    ends = [outcome.ends[-1] if outcome.ends else now for outcome in base]
    starts = [max(now, stream.starts_at) for stream in admitted]
    # What the newcomer would stall alone (a machine slower than real time): not the others' doing.
    (alone,) = replay(
        [StreamState([newcomer_audio], paced=paced, submitted_at=now)], everyone, now, horizon, now
    )
    candidates = sorted({now, *(end for end in ends if end <= now + horizon)})
    for start in candidates:
        newcomer = StreamState([newcomer_audio], paced=paced, submitted_at=start, starts_at=start)
        *others, mine = replay([*admitted, newcomer], everyone, now, horizon, busy_until)
        lifetime = (start, mine.ends[0])
        if (
            _most_at_once(
                lifetime,
                [(began, o.ends[-1] if o.ends else now) for began, o in zip(starts, others, strict=True)],
            )
            >= max_streams
        ):
            continue
        added = sum(outcome.stall_seconds for outcome in others) - base_stall
        own = mine.stall_seconds - alone.stall_seconds
        soon = mine.first_turn is not None and mine.first_turn - start <= first_turn_within
        if max(added, own) <= STALL_TOLERANCE_SECONDS and soon:
            return start
    return None


def _most_at_once(mine: tuple[float, float], others: Sequence[tuple[float, float]]) -> int:
    """The most of ``others`` running at one moment of ``mine`` (each a [start, end) span)."""
    begin, end = mine
    moments = [begin, *(start for start, _end in others if begin < start < end)]
    return max(sum(1 for start, stop in others if start <= moment < stop) for moment in moments)
