"""What every model backend offers the engine.

A backend is blocking and meant to run in a worker thread. It turns the phoneme tokens
of one segment into audio, handed out as an iterator of float32 chunks at 24 kHz, so a
backend that vocodes in windows can let the start of a segment leave before the rest
is computed. The caller may stop iterating at any chunk (barge-in); a backend must not
hold resources across ``next`` calls that would leak when that happens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    import numpy as np
    import numpy.typing as npt

    from krt.audio import FloatAudio
    from krt.g2p import Phonemizer
    from krt.voices import VoiceCatalog

MAX_TOKENS = 510
"""Kokoro's context is 512 positions, two of which are the padding zeros."""


class Backend(Protocol):
    @property
    def name(self) -> str:
        """onnx, torch or fake."""
        ...

    @property
    def device(self) -> str:
        """Where inference runs (cpu, cuda:0)."""
        ...

    @property
    def source(self) -> str:
        """Where the weights came from, in words, for the log and /readyz."""
        ...

    @property
    def vocab(self) -> Mapping[str, int]: ...

    @property
    def voices(self) -> VoiceCatalog: ...

    def make_phonemizer(self) -> Phonemizer:
        """The G2P this backend's tokens expect (the fake one skips spaCy to stay fast)."""
        ...

    def synthesize(
        self, tokens: Sequence[int], style: npt.NDArray[np.float32], speed: float
    ) -> Iterator[FloatAudio]:
        """Audio for one segment of at most MAX_TOKENS tokens, in one or more chunks."""
        ...
