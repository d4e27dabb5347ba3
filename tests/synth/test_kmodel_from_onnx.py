"""The converted int8 weights make KModel speak like the ONNX model it came from.

Real model, no mocks. The torch vocoder adds random noise and phase, so we never compare
samples: we compare lengths, per-token durations and log spectrograms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from krt import SAMPLE_RATE
from krt.synth import kmodel_from_onnx
from krt.synth.kmodel_from_onnx import CHECKPOINT_NAME, STAMP_SUFFIX, converted_checkpoint, kmodel_config
from krt.synth.packaged import packaged_onnx_model, packaged_vocab, packaged_voice_packs

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

pytestmark = [
    pytest.mark.integration,
    # KModel's own constructor warns about its deprecated weight_norm and single-layer LSTM dropout.
    pytest.mark.filterwarnings("ignore:.*weight_norm.* is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:dropout option adds dropout:UserWarning"),
]

SHORT = "həlˈO ðˈɛɹ, ðɪs ɪz ɐ dˈɛmO."
LONG = "ðə kwˈɪk bɹˈWn fˈɑks ʤˈʌmps ˌOvəɹ ðə lˈAzi dˈɔɡ, ænd ðˈɛn ɪt ɹˈʌnz əwˈA ˌɪntu ðə dˈɑɹk fˈɔɹəst."
VOICE_OF = {SHORT: "jf_alpha", LONG: "jm_kumo"}
"""A female and a male voice, so the spectral-colour check has something to tell apart."""


@dataclass(frozen=True)
class Speech:
    audio: npt.NDArray[np.float32]
    durations: npt.NDArray[np.int64]
    """Frames per token, pads included, as each engine predicted them."""


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> None:
    """Run as on the 2-core CPUs the project targets (WEIGHTS.md), so timings here are theirs."""
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def cache_dir(model_cache_dir: Path) -> Path:
    """The test session's model cache, where the torch backend's tests find the same
    checkpoint: one conversion (13 s on two cores) per test worker, not two."""
    return model_cache_dir


@pytest.fixture(scope="module")
def onnx_path(cache_dir: Path) -> Path:
    return packaged_onnx_model(cache_dir)


@pytest.fixture(scope="module")
def checkpoint(onnx_path: Path, cache_dir: Path) -> Path:
    return converted_checkpoint(onnx_path, cache_dir)


@pytest.fixture(scope="module")
def kmodel(checkpoint: Path) -> Any:
    from kokoro.model import KModel

    return KModel(
        repo_id="hexgrad/Kokoro-82M", config=kmodel_config(packaged_vocab()), model=str(checkpoint)
    ).eval()


@pytest.fixture(scope="module")
def onnx_session(onnx_path: Path) -> ort.InferenceSession:
    """The packaged graph with its per-token durations exposed as a second output.

    They are the output of the one ``Clip`` fed by the one ``Round``: KModel's
    ``round(duration).clamp(min=1)``.
    """
    model = onnx.load(str(onnx_path))
    (rounding,) = [node for node in model.graph.node if node.op_type == "Round"]
    (clamp,) = [
        node for node in model.graph.node if node.op_type == "Clip" and rounding.output[0] in node.input
    ]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(clamp.output[0], onnx.TensorProto.FLOAT, None)
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def spoken(kmodel: Any, onnx_session: ort.InferenceSession) -> dict[str, tuple[Speech, Speech]]:
    """Each sentence spoken once by each engine: (torch, onnx), shared by the tests below."""
    vocab, packs = packaged_vocab(), packaged_voice_packs()
    result = {}
    for phonemes, voice in VOICE_OF.items():
        ids = [vocab[p] for p in phonemes if p in vocab]
        tokens = np.array([[0, *ids, 0]], dtype=np.int64)
        style = packs[voice][len(ids) - 1]
        speed = np.array([1.0], dtype=np.float32)
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the vocoder's noise; seeded so a failure reproduces
            audio, durations = kmodel.forward_with_tokens(
                torch.from_numpy(tokens), torch.from_numpy(style), 1.0
            )
        onnx_audio, onnx_durations = onnx_session.run(
            None, {"tokens": tokens, "style": style, "speed": speed}
        )
        result[phonemes] = (
            Speech(audio.numpy(), durations.numpy()),
            Speech(np.ravel(onnx_audio), np.ravel(onnx_durations).astype(np.int64)),
        )
    return result


def _log_spectrogram(
    audio: npt.NDArray[np.float32], window: int = 512, hop: int = 240
) -> npt.NDArray[np.float64]:
    frames = np.lib.stride_tricks.sliding_window_view(audio, window)[::hop] * np.hanning(window)
    spectrogram: npt.NDArray[np.float64] = np.log(np.abs(np.fft.rfft(frames, axis=1)) + 1e-4)
    return spectrogram


def _timing_similarity(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Correlation of time-aligned log spectrograms, each minus its mean spectrum.

    Removing the mean spectrum removes the voice's colour, so what is left is which sounds
    happen when: high for the same sentence, near zero for another one.
    """
    sa, sb = _log_spectrogram(a), _log_spectrogram(b)
    frames = min(len(sa), len(sb))
    sa, sb = sa[:frames] - sa[:frames].mean(0), sb[:frames] - sb[:frames].mean(0)
    return float(np.corrcoef(sa.ravel(), sb.ravel())[0, 1])


