from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from krt.engine.pipeline import SpeechPipeline
from krt.errors import ModelUnavailableError, SpeechError
from krt.synth.fake_backend import FakeBackend
from krt.synth.voice_files import load_voice_packs
from krt.synth.voices import VoiceCatalog, with_defaults
from tests.conftest import make_config


def pack(value: float) -> np.ndarray:
    data = np.zeros((510, 1, 256), dtype=np.float32)
    data[:, 0, :] = value + np.arange(510, dtype=np.float32)[:, None]
    return data


@pytest.fixture
def catalog() -> VoiceCatalog:
    return with_defaults({"af_x": pack(0), "am_y": pack(1000), "bf_z": pack(2000)}, "", "", ("af_x", "am_y"))


def test_logical_names_follow_the_defaults(catalog):
    assert catalog.resolve("female") == "af_x"
    assert catalog.resolve("male") == "am_y"
    assert catalog.resolve(None) == "af_x"


def test_configured_defaults_override_the_source_preference():
    configured = with_defaults({"af_x": pack(0), "am_y": pack(1)}, "am_y", "af_x", ("af_x", "am_y"))
    assert (configured.resolve("female"), configured.resolve("male")) == ("am_y", "af_x")


def test_voice_ids_are_accepted_directly(catalog):
    assert catalog.resolve("bf_z") == "bf_z"


def test_blends_mix_packs_by_normalised_weight(catalog):
    assert catalog.resolve("af_x(3)+am_y(1)") == "af_x(3)+am_y(1)"
    assert catalog.style("af_x(3)+am_y(1)", 1)[0, 0] == pytest.approx(0.75 * 0 + 0.25 * 1000)
    assert catalog.style("af_x+bf_z", 10)[0, 0] == pytest.approx((9 + 2009) / 2)


@pytest.mark.parametrize("bad", ["af_x(2)+nobody(1)", "af_x(-1)", "af_x(0)", "af_x((", "+"])
def test_bad_blends_are_invalid_voice(catalog, bad):
    with pytest.raises(SpeechError) as caught:
        catalog.resolve(bad)
    assert caught.value.code == "invalid_voice"


def test_a_blend_can_be_a_default():
    blended = with_defaults({"af_x": pack(0), "am_y": pack(1)}, "", "am_y(4)+af_x(1)", ("af_x", "am_y"))
    assert blended.resolve("male") == "am_y(4)+af_x(1)"


def test_unknown_voice_lists_the_available_ones(catalog):
    with pytest.raises(SpeechError) as caught:
        catalog.resolve("af_nobody")
    assert caught.value.code == "invalid_voice"
    for name in ("female", "male", "af_x", "am_y", "bf_z"):
        assert name in caught.value.message


def test_configured_default_that_does_not_exist_fails_at_load_naming_the_variable():
    with pytest.raises(ModelUnavailableError, match="DEFAULT_VOICE_MALE"):
        with_defaults({"af_x": pack(0)}, "", "am_missing", ("af_x", "am_y"))


def test_kokoro_names_the_weights_lack_speak_with_the_default_of_their_gender(catalog, caplog):
    standing = catalog.standing_in("gender")
    with caplog.at_level("INFO", logger="krt.synth.voices"):
        spoken = [standing.resolve(name) for name in ("af_heart", "am_michael", "bf_emma", "af_heart")]
    assert spoken == ["af_x", "am_y", "af_x", "af_x"]
    told = [record.getMessage() for record in caplog.records]
    assert len(told) == 3, "each stand-in is logged once, not once per request"
    assert "'af_heart'" in told[0] and "KOKORO_VOICE_STAND_INS" in told[0]
    assert standing.stood_in()["am_michael"] == "am_y"


def test_a_kokoro_name_the_weights_have_is_its_own_pack():
    standing = with_defaults(
        {"af_x": pack(0), "am_y": pack(1), "af_heart": pack(7)}, "", "", ("af_x", "am_y")
    )
    standing = standing.standing_in("gender")
    assert standing.resolve("af_heart") == "af_heart"
    assert "af_heart" not in standing.stood_in()


