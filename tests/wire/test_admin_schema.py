"""The admin schema: every message survives the wire, and a bad line is a clear SchemaError."""

from __future__ import annotations

import json
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from krt.wire import admin_schema as schema

KNOBS = schema.Knobs(4, 16, 4000)
CONNECTION = schema.ConnectionInfo("c1", "127.0.0.1:5000", 1_700_000_000.5)
RESPONSE = schema.ResponseInfo(
    "c1",
    "r1",
    "speaking",
    "af_heart",
    1.25,
    "Hello — there ✓",
    15,
    1_700_000_001.0,
    1.1,
    0.5,
    12.0,
    180.5,
    2.4,
)
FAILED = schema.ResponseInfo("c1", "r2", "failed", "am_adam", 1.0, "x", 1, 1.0, 0.1, error_code="too_long")
ENGINE = schema.EngineSample(1.0, 2, 1, 3, 2.1, 87.5, 1.9, 4, 800.0, 1400.0, 760.0, None, 1.9, None)
LOG = schema.LogEntry(1.0, "WARNING", "krt.server.outbox", "c1: slow send, 250 ms")
SNAPSHOT = schema.Snapshot(True, False, KNOBS, (CONNECTION,), (RESPONSE, FAILED), ENGINE, (LOG,))

SERVER_MESSAGES: list[schema.ServerMessage] = [
    schema.Hello(
        schema.SCHEMA_VERSION,
        "0.1.0",
        42,
        "onnx",
        "cpu",
        "kokoro int8",
        "af_heart",
        "am_adam",
        ("af_heart", "am_adam"),
        1.0,
        12.5,
        SNAPSHOT,
    ),
    schema.Hello(
        schema.SCHEMA_VERSION,
        "0.1.0",
        1,
        "fake",
        "",
        "",
        "",
        "",
        (),
        0.0,
        0.0,
        schema.Snapshot(False, False, KNOBS),
    ),
    schema.ConnectionOpened(CONNECTION),
    schema.ConnectionClosed("c1", 2.0),
    schema.ResponseUpdated(RESPONSE),
    schema.ResponseUpdated(FAILED),
    schema.EngineUpdated(ENGINE),
    schema.ServerUpdated(True, True, KNOBS),
    schema.LogRecorded(LOG),
    schema.EventsLost(7, SNAPSHOT),
    schema.Reply(3, False, "no connection c9"),
]
COMMANDS: list[schema.Command] = [
    schema.CancelResponse(1, "c1", "r1"),
    schema.CloseConnection(2, "c1"),
    schema.Drain(3),
    schema.SetKnob(4, "QUEUE_WAIT_SLA_MS", 2500),
]


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda message: message.TYPE)
def test_every_server_message_survives_the_wire(message):
    line = schema.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["type"] == message.TYPE
    assert schema.decode_server_message(line) == message


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.TYPE)
def test_every_command_survives_the_wire(command):
    assert schema.decode_command(schema.encode(command)) == command


def test_every_message_type_is_covered_above():
    assert {cl.TYPE for cl in typing.get_args(schema.ServerMessage)} == {m.TYPE for m in SERVER_MESSAGES}
    assert {cl.TYPE for cl in typing.get_args(schema.Command)} == {c.TYPE for c in COMMANDS}


@given(request=st.integers(), connection=st.text(), response=st.text(), value=st.integers())
def test_commands_with_any_text_or_number_survive_the_wire(request, connection, response, value):
    for command in (
        schema.CancelResponse(request, connection, response),
        schema.SetKnob(request, "MAX_CONCURRENT_JOBS", value),
    ):
        assert schema.decode_command(schema.encode(command)) == command


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"type": "explode", "request": 1}', "not a valid 'explode'"),
        (b'{"type": "set", "request": 1, "knob": "LOG_LEVEL", "value": 1}', "not a valid 'set'"),
        (b'{"type": "cancel", "request": 1}', "not a valid 'cancel'"),
        (b" " * (schema.MAX_LINE_BYTES + 1), "line over"),
        (b"[" * 100_000, "not JSON"),  # nested past the parser's recursion limit
    ],
)
def test_a_bad_command_line_is_a_schema_error_that_says_what_is_wrong(line, says):
    with pytest.raises(schema.SchemaError, match=says):
        schema.decode_command(line)


def test_a_console_refuses_a_hello_of_another_schema_version():
    hello = json.loads(schema.encode(SERVER_MESSAGES[0]))
    hello["schema"] = schema.SCHEMA_VERSION + 1
    with pytest.raises(schema.SchemaError, match=f"admin schema {schema.SCHEMA_VERSION + 1}"):
        schema.decode_server_message(json.dumps(hello))
