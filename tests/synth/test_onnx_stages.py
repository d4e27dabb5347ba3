"""The Kokoro graph cut before its generator: the two stages give exactly its audio."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from krt.errors import ModelUnavailableError
from krt.synth import packaged
from krt.synth.onnx_stages import KOKORO_GENERATOR_INPUTS, split_kokoro_graph
from krt.synth.windows import SAMPLES_PER_FRAME
from krt.text.g2p import tokenize

TEXTS = (
    "Hello there.",
    "Your package left our warehouse this morning and should reach you by Friday afternoon at the latest.",
)


def session(model: onnx.ModelProto):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    return onnxruntime.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


@pytest.mark.integration
def test_front_end_then_generator_is_exactly_the_whole_graph(onnx_pipeline, model_cache_dir):
    whole = onnx.load(str(packaged.packaged_onnx_model(model_cache_dir)))
    stages = split_kokoro_graph(whole)
    full, front_end, generator = session(whole), session(stages.front_end), session(stages.generator)
    backend = onnx_pipeline.backend
    # A short segment in one voice and a 20-word one in the blended default male voice:
    # the split is exact or not whatever the length (the 60-word text would add a minute
    # of CI for nothing more).
    for text, voice in ((TEXTS[0], "female"), (TEXTS[1], "male")):
        tokens = tokenize(onnx_pipeline.phonemizer.phonemize(text), backend.vocab)
        style = backend.voices.style(backend.voices.resolve(voice), len(tokens))
        feeds = {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style.astype(np.float32),
            "speed": np.array([1.0], dtype=np.float32),
        }
        (audio,) = full.run(None, feeds)
        features, f0, noise, durations = front_end.run(None, feeds)
        frames = int(durations.sum())
        # The front end also says how many frames each position (pads included) lasts.
        assert durations.size == len(tokens) + 2
        assert features.shape[-1] == f0.shape[-1] == noise.shape[-1] == 2 * frames
        cut = KOKORO_GENERATOR_INPUTS
        (staged,) = generator.run(None, {cut.features: features, cut.f0: f0, cut.style: feeds["style"]})
        # Same operators on the same inputs on the same CPU kernels: bit for bit.
        np.testing.assert_array_equal(staged, audio)
        assert np.asarray(audio).size == frames * SAMPLES_PER_FRAME


def test_a_graph_that_is_not_a_kokoro_export_is_a_clear_error():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["tokens"], ["audio"])],
        "not-kokoro",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("audio", TensorProto.INT64, [1, None])],
    )
    with pytest.raises(ModelUnavailableError, match="cannot split this ONNX graph before its generator"):
        split_kokoro_graph(helper.make_model(graph))
