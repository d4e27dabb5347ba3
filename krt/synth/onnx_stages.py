"""Kokoro's ONNX graph cut in two: the front end, and the decoder that makes the audio.

The decoder (iSTFTNet) is ~95 % of Kokoro's compute and works on a frame sequence
(600 samples, 25 ms per frame), so decoding frame windows of a segment is how its first
audio can leave long before the segment is done (see ``shared/VOCODING.md``). The cut is
made at load time from the one graph krt already has (the packaged int8 export, or a
user's ``KRT_ONNX_MODEL``), with ``onnx.utils.Extractor``, at the four tensors the
decoder reads: the aligned text features ``asr`` [1, 512, T], the pitch ``F0`` and
noise ``N`` curves [1, 2T], and the style vector. Run one after the other, the two
parts give exactly the full graph's audio.

The front end also hands out the predicted frames per token (``durations``), which say
where the silences are and where a window may be cut.
"""

from __future__ import annotations

import attrs
import onnx
from onnx.utils import Extractor

from krt.errors import ModelUnavailableError


@attrs.frozen
class DecoderInputs:
    """Where the decoder's inputs are in a Kokoro export (the names of the torch export's
    ``/encoder`` outputs, kept by onnxruntime's int8 quantization)."""

    asr: str = "/encoder/MatMul_1_output_0"
    f0: str = "/encoder/Reshape_output_0"
    noise: str = "/encoder/Reshape_1_output_0"
    style: str = "style"
    durations: str = "/encoder/Cast_output_0"
    """Frames per token (rounded, at least 1), as int64: the duration predictor's output."""

    @property
    def names(self) -> list[str]:
        return [self.asr, self.f0, self.noise, self.style]


KOKORO_DECODER_INPUTS = DecoderInputs()


@attrs.frozen
class KokoroStages:
    front_end: onnx.ModelProto
    """tokens, style, speed → asr, F0, N, durations."""
    decoder: onnx.ModelProto
    """asr, F0, N, style → audio."""


def split_kokoro_graph(model: onnx.ModelProto, cut: DecoderInputs = KOKORO_DECODER_INPUTS) -> KokoroStages:
    """The two stages of ``model``; ModelUnavailableError when it is not a Kokoro export
    with these tensors (an export by another tool names them differently)."""
    produced = {output for node in model.graph.node for output in node.output}
    inputs = {graph_input.name for graph_input in model.graph.input}
    missing = [name for name in [*cut.names, cut.durations] if name not in produced and name not in inputs]
    if missing:
        raise ModelUnavailableError(
            f"cannot split this ONNX graph into front end and decoder: no tensor {missing[0]!r} "
            "(it is not the Kokoro export krt knows)"
        )
    outputs = [graph_output.name for graph_output in model.graph.output]
    tokens = "tokens" if "tokens" in inputs else "input_ids"
    extractor = Extractor(model)
    front_end = extractor.extract_model(
        [tokens, cut.style, "speed"], [cut.asr, cut.f0, cut.noise, cut.durations]
    )
    decoder = extractor.extract_model(cut.names, outputs[:1])
    return KokoroStages(front_end, decoder)
