from __future__ import annotations

import numpy as np
import pytest

from tests.speech_checks import assert_sounds_like_speech, word_error_rate


def test_word_error_rate_counts_edits_over_reference_words():
    assert word_error_rate("the cat sat", "the cat sat") == 0
    assert word_error_rate("the cat sat", "The cat, sat!") == 0
    assert word_error_rate("the cat sat", "the bat sat") == pytest.approx(1 / 3)
    assert word_error_rate("the cat sat", "the cat") == pytest.approx(1 / 3)
    assert word_error_rate("the cat sat", "") == 1


def test_speech_check_rejects_silence_and_wrong_lengths():
    tone = (0.3 * np.sin(np.arange(24000 * 2) / 10) * 32767).astype("<i2").tobytes()
    assert_sounds_like_speech(tone, words=5)
    with pytest.raises(AssertionError, match="silent"):
        assert_sounds_like_speech(bytes(24000 * 2 * 2), words=5)
    with pytest.raises(AssertionError, match="for 40 words"):
        assert_sounds_like_speech(tone, words=40)
