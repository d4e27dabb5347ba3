"""The operator console: one screen to keep open beside a running krt.

A header with the server's state, a table of live connections and their responses, the
engine's load over the last minutes in small plots, and recent warnings. Keys act on
the selected response or connection (destructive ones ask first); ``?`` lists them.
The screen draws :class:`~console.model.ServerView` and nothing else; the feed fills it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar, Protocol

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Input, Label, RichLog, Select, Sparkline, Static

from console.model import ServerView
from krt.wire import admin_schema as schema

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

PLOTS = (
    ("ttfb_p95_1m", "TTFB p95 1m", "{:.0f} ms"),
    ("audio_per_s", "audio made", "{:.1f} s/s"),
    ("model_busy_pct", "model busy", "{:.0f} %"),
    ("waiting", "waiting", "{:.0f}"),
)
COLUMNS = ("conn", "peer", "response", "state", "voice", "queue", "TTFB", "audio", "xRT", "progress")
KNOBS: tuple[schema.KnobName, ...] = tuple(schema.KNOB_FIELDS)


class CommandSender(Protocol):
    async def send(self, command_for: Callable[[int], schema.Command]) -> int | None: ...


class Confirm(ModalScreen[bool]):
    """Yes or no before a destructive command."""

    BINDINGS: ClassVar[list[BindingType]] = [
        ("y", "answer(True)", "yes"),
        ("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question)
            with Horizontal():
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class SetKnob(ModalScreen[tuple[schema.KnobName, int] | None]):
    """Pick an admission knob and its new value."""

    BINDINGS: ClassVar[list[BindingType]] = [("escape", "dismiss(None)", "cancel")]

    def __init__(self, knobs: schema.Knobs | None) -> None:
        super().__init__()
        self.knobs = knobs

    def compose(self) -> ComposeResult:
        current = self.knobs
        with Vertical(id="dialog"):
            yield Label("Change an admission knob (applies at once; Enter to set, Esc to cancel)")
            yield Select(
                [(f"{name} (now {_knob_value(current, name)})", name) for name in KNOBS],
                value=KNOBS[0],
                allow_blank=False,
                id="knob",
            )
            yield Input(placeholder="new value", type="integer", id="value")

    def on_mount(self) -> None:
        self.query_one(Input).focus()  # the value; Tab reaches the knob

    def on_input_submitted(self, event: Input.Submitted) -> None:
        knob = self.query_one("#knob", Select).value
        if event.value.strip().lstrip("-").isdigit() and isinstance(knob, str):
            self.dismiss((knob, int(event.value)))  # type: ignore[arg-type]


class Details(ModalScreen[None]):
    """One response: its text and its timings."""

    BINDINGS: ClassVar[list[BindingType]] = [("escape,enter,q", "dismiss", "close")]

    def __init__(self, response: schema.ResponseInfo) -> None:
        super().__init__()
        self.response = response

    def compose(self) -> ComposeResult:
        r = self.response
        lines = [
            f"[b]{r.response}[/b] on {r.connection} — {r.state}"
            + (f" ({r.error_code})" if r.error_code else ""),
            f"voice {r.voice} at speed {r.speed:g}; {r.chars} characters, about {r.expected_audio_s:.1f} s of audio",
            f"created {time.strftime('%H:%M:%S', time.localtime(r.created_at))}; "
            f"queue {_ms(r.queue_ms)}; TTFB {_ms(r.ttfb_ms)}; audio sent {r.audio_s:.2f} s; "
            f"xRT {_x(r.xrt)}",
        ]
        with Vertical(id="dialog"):
            yield Static("\n".join(lines))
            yield Static(Text(r.text + ("…" if r.chars > len(r.text) else "")), id="text")
            yield Label("Esc to close")


class Help(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [("escape,question_mark,q", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        rows = [
            ("↑ ↓", "select a response (or an idle connection)"),
            ("enter", "the selected response's text and timings"),
            ("c", "cancel the selected response (asks first)"),
            ("x", "close the selected connection (asks first)"),
            ("d", "drain the server: refuse new work, finish what runs, exit (asks first)"),
            ("k", "change MAX_CONCURRENT_JOBS, MAX_QUEUED_REQUESTS or QUEUE_WAIT_SLA_MS live"),
            ("?", "this help"),
            ("q", "quit the console (the server goes on)"),
        ]
        with Vertical(id="dialog"):
            yield Static("\n".join(f"[b]{key:>7}[/b]  {what}" for key, what in rows))
            yield Label("Esc to close")


class KrtConsole(App[None]):
    TITLE = "krt console"
    CSS = """
    #status { height: 1; background: $boost; padding: 0 1; }
    #state { height: 3; padding: 0 1; }
    #table { height: 1fr; }
    #plots { height: 7; }
    .plot { width: 1fr; padding: 0 1; }
    .plot Sparkline { height: 4; }
    #logs { height: 8; border-top: solid $primary; }
    #dialog { width: 90; height: auto; padding: 1 2; border: thick $primary; background: $surface; }
    Confirm, SetKnob, Details, Help { align: center middle; }
    #text { margin-top: 1; max-height: 12; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "cancel_response", "cancel"),
        Binding("x", "close_connection", "close conn"),
        Binding("d", "drain", "drain"),
        Binding("k", "set_knob", "knobs"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(
        self,
        sender: CommandSender,
        follow: Callable[[KrtConsole], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``sender`` takes the commands; ``follow(app)``, started on mount, feeds the app
        (``feed_message``/``feed_status``) for as long as it runs."""
        super().__init__()
        self.view = ServerView()
        self.sender = sender
        self.follow = follow
        self.clock = clock
        """Measures how long since the hello arrived (the server's own uptime is in it):
        the server's and this machine's clocks may disagree, as over SSH."""
        self._hello_at = 0.0
        self._dirty = False
        self.attached = False
        self.status = "attaching…"
        self.notice = ""
        self._rows: list[tuple[str, str | None]] = []
        """(connection, response or None) of each table row, in order."""

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield Static(id="state")
        yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
        with Grid(id="plots"):
            for field, title, _unit in PLOTS:
                with Vertical(classes="plot"):
                    yield Label(title, id=f"label-{field}")
                    yield Sparkline([], id=f"plot-{field}")
        yield RichLog(id="logs", max_lines=200, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*COLUMNS)
        self.query_one("#plots", Grid).styles.grid_size_columns = len(PLOTS)
        self.set_interval(1.0, self._draw_header)
        self._draw()
        if self.follow is not None:
            self.run_worker(self.follow(self), name="feed", exclusive=True)

    # -- the feed ----------------------------------------------------------------------------

    def feed_message(self, message: schema.ServerMessage) -> None:
        self.view.apply(message)
        if isinstance(message, schema.Hello):
            self._hello_at = self.clock()
        if isinstance(message, schema.Reply):
            self.notice = ("done: " if message.ok else "refused: ") + message.message
            self.notify(message.message, severity="information" if message.ok else "error")
        if isinstance(message, schema.LogRecorded | schema.Hello | schema.EventsLost):
            self._draw_logs()
        if not self._dirty:  # one redraw for a burst of messages, not one per message
            self._dirty = True
            self.call_later(self._draw)

    def feed_status(self, attached: bool, status: str) -> None:
        self.attached, self.status = attached, status
        self._draw_header()

    # -- drawing -------------------------------------------------------------------------------

    def _draw(self) -> None:
        self._dirty = False
        if not self.is_running:
            return
        self._draw_header()
        self._draw_table()
        self._draw_plots()

    def _draw_header(self) -> None:
        # Quitting removes the screen's widgets before it stops the app's timers and
        # callbacks: a redraw landing in between must be skipped, not crash the exit.
        if not self.is_running:
            return
        view, hello = self.view, self.view.hello
        if hello is None:
            identity = "krt"
        else:
            uptime = hello.uptime_s + max(0.0, self.clock() - self._hello_at)
            identity = (
                f"krt {hello.version} · {hello.backend}"
                + (f" on {hello.device}" if hello.device else "")
                + f" · pid {hello.pid} · up {_duration(uptime)} · voices {hello.female} / {hello.male}"
            )
        link = ("● " if self.attached else "○ ") + self.status
        self.query_one("#status", Static).update(Text(f"{identity}   {link}"))
        if not self.attached:  # what follows is the last that was seen, not live
            state, style = "DETACHED", "bold white on red"
        elif view.draining:
            state, style = "DRAINING", "bold red"
        else:
            state, style = ("READY", "bold green") if view.ready else ("LOADING", "bold yellow")
        line = Text(state, style=style)
        if view.knobs is not None:
            k = view.knobs
            line.append(
                f"   MAX_CONCURRENT_JOBS {k.max_concurrent_jobs} · MAX_QUEUED_REQUESTS {k.max_queued_requests}"
                f" · QUEUE_WAIT_SLA_MS {k.queue_wait_sla_ms}"
            )
        if view.engine is not None:
            e = view.engine
            line.append(
                f"\nactive {e.active}/{e.slots} · waiting {e.waiting} · capacity {e.capacity:.1f}x"
                f" · busy refusals {e.busy_refusals} · TTFB p50/p95 1m {_ms(e.ttfb_p50_1m)}/{_ms(e.ttfb_p95_1m)}"
                f" 5m {_ms(e.ttfb_p50_5m)}/{_ms(e.ttfb_p95_5m)} · xRT 1m {_x(e.xrt_1m)}"
            )
        if view.lost_events:
            line.append(f"   (lost {view.lost_events} events: too slow; resynced)", style="yellow")
        if self.notice:
            line.append(f"\n{self.notice}", style="italic")
        self.query_one("#state", Static).update(line)

    def _draw_table(self) -> None:
        table = self.query_one(DataTable)
        index = table.cursor_row
        selected = self._rows[index] if self._rows and 0 <= index < len(self._rows) else None
        rows: list[tuple[str, str | None]] = []
        cells: list[tuple[object, ...]] = []
        # Open connections first, each with its live responses (or as idle); then what
        # ended, newest first: what an operator acts on is at the top.
        for connection, info in self.view.connections.items():
            live = [r for r in self.view.responses_of(connection) if r.state in ("queued", "speaking")]
            if not live:
                rows.append((connection, None))
                cells.append((connection, info.peer, "—", "idle", "", "", "", "", "", ""))
            for r in live:
                rows.append((connection, r.response))
                cells.append(_response_cells(r, info.peer))
        for r in reversed(list(self.view.responses.values())):
            if r.state not in ("queued", "speaking"):
                open_connection = self.view.connections.get(r.connection)
                rows.append((r.connection, r.response))
                cells.append(_response_cells(r, open_connection.peer if open_connection else "closed"))
        table.clear()
        for row in cells:
            table.add_row(*row)
        self._rows = rows
        if selected in rows and self._is_live(selected):  # a live row is followed as rows come and go
            table.move_cursor(row=rows.index(selected), animate=False)
        elif selected is not None and (same := [n for n, row in enumerate(rows) if row[0] == selected[0]]):
            table.move_cursor(row=same[0], animate=False)  # its connection's next row
        elif rows:
            table.move_cursor(row=min(index, len(rows) - 1), animate=False)

    def _draw_plots(self) -> None:
        for field, title, unit in PLOTS:
            series = self.view.series(field)[-120:]
            # From zero, so a flat line reads as its level, not as the top of the plot.
            self.query_one(f"#plot-{field}", Sparkline).data = [0.0, *series] if series else []
            now = f" {unit.format(series[-1])}" if series else ""
            self.query_one(f"#label-{field}", Label).update(f"{title}{now}")

    def _draw_logs(self) -> None:
        if not self.is_running:
            return
        log = self.query_one(RichLog)
        log.clear()
        for entry in self.view.logs:
            stamp = time.strftime("%H:%M:%S", time.localtime(entry.at))
            style = "red" if entry.level in ("ERROR", "CRITICAL") else "yellow"
            log.write(Text(f"{stamp} {entry.level} {entry.logger}: {entry.message}", style=style))

    # -- commands ------------------------------------------------------------------------------

    def _is_live(self, row: tuple[str, str | None]) -> bool:
        """An open connection's idle row or a live response: what an operator acts on. The
        cursor stays put on anything else, so live rows appearing above are not missed."""
        connection, response = row
        if response is None:
            return connection in self.view.connections
        info = self.view.responses.get((connection, response))
        return info is not None and info.state in ("queued", "speaking")

    def selected(self) -> tuple[str, str | None] | None:
        table = self.query_one(DataTable)
        if not self._rows or not 0 <= table.cursor_row < len(self._rows):
            return None
        return self._rows[table.cursor_row]

    def selected_response(self) -> schema.ResponseInfo | None:
        row = self.selected()
        if row is None or row[1] is None:
            return None
        return self.view.responses.get((row[0], row[1]))

    async def _send(self, command_for: Callable[[int], schema.Command], doing: str) -> None:
        if await self.sender.send(command_for) is None:
            self.notice = f"not attached: cannot {doing}"
            self.notify(self.notice, severity="error")
        else:
            self.notice = f"{doing}…"
        self._draw_header()

    def action_cancel_response(self) -> None:
        response = self.selected_response()
        if response is None or response.state not in ("queued", "speaking"):
            self.notify("select a live response first", severity="warning")
            return

        async def confirmed(yes: bool | None) -> None:
            if yes:
                await self._send(
                    lambda n: schema.CancelResponse(n, response.connection, response.response),
                    f"cancel {response.response}",
                )

        self.push_screen(Confirm(f"Cancel {response.response} on {response.connection}?"), confirmed)

    def action_close_connection(self) -> None:
        row = self.selected()
        if row is None or row[0] not in self.view.connections:
            self.notify("select an open connection first", severity="warning")
            return
        connection = row[0]
        peer = self.view.connections[connection].peer

        async def confirmed(yes: bool | None) -> None:
            if yes:
                await self._send(lambda n: schema.CloseConnection(n, connection), f"close {connection}")

        self.push_screen(Confirm(f"Close connection {connection} ({peer})? Its responses stop."), confirmed)

    def action_drain(self) -> None:
        async def confirmed(yes: bool | None) -> None:
            if yes:
                await self._send(lambda n: schema.Drain(n), "drain")

        self.push_screen(
            Confirm("Drain the server? It refuses new work, finishes what runs, then exits."), confirmed
        )

    def action_set_knob(self) -> None:
        async def chosen(choice: tuple[schema.KnobName, int] | None) -> None:
            if choice is not None:
                knob, value = choice
                await self._send(lambda n: schema.SetKnob(n, knob, value), f"set {knob} to {value}")

        self.push_screen(SetKnob(self.view.knobs), chosen)

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        """Enter on a row (the table takes the key itself)."""
        self.action_details()

    def action_details(self) -> None:
        response = self.selected_response()
        if response is not None:
            self.push_screen(Details(response))

    def action_help(self) -> None:
        self.push_screen(Help())


def _response_cells(r: schema.ResponseInfo, peer: str) -> tuple[object, ...]:
    progress = min(1.0, r.audio_s / r.expected_audio_s) if r.expected_audio_s > 0 else 0.0
    if r.state == "completed":
        progress = 1.0
    bar = "█" * round(progress * 10) + "·" * (10 - round(progress * 10))
    state = Text(r.state + (f" {r.error_code}" if r.error_code else ""), style=_STATE_STYLES.get(r.state, ""))
    return (
        r.connection, peer, r.response, state, r.voice, _ms(r.queue_ms), _ms(r.ttfb_ms),
        f"{r.audio_s:.1f} s", _x(r.xrt), bar,
    )  # fmt: skip


_STATE_STYLES = {
    "queued": "yellow",
    "speaking": "green",
    "canceled": "magenta",
    "failed": "red",
    "completed": "dim",
}


def _knob_value(knobs: schema.Knobs | None, name: schema.KnobName) -> str:
    if knobs is None:
        return "?"
    return str(getattr(knobs, schema.KNOB_FIELDS[name]))


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
