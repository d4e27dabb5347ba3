"""A deterministic stand-in for Kokoro, for fast tests of everything above the engine.

It works in Kokoro's two stages: ``prepare`` gives per-token durations (a silent lead
and tail around the tokens, as Kokoro's padding positions), and ``decode`` makes the
speech-shaped audio (a voiced buzz per phoneme with a syllable envelope, silence at
spaces and punctuation) of any frame window, the same samples however the windows are
cut. It can pretend to compute for a chosen fraction of the audio it decodes, so
scheduling and streaming behave as with a real model without loading one; with a launch
cost per call and several windows per call it costs like a GPU (a fixed cost per model
call, a small one per window in it), so batching is tested and shown without one. Never
the default: it has to be asked for with ``KRT_BACKEND=fake``.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import attrs
import numpy as np
import numpy.typing as npt

from krt import SAMPLE_RATE
from krt.synth.voices import VoiceCatalog
from krt.synth.windows import SAMPLES_PER_FRAME, PreparedSegment, WindowRequest, decode_window, decode_windows
from krt.text.g2p import PhonemeWord

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from krt.media.audio import FloatAudio

FRAMES_PER_TOKEN = 3
"""Decoder frames per token at speed 1 (75 ms), about Kokoro's average."""
SECONDS_PER_TOKEN = FRAMES_PER_TOKEN * SAMPLES_PER_FRAME / SAMPLE_RATE
LEAD_FRAMES = 4
"""Silent frames of the leading padding position (Kokoro's are ~14)."""
TAIL_FRAMES = 6
"""Silent frames of the trailing padding position (Kokoro's are ~20)."""
PAUSE_SYMBOLS = ",.;:!?—…"
FAKE_VOICES = {"fake_female": 210.0, "fake_male": 115.0}
"""Voice name → fundamental frequency (Hz); the style vector carries it to the decoder."""


class SpelledPhonemizer:
    """Lower-cased text used as its own "phonemes": no spaCy, no lexicon, instant."""

    def phonemize(self, text: str) -> str:
        return " ".join(text.lower().split())

    def phonemize_words(self, text: str) -> list[PhonemeWord]:
        """A word per whitespace-separated piece, its phonemes those ``phonemize`` gives
        (a subclass that changes ``phonemize`` changes these too)."""
        spelled = self.phonemize(text).split(" ")
        words = text.split()
        if len(spelled) != len(words) or not text.strip():
            return [PhonemeWord(text.strip(), self.phonemize(text))] if text.strip() else []
        return [
            PhonemeWord(word, phonemes, " " if index < len(words) - 1 else "")
            for index, (word, phonemes) in enumerate(zip(words, spelled, strict=True))
        ]


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


@attrs.frozen(eq=False)
class FakeFrames:
    """The fake decoder's inputs: per frame, its token and where that token's frames are."""

    token: npt.NDArray[np.int64]
    token_start: npt.NDArray[np.int64]
    token_frames: npt.NDArray[np.int64]
    pitch: float


