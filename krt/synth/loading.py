"""Choose and build the backend named by ``KRT_BACKEND``.

``auto`` means torch on a CUDA machine and onnx elsewhere. Deciding that must not cost a
CPU-only server the ~300 MB of importing torch, so torch is imported only when an NVIDIA
driver is visible at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from krt.config import Config
    from krt.synth.backend import Backend

log = logging.getLogger(__name__)

NVIDIA_DRIVER_MARKERS = (Path("/proc/driver/nvidia/version"), Path("/dev/nvidiactl"))


def cuda_available() -> bool:
    if not any(marker.exists() for marker in NVIDIA_DRIVER_MARKERS):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_backend_name(config: Config) -> str:
    choice = config.model.backend
    if choice != "auto":
        return choice
    if config.device.device:
        return "torch" if config.device.device.startswith("cuda") else "onnx"
    return "torch" if cuda_available() else "onnx"


def load_backend(config: Config) -> Backend:
    """Load weights and voices for the configured backend; ModelUnavailableError says what is missing."""
    name = resolve_backend_name(config)
    if name == "fake":
        from krt.synth.fake_backend import FakeBackend

        return FakeBackend(
            config.model.fake_compute_ratio,
            config.voices.female,
            config.voices.male,
            stall_word=config.model.fake_stall_word,
            batch_windows=config.scheduler.batch_windows,
            launch_seconds=config.model.fake_launch_seconds,
        )
    if name == "torch":
        from krt.synth.torch_backend import TorchBackend

        return TorchBackend(config)
    from krt.synth.onnx_backend import OnnxBackend

    return OnnxBackend(config)
