"""Kokoro's own PyTorch ``KModel``: the production path on a GPU.

Weights come from the first source that is available, in this order:
1. ``KRT_MODEL_DIR`` — a local directory laid out like the Hugging Face repo;
2. the hub (``MODEL_NAME``) — only when its files are already cached or the hub
   answers a short connection probe, so an offline machine never waits on it;
3. the packaged int8 export converted once into a KModel checkpoint (WEIGHTS.md).
The log says which one was used; production with hub access should prefer 1 or 2,
since 3 is the int8-rounded model run in fp32.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import numpy.typing as npt

from krt.errors import ModelUnavailableError
from krt.synth import packaged
from krt.synth.voice_files import load_voice_packs
from krt.synth.voices import StylePack, with_defaults
from krt.synth.windows import PreparedSegment, WindowRequest, decode_window, decode_windows
from krt.text.g2p import MisakiPhonemizer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from krt.config import Config
    from krt.media.audio import FloatAudio

log = logging.getLogger(__name__)

HUB_PREFERRED_VOICES = ("af_heart", "am_michael")
CHECKPOINT_NAME = "kokoro-v1_0.pth"
HUB_HOST = "huggingface.co"
HUB_PROBE_SECONDS = 3.0


@attrs.frozen
class WeightSource:
    checkpoint: Path
    kmodel_config: dict[str, Any]
    packs: dict[str, StylePack]
    preferred_voices: tuple[str, str]
    description: str


def _from_directory(directory: Path, description: str) -> WeightSource:
    checkpoint, config_file, voices = (
        directory / CHECKPOINT_NAME,
        directory / "config.json",
        directory / "voices",
    )
    for required in (checkpoint, config_file, voices):
        if not required.exists():
            raise ModelUnavailableError(
                f"{description}: {required} is missing; the directory needs {CHECKPOINT_NAME}, "
                "config.json and voices/*.pt"
            )
    return WeightSource(
        checkpoint=checkpoint,
        kmodel_config=json.loads(config_file.read_text(encoding="utf-8")),
        packs=load_voice_packs(voices),
        preferred_voices=HUB_PREFERRED_VOICES,
        description=description,
    )


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def _from_hub(repo_id: str) -> WeightSource | None:
    """The hub's files, from the local HF cache or a download; None when neither works."""
    from huggingface_hub import snapshot_download

    patterns = ["config.json", CHECKPOINT_NAME, "voices/*.pt"]
    try:
        directory = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        return _from_directory(directory, f"Hugging Face cache of {repo_id} ({directory})")
    except Exception as exc:  # huggingface_hub raises several unrelated types for "not cached"
        log.debug("no complete local copy of %s: %s", repo_id, exc)
    if not _hub_reachable():
        return None
    directory = Path(snapshot_download(repo_id, allow_patterns=patterns))
    return _from_directory(directory, f"Hugging Face hub {repo_id} ({directory})")


def _from_packaged(config: Config) -> WeightSource:
    from krt.synth.kmodel_from_onnx import converted_checkpoint, kmodel_config

    onnx_path = packaged.packaged_onnx_model(config.model.cache_dir)
    vocab = packaged.packaged_vocab()
    return WeightSource(
        checkpoint=converted_checkpoint(onnx_path, config.model.cache_dir),
        kmodel_config=kmodel_config(vocab),
        packs=packaged.packaged_voice_packs(),
        preferred_voices=packaged.PREFERRED_VOICES,
        description=f"packaged Kokoro-82M int8 export converted to a KModel checkpoint ({onnx_path.parent})",
    )


def find_weights(config: Config) -> WeightSource:
    if config.model.model_dir is not None:
        return _from_directory(config.model.model_dir, f"KRT_MODEL_DIR {config.model.model_dir}")
    hub = _from_hub(config.model.model_name) if config.model.model_name else None
    return hub if hub is not None else _from_packaged(config)