def _colour_similarity(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Correlation of mean log spectra: the voice's colour, whatever the words."""
    return float(np.corrcoef(_log_spectrogram(a).mean(0), _log_spectrogram(b).mean(0))[0, 1])


def test_checkpoint_loads_strictly_into_every_kmodel_module(checkpoint: Path, kmodel: Any) -> None:
    # KModel's loader falls back to strict=False on any error, so load strictly ourselves.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert sorted(state) == sorted(["bert", "bert_encoder", "predictor", "text_encoder", "decoder"])
    for name, module_state in state.items():
        result = getattr(kmodel, name).load_state_dict(module_state, strict=True)
        assert (result.missing_keys, result.unexpected_keys) == ([], [])
    # ...and KModel's own loading took every tensor as is.
    loaded = kmodel.state_dict()
    changed = [
        f"{name}.{key}"
        for name, module_state in state.items()
        for key, tensor in module_state.items()
        if not torch.equal(loaded[f"{name}.{key}"], tensor)
    ]
    assert changed == []


def _rms(audio: npt.NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(np.square(audio))))


@pytest.mark.parametrize("phonemes", [SHORT, LONG], ids=["short", "long"])
def test_torch_speech_is_finite_and_as_long_as_onnx_speech(
    spoken: dict[str, tuple[Speech, Speech]], phonemes: str
) -> None:
    torch_speech, onnx_speech = spoken[phonemes]
    assert np.isfinite(torch_speech.audio).all()
    assert abs(len(torch_speech.audio) - len(onnx_speech.audio)) / SAMPLE_RATE <= 0.1


@pytest.mark.parametrize("phonemes", [SHORT, LONG], ids=["short", "long"])
def test_torch_speech_is_about_as_loud_as_onnx_speech(
    spoken: dict[str, tuple[Speech, Speech]], phonemes: str
) -> None:
    """torch.istft comes out at ≈0.7× the export's own iSTFT (measured 0.69–0.70, while every
    tensor before the iSTFT agrees within 1 % RMS); a weight scaled wrong lands outside."""
    torch_speech, onnx_speech = spoken[phonemes]
    assert 0.5 < _rms(torch_speech.audio) / _rms(onnx_speech.audio) < 0.9


@pytest.mark.parametrize("phonemes", [SHORT, LONG], ids=["short", "long"])
def test_per_token_durations_match_onnx(spoken: dict[str, tuple[Speech, Speech]], phonemes: str) -> None:
    """Durations carry no randomness, so this is exact and repeatable.

    ONNX quantizes activations to int8 on the fly and torch runs them in fp32, so a token
    near a half frame can round the other way (raw durations correlate at 0.997). Measured
    over all five packaged voices with these two sentences: 86–100 % of tokens equal and
    lengths within 0.125 s; the voice used for each sentence here gives 96–97 % and ≤ 0.05 s.
    """
    torch_speech, onnx_speech = spoken[phonemes]
    assert torch_speech.durations.shape == onnx_speech.durations.shape
    assert np.mean(torch_speech.durations == onnx_speech.durations) >= 0.9


@pytest.mark.parametrize(("phonemes", "other"), [(SHORT, LONG), (LONG, SHORT)], ids=["short", "long"])
def test_torch_speech_says_what_onnx_speech_says_in_the_same_voice(
    spoken: dict[str, tuple[Speech, Speech]], phonemes: str, other: str
) -> None:
    """Each threshold sits between the matching pair and a mismatched one (measured: timing
    0.84–0.98 vs ≤ 0.2; colour 0.994–0.996 vs ≈ 0.77, and 0.96–0.98 with the vocoder's conv
    weights scaled by 0.7), so both halves can fail."""
    torch_audio, onnx_audio = spoken[phonemes][0].audio, spoken[phonemes][1].audio
    other_onnx_audio = spoken[other][1].audio
    assert (
        _timing_similarity(torch_audio, onnx_audio) > 0.6 > _timing_similarity(torch_audio, other_onnx_audio)
    )
    assert (
        _colour_similarity(torch_audio, onnx_audio)
        > 0.985
        > _colour_similarity(torch_audio, other_onnx_audio)
    )


def test_second_call_reuses_the_cached_checkpoint(
    checkpoint: Path, onnx_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    built_at = checkpoint.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger=kmodel_from_onnx.__name__):
        again = converted_checkpoint(onnx_path, cache_dir)
    assert again == checkpoint
    assert again.stat().st_mtime_ns == built_at
    assert not [record for record in caplog.records if "built" in record.getMessage()]
    names = {path.name for path in cache_dir.iterdir()}
    assert {onnx_path.name, CHECKPOINT_NAME, CHECKPOINT_NAME + STAMP_SUFFIX} <= names
    assert not [name for name in names if name.endswith(".partial")]  # no temp files left behind


def _flip_bytes_mid_file(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        chunk = handle.read(64)
        handle.seek(-len(chunk), 1)
        handle.write(bytes(b ^ 0xFF for b in chunk))


def _say_it_came_from_another_onnx_file(path: Path) -> None:
    stamp = json.loads(path.with_name(path.name + STAMP_SUFFIX).read_text())
    stamp["source_onnx_sha256"] = "0" * 64
    path.with_name(path.name + STAMP_SUFFIX).write_text(json.dumps(stamp))


@pytest.mark.parametrize(
    "spoil", [_flip_bytes_mid_file, _say_it_came_from_another_onnx_file], ids=["corrupted", "other-onnx"]
)
def test_a_stale_cached_checkpoint_is_rebuilt(
    checkpoint: Path, onnx_path: Path, tmp_path: Path, spoil: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good_sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    cached = tmp_path / checkpoint.name
    shutil.copyfile(checkpoint, cached)
    shutil.copyfile(
        checkpoint.with_name(checkpoint.name + STAMP_SUFFIX), cached.with_name(cached.name + STAMP_SUFFIX)
    )
    spoil(cached)
    with caplog.at_level(logging.INFO, logger=kmodel_from_onnx.__name__):
        rebuilt = converted_checkpoint(onnx_path, tmp_path)
    assert rebuilt == cached
    assert [record for record in caplog.records if "built" in record.getMessage()]
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == good_sha256