def test_a_blend_of_stood_in_names_blends_their_stand_ins():
    blended = with_defaults({"af_x": pack(0), "am_y": pack(1000)}, "", "am_y(4)+af_x(1)", ("af_x", "am_y"))
    voice = blended.standing_in("gender").resolve("af_heart(1)+am_adam(1)")
    # af_heart is af_x; am_adam is the male default, am_y(4)+af_x(1): af_x 0.5 + 0.1, am_y 0.4
    assert blended.style(voice, 1)[0, 0] == pytest.approx(0.4 * 1000)


def test_stand_ins_can_be_turned_off_or_named(catalog):
    with pytest.raises(SpeechError) as caught:
        catalog.standing_in("off").resolve("af_heart")
    assert caught.value.code == "invalid_voice" and "af_x" in caught.value.message
    named = catalog.standing_in("af_heart=bf_z, am_adam=female")
    assert (named.resolve("af_heart"), named.resolve("am_adam")) == ("bf_z", "af_x")
    with pytest.raises(SpeechError):
        named.resolve("am_michael")  # not named: refused
    with pytest.raises(ModelUnavailableError, match="KOKORO_VOICE_STAND_INS"):
        catalog.standing_in("af_heart=nobody")


def test_style_row_follows_the_token_count(catalog):
    assert catalog.style("am_y", 1)[0, 0] == 1000
    assert catalog.style("am_y", 10)[0, 0] == 1009
    assert catalog.style("am_y", 10).shape == (1, 256)
    assert catalog.style("am_y", 5000)[0, 0] == 1509  # clamped to the last row


def test_packs_load_from_npz_and_npy_dirs(tmp_path):
    np.savez(tmp_path / "v.npz", one=pack(0), two=pack(1))
    assert sorted(load_voice_packs(tmp_path / "v.npz")) == ["one", "two"]
    folder = tmp_path / "voices"
    folder.mkdir()
    np.save(folder / "three.npy", pack(3))
    assert list(load_voice_packs(folder)) == ["three"]


def test_bad_voice_sources_are_clear_errors(tmp_path):
    with pytest.raises(ModelUnavailableError, match="no voice packs"):
        load_voice_packs(tmp_path)
    np.savez(tmp_path / "bad.npz", wrong=np.zeros((510, 3), dtype=np.float32))
    with pytest.raises(ModelUnavailableError, match="shape"):
        load_voice_packs(tmp_path / "bad.npz")


WEIGHTS = st.one_of(
    st.from_regex(r"[0-9]{1,500}(\.[0-9]{0,40})?", fullmatch=True),
    st.from_regex(r"[0-9]*\.[0-9]+", fullmatch=True),
    st.text(max_size=30),
)


PIPELINE = SpeechPipeline(FakeBackend(), make_config(KRT_BACKEND="fake"))


@settings(max_examples=60, deadline=None)
@given(first=WEIGHTS, second=st.one_of(st.none(), WEIGHTS))
@example(first="9" * 400, second=None)  # parses as infinity: the blend was NaN, silence
@example(first="0", second="0.5")
@example(first="1e5", second=None)
def test_any_blend_weight_is_a_clear_refusal_or_audible_speech(first, second):
    """Whatever a client writes between the parentheses, the voice either is refused as
    ``invalid_voice`` before anything is made, or speaks: never silence, never a crash."""
    voice = f"fake_female({first})" + ("" if second is None else f"+fake_male({second})")
    text = "Hello there, this is a test."
    refusal: SpeechError | None = None
    try:
        PIPELINE.plan(text, voice)
    except SpeechError as exc:
        refusal = exc
    if refusal is not None:
        assert (refusal.code, bool(refusal.message)) == ("invalid_voice", True)
        return
    audio = np.frombuffer(b"".join(PIPELINE.speak(text, voice)), "<i2").astype(np.float32) / 32767
    assert np.sqrt(np.mean(audio**2)) > 0.01


def test_an_overflowing_weight_is_refused_saying_why(catalog):
    with pytest.raises(SpeechError) as refused:
        catalog.resolve("af_x(" + "9" * 400 + ")")
    assert refused.value.code == "invalid_voice" and "at most 100" in refused.value.message
