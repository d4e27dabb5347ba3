"""Voice packs from files an operator points krt at (``KRT_VOICES``, a model directory).

Here rather than in ``krt.synth.voices`` because the Hugging Face layout stores packs as
``.pt`` files, which only torch can read, and only ``krt.synth`` may import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from krt.errors import ModelUnavailableError

if TYPE_CHECKING:
    from pathlib import Path

    from krt.synth.voices import StylePack


def load_voice_packs(path: Path) -> dict[str, StylePack]:
    """Read packs from an ``.npz`` file or a directory of ``.npy``/``.pt`` files.

    ``.pt`` packs (the Hugging Face layout) need torch, so it is imported only then.
    """
    packs: dict[str, StylePack] = {}
    if path.is_file() and path.suffix == ".npz":
        with np.load(path) as archive:
            packs = {name: np.asarray(archive[name], dtype=np.float32) for name in archive.files}
    elif path.is_dir():
        for file in sorted(path.iterdir()):
            if file.suffix == ".npy":
                packs[file.stem] = np.load(file).astype(np.float32)
            elif file.suffix == ".pt":
                import torch

                packs[file.stem] = (
                    torch.load(file, map_location="cpu", weights_only=True).numpy().astype(np.float32)
                )
    else:
        raise ModelUnavailableError(f"voices path {path} is neither an .npz file nor a directory")
    if not packs:
        raise ModelUnavailableError(f"no voice packs (.npz entries, .npy or .pt files) found in {path}")
    for name, pack in packs.items():
        if pack.ndim not in (2, 3) or pack.shape[-1] != 256:
            raise ModelUnavailableError(
                f"voice pack {name!r} in {path} has shape {pack.shape}, expected (510, 1, 256)"
            )
    return packs
