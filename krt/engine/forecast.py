"""When each accepted response will end, predicted by replaying the scheduler's rules.

A drain needs to know, at the signal, which accepted responses can still end within
``KRT_DRAIN_SECONDS``: those it keeps, the others it refuses at once so their clients
resend them elsewhere now rather than lose them at the limit. The answer is a short
simulation of the engine's own schedule, on its own measurements, from its present state:

- a turn is one window of one stream, given to the earliest deadline among the streams
  that may have one (a stream with no audio yet is due at once; a paced one is not
  computed more than ``AHEAD_SECONDS`` ahead of its player);
- a response's first window costs the measured first-window compute and makes the
  measured first-window audio; later windows cost their audio / the measured capacity;
- at most ``slots`` streams are active; a stream whose response ends hands its slot to
  the oldest waiting stream, and its own next response (queued behind it on the same
  socket) waits at the back like any newcomer, as the scheduler does;
- a response ends when its last window is made (a client that reads gets it at once).

Costs are inflated by the same headroom admission keeps (``CAPACITY_HEADROOM``): the
machine drifts, and a response kept that then misses the limit is cut off, which is worse
for its caller than a refusal at the signal.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Sequence

LATER_WINDOW_SECONDS = 2.0
"""Audio of one later window in the replay; only the granularity of pacing depends on it
(a window's cost is linear in its audio)."""


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


def predict_ends(
    streams: Sequence[StreamState], measures: EngineMeasures, now: float, horizon: float, busy_until: float
) -> list[list[float]]:
    """For each stream, the predicted end time of each of its responses (current first);
    ``math.inf`` for one that would not end by ``now + horizon``. ``busy_until`` is when
    the model thread will be free of the window in progress. With no capacity measured
    yet there is nothing to predict with: every response is given ``now`` (kept; a
    drain's limit still bounds it)."""
    ends: list[list[float]] = [[] for _ in streams]
    if measures.capacity <= 0:
        return [[now] * len(stream.remaining) for stream in streams]
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
        played = states[i].played_until
        if played is None or not states[i].paced:
            return -math.inf
        return played - measures.ahead_seconds

    fill_slots()
    while active and t <= limit:
        due = [i for i in active if due_at(i) <= t]
        if not due:
            t = min(due_at(i) for i in active)
            continue
        i = min(due, key=lambda k: (deadline(k), states[k].submitted_at, k))
        stream = states[i]
        if stream.remaining[0] <= 1e-9:  # all made already: it ends as soon as it is read
            made = 0.0
        elif stream.played_until is None:
            made = min(stream.remaining[0], measures.first_window_audio)
            t += first_cost
            stream.played_until = t + made
        else:
            made = min(stream.remaining[0], LATER_WINDOW_SECONDS)
            t += made * per_audio_second
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
    return ends