class FakeBackend:
    name = "fake"
    device = "cpu"
    source = "synthetic (fake backend)"

    def __init__(
        self,
        compute_ratio: float = 0.0,
        female: str = "",
        male: str = "",
        *,
        stall_word: str = "",
        batch_windows: int = 1,
        launch_seconds: float = 0.0,
    ) -> None:
        self.compute_ratio = compute_ratio
        self.batch_windows = max(1, batch_windows)
        self.launch_seconds = launch_seconds
        """Compute every model call costs however little it decodes (a GPU's kernel launches)."""
        self.stall_word = stall_word.lower()
        """A segment with this word blocks its model call for good (``KRT_FAKE_STALL_WORD``):
        what a drain must not wait on forever."""
        self.vocab: Mapping[str, int] = _fake_vocab()
        self._symbols = {token: symbol for symbol, token in self.vocab.items()}
        self._silent_ids = {self.vocab[s] for s in PAUSE_SYMBOLS} | {self.vocab[" "], 0}
        self.voices = VoiceCatalog(
            packs=_fake_packs(), female=female or "fake_female", male=male or "fake_male"
        )
        self.segments_synthesized = 0
        """Segments prepared: how far ahead of the listener synthesis got."""

    def make_phonemizer(self) -> SpelledPhonemizer:
        return SpelledPhonemizer()

    def prepare(self, tokens: Sequence[int], style: npt.NDArray[np.float32], speed: float) -> PreparedSegment:
        """Kokoro's shape: a silent lead and tail around about ``FRAMES_PER_TOKEN / speed``
        frames per token (punctuation and spaces silent), rounded so the total follows
        the speed exactly."""
        spoken = "".join(self._symbols.get(token, "") for token in tokens).split()
        if self.stall_word and self.stall_word in (word.strip(PAUSE_SYMBOLS + "'\"()-") for word in spoken):
            threading.Event().wait()  # stuck for good, as a model call can be
        ends = np.maximum(np.round(np.arange(1, len(tokens) + 1) * FRAMES_PER_TOKEN / speed), 1)
        per_token = np.diff(ends, prepend=0).clip(min=1).astype(int)
        durations = (LEAD_FRAMES, *(int(d) for d in per_token), TAIL_FRAMES)
        ids = np.array([0, *tokens, 0], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(durations)[:-1]])
        token = np.repeat(ids, durations)
        token_start, token_frames = np.repeat(starts, durations), np.repeat(durations, durations)
        position = (np.arange(token.size) - token_start + 0.5) / token_frames
        silent = np.isin(token, list(self._silent_ids))
        loudness = np.where(silent, 0.0, np.sin(np.pi * position) ** 2).astype(np.float32)
        self.segments_synthesized += 1
        frames = FakeFrames(token, token_start, token_frames, float(style.ravel()[0]) or 150.0)
        return PreparedSegment(int(token.size), durations, loudness, frames)

    def decode(self, segment: PreparedSegment, start: int, stop: int) -> FloatAudio:
        return decode_window(self._decode_spans, segment, start, stop, bucketed=self.batch_windows > 1)

    def decode_windows(self, windows: Sequence[WindowRequest]) -> list[FloatAudio]:
        return decode_windows(self._decode_spans, windows, self.batch_windows)

    def call_seconds(self, windows: Sequence[WindowRequest]) -> float:
        """What one model call on these spans costs: ``launch_seconds``, plus
        ``compute_ratio`` of the duration of every span decoded (context included), as a
        model that runs at ``1/compute_ratio`` × realtime on each window."""
        decoded = sum(window.span_frames for window in windows) * SAMPLES_PER_FRAME / SAMPLE_RATE
        return self.launch_seconds + decoded * self.compute_ratio if windows else 0.0

    def _decode_spans(self, windows: Sequence[WindowRequest]) -> list[FloatAudio]:
        audio = [self._span_audio(window.segment, window.lo, window.hi) for window in windows]
        self.compute(self.call_seconds(windows), windows)
        return audio

    def compute(self, seconds: float, windows: Sequence[WindowRequest]) -> None:
        """Spend ``seconds`` of compute on a call decoding ``windows`` (sleeps; a test's
        fake may advance a virtual clock instead)."""
        if seconds > 0:
            time.sleep(seconds)

    def _span_audio(self, segment: PreparedSegment, lo: int, hi: int) -> FloatAudio:
        frames: FakeFrames = segment.decoder_inputs
        samples = np.arange(lo * SAMPLES_PER_FRAME, hi * SAMPLES_PER_FRAME)
        frame = samples // SAMPLES_PER_FRAME
        token = frames.token[frame]
        token_samples = frames.token_frames[frame] * SAMPLES_PER_FRAME
        within = (samples - frames.token_start[frame] * SAMPLES_PER_FRAME) / token_samples
        envelope = np.sin(np.pi * within) ** 2
        f0 = frames.pitch * (1.0 + 0.03 * ((token % 7) - 3))
        t = samples / SAMPLE_RATE
        voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        audio = np.where(np.isin(token, list(self._silent_ids)), 0.0, 0.25 * voiced * envelope)
        return audio.astype(np.float32)
