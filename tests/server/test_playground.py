"""The playground page in a real headless Chromium, against ``krt serve`` (fake model) on
loopback: it speaks through its AudioWorklet, lights the words as they play, stops at
once, queues or barges in, and says clearly when the key is wrong.

Chromium is Debian's package (installed when missing, as nginx is); Playwright drives it
from a worker thread while Trio keeps reading the server's log. The page's own figures
(``window.playground``) are what the assertions read: what the worklet received and
played, which words it lit and when, and every event the socket brought.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import trio

from krt.media.codecs import OutputAudio, decode
from tests.debian import debian_binary

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from playwright.sync_api import Page

pytestmark = [pytest.mark.trio, pytest.mark.slow]

KEY = "playground-test-key"
SENTENCE = "Hello there. Your order shipped this morning and should arrive by Friday."
LONG_TEXT = " ".join(
    [
        "Thanks for calling, I have pulled up your account and I can see both of your orders.",
        "The first one has already shipped, and the second is waiting for a part from our supplier.",
        "I expect it to leave our warehouse on Monday, so you should have both by the end of next week.",
    ]
)
ARTIFACTS = Path(os.environ.get("KRT_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))
"""Where the mid-sentence screenshot is kept (CI's output; ignored by git)."""
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--autoplay-policy=no-user-gesture-required",
    "--disable-gpu",
    # Without these Chromium reaches for Google's hosts at start, which a closed network refuses.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SAMPLE_RATE = 24000
SILENT = (
    "window.playground.player?.type === 'progress' && window.playground.player.buffered === 0"
    " && window.playground.player.peak === 0"
)
"""The worklet's last report: nothing buffered, and nothing but silence played since the one before."""


@contextlib.contextmanager
def playground(port: int, expected: tuple[str, ...] = ()) -> Iterator[Page]:
    """The page loaded in a fresh headless Chromium, its voices listed; on leaving, no
    console error or uncaught exception may have happened (a CSP violation is one) but
    those that contain one of ``expected``."""
    from playwright.sync_api import sync_playwright

    chromium = debian_binary("chromium", "chromium")
    problems: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.on("console", lambda message: message.type == "error" and problems.append(message.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"http://127.0.0.1:{port}/")
            # Functions, not strings: the page's CSP forbids eval, which a string would need.
            page.wait_for_function("() => document.querySelectorAll('#voice option').length > 2")
            yield page
        finally:
            browser.close()
    assert [problem for problem in problems if not any(part in problem for part in expected)] == []


def response(page: Page, response_id: str) -> dict[str, Any]:
    """What the page knows of one response: its words, what was received, played, lit."""
    return dict(page.evaluate(f"() => window.playground.responses[{response_id!r}]"))


def events(page: Page) -> list[dict[str, Any]]:
    return list(page.evaluate("() => window.playground.events"))


def wait(page: Page, condition: str) -> None:
    """Until ``condition`` (JavaScript) holds on the page; on a timeout, what the page knew."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(f"() => {condition}")
    except PlaywrightTimeout:
        known = page.evaluate(
            "() => JSON.stringify({...window.playground, status: document.querySelector('#status').textContent})"
        )
        raise AssertionError(f"never true: {condition}; the page knew {known}") from None


def speak(page: Page, text: str, key: str = KEY, speed: str = "2") -> None:
    """Type ``text`` and press Speak; at double speed unless told, as playback is real time."""
    page.fill("#key", key)
    page.fill("#text", text)
    page.fill("#speed", speed)
    page.click("#speak")


async def in_browser(port: int, scenario: Callable[[Page], Any], expected: tuple[str, ...] = ()) -> Any:
    """Run ``scenario`` on a freshly loaded page, in a thread (Playwright's sync API)."""

    def run() -> Any:
        with playground(port, expected) as page:
            return scenario(page)

    return await trio.to_thread.run_sync(run)


@pytest.fixture
async def server(start_krt):
    return await start_krt(KRT_BACKEND="fake", API_KEY=KEY)


async def test_the_page_speaks_a_sentence_as_it_comes_and_lights_each_word_as_it_plays(server, tmp_path):
    def scenario(page: Page) -> dict[str, Any]:
        assert page.is_visible("#key-section"), "a server with API_KEY: the page says to enter it"
        speak(page, SENTENCE)
        wait(page, "window.playground.responses.p1?.lit.length >= 4")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "playground-mid-sentence.png")
        wait(page, "window.playground.responses.p1.heardAll === true")
        figures = {name: page.inner_text(f"#{name}") for name in ("first-audio", "first-sound", "stalls")}
        return {"p1": response(page, "p1"), "figures": figures, "events": events(page)}

    seen = await in_browser(server.port, scenario)
    spoken = seen["p1"]
    logged = [json.loads(line) for line in (tmp_path / "logs" / "metrics.log").read_text().splitlines()]
    [record] = [record for record in logged if record["request_id"] == "p1"]
    # Every sample the socket brought reached the worklet and was played, and that is the
    # audio the server says it sent (its log keeps milliseconds).
    assert spoken["playerReceived"] == spoken["samples"] == spoken["played"] > SAMPLE_RATE
    assert abs(spoken["samples"] / SAMPLE_RATE - record["audio_s"]) <= 0.0005
    assert not record["canceled"]
    # Words: the client's own, lit in order, none before its sound started.
    words = spoken["words"]
    assert [word["text"] for word in words] == SENTENCE.replace(".", "").split()
    assert spoken["lit"] == list(range(len(words)))
    assert all(lit >= word["start_ms"] for lit, word in zip(spoken["litAtMs"], words, strict=True))
    assert spoken["litAtMs"] == sorted(spoken["litAtMs"])
    # The figures krt measures, shown: first audio before first sound, and the stalls the
    # worklet heard. The player starts on the first delta (a 20 ms primer), so on a loaded
    # machine the next may come a few milliseconds late: heard, and shown, but brief.
    assert 0 < spoken["firstAudioMs"] <= spoken["firstSoundMs"]
    assert seen["figures"]["first-audio"] == f"{math.floor(spoken['firstAudioMs'] + 0.5)} ms"  # JS rounding
    assert spoken["stalledSeconds"] < 0.25
    assert seen["figures"]["stalls"] == (
        "none" if spoken["stalledSeconds"] < 0.005 else f"{spoken['stalledSeconds']:.2f} s"
    )
    assert [event["type"] for event in seen["events"]][:2] == ["session.updated", "response.created"]
    assert (ARTIFACTS / "playground-mid-sentence.png").stat().st_size > 10_000


async def test_stop_cancels_the_response_and_the_player_falls_silent_at_once(server):
    def scenario(page: Page) -> dict[str, Any]:
        speak(page, LONG_TEXT)
        wait(page, "window.playground.responses.p1?.lit.length >= 2")
        page.click("#stop")
        wait(page, "window.playground.responses.p1.ended === 'canceled'")
        # The worklet's next report after the clear: nothing buffered, nothing played.
        wait(page, SILENT)
        first = {"p1": response(page, "p1"), "events": events(page), "status": page.inner_text("#status")}
        # A short reply is made whole long before it is heard: Stop still silences it.
        speak(page, SENTENCE)
        wait(page, "window.playground.responses.p2?.ended === 'completed'")
        wait(page, "window.playground.responses.p2.lit.length >= 2")
        page.click("#stop")
        wait(page, f"window.playground.responses.p2.playedAtClear !== undefined && {SILENT}")
        return {**first, "p2": response(page, "p2"), "after": page.inner_text("#status")}

    seen = await in_browser(server.port, scenario)
    stopped = seen["p1"]
    types = [event["type"] for event in seen["events"] if event["response"] == "p1"]
    assert types[-1] == "response.canceled"
    assert "response.completed" not in types
    # Silent within one chunk of audio of the click (its last report before the click
    # lags the sound by a few milliseconds), and what was still buffered never played.
    assert stopped["playedAtClear"] - stopped["playedAtStop"] <= stopped["largestDelta"]
    assert stopped["playedAtClear"] < stopped["samples"]
    assert stopped["lit"] == list(range(len(stopped["lit"])))
    assert len(stopped["lit"]) < len(stopped["words"]) or len(stopped["words"]) < len(LONG_TEXT.split())
    assert seen["status"] == "Stopped."
    made = seen["p2"]
    assert made["playedAtClear"] - made["playedAtStop"] <= made["largestDelta"]
    assert made["playedAtClear"] < made["samples"] and not made["heardAll"]
    assert seen["after"] == "Stopped."


async def test_a_second_text_queues_or_barges_in_as_the_user_chose(server):
    def scenario(page: Page) -> dict[str, Any]:
        speak(page, SENTENCE)
        speak(page, "Got it.")  # queue, the default: spoken after the first
        wait(page, "window.playground.responses.p2?.heardAll === true")
        page.check("#barge")
        speak(page, SENTENCE)  # made whole at once: barging in must still cut it off
        wait(page, "window.playground.responses.p3?.ended === 'completed'")
        wait(page, "window.playground.responses.p3.lit.length >= 1")
        speak(page, "Sorry, let me stop there.")
        wait(page, "window.playground.responses.p4?.heardAll === true")
        return {name: response(page, name) for name in ("p1", "p2", "p3", "p4")}

    seen = await in_browser(server.port, scenario)
    # Queued: both heard whole, the second after the first.
    assert seen["p1"]["ended"] == seen["p2"]["ended"] == "completed"
    assert seen["p1"]["played"] == seen["p1"]["samples"]
    assert seen["p2"]["firstSoundMs"] + seen["p2"]["sentAt"] > seen["p1"]["sentAt"] + (
        seen["p1"]["samples"] / SAMPLE_RATE * 1000
    )
    # Barged in: the third was cut off by the fourth, which was heard whole.
    assert seen["p3"]["playedAtClear"] < seen["p3"]["samples"] and not seen["p3"]["heardAll"]
    assert seen["p4"]["ended"] == "completed" and seen["p4"]["played"] == seen["p4"]["samples"]


async def test_a_wrong_or_missing_key_is_named_on_the_page(server):
    def scenario(page: Page) -> list[str]:
        said = []
        for key in ("not-the-key", ""):
            speak(page, SENTENCE, key=key)
            wait(page, "document.querySelector('#status').className === 'error'")
            said.append(page.inner_text("#status"))
            page.evaluate("() => { document.querySelector('#status').className = ''; }")
        return said

    # The browser logs each refusal (the upgrade's, and the 401 of the page's check) as a
    # console error: those are expected here, and no other.
    refusals = ("HTTP Authentication failed", "status of 401")
    wrong, missing = await in_browser(server.port, scenario, expected=refusals)
    assert "refused this API key" in wrong
    assert "needs an API key" in missing


async def test_the_page_decodes_g711_as_ffmpeg_does(server):
    """Every μ-law and A-law byte, through the page's decoder and through PyAV's (krt's
    own decode, FFmpeg's tables): a wrong table would play as noise."""

    def scenario(page: Page) -> dict[str, list[float]]:
        return {
            law: page.evaluate(
                "([bytes, law]) => window.playground.decode(bytes, law)", [list(range(256)), law]
            )
            for law in ("mulaw", "alaw")
        }

    decoded = await in_browser(server.port, scenario)
    for law, samples in decoded.items():
        reference, _rate = decode(bytes(range(256)), OutputAudio(law, 8000))
        assert np.array_equal(np.asarray(samples, dtype=np.float32), reference), law


async def test_a_double_click_an_emoji_and_an_input_with_nothing_to_say(server):
    """A double-click on a fresh page opens one socket and speaks twice, in order; words
    after an emoji are lit where they are (krt counts code points, JavaScript UTF-16
    units); and text with no words ends at once with a message, not "Speaking…"."""
    text = "Great news 🎉🎉 your order shipped today."

    def scenario(page: Page) -> dict[str, Any]:
        page.fill("#key", KEY)
        page.fill("#text", text)
        page.fill("#speed", "2")
        page.dblclick("#speak")
        wait(page, "window.playground.responses.p2?.heardAll === true")
        shown = page.evaluate(
            "() => [...document.querySelectorAll('#words .word')].map((span) => span.textContent)"
        )
        spoken = {name: response(page, name) for name in ("p1", "p2")}
        speak(page, "...")
        wait(page, "window.playground.responses.p3?.done === true")
        return {**spoken, "shown": shown, "p3": response(page, "p3"), "status": page.inner_text("#status")}

    seen = await in_browser(server.port, scenario)
    assert sum("session open" in line for line in server.lines) == 1
    for name in ("p1", "p2"):
        assert seen[name]["heardAll"] and seen[name]["played"] == seen[name]["samples"] > 0
    assert (
        seen["p2"]["firstSoundMs"] + seen["p2"]["sentAt"] > seen["p1"]["sentAt"] + seen["p1"]["firstSoundMs"]
    )
    assert (
        seen["shown"]
        == [word["text"] for word in seen["p2"]["words"]]
        == ["Great", "news", "your", "order", "shipped", "today"]
    )
    assert seen["p3"]["samples"] == 0 and seen["p3"]["ended"] == "completed"
    assert seen["status"] == "Nothing to say in that."
