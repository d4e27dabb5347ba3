"""Kokoro's harmonic source, seeded per window, so a window decodes alike alone or stacked.

The generator's source module (``m_source``) draws a random initial phase per harmonic and
fresh noise from torch's global generator on every call. krt seeds each call from what
is said (see ``TorchBackend._decode_spans``), so all windows of a segment share one draw
and the harmonics do not jump at the seams. Seeded once for a stack of windows, each
window's draw would depend on which windows it was stacked with; :class:`SeededSource`
runs the source once per window instead, each after its own seed. The source is a few
small operations per window; the generator's convolutions after it run stacked.
"""

from __future__ import annotations

from typing import Any

import torch


class SeededSource(torch.nn.Module):
    """Stands in for a generator's ``m_source``; set ``seeds`` (one per stacked window)
    before each call of the generator."""

    def __init__(self, source: torch.nn.Module) -> None:
        super().__init__()
        self.source = source
        self.seeds: tuple[int, ...] = ()

    def forward(self, f0: torch.Tensor) -> tuple[Any, ...]:
        if len(self.seeds) != f0.shape[0]:
            raise RuntimeError(f"{len(self.seeds)} seeds for a stack of {f0.shape[0]} windows")
        parts = []
        for index, seed in enumerate(self.seeds):
            torch.manual_seed(seed)
            parts.append(self.source(f0[index : index + 1]))
        return tuple(torch.cat(outputs, dim=0) for outputs in zip(*parts, strict=True))
