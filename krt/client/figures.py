"""Pure figures of what a client heard: stalls, percentiles, fairness.

Kept apart from the socket code so that every consumer — the benches' summaries, ``krt
tpm``, tests on hand-made numbers — computes a figure the one same way, and can do so
without a connection, a clock or Trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

STALL_NOISE_FLOOR_S = 0.001
"""Gaps shorter than this are timer noise, not a pause anyone hears."""


@attrs.frozen
class Stalls:
    count: int
    """Pauses a real-time player would have made."""
    seconds: float
    """Their total length."""
    longest: float = 0.0
    """The longest of them: the silence a caller notices most."""


def stalls(schedule: Iterable[tuple[float, float]], noise_floor: float = 0.0) -> Stalls:
    """Pauses of a player fed ``(arrival time, audio seconds)`` pieces in arrival order.

    Playback starts when the first piece arrives and runs in real time; whenever a piece
    arrives after everything before it has been played, the player waits for it.
    """
    count, total, longest = 0, 0.0, 0.0
    played_until: float | None = None
    for arrived, duration in schedule:
        if played_until is None:
            played_until = arrived
        elif arrived > played_until:
            gap = arrived - played_until
            if gap > noise_floor:
                count += 1
                total += gap
                longest = max(longest, gap)
            played_until = arrived
        played_until += duration
    return Stalls(count, total, longest)


AUDIBLE_PCM16 = round(32767 * 10 ** (-50 / 20))
"""-50 dBFS as a PCM16 magnitude: the quietest sample a caller hears."""


def first_audible_sample(pcm: bytes) -> int | None:
    """Index of the first PCM16 sample louder than -50 dBFS, None if there is none."""
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32)) > AUDIBLE_PCM16)
    return int(loud[0]) if loud.size else None


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all shares are equal, 1/n when one stream gets everything."""
    if not values:
        raise ValueError("Jain's index of no streams")
    squares = sum(value * value for value in values)
    if squares == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * squares)
