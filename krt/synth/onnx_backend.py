"""Kokoro on onnxruntime: the CPU default, and the only backend that needs no torch.

Default weights are the packaged int8 export (see ``packaged.py``); any Kokoro ONNX
export can be used instead with ``KRT_ONNX_MODEL``. Exports differ in their input
names (``tokens`` vs ``input_ids``) and the dtype of ``speed``, so both are read from
the graph rather than assumed. The graph is cut at load time before its generator
(``onnx_stages.py``), each part a session of its own, so segments are decoded in
windows.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from krt.errors import ModelUnavailableError
from krt.synth import packaged
from krt.synth.onnx_float import NotDequantizable, fp32_generator, return_freed_memory
from krt.synth.onnx_stages import KOKORO_GENERATOR_INPUTS, split_kokoro_graph
from krt.synth.voice_files import load_voice_packs
from krt.synth.voices import with_defaults
from krt.synth.windows import PreparedSegment, WindowRequest, decode_window, decode_windows
from krt.text.g2p import MisakiPhonemizer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from krt.config import Config
    from krt.media.audio import FloatAudio

log = logging.getLogger(__name__)

_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int32)": np.int32}


class OnnxBackend:
    name = "onnx"
    device = "cpu"
    batch_windows = 1
    """A CPU is busy on one window: stacked windows measured slower than one by one."""

    def __init__(self, config: Config) -> None:
        import onnx
        import onnxruntime

        model_config = config.model
        if model_config.onnx_model is not None:
            model_path = model_config.onnx_model
            if not model_path.is_file():
                raise ModelUnavailableError(f"KRT_ONNX_MODEL={model_path} does not exist")
            self.source = f"ONNX file {model_path}"
        else:
            model_path = packaged.packaged_onnx_model(model_config.cache_dir)
            self.source = f"packaged Kokoro-82M int8 ONNX ({model_path})"
        self.vocab = packaged.packaged_vocab()
        if model_config.voices_path is not None:
            packs = load_voice_packs(model_config.voices_path)
        else:
            packs = packaged.packaged_voice_packs()
        self.voices = with_defaults(
            packs, config.voices.female, config.voices.male, packaged.PREFERRED_VOICES
        )
        self._lang_code = model_config.lang_code

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = model_config.cpu_threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        # Memory patterns pre-plan one arena block per input shape; with every segment a
        # new length they only grow. Off, resident memory after a paragraph drops by
        # ~180 MB with no measurable slowdown (the arena itself stays on: off is slower
        # and peaks higher).
        options.enable_mem_pattern = False
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        stages = split_kokoro_graph(onnx.load(str(model_path)))
        generator = stages.generator
        self.generator_form = "int8 as exported"
        if model_config.onnx_generator == "fp32":
            try:
                generator = fp32_generator(generator)
                self.generator_form = "fp32, dequantized at load"
            except NotDequantizable as exc:
                log.warning("onnx: keeping the generator as exported, it cannot be made fp32: %s", exc)
        self._front_end, self._generator = (
            onnxruntime.InferenceSession(
                stage.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
            )
            for stage in (stages.front_end, generator)
        )
        del stages, generator
        return_freed_memory()
        inputs = {i.name: i for i in self._front_end.get_inputs()}
        self._tokens_input = "tokens" if "tokens" in inputs else "input_ids"
        if self._tokens_input not in inputs or "style" not in inputs or "speed" not in inputs:
            raise ModelUnavailableError(
                f"{model_path} is not a Kokoro export: inputs are {sorted(inputs)}, "
                "expected tokens (or input_ids), style, speed"
            )
        self._speed_dtype = _ONNX_DTYPES.get(inputs["speed"].type, np.float32)
        log.info(
            "onnx backend: %s, generator %s, %d threads",
            self.source,
            self.generator_form,
            options.intra_op_num_threads,
        )

    def make_phonemizer(self) -> MisakiPhonemizer:
        return MisakiPhonemizer(self._lang_code)

    def prepare(self, tokens: Sequence[int], style: npt.NDArray[np.float32], speed: float) -> PreparedSegment:
        style_row = np.asarray(style, dtype=np.float32).reshape(1, -1)
        feeds = {
            self._tokens_input: np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style_row,
            "speed": np.array([speed], dtype=self._speed_dtype),
        }
        features, f0, noise, durations = self._front_end.run(None, feeds)
        frames = int(f0.shape[-1]) // 2
        return PreparedSegment(
            frames=frames,
            durations=tuple(int(d) for d in np.asarray(durations).ravel()),
            loudness=noise.reshape(frames, 2).mean(axis=1),
            decoder_inputs=(features, f0, style_row),
        )

    def decode(self, segment: PreparedSegment, start: int, stop: int) -> FloatAudio:
        return decode_window(self._decode_spans, segment, start, stop)

    def decode_windows(self, windows: Sequence[WindowRequest]) -> list[FloatAudio]:
        return decode_windows(self._decode_spans, windows, self.batch_windows)

    def _decode_spans(self, windows: Sequence[WindowRequest]) -> list[FloatAudio]:
        return [self._decode_span(window.segment, window.lo, window.hi) for window in windows]

    def _decode_span(self, segment: PreparedSegment, lo: int, hi: int) -> FloatAudio:
        features, f0, style_row = segment.decoder_inputs
        cut = KOKORO_GENERATOR_INPUTS
        feeds = {
            cut.features: features[:, :, 2 * lo : 2 * hi],
            cut.f0: f0[:, 2 * lo : 2 * hi],
            cut.style: style_row,
        }
        (audio,) = self._generator.run(None, feeds)
        return np.asarray(audio, dtype=np.float32).ravel()