def pick_device(requested: str) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchBackend:
    name = "torch"

    def __init__(self, config: Config) -> None:
        import torch
        from kokoro import KModel

        self.device = pick_device(config.device.device)
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ModelUnavailableError(f"KOKORO_DEVICE={self.device} but CUDA is not available")
            if config.device.gpu_memory_fraction:
                torch.cuda.set_per_process_memory_fraction(
                    config.device.gpu_memory_fraction, torch.device(self.device)
                )
        elif config.model.cpu_threads:
            torch.set_num_threads(config.model.cpu_threads)
        weights = find_weights(config)
        if config.model.voices_path is not None:
            weights = attrs.evolve(weights, packs=load_voice_packs(config.model.voices_path))
        self.source = weights.description
        self.vocab = dict(weights.kmodel_config["vocab"])
        self.voices = with_defaults(
            weights.packs, config.voices.female, config.voices.male, weights.preferred_voices
        )
        self._lang_code = config.model.lang_code
        self._model = (
            KModel(
                repo_id=config.model.model_name or "hexgrad/Kokoro-82M",
                config=weights.kmodel_config,
                model=str(weights.checkpoint),
            )
            .to(self.device)
            .eval()
        )
        self._torch = torch
        from krt.synth.seeded_source import SeededSource

        generator = self._model.decoder.generator
        self._source = generator.m_source = SeededSource(generator.m_source)
        # One window a call unless asked: on a CPU stacking measured slower (0.88× at 2,
        # 0.60× at 8 on 2 cores), and on a GPU its gain for short replies is unmeasured.
        self.batch_windows = config.scheduler.batch_windows
        log.info("torch backend on %s, %d windows per call: %s", self.device, self.batch_windows, self.source)

    def make_phonemizer(self) -> MisakiPhonemizer:
        return MisakiPhonemizer(self._lang_code)

    def prepare(self, tokens: Sequence[int], style: npt.NDArray[np.float32], speed: float) -> PreparedSegment:
        """``KModel.forward_with_tokens`` up to the decoder's generator: durations,
        alignment, F0, noise, and the decoder's frame-rate blocks over the whole segment
        (they normalise over time, so run on a window alone they would drift; they cost
        ~7 % of the decoder). Only the generator runs per window."""
        torch, model = self._torch, self._model
        with torch.inference_mode():
            input_ids = torch.tensor([[0, *tokens, 0]], dtype=torch.long, device=self.device)
            ref_s = torch.from_numpy(np.ascontiguousarray(style, dtype=np.float32)).to(self.device)
            ref_s = ref_s.reshape(1, -1)
            positions = input_ids.shape[1]
            input_lengths = torch.full((1,), positions, device=self.device, dtype=torch.long)
            text_mask = torch.zeros((1, positions), dtype=torch.bool, device=self.device)
            bert_dur = model.bert(input_ids, attention_mask=(~text_mask).int())
            d_en = model.bert_encoder(bert_dur).transpose(-1, -2)
            s = ref_s[:, 128:]
            d = model.predictor.text_encoder(d_en, s, input_lengths, text_mask)
            x, _ = model.predictor.lstm(d)
            duration = torch.sigmoid(model.predictor.duration_proj(x)).sum(axis=-1) / speed
            pred_dur = torch.round(duration).clamp(min=1).long().reshape(-1)
            indices = torch.repeat_interleave(torch.arange(positions, device=self.device), pred_dur)
            alignment = torch.zeros((positions, indices.shape[0]), device=self.device)
            alignment[indices, torch.arange(indices.shape[0])] = 1
            alignment = alignment.unsqueeze(0)
            f0, noise = model.predictor.F0Ntrain(d.transpose(-1, -2) @ alignment, s)
            asr = model.text_encoder(input_ids, input_lengths, text_mask) @ alignment
            frames = int(asr.shape[-1])
            loudness = noise.reshape(frames, 2).mean(dim=1).float().cpu().numpy()
            features = self._frame_rate_blocks(asr, f0, noise, ref_s[:, :128])
        seed = zlib.crc32(
            np.asarray(tokens, dtype=np.int64).tobytes() + style.tobytes() + repr(speed).encode()
        )
        return PreparedSegment(
            frames=frames,
            durations=tuple(int(d) for d in pred_dur.cpu().tolist()),
            loudness=loudness,
            decoder_inputs=(features, f0, ref_s[:, :128], seed),
        )

    def _frame_rate_blocks(self, asr: Any, f0: Any, noise: Any, style: Any) -> Any:
        """``kokoro.istftnet.Decoder.forward`` up to its generator: the features the
        generator reads, two columns per frame."""
        torch, decoder = self._torch, self._model.decoder
        f0_features = decoder.F0_conv(f0.unsqueeze(1))
        noise_features = decoder.N_conv(noise.unsqueeze(1))
        x = decoder.encode(torch.cat([asr, f0_features, noise_features], dim=1), style)
        asr_res = decoder.asr_res(asr)
        residual = True
        for block in decoder.decode:
            if residual:
                x = torch.cat([x, asr_res, f0_features, noise_features], dim=1)
            x = block(x, style)
            if block.upsample_type != "none":
                residual = False
        return x

    def decode(self, segment: PreparedSegment, start: int, stop: int) -> FloatAudio:
        return decode_window(self._decode_spans, segment, start, stop, bucketed=self.batch_windows > 1)

    def decode_windows(self, windows: Sequence[WindowRequest]) -> list[FloatAudio]:
        return decode_windows(self._decode_spans, windows, self.batch_windows)

    def _decode_spans(self, windows: Sequence[WindowRequest]) -> list[FloatAudio]:
        """Spans of one length through the decoder's generator, stacked. Its harmonic source
        draws a random initial phase per harmonic and fresh noise on every call; seeding
        each call of a segment alike gives all its windows the same draw, so the harmonics
        do not jump at every seam, and the seed comes from what is said (tokens, voice,
        speed), so the same request always sounds the same. ``SeededSource`` seeds each
        stacked window apart, so its draw is the one it gets decoded alone."""
        torch = self._torch
        features = torch.cat([w.segment.decoder_inputs[0][:, :, 2 * w.lo : 2 * w.hi] for w in windows])
        f0 = torch.cat([w.segment.decoder_inputs[1][:, 2 * w.lo : 2 * w.hi] for w in windows])
        style = torch.cat([w.segment.decoder_inputs[2] for w in windows])
        self._source.seeds = tuple(w.segment.decoder_inputs[3] for w in windows)
        with torch.inference_mode():
            audio = self._model.decoder.generator(features, style, f0).float().cpu().numpy()
        return [np.asarray(row, dtype=np.float32).ravel() for row in audio]
