"""The real Kokoro-82M model (packaged int8 export) on onnxruntime, with misaki G2P: real speech, checked by ASR."""

from __future__ import annotations

import itertools

import attrs
import numpy as np
import pytest

from krt.engine.pipeline import SpeechPipeline
from krt.errors import ModelUnavailableError, SpeechError
from krt.synth import packaged
from krt.synth.backend import MAX_TOKENS
from krt.synth.onnx_backend import OnnxBackend
from krt.synth.onnx_float import fp32_generator
from krt.synth.onnx_stages import split_kokoro_graph
from krt.text.g2p import tokenize
from tests.speech_checks import (
    MAX_RAW_WORD_ERROR_RATE,
    MAX_WINDOWED_MEL_DB,
    MAX_WORD_ERROR_RATE_ABOVE_RAW,
    WINDOW_TEXTS,
    assert_sounds_like_speech,
    mel_distance_db,
    paired_word_error_rates,
    quiet_runs_ms,
    windowed_against_whole,
)

pytestmark = pytest.mark.integration


def test_defaults_follow_the_packaged_weights(onnx_pipeline):
    voices = onnx_pipeline.backend.voices
    assert (voices.female, voices.male) == ("jf_gongitsune", "jm_kumo(4)+jf_gongitsune(1)")
    assert "packaged" in onnx_pipeline.backend.source


def test_the_generator_runs_in_fp32_and_sounds_like_the_int8_graph(onnx_pipeline, real_config):
    """The default generator is the packaged int8 one dequantized at load (faster on a
    CPU without VNNI, see ``onnx_float``); ``KRT_ONNX_GENERATOR=int8`` keeps it as
    exported. Their audio of the same window differs by what the model's own run-to-run
    noise does (torch's two decodes: 0.3-0.6 dB), not by a different voice."""
    fp32 = onnx_pipeline.backend
    assert fp32.generator_form.startswith("fp32")
    int8 = OnnxBackend(
        attrs.evolve(real_config, model=attrs.evolve(real_config.model, onnx_generator="int8"))
    )
    assert int8.generator_form.startswith("int8")
    tokens = tokenize(onnx_pipeline.phonemizer.phonemize(WINDOW_TEXTS[1]), fp32.vocab)
    style = fp32.voices.style(fp32.voices.resolve("male"), len(tokens))
    segment = fp32.prepare(tokens, style, 1.0)
    ours, theirs = fp32.decode(segment, 40, 120), int8.decode(segment, 40, 120)
    assert ours.size == theirs.size
    assert mel_distance_db(ours, theirs) < 1.0
    assert mel_distance_db(ours, np.roll(theirs, 4800)) > 3.0  # the measure tells other audio apart


def test_the_fp32_generator_has_no_integer_op_and_only_2d_convolutions(model_cache_dir):
    import onnx

    generator = split_kokoro_graph(onnx.load(str(packaged.packaged_onnx_model(model_cache_dir)))).generator
    integer = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
    assert integer & {node.op_type for node in generator.graph.node}
    made = fp32_generator(generator)
    assert not integer & {node.op_type for node in made.graph.node}
    kernels = {tensor.name: len(tensor.dims) for tensor in made.graph.initializer}
    convolutions = [node for node in made.graph.node if node.op_type == "Conv"]
    assert convolutions and all(kernels[node.input[1]] == 4 for node in convolutions)


def test_speech_is_plausible_audible_and_unclipped(onnx_pipeline):
    text = "Hello there. This is a short demonstration of the Kokoro engine."
    for voice in ("female", "male"):
        pcm = b"".join(onnx_pipeline.speak(text, voice))
        assert_sounds_like_speech(pcm, words=len(text.split()))


