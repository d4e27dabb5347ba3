"""Kokoro's PyTorch KModel with real weights and no hub: converted from the packaged export,
or read from a local model directory laid out like the Hugging Face repo."""

from __future__ import annotations

import json

import attrs
import pytest

from krt.engine.pipeline import SpeechPipeline
from krt.errors import ModelUnavailableError
from tests.speech_checks import (
    HARVARD_SENTENCES,
    INTELLIGIBILITY_SENTENCES,
    MAX_RAW_WORD_ERROR_RATE,
    MAX_WINDOWED_MEL_DB,
    WINDOW_TEXTS,
    alternating_voices,
    assert_sounds_like_speech,
    pooled_word_error_rate,
    windowed_against_whole,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def torch_config(real_config):
    return attrs.evolve(real_config, model=attrs.evolve(real_config.model, backend="torch"))


@pytest.fixture(scope="module")
def torch_pipeline(torch_config):
    from krt.synth.torch_backend import TorchBackend

    return SpeechPipeline(TorchBackend(torch_config), torch_config)


def test_offline_torch_uses_the_converted_packaged_weights(torch_pipeline):
    backend = torch_pipeline.backend
    assert backend.device == "cpu"
    assert "converted" in backend.source
    assert (backend.voices.female, backend.voices.male) == ("jf_gongitsune", "jm_kumo(4)+jf_gongitsune(1)")


def test_torch_speech_is_plausible(torch_pipeline):
    text = "Hello there. This is the PyTorch model speaking."
    assert_sounds_like_speech(b"".join(torch_pipeline.speak(text, "female")), words=len(text.split()))


@pytest.mark.longest
def test_torch_speech_through_krt_is_intelligible(torch_pipeline, transcribe):
    """Compared with the raw model on the default backend (test_onnx_backend); here,
    where a paired run would take minutes, krt's own speech on the agent phrases and two
    Harvard sentences, in alternating voices, is held to what the raw model is held to:
    how torch decodes a window is held to the whole decode in the windows test below."""
    spoken = alternating_voices((*INTELLIGIBILITY_SENTENCES, *HARVARD_SENTENCES[:2]))
    wer = pooled_word_error_rate(
        lambda text, voice: b"".join(torch_pipeline.speak(text, voice)), transcribe, spoken
    )
    assert wer <= MAX_RAW_WORD_ERROR_RATE


@pytest.fixture(scope="module")
def local_model_dir(tmp_path_factory, torch_config):
    """A directory shaped like hexgrad/Kokoro-82M, built from the packaged weights."""
    import torch

    from krt.synth import packaged
    from krt.synth.kmodel_from_onnx import converted_checkpoint, kmodel_config

    directory = tmp_path_factory.mktemp("kokoro-local")
    onnx_path = packaged.packaged_onnx_model(torch_config.model.cache_dir)
    (directory / "kokoro-v1_0.pth").symlink_to(converted_checkpoint(onnx_path, torch_config.model.cache_dir))
    (directory / "config.json").write_text(json.dumps(kmodel_config(packaged.packaged_vocab())))
    (directory / "voices").mkdir()
    packs = packaged.packaged_voice_packs()
    for hub_name, packaged_name in (("af_heart", "jf_alpha"), ("am_michael", "jm_kumo")):
        torch.save(torch.from_numpy(packs[packaged_name]), directory / "voices" / f"{hub_name}.pt")
    return directory


def test_local_model_directory_is_preferred_and_uses_hub_voice_names(torch_config, local_model_dir):
    from krt.synth.torch_backend import TorchBackend

    config = attrs.evolve(torch_config, model=attrs.evolve(torch_config.model, model_dir=local_model_dir))
    backend = TorchBackend(config)
    assert "KRT_MODEL_DIR" in backend.source
    assert (backend.voices.female, backend.voices.male) == ("af_heart", "am_michael")
    pipeline = SpeechPipeline(backend, config)
    assert_sounds_like_speech(b"".join(pipeline.speak("Loaded from a local folder.", "male")), words=4)


def test_incomplete_local_directory_says_what_is_missing(torch_config, tmp_path):
    from krt.synth.torch_backend import TorchBackend

    (tmp_path / "config.json").write_text("{}")
    config = attrs.evolve(torch_config, model=attrs.evolve(torch_config.model, model_dir=tmp_path))
    with pytest.raises(ModelUnavailableError, match=r"kokoro-v1_0\.pth is missing"):
        TorchBackend(config)


def test_torch_windows_join_into_what_the_whole_decode_sounds_like(torch_pipeline):
    """One voice, one 20-word sentence (two seams): the windowing is the engine's, shared
    with onnx (tested there on every text and both voices); what is torch's own is how a
    span decodes, the same in any voice and at any length. (The 60-word sentence alone
    costs a minute of CI on a 2-core runner.)"""
    voice = "female"
    for text in WINDOW_TEXTS[1:2]:
        mel, clicks, seams = windowed_against_whole(
            torch_pipeline.backend, torch_pipeline.phonemizer, text, voice
        )
        assert seams >= 2
        assert mel <= MAX_WINDOWED_MEL_DB, text
        assert clicks == 0, text


PCM_STEP = 1 / 32768
"""One step of the PCM16 a client receives."""


@pytest.fixture(scope="module")
def batching_backend(torch_config):
    from krt.synth.torch_backend import TorchBackend

    config = attrs.evolve(torch_config, scheduler=attrs.evolve(torch_config.scheduler, batch_windows=4))
    return TorchBackend(config)


@pytest.mark.longest
def test_windows_decoded_stacked_sound_as_they_do_one_by_one(batching_backend):
    """Windows of both voices, at two places in a segment, stacked
    three to a generator call, against each decoded alone: the same harmonic draw (seeded
    per window) and the same arithmetic up to float rounding, which stays under half a
    step of the PCM16 a client gets (the model's own run-to-run difference on torch is
    none at all: the same call twice is bit-identical, checked below)."""
    from krt.synth.windows import window_request
    from krt.text.g2p import tokenize

    backend = batching_backend
    phonemizer = backend.make_phonemizer()
    tokens = tokenize(phonemizer.phonemize(WINDOW_TEXTS[1]), backend.vocab)
    female, male = (
        backend.prepare(tokens, backend.voices.style(voice, len(tokens)), 1.0)
        for voice in (backend.voices.female, backend.voices.male)
    )
    stack_sizes: list[int] = []
    hook = backend._model.decoder.generator.register_forward_hook(
        lambda _module, inputs, _output: stack_sizes.append(int(inputs[0].shape[0]))
    )
    try:
        size = 60
        windows = [
            window_request(segment, start, start + size, bucketed=True)
            for segment, start in ((female, 40), (male, 40), (female, 100))
        ]
        assert len({window.span_frames for window in windows}) == 1
        stacked = backend.decode_windows(windows)
        alone = [backend.decode_windows([window])[0] for window in windows]
        for window, batched, single in zip(windows, stacked, alone, strict=True):
            assert batched.shape == single.shape == ((window.stop - window.start) * 600 + 240,)
            assert abs(batched - single).max() < PCM_STEP / 2, size
        assert (backend.decode_windows(windows[:1])[0] == alone[0]).all()
    finally:
        hook.remove()
    assert stack_sizes.count(3) == 1  # the stack went through the generator once
