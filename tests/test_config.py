from __future__ import annotations

from pathlib import Path

import pytest

from krt.config import ConfigError, iter_knobs, knob_table, load_config, read_dotenv

SEED_KNOBS = {
    "API_KEY",
    "LOG_LEVEL",
    "MODEL_NAME",
    "DEFAULT_VOICE_FEMALE",
    "DEFAULT_VOICE_MALE",
    "LANG_CODE",
    "KOKORO_SPEED",
    "KOKORO_SPLIT_PATTERN",
    "FIRST_SEGMENT_MAX_WORDS",
    "FIRST_SEGMENT_BOUNDARIES",
    "FIRST_SEGMENT_REQUIRE_BOUNDARY",
    "STREAM_CHUNK_SECONDS",
    "MAX_UTTERANCE_WORDS",
    "MAX_WORD_CHARS",
    "MAX_UTTERANCE_SECONDS",
    "MAX_UTTERANCE_TOKENS",
    "PRIME_STREAM",
    "PRIME_BYTES",
    "WS_FIRST_CHUNK_IMMEDIATE",
    "WS_BUFFER_BYTES",
    "WS_FLUSH_EVERY",
    "WS_SEND_TIMEOUT",
    "WS_LONG_SEND_LOG_MS",
    "MAX_CONCURRENT_JOBS",
    "MAX_QUEUED_REQUESTS",
    "QUEUE_WAIT_SLA_MS",
    "QUEUE_MAXSIZE",
    "SCHED_QUANTUM_BYTES",
    "PRIORITY_QUANTUM_BYTES",
    "KOKORO_DEVICE",
    "KOKORO_GPU_MEMORY_FRACTION",
    "OPUS_BITRATE",
    "OPUS_APPLICATION",
    "FLUSH_IDLE_MS",
}


def test_every_seed_knob_is_configurable():
    assert {env for _group, env, _default, _help in iter_knobs()} >= SEED_KNOBS


def test_defaults_without_any_environment():
    config = load_config(environ={}, dotenv=None)
    assert config.model.backend == "auto"
    assert config.voices.speed == 1.0
    assert config.stream.chunk_seconds == 0.02
    assert config.auth.api_key == ""


def test_values_are_typed():
    config = load_config(
        environ={
            "KOKORO_SPEED": "1.25",
            "FIRST_SEGMENT_REQUIRE_BOUNDARY": "yes",
            "MAX_CONCURRENT_JOBS": "3",
            "KRT_BACKEND": "ONNX",
            "KRT_MODEL_DIR": "/models/kokoro",
        },
        dotenv=None,
    )
    assert config.voices.speed == 1.25
    assert config.segments.first_require_boundary is True
    assert config.admission.max_concurrent_jobs == 3
    assert config.model.backend == "onnx"
    assert config.model.model_dir == Path("/models/kokoro")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("KOKORO_SPEED", "3", "between 0.5 and 2.0"),
        ("KOKORO_SPEED", "fast", "must be a number"),
        ("MAX_CONCURRENT_JOBS", "0", "at least 1"),
        ("KRT_BACKEND", "tensorrt", "one of auto, torch, onnx, fake"),
        ("PRIME_STREAM", "maybe", "1/0"),
        ("KOKORO_SPLIT_PATTERN", "([", "regular expression"),
        ("LANG_CODE", "j", "one of a, b"),
    ],
)
def test_bad_value_names_the_variable_and_what_is_allowed(variable, value, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={variable: value}, dotenv=None)
    message = str(caught.value)
    assert variable in message
    assert repr(value) in message
    assert expected in message


def test_dotenv_is_read_and_environment_wins(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\nexport API_KEY='s3cret'\nKOKORO_SPEED=1.5  # inline comment\nLOG_LEVEL=DEBUG\n\n"
    )
    config = load_config(environ={"LOG_LEVEL": "WARNING"}, dotenv=dotenv)
    assert config.auth.api_key == "s3cret"
    assert config.voices.speed == 1.5
    assert config.logging.level == "WARNING"


def test_malformed_dotenv_line_is_reported_with_its_line_number(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("API_KEY=x\nthis is not a setting\n")
    with pytest.raises(ConfigError, match=r"\.env:2"):
        read_dotenv(dotenv)


def test_config_is_immutable():
    config = load_config(environ={}, dotenv=None)
    with pytest.raises(AttributeError):
        config.voices.speed = 2.0  # type: ignore[misc]


def test_the_configuration_page_shows_every_knob_as_the_code_defines_it():
    """docs/configuration.md is generated: a knob added, renamed, re-defaulted or
    re-explained in krt/config.py and not pasted into the page fails here."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert knob_table() in page, "docs/configuration.md drifted: paste in the output of python -m krt.config"
    assert len(knob_table().splitlines()) == len(iter_knobs()) + 2
