"""A deterministic stand-in for Kokoro, for fast tests of everything above the engine.

It produces speech-shaped audio (a voiced buzz per phoneme with a syllable envelope,
pauses at punctuation) whose length follows the token count and speed the way Kokoro's
does, and it can pretend to compute for a chosen fraction of the audio's duration, so
scheduling and streaming behave as with a real model without loading one. Never the
default: it has to be asked for with ``KRT_BACKEND=fake``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from krt import SAMPLE_RATE
from krt.voices import VoiceCatalog

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from krt.audio import FloatAudio

SECONDS_PER_TOKEN = 0.065
PAUSE_SYMBOLS = ",.;:!?—…"
FAKE_VOICES = {"fake_female": 210.0, "fake_male": 115.0}
"""Voice name → fundamental frequency (Hz); the style vector carries it to synthesize."""
CHUNK_SECONDS = 0.5


class SpelledPhonemizer:
    """Lower-cased text used as its own "phonemes": no spaCy, no lexicon, instant."""

    def phonemize(self, text: str) -> str:
        return " ".join(text.lower().split())


def _fake_vocab() -> dict[str, int]:
    symbols = " abcdefghijklmnopqrstuvwxyz0123456789" + PAUSE_SYMBOLS + "'\"()-"
    return {symbol: index + 1 for index, symbol in enumerate(symbols)}


def _fake_packs() -> dict[str, npt.NDArray[np.float32]]:
    packs = {}
    for name, pitch in FAKE_VOICES.items():
        pack = np.zeros((510, 1, 256), dtype=np.float32)
        pack[..., 0] = pitch
        packs[name] = pack
    return packs


class FakeBackend:
    name = "fake"
    device = "cpu"
    source = "synthetic (fake backend)"

    def __init__(self, compute_ratio: float = 0.0, female: str = "", male: str = "") -> None:
        self.compute_ratio = compute_ratio
        self.vocab: Mapping[str, int] = _fake_vocab()
        self._pause_ids = {self.vocab[s] for s in PAUSE_SYMBOLS}
        self._space_id = self.vocab[" "]
        self.voices = VoiceCatalog(
            packs=_fake_packs(), female=female or "fake_female", male=male or "fake_male"
        )
        self.segments_synthesized = 0

    def make_phonemizer(self) -> SpelledPhonemizer:
        return SpelledPhonemizer()

    def _token_audio(self, token: int, pitch: float, samples: int, phase: float) -> FloatAudio:
        if token in self._pause_ids or token == self._space_id:
            return np.zeros(samples, dtype=np.float32)
        t = np.arange(samples, dtype=np.float32) / SAMPLE_RATE
        f0 = pitch * (1.0 + 0.03 * ((token % 7) - 3))
        voiced = sum(np.sin(2 * np.pi * f0 * k * t + phase) / k for k in range(1, 6))
        envelope = np.sin(np.pi * np.arange(samples, dtype=np.float32) / samples) ** 2
        return (0.25 * voiced * envelope).astype(np.float32)

    def synthesize(
        self, tokens: Sequence[int], style: npt.NDArray[np.float32], speed: float
    ) -> Iterator[FloatAudio]:
        """Audio of ``SECONDS_PER_TOKEN / speed`` per token, in half-second chunks.

        With ``compute_ratio`` set, each chunk is released only after sleeping that
        fraction of its duration, like a model that runs at ``1/ratio`` × realtime.
        """
        pitch = float(style.ravel()[0]) or 150.0
        per_token = max(1, round(SECONDS_PER_TOKEN / speed * SAMPLE_RATE))
        audio = np.concatenate(
            [self._token_audio(token, pitch, per_token, 0.7 * i) for i, token in enumerate(tokens)]
            or [np.zeros(0, dtype=np.float32)]
        )
        self.segments_synthesized += 1
        step = round(CHUNK_SECONDS * SAMPLE_RATE)
        for start in range(0, max(audio.size, 1), step):
            chunk = audio[start : start + step]
            if self.compute_ratio:
                time.sleep(chunk.size / SAMPLE_RATE * self.compute_ratio)
            yield chunk
