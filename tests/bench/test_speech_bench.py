"""``krt bench speech``: what it measures a voice by."""

from __future__ import annotations

import numpy as np
import pytest

from krt.bench.speech_bench import median_f0_hz


def _tone(hz: float, seconds: float = 1.0, rate: int = 24_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * hz * k * t) / k for k in range(1, 6))  # a voiced sound has harmonics
    return (0.3 * wave / np.max(np.abs(wave)) * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("hz", [95.0, 124.0, 210.0, 320.0])
def test_the_pitch_of_a_voiced_sound_is_found(hz):
    assert median_f0_hz(_tone(hz)) == pytest.approx(hz, rel=0.03)


def test_silence_has_no_pitch():
    assert np.isnan(median_f0_hz(bytes(48_000)))
