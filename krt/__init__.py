"""krt: a realtime text-to-speech server around Kokoro-82M."""

from __future__ import annotations

SAMPLE_RATE = 24_000
"""Kokoro's only output rate; every PCM byte krt handles is 24 kHz mono."""

__all__ = ["SAMPLE_RATE"]
