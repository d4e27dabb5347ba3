"""Voice packs and the names clients use for them.

Clients speak of ``female`` and ``male``; operators map those to concrete Kokoro voice
ids. Which ids exist depends on the weight source (the hub has ``af_heart`` and
friends, the packaged export only five voices), so the catalog is built by the backend
that loaded the weights and the defaults follow it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
import numpy as np
import numpy.typing as npt

from krt.errors import ModelUnavailableError, SpeechError

if TYPE_CHECKING:
    from pathlib import Path

StylePack = npt.NDArray[np.float32]
"""(510, 1, 256): one style vector per phoneme-sequence length."""

LOGICAL_VOICES = ("female", "male")


@attrs.frozen
class VoiceCatalog:
    """The voices a backend can speak, and what ``female``/``male`` mean for it."""

    packs: Mapping[str, StylePack]
    female: str
    male: str

    def __attrs_post_init__(self) -> None:
        for role, voice in (("female", self.female), ("male", self.male)):
            if voice not in self.packs:
                raise ModelUnavailableError(
                    f"the {role} voice {voice!r} is not among the loaded voices "
                    f"({', '.join(sorted(self.packs))}); set DEFAULT_VOICE_{role.upper()}"
                )

    @property
    def names(self) -> list[str]:
        return sorted(self.packs)

    def resolve(self, requested: str | None) -> str:
        """A concrete voice id for ``female``/``male``/an id; SpeechError lists the valid ones."""
        name = (requested or "female").strip()
        if name == "female":
            return self.female
        if name == "male":
            return self.male
        if name in self.packs:
            return name
        raise SpeechError(
            "invalid_voice",
            f"unknown voice {name!r}; use female, male or one of: {', '.join(self.names)}",
        )

    def style(self, voice: str, token_count: int) -> npt.NDArray[np.float32]:
        """The (1, 256) style row Kokoro expects: row ``token_count - 1`` of the pack."""
        pack = self.packs[voice]
        row = min(max(token_count, 1), pack.shape[0]) - 1
        return np.asarray(pack[row], dtype=np.float32).reshape(1, -1)


def with_defaults(
    packs: Mapping[str, StylePack], female: str, male: str, preferred: tuple[str, str]
) -> VoiceCatalog:
    """A catalog whose unset defaults fall back to the weight source's preferred voices."""
    return VoiceCatalog(packs=dict(packs), female=female or preferred[0], male=male or preferred[1])


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
