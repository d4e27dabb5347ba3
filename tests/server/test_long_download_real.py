"""A long input over ``POST /v1/audio/speech`` on the real model (onnx), through a real
server on loopback: spoken part by part, it is heard as well as the raw model speaking
the same sentences."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from krt.bench.speech_bench import raw_model_pcm
from krt.client.http_speech import post_speech
from krt.server.speech_parts import part_chars
from tests.speech_checks import (
    MAX_WORD_ERROR_RATE_ABOVE_RAW,
    PAIRED_SENTENCES,
    SHORT_WARM_UP,
    word_error_rate,
)

pytestmark = [pytest.mark.trio, pytest.mark.integration]

SENTENCES = PAIRED_SENTENCES[:4]
TEXT = " ".join(SENTENCES)
"""Four agent phrases, 180 characters, some 10 s of speech: one part each."""


async def test_a_long_input_in_parts_is_heard_as_well_as_the_raw_model(harness, onnx_pipeline, transcribe):
    with trio.fail_after(600):
        # Parts of 50 characters (MAX_UTTERANCE_TOKENS / 8): a sentence a part.
        server = await harness.server(
            lambda _config: onnx_pipeline.backend,
            SHORT_WARM_UP,
            KRT_BACKEND="onnx",
            MAX_UTTERANCE_TOKENS="400",
        )
        assert (
            max(map(len, SENTENCES))
            <= part_chars(server.state.config.segments)
            < 2 * min(map(len, SENTENCES))
        )
        fields = {"model": "kokoro", "input": TEXT, "voice": "female", "response_format": "pcm"}
        answer = await post_speech(f"http://127.0.0.1:{server.port}", "", fields)
    assert answer.status == 200
    raw = b"".join(raw_model_pcm(onnx_pipeline, sentence, "female") for sentence in SENTENCES)
    heard_raw, heard_krt = transcribe(raw), transcribe(bytes(answer.body))
    raw_errors, krt_errors = word_error_rate(TEXT, heard_raw), word_error_rate(TEXT, heard_krt)
    assert krt_errors <= raw_errors + MAX_WORD_ERROR_RATE_ABOVE_RAW, (heard_krt, heard_raw)
    audio = np.frombuffer(bytes(answer.body), "<i2")
    assert 6 < audio.size / 24000 < len(raw) / 48000  # trimmed silences: shorter than raw
