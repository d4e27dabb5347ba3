"""krt: a realtime text-to-speech server around Kokoro-82M."""

from __future__ import annotations

SAMPLE_RATE = 24_000
"""Kokoro's only output rate; every PCM byte krt handles is 24 kHz mono."""
PCM_BYTES_PER_SECOND = 2 * SAMPLE_RATE
"""PCM16 mono at ``SAMPLE_RATE``: how byte counts become seconds of audio."""

__all__ = ["PCM_BYTES_PER_SECOND", "SAMPLE_RATE"]
