"""What every model backend offers the engine.

A backend is blocking and meant to run in a worker thread. It works in two stages
(see ``windows.py``): ``prepare`` runs the front end on the phoneme tokens of one
segment, and ``decode`` makes the float32 audio (24 kHz) of any frame window of the
prepared segment, so the start of a sentence can leave long before the rest is made and
the engine can interleave windows of several streams. A prepared segment holds only
arrays: dropping it (barge-in) frees everything.

A backend that says it takes more than one window per call (``batch_windows``, on a GPU)
decodes windows of several streams, stacked, in one generator call: what a GPU's width
is for, since one small window keeps it busy launching kernels rather than computing.
Every window's audio is the same whichever windows it was decoded with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np
    import numpy.typing as npt

    from krt.media.audio import FloatAudio
    from krt.synth.voices import VoiceCatalog
    from krt.synth.windows import PreparedSegment, WindowRequest
    from krt.text.g2p import Phonemizer

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

    def prepare(self, tokens: Sequence[int], style: npt.NDArray[np.float32], speed: float) -> PreparedSegment:
        """The front end on one segment of at most MAX_TOKENS tokens."""
        ...

    @property
    def batch_windows(self) -> int:
        """The most windows one model call decodes (1: a window per call). Above 1 the
        decoded spans are bucketed (``windows.SPAN_BUCKET_FRAMES``) so they stack."""
        ...

    def decode(self, segment: PreparedSegment, start: int, stop: int) -> FloatAudio:
        """The audio of frames [start, stop) of ``segment``, plus ``SEAM_SAMPLES`` beyond
        ``stop`` when more of the segment will be heard (see ``windows.window_audio``)."""
        ...

    def decode_windows(self, windows: Sequence[WindowRequest]) -> list[FloatAudio]:
        """The audio of each window, as ``decode`` would make it alone: those with spans
        of one length in one call, ``batch_windows`` at most."""
        ...


def synthesize_whole(
    backend: Backend, tokens: Sequence[int], style: npt.NDArray[np.float32], speed: float
) -> FloatAudio:
    """A segment decoded in one window: the reference a windowed decode is measured against."""
    segment = backend.prepare(tokens, style, speed)
    return backend.decode(segment, 0, segment.frames)
