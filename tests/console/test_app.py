"""The operator console (Textual) driven by a fake feed: what it shows, and that each key
sends the right command, after a confirmation where it destroys something. The feed's
own reattaching is tested over a real Unix socket."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
from textual.widgets import DataTable, Static

from console.app import Confirm, Details, Help, KrtConsole
from console.feed import Feed, why_unreachable
from krt.wire import admin_schema as schema
from krt.wire.protocol import WS_PATH

if TYPE_CHECKING:
    from collections.abc import Callable

    from textual.pilot import Pilot

NOW = 1_764_500_000.0
KNOBS = schema.Knobs(4, 16, 4000)


def response(
    connection: str, response_id: str, state: schema.ResponseState, **fields: object
) -> schema.ResponseInfo:
    base: dict[str, object] = {
        "voice": "af_heart",
        "speed": 1.0,
        "text": f"This is {response_id}, spoken for a test.",
        "chars": 32,
        "created_at": NOW - 5,
        "expected_audio_s": 4.0,
        "audio_s": 1.5 if state != "queued" else 0.0,
        "queue_ms": 12.0 if state != "queued" else None,
        "ttfb_ms": 310.0 if state != "queued" else None,
        "xrt": 2.1 if state != "queued" else None,
    }
    base.update(fields)
    return schema.ResponseInfo(connection, response_id, state, **base)  # type: ignore[arg-type]


ENGINE = [
    schema.EngineSample(
        NOW - 3 + n,
        2,
        1,
        2,
        2.1,
        60.0 + 10 * n,
        1.5 + n / 4,
        3,
        700.0,
        900.0 + 50 * n,
        720.0,
        950.0,
        1.8,
        1.9,
    )
    for n in range(4)
]
HELLO = schema.Hello(
    schema.SCHEMA_VERSION, "0.1.0", 4242, "onnx", "cpu", "kokoro-82M int8", "af_heart", "am_adam",
    ("af_heart", "am_adam"), NOW - 3725, 3725.0,
    schema.Snapshot(
        True,
        False,
        KNOBS,
        (schema.ConnectionInfo("c1", "10.0.0.7:51234", NOW - 60), schema.ConnectionInfo("c2", "10.0.0.9:40000", NOW - 30)),
        (
            response("c1", "r1", "completed", audio_s=4.0),
            response("c1", "r2", "speaking"),
            response("c2", "r3", "queued"),
        ),
        ENGINE[-1],
        (schema.LogEntry(NOW - 10, "WARNING", "krt.server.outbox", "10.0.0.9:40000: slow send, 250 ms for 9600 bytes"),),
    ),
)  # fmt: skip


class FakeSender:
    """Takes the commands the console sends, numbering them as the real feed does."""

    def __init__(self, attached: bool = True) -> None:
        self.attached = attached
        self.commands: list[schema.Command] = []

    async def send(self, command_for: Callable[[int], schema.Command]) -> int | None:
        if not self.attached:
            return None
        self.commands.append(command_for(len(self.commands) + 1))
        return len(self.commands)


def console(sender: FakeSender | None = None) -> KrtConsole:
    app = KrtConsole(sender or FakeSender(), clock=lambda: NOW)
    return app


async def fed(pilot: Pilot[None]) -> None:
    """Feed the attach, the hello and a few engine samples, and let the screen draw them
    (it redraws once per burst of messages, soon after)."""
    app = pilot.app
    assert isinstance(app, KrtConsole)
    app.feed_status(True, "attached to run/krt-admin.sock")
    app.feed_message(HELLO)
    for sample in ENGINE:
        app.feed_message(schema.EngineUpdated(sample))
    await pilot.pause()


def text_of(app: KrtConsole, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def run(scenario: Callable[[], object]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_the_screen_shows_the_server_its_connections_and_responses():
    async def scenario() -> None:
        app = console()
        async with app.run_test(size=(120, 36)) as pilot:
            await fed(pilot)
            await pilot.pause()
            status, state = text_of(app, "#status"), text_of(app, "#state")
            assert "onnx on cpu" in status and "pid 4242" in status and "up 1h02m" in status
            assert "attached to run/krt-admin.sock" in status
            assert state.startswith("READY") and "MAX_CONCURRENT_JOBS 4" in state
            assert "TTFB p50/p95 1m 700 ms/1050 ms" in state
            table = app.query_one(DataTable)
            assert table.row_count == 3
            assert [str(table.get_row_at(n)[3]) for n in range(3)] == ["speaking", "queued", "completed"]

            app.feed_message(schema.ResponseUpdated(response("c2", "r3", "speaking", audio_s=2.0)))
            app.feed_message(schema.ConnectionOpened(schema.ConnectionInfo("c3", "10.0.0.5:1", NOW)))
            app.feed_message(schema.ServerUpdated(True, True, KNOBS))
            await pilot.pause()
            assert table.row_count == 4  # open connections first, what ended after
            assert str(table.get_row_at(1)[3]) == "speaking"
            assert table.get_row_at(2)[:4] == ["c3", "10.0.0.5:1", "—", "idle"]
            assert table.get_row_at(3)[2] == "r1"
            assert text_of(app, "#state").startswith("DRAINING")

    run(scenario)


def test_enter_shows_a_response_in_full_and_escape_goes_back():
    async def scenario() -> None:
        app = console()
        async with app.run_test(size=(120, 36)) as pilot:
            await fed(pilot)
            await pilot.press("down", "enter")
            assert isinstance(app.screen, Details)
            assert app.screen.response.response == "r3"
            await pilot.press("escape")
            assert not isinstance(app.screen, Details)
            await pilot.press("question_mark")
            assert isinstance(app.screen, Help)
            await pilot.press("escape")

    run(scenario)


def test_cancel_asks_first_and_sends_only_on_yes():
    async def scenario() -> None:
        sender = FakeSender()
        app = console(sender)
        async with app.run_test(size=(120, 36)) as pilot:
            await fed(pilot)
            await pilot.press("c")
            assert isinstance(app.screen, Confirm) and "Cancel r2 on c1" in app.screen.question
            await pilot.press("n")
            assert sender.commands == []
            await pilot.press("c", "y")
            await pilot.pause()
            assert sender.commands == [schema.CancelResponse(1, "c1", "r2")]
            await pilot.press("down", "down", "c")  # r1 is over: nothing to cancel, nothing asked
            assert not isinstance(app.screen, Confirm)
            assert len(sender.commands) == 1

    run(scenario)


def test_close_drain_and_knobs_send_their_commands():
    async def scenario() -> None:
        sender = FakeSender()
        app = console(sender)
        async with app.run_test(size=(120, 36)) as pilot:
            await fed(pilot)
            await pilot.press("down", "x")
            assert isinstance(app.screen, Confirm) and "c2" in app.screen.question
            await pilot.press("y", "d", "y", "k")
            await pilot.pause()
            await pilot.press("2", "enter")
            await pilot.pause()
            assert sender.commands == [
                schema.CloseConnection(1, "c2"),
                schema.Drain(2),
                schema.SetKnob(3, "MAX_CONCURRENT_JOBS", 2),
            ]
            app.feed_message(schema.Reply(3, False, "MAX_CONCURRENT_JOBS must be at least 1"))
            await pilot.pause()
            assert "refused: MAX_CONCURRENT_JOBS must be at least 1" in text_of(app, "#state")

    run(scenario)


def test_without_a_server_the_console_says_why_and_sends_nothing():
    async def scenario() -> None:
        sender = FakeSender(attached=False)
        app = console(sender)
        async with app.run_test(size=(120, 36)) as pilot:
            app.feed_status(False, "no admin socket at run/krt-admin.sock: is `krt serve` running?")
            await pilot.press("d", "y")
            await pilot.pause()
            assert "○ no admin socket at run/krt-admin.sock" in text_of(app, "#status")
            assert "not attached: cannot drain" in text_of(app, "#state")
            await fed(pilot)  # attached, then the server goes away: the last view stays, marked
            app.feed_status(False, "the server closed the admin connection; reattaching")
            await pilot.pause()
            assert text_of(app, "#state").startswith("DETACHED")
            assert app.query_one(DataTable).row_count == 3

    run(scenario)


def test_a_new_servers_hello_leaves_nothing_of_the_last_one():
    async def scenario() -> None:
        app = console()
        async with app.run_test(size=(120, 36)) as pilot:
            await fed(pilot)
            loading = schema.Snapshot(False, False, KNOBS)
            app.feed_message(attrs.evolve(HELLO, pid=5151, snapshot=loading))
            await pilot.pause()
            assert app.view.engine is None and not app.view.history and not app.view.logs
            assert app.query_one(DataTable).row_count == 0
            assert text_of(app, "#state").startswith("LOADING") and "active" not in text_of(app, "#state")

    run(scenario)


def test_the_main_screen(snap_compare):
    async def feed_it(pilot) -> None:
        await fed(pilot)
        await pilot.press("down")

    assert snap_compare(console(), terminal_size=(120, 36), run_before=feed_it)


def test_the_help_screen(snap_compare):
    async def open_help(pilot) -> None:
        await fed(pilot)
        await pilot.press("question_mark")

    assert snap_compare(console(), terminal_size=(120, 36), run_before=open_help)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[schema.ServerMessage] = []
        self.statuses: list[tuple[bool, str]] = []
        self.changed = asyncio.Event()

    def feed_message(self, message: schema.ServerMessage) -> None:
        self.messages.append(message)
        self.changed.set()

    def feed_status(self, attached: bool, status: str) -> None:
        self.statuses.append((attached, status))
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.changed.clear()
            await self.changed.wait()


def test_the_feed_says_why_it_cannot_attach_and_reattaches_when_the_server_is_back():
    async def scenario() -> None:
        with tempfile.TemporaryDirectory(prefix="krt-") as directory:
            path = Path(directory) / "admin.sock"
            recorder = Recorder()
            follower = asyncio.create_task(Feed(path).run(recorder))
            await asyncio.wait_for(recorder.until(lambda: bool(recorder.statuses)), 5)
            assert recorder.statuses[0] == (False, recorder.statuses[0][1])
            assert "no admin socket at" in recorder.statuses[0][1]

            async def greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.write(schema.encode(HELLO))
                await writer.drain()
                writer.close()  # a server restart, as the console sees it

            server = await asyncio.start_unix_server(greet, str(path))
            async with server:
                await asyncio.wait_for(recorder.until(lambda: len(recorder.messages) >= 2), 10)
            follower.cancel()
            assert recorder.messages == [HELLO, HELLO]  # attached, lost, attached again
            assert (True, f"attached to {path}") in recorder.statuses
            assert any("reattaching" in status for _attached, status in recorder.statuses)

    run(scenario)


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (ConnectionRefusedError(), "nobody answers"),
        (PermissionError(), "permission denied"),
    ],
)
def test_each_reason_a_socket_is_unreachable_is_said_plainly(error, says):
    assert says in why_unreachable(Path("run/krt-admin.sock"), error)


def test_a_path_that_is_not_a_socket_is_said_to_be_one(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert "is not a socket" in why_unreachable(notes, ConnectionRefusedError())


def test_end_to_end_the_console_cancels_a_real_clients_response_on_a_real_server():
    """``krt serve`` (fake model) with its admin socket, ``krt client`` speaking a long text
    through it, and the console attached to the real socket: the operator selects the
    live response and cancels it, and the client is told ``response.canceled``."""
    text = " ".join(f"This is sentence number {n} of a long answer." for n in range(30))

    class Watching(KrtConsole):
        def __init__(self, feed: Feed) -> None:
            super().__init__(feed, feed.run)
            self.speaking = asyncio.Event()

        def feed_message(self, message: schema.ServerMessage) -> None:
            super().feed_message(message)
            if any(info.state == "speaking" for info in self.view.live()):
                self.speaking.set()

    async def scenario(directory: Path) -> None:
        env = {**os.environ, "KRT_BACKEND": "fake", "LOG_LEVEL": "INFO", "API_KEY": ""}
        krt = [sys.executable, "-m", "krt", "--env-file", str(directory / ".env")]
        server = await asyncio.create_subprocess_exec(
            *krt, "serve", "--host", "127.0.0.1", "--port", "0",
            cwd=directory, env=env, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert server.stderr is not None
            port = None
            while (
                line := (await asyncio.wait_for(server.stderr.readline(), 60)).decode()
            ) and "ready" not in line:
                if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                    port = int(match[1])
            assert port is not None, "the server never said where it listens"
            client = await asyncio.create_subprocess_exec(
                *krt, "client", "--url", f"ws://127.0.0.1:{port}{WS_PATH}", "--text", text,
                "--out", str(directory / "out.wav"),
                cwd=directory, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            app = Watching(Feed(directory / "run" / "krt-admin.sock"))
            async with app.run_test(size=(120, 36)) as pilot:
                await asyncio.wait_for(app.speaking.wait(), 30)
                await pilot.press("c")
                assert isinstance(app.screen, Confirm)
                await pilot.press("y")
                output, _ = await asyncio.wait_for(client.communicate(), 30)
            assert re.search(rb"krt-\w+-1 +canceled", output), output.decode()
        finally:
            server.terminate()
            await server.wait()

    with tempfile.TemporaryDirectory(prefix="krt-") as directory:
        asyncio.run(scenario(Path(directory)))


def test_a_redraw_that_lands_while_the_console_quits_is_skipped():
    """Quitting removes the widgets before the once-a-second header redraw (and any feed
    redraw queued) is stopped; one landing in between must not end the exit in a crash."""
    redrawn_at_unmount: list[bool] = []

    class Quitting(KrtConsole):
        def on_unmount(self) -> None:  # the widgets are gone, as a late tick would find them
            self._draw()
            self.feed_message(HELLO)
            redrawn_at_unmount.append(True)

    async def scenario() -> None:
        app = Quitting(FakeSender(), clock=lambda: NOW)
        async with app.run_test(size=(120, 36)) as pilot:
            await fed(pilot)
            await pilot.press("q")

    run(scenario)
    assert redrawn_at_unmount == [True]
