"""What "intelligible speech" means in our tests, shared by every real backend."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

INTELLIGIBILITY_SENTENCES = (
    "Thanks for calling, how can I help you today?",
    "Your package will arrive on Friday morning.",
    "Please hold on while I check that for you.",
    "The weather today is sunny with a light breeze.",
    "Sorry, I did not catch that, could you say it again?",
    "Let me transfer you to a specialist.",
)
MAX_MEAN_WORD_ERROR_RATE = 0.2
"""Mean WER over the sentences above, as Whisper tiny.en hears them (measured on the
packaged weights: 0.00–0.03 for the default female voice, ≈0.13 for the default male)."""


def words_of(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words, divided by the reference length."""
    ref, hyp = words_of(reference), words_of(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref_word != hyp_word))
    return row[-1] / max(1, len(ref))


def mean_word_error_rate(speak: Callable[[str], bytes], transcribe: Callable[[bytes], str]) -> float:
    errors = [
        word_error_rate(sentence, transcribe(speak(sentence))) for sentence in INTELLIGIBILITY_SENTENCES
    ]
    return sum(errors) / len(errors)


def assert_sounds_like_speech(pcm: bytes, words: int) -> None:
    """Plausible length for the word count, audible, no NaN, no clipping."""
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767.0
    seconds = audio.size / 24000
    assert 0.15 * words <= seconds <= 0.9 * words + 1.0, f"{seconds:.2f} s for {words} words"
    assert not np.isnan(audio).any()
    assert float(np.sqrt(np.mean(audio**2))) > 0.01, "audio is (nearly) silent"
    assert np.mean(np.abs(audio) >= 0.999) < 1e-4, "audio is clipping"


def quiet_runs_ms(pcm: bytes, threshold: float = 10 ** (-50 / 20)) -> tuple[float, list[float], float]:
    """Silence a caller hears, at -50 dBFS: before the first sound, between sounds (the
    runs, longest first) and after the last sound, in milliseconds."""
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767.0
    loud = np.flatnonzero(np.abs(audio) > threshold)
    gaps = sorted((np.diff(loud) - 1) / 24, reverse=True)
    return loud[0] / 24, [float(gap) for gap in gaps], (audio.size - loud[-1] - 1) / 24