def test_speech_starts_at_once_and_sentences_are_one_pause_apart(onnx_pipeline, real_config):
    text = "Hello there. How can I help you today?"

    def pipeline_with(**segments: object) -> SpeechPipeline:
        config = attrs.evolve(real_config, segments=attrs.evolve(real_config.segments, **segments))
        return SpeechPipeline(onnx_pipeline.backend, config, onnx_pipeline.phonemizer)

    raw_lead, raw_gaps, raw_tail = quiet_runs_ms(b"".join(pipeline_with(trim_silence=False).speak(text)))
    assert raw_lead > 250 and raw_tail > 350  # what Kokoro itself puts around speech
    lead, gaps, tail = quiet_runs_ms(b"".join(onnx_pipeline.speak(text)))
    assert lead <= 60  # the default: the first sound within LEAD_PAD_SAMPLES
    assert tail <= 40  # and the response ends on its last sound
    assert 350 <= gaps[0] <= 350 + 80  # SENTENCE_PAUSE_MS, the 60 ms lead pad and the soft onset
    assert raw_gaps[0] > gaps[0] + 250  # Kokoro's own break: a tail and a lead, ~0.8 s
    _lead, own, _tail = quiet_runs_ms(b"".join(pipeline_with(sentence_pause_ms=None).speak(text)))
    assert own[0] == pytest.approx(raw_gaps[0], abs=1)  # empty: the model's own break


def test_speed_changes_duration(onnx_pipeline):
    text = "We will be there in about ten minutes."
    normal = sum(len(c) for c in onnx_pipeline.speak(text, speed=1.0))
    fast = sum(len(c) for c in onnx_pipeline.speak(text, speed=2.0))
    assert 0.35 < fast / normal < 0.7


@pytest.mark.longest
def test_speech_through_krt_is_as_intelligible_as_the_raw_model(onnx_pipeline, transcribe):
    raw, ours = paired_word_error_rates(onnx_pipeline, transcribe)
    assert raw <= MAX_RAW_WORD_ERROR_RATE
    assert ours <= raw + MAX_WORD_ERROR_RATE_ABOVE_RAW, f"krt {ours:.3f} against the raw model's {raw:.3f}"


def test_what_g2p_makes_of_a_long_number_is_bounded_in_model_tokens(onnx_pipeline, real_config):
    """Forty six-digit numbers are short words, but English reads each as ~50 phonemes:
    the token budget ends the response before the model spends anything on them, after
    the sentence that fits was spoken."""
    config = attrs.evolve(real_config, segments=attrs.evolve(real_config.segments, max_utterance_tokens=200))
    pipeline = SpeechPipeline(onnx_pipeline.backend, config)
    rendering = pipeline.rendering(pipeline.plan("Here it comes. " + " ".join(["999999"] * 40) + "."))
    spoken = []
    with pytest.raises(SpeechError) as caught:
        spoken.extend(itertools.chain.from_iterable(rendering))  # keeps what came before the error
    assert caught.value.code == "too_long"
    assert_sounds_like_speech(b"".join(spoken), words=3)


def test_a_sentence_longer_than_the_context_is_split_to_fit(onnx_pipeline):
    sentence = ", ".join(["the quick brown fox jumps over the lazy dog"] * 14) + "."
    pieces = onnx_pipeline.tokenize_segment(sentence)
    assert len(pieces) >= 2
    assert all(0 < len(piece.tokens) <= MAX_TOKENS for piece in pieces)
    assert " ".join(piece.text for piece in pieces) == sentence


def test_missing_onnx_file_is_a_clear_startup_error(real_config, tmp_path):
    config = attrs.evolve(
        real_config, model=attrs.evolve(real_config.model, onnx_model=tmp_path / "nope.onnx")
    )
    with pytest.raises(ModelUnavailableError, match="KRT_ONNX_MODEL"):
        OnnxBackend(config)


def test_corrupt_cached_model_is_joined_again(tmp_path):
    cached = packaged.packaged_onnx_model(tmp_path)
    cached.write_bytes(b"not a model")
    assert packaged.packaged_onnx_model(tmp_path).stat().st_size > 90_000_000


@pytest.mark.parametrize(("voice", "texts"), [("female", WINDOW_TEXTS), ("male", WINDOW_TEXTS[:2])])
def test_windows_join_into_what_the_whole_decode_sounds_like(onnx_pipeline, voice, texts):
    """Every text in one voice, the shorter ones in the other: where windows are cut and
    how they join is the engine's, the same in any voice, and the 60-word sentence costs
    half a minute of CI per voice on a 2-core runner."""
    seams_seen = 0
    for text in texts:
        mel, clicks, seams = windowed_against_whole(
            onnx_pipeline.backend, onnx_pipeline.phonemizer, text, voice
        )
        assert mel <= MAX_WINDOWED_MEL_DB, text
        assert clicks == 0, text
        seams_seen += seams
    assert seams_seen >= 2 * (len(texts) - 1)
