"""Kokoro's ONNX graph cut in two: everything up to the vocoder's generator, and the generator.

The generator (iSTFTNet's upsampling stack) is ~90 % of Kokoro's compute and works on a
frame sequence (600 samples, 25 ms per frame), so decoding frame windows of a segment is
how its first audio can leave long before the segment is done (see
``shared/VOCODING.md``). The cut is made at load time from the one graph krt already
has (the packaged int8 export, or a user's ``KRT_ONNX_MODEL``), with
``onnx.utils.Extractor``, at the tensors the generator reads: the output of the
decoder's last frame-rate block [1, 512, 2T], the pitch curve ``F0`` [1, 2T] and the
style vector. Run one after the other, the two parts give exactly the full graph's audio.

Why not cut at the decoder's own inputs: the decoder's frame-rate blocks normalise each
channel over the whole time axis, so a window that runs them on its own frames drifts in
timbre from the whole decode. They cost ~7 % of the decoder, so the first stage runs them
once over the whole segment and only the generator works in windows.

The first stage also hands out the predicted frames per token (``durations``), which say
where the silences are and where a window may be cut, and the noise curve ``N`` [1, 2T],
which says where the voice is quiet.
"""

from __future__ import annotations

import attrs
import onnx
from onnx.utils import Extractor

from krt.errors import ModelUnavailableError


@attrs.frozen
class GeneratorInputs:
    """Where the generator's inputs are in a Kokoro export (the names of the torch
    export's tensors, kept by onnxruntime's int8 quantization)."""

    features: str = "/decoder/decoder/decode.3/Div_4_output_0"
    """The last frame-rate block's output, two columns per frame."""
    f0: str = "/encoder/Reshape_output_0"
    noise: str = "/encoder/Reshape_1_output_0"
    style: str = "style"
    durations: str = "/encoder/Cast_output_0"
    """Frames per token (rounded, at least 1), as int64: the duration predictor's output."""

    @property
    def generator_reads(self) -> list[str]:
        return [self.features, self.f0, self.style]

    @property
    def front_end_makes(self) -> list[str]:
        return [self.features, self.f0, self.noise, self.durations]


KOKORO_GENERATOR_INPUTS = GeneratorInputs()


@attrs.frozen
class KokoroStages:
    front_end: onnx.ModelProto
    """tokens, style, speed → features, F0, N, durations."""
    generator: onnx.ModelProto
    """features, F0, style → audio."""


def split_kokoro_graph(
    model: onnx.ModelProto, cut: GeneratorInputs = KOKORO_GENERATOR_INPUTS
) -> KokoroStages:
    """The two stages of ``model``; ModelUnavailableError when it is not a Kokoro export
    with these tensors (an export by another tool names them differently)."""
    produced = {output for node in model.graph.node for output in node.output}
    inputs = {graph_input.name for graph_input in model.graph.input}
    missing = [name for name in [*cut.front_end_makes, cut.style] if name not in produced | inputs]
    if missing:
        raise ModelUnavailableError(
            f"cannot split this ONNX graph before its generator: no tensor {missing[0]!r} "
            "(it is not the Kokoro export krt knows)"
        )
    outputs = [graph_output.name for graph_output in model.graph.output]
    tokens = "tokens" if "tokens" in inputs else "input_ids"
    extractor = Extractor(model)
    front_end = extractor.extract_model([tokens, cut.style, "speed"], cut.front_end_makes)
    generator = extractor.extract_model(cut.generator_reads, outputs[:1])
    return KokoroStages(front_end, generator)
