from __future__ import annotations

import base64
import json

import pytest

from krt.wire.protocol import (
    CLIENT_EVENT_TYPES,
    AudioSettings,
    Barge,
    EffectiveAudio,
    EffectiveSession,
    ErrorDetail,
    ErrorEvent,
    Event,
    InputAppend,
    InputCommit,
    OutputAudioDelta,
    OutputAudioTimestamps,
    Ping,
    Pong,
    ProtocolError,
    ResponseCancel,
    ResponseCanceled,
    ResponseCompleted,
    ResponseCreate,
    ResponseCreated,
    ResponseError,
    SessionEnd,
    SessionPatch,
    SessionUpdate,
    SessionUpdated,
    UnknownServerEvent,
    WordTiming,
    decode_client_event,
    decode_server_event,
    encode,
    encode_audio_delta,
)

LIMIT = 64 * 1024

CLIENT_EVENTS = [
    SessionUpdate(SessionPatch()),
    SessionUpdate(SessionPatch(voice="af_heart", speed=1.25, audio=AudioSettings("opus", 48000))),
    SessionUpdate(SessionPatch(audio=AudioSettings(format="pcm"))),
    SessionUpdate(SessionPatch(audio=AudioSettings("mulaw", 8000), timestamps=True)),
    ResponseCreate("Okay, let's go."),
    ResponseCreate("Okay.", timestamps=False),
    ResponseCreate("Hé « là » 😀", response_id="uuid-1", voice="male", speed=0.8),
    InputAppend("partial..."),
    InputAppend(""),
    InputCommit(),
    ResponseCancel(response="uuid-1"),
    ResponseCancel(response_id="uuid-2"),
    Barge(),
    SessionEnd(),
    Ping(),
    Ping(id="k-1"),
]

SERVER_EVENTS = [
    SessionUpdated(EffectiveSession("af_heart", 1.0, EffectiveAudio("pcm", 24000), False)),
    OutputAudioTimestamps("r", [WordTiming("$5", 0.0, 612.5, 4, 6), WordTiming("Hi", 700.0, 900.0, 0, 2)]),
    ResponseCreated("uuid-1"),
    OutputAudioDelta("uuid-1", base64.b64encode(b"\x01\x00\xff\x7f").decode()),
    ResponseCompleted("uuid-1"),
    ResponseCanceled("uuid-1"),
    ResponseError("uuid-1", "too_long", "the input is longer than 1000 words"),
    ErrorEvent(ErrorDetail("invalid_request_error", "invalid_json", "not JSON")),
    ErrorEvent(ErrorDetail("invalid_request_error", "unknown_event", "nope", event_type="nope")),
    Pong(),
    Pong(id="k-1"),
]


@pytest.mark.parametrize("event", CLIENT_EVENTS, ids=repr)
def test_client_event_round_trips(event: Event) -> None:
    text = encode(event)
    assert decode_client_event(text, LIMIT) == event
    assert next(iter(json.loads(text))) == "type"


@pytest.mark.parametrize("event", SERVER_EVENTS, ids=repr)
def test_server_event_round_trips(event: Event) -> None:
    text = encode(event)
    assert decode_server_event(text) == event
    assert next(iter(json.loads(text))) == "type"


def test_every_client_type_is_known() -> None:
    assert (
        {type(event).TYPE for event in CLIENT_EVENTS}
        == CLIENT_EVENT_TYPES
        == {
            "session.update",
            "response.create",
            "input.append",
            "input.commit",
            "response.cancel",
            "barge",
            "session.end",
            "ping",
        }
    )


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (ResponseCreate("Hi"), '{"type":"response.create","input":"Hi"}'),
        (ResponseCancel(response_id="r"), '{"type":"response.cancel","response_id":"r"}'),
        (InputCommit(), '{"type":"input.commit"}'),
        (Pong(), '{"type":"pong"}'),
        (Pong(id="k-1"), '{"type":"pong","id":"k-1"}'),
        (
            SessionUpdated(EffectiveSession("af_heart", 1.0, EffectiveAudio("pcm", 24000), False)),
            '{"type":"session.updated","session":{"voice":"af_heart","speed":1.0,'
            '"audio":{"format":"pcm","sample_rate":24000},"timestamps":false}}',
        ),
        (
            ErrorEvent(ErrorDetail("invalid_request_error", "oversized", "too big")),
            '{"type":"error","error":{"type":"invalid_request_error","code":"oversized","message":"too big"}}',
        ),
        (
            ResponseError("r", "busy", "try later"),
            '{"type":"response.error","response":"r","code":"busy","message":"try later"}',
        ),
    ],
)
def test_encode_is_compact_type_first_and_omits_nulls(event: Event, wire: str) -> None:
    assert encode(event) == wire


_TYPES = (
    "barge, input.append, input.commit, ping, response.cancel, response.create, session.end, session.update"
)


@pytest.mark.parametrize(
    ("message", "code", "fragments", "event_type"),
    [
        pytest.param(b'{"type":"barge"}', "binary_frame", ["binary"], None, id="binary"),
        pytest.param('{"type":', "invalid_json", ["not valid JSON"], None, id="truncated-json"),
        pytest.param("", "invalid_json", ["not valid JSON"], None, id="empty"),
        pytest.param(
            '{"type":"response.create","input":"x","speed":NaN}', "invalid_json", ["NaN"], None, id="nan"
        ),
        pytest.param("[" * 10_000, "invalid_json", ["not valid JSON"], None, id="deep-nesting"),
        pytest.param('["barge"]', "invalid_json", ["JSON object", "array"], None, id="array"),
        pytest.param('"barge"', "invalid_json", ["JSON object", "string"], None, id="string"),
        pytest.param("{}", "unknown_event", ["no 'type'", _TYPES], None, id="no-type"),
        pytest.param(
            '{"type":5}', "unknown_event", ["'type' must be a string", _TYPES], None, id="type-number"
        ),
        pytest.param('{"type":["barge"]}', "unknown_event", ["'type'"], None, id="type-array"),
        pytest.param('{"type":"speak"}', "unknown_event", ['"speak"', _TYPES], "speak", id="unknown"),
        pytest.param(
            '{"type":"session.updated"}', "unknown_event", [_TYPES], "session.updated", id="server-type"
        ),
        pytest.param(
            '{"type":"response.create"}', "missing_field", ["'input'"], "response.create", id="no-input"
        ),
        pytest.param('{"type":"input.append"}', "missing_field", ["'text'"], "input.append", id="no-text"),
        pytest.param(
            '{"type":"session.update"}', "missing_field", ["'session'"], "session.update", id="no-session"
        ),
        pytest.param(
            '{"type":"response.cancel"}',
            "missing_field",
            ["'response'", "'response_id'"],
            "response.cancel",
            id="cancel-nothing",
        ),
        pytest.param(
            '{"type":"response.cancel","response":null,"response_id":null}',
            "missing_field",
            ["'response'"],
            "response.cancel",
            id="cancel-nulls",
        ),
        pytest.param(
            '{"type":"response.create","input":5}',
            "invalid_field",
            ["'input'", "string"],
            "response.create",
            id="input-number",
        ),
        pytest.param(
            '{"type":"response.create","input":"x","speed":"fast"}',
            "invalid_field",
            ["'speed'", "number", '"fast"'],
            "response.create",
            id="speed-string",
        ),
        pytest.param(
            '{"type":"response.create","input":"x","speed":true}',
            "invalid_field",
            ["'speed'", "boolean"],
            "response.create",
            id="speed-bool",
        ),
        pytest.param(
            '{"type":"response.create","input":"x","speed":1e999}',
            "invalid_field",
            ["'speed'", "finite"],
            "response.create",
            id="speed-inf",
        ),
        pytest.param(
            '{"type":"response.create","input":"x","voice":3}',
            "invalid_field",
            ["'voice'", "string"],
            "response.create",
            id="voice-number",
        ),
        pytest.param(
            '{"type":"response.create","input":"x","response_id":["a"]}',
            "invalid_field",
            ["'response_id'", "array"],
            "response.create",
            id="id-array",
        ),
        pytest.param(
            '{"type":"input.append","text":"\\ud800"}',
            "invalid_field",
            ["'text'", "surrogate"],
            "input.append",
            id="lone-surrogate",
        ),
        pytest.param(
            '{"type":"response.cancel","response":7}',
            "invalid_field",
            ["'response'"],
            "response.cancel",
            id="cancel-number",
        ),
        pytest.param(
            '{"type":"session.update","session":{"audio":{"format":"mp3"}}}',
            "invalid_field",
            ["'session.audio.format'", '"pcm", "opus", "mulaw", "alaw"', '"mp3"'],
            "session.update",
            id="format-mp3",
        ),
        pytest.param(
            '{"type":"session.update","session":{"audio":{"sample_rate":"x"}}}',
            "invalid_field",
            ["'session.audio.sample_rate'", "integer"],
            "session.update",
            id="rate-string",
        ),
        pytest.param(
            '{"type":"session.update","session":{"audio":{"sample_rate":true}}}',
            "invalid_field",
            ["'session.audio.sample_rate'", "boolean"],
            "session.update",
            id="rate-bool",
        ),
        pytest.param(
            '{"type":"session.update","session":{"timestamps":"false"}}',
            "invalid_field",
            ["'session.timestamps'", "true or false", '"false"'],
            "session.update",
            id="timestamps-string",
        ),
        pytest.param(
            '{"type":"session.update","session":{"audio":{"sample_rate":24000.5}}}',
            "invalid_field",
            ["'session.audio.sample_rate'", "integer"],
            "session.update",
            id="rate-float",
        ),
        pytest.param(
            '{"type":"session.update","session":{"audio":[]}}',
            "invalid_field",
            ["'session.audio'", "object"],
            "session.update",
            id="audio-array",
        ),
        pytest.param(
            '{"type":"session.update","session":"voice"}',
            "invalid_field",
            ["'session'", "object"],
            "session.update",
            id="session-string",
        ),
        pytest.param(
            '{"type":"session.update","session":{"voice":1,"speed":"x"}}',
            "invalid_field",
            ["'session.voice'", "'session.speed'"],
            "session.update",
            id="two-bad-fields",
        ),
    ],
)
def test_bad_client_input_is_one_protocol_error(
    message: str | bytes, code: str, fragments: list[str], event_type: str | None
) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_event(message, LIMIT)
    assert caught.value.code == code
    for fragment in fragments:
        assert fragment in caught.value.message
    assert caught.value.event_type == event_type


def test_protocol_error_becomes_an_error_event() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_event('{"type":"response.create","input":5}', LIMIT)
    assert json.loads(encode(caught.value.to_event())) == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "code": "invalid_field",
            "message": caught.value.message,
            "event_type": "response.create",
        },
    }


def test_oversized_is_measured_in_utf8_bytes() -> None:
    # 600 characters but 1,200 bytes: a character count would let it through.
    wide = json.dumps({"type": "input.append", "text": "é" * 600}, ensure_ascii=False)
    assert len(wide) < 1000 < len(wide.encode())
    with pytest.raises(ProtocolError) as caught:
        decode_client_event(wide, 1000)
    assert caught.value.code == "oversized"
    assert "1000 bytes" in caught.value.message
    assert decode_client_event(wide, len(wide.encode())) == InputAppend("é" * 600)


def test_oversized_is_checked_before_parsing() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_event("{" * 2000, 1000)
    assert caught.value.code == "oversized"


def test_unknown_extra_keys_are_ignored() -> None:
    realtime_shaped = {
        "type": "session.update",
        "event_id": "event_123",
        "session": {
            "modalities": ["audio"],
            "voice": "af_heart",
            "audio": {"format": "pcm", "sample_rate": 24000, "channels": 1},
        },
    }
    assert decode_client_event(json.dumps(realtime_shaped), LIMIT) == SessionUpdate(
        SessionPatch(voice="af_heart", audio=AudioSettings("pcm", 24000))
    )
    create = '{"type":"response.create","input":"Hi","event_id":"e1","extra":{"deep":[1,2]}}'
    assert decode_client_event(create, LIMIT) == ResponseCreate("Hi")


def test_seed_example_session() -> None:
    # From the seed deployment's "Example WS session", which SPEC.md says krt keeps.
    client = [
        '{ "type": "session.update", "session": {"voice": "female", "audio": {"format":"pcm", "sample_rate": 24000}} }',
        '{ "type": "response.create", "response_id": "uuid-1", "input": "Okay, let\'s go." }',
        '{ "type": "input.append", "text": "Hello there" }',
        '{ "type": "input.commit" }',
        '{"type":"response.cancel", "response":"uuid"}',
        '{"type":"barge"}',
        '{ "type": "session.end" }',
    ]
    assert [decode_client_event(line, LIMIT) for line in client] == [
        SessionUpdate(SessionPatch(voice="female", audio=AudioSettings("pcm", 24000))),
        ResponseCreate("Okay, let's go.", response_id="uuid-1"),
        InputAppend("Hello there"),
        InputCommit(),
        ResponseCancel(response="uuid"),
        Barge(),
        SessionEnd(),
    ]
    server = [
        '{ "type": "response.created", "response": "uuid-1" }',
        '{ "type": "response.output_audio.delta", "response": "uuid-1", "delta": "<base64>" }',
        '{ "type": "response.completed", "response": "uuid-1" }',
    ]
    assert [decode_server_event(line) for line in server] == [
        ResponseCreated("uuid-1"),
        OutputAudioDelta("uuid-1", "<base64>"),
        ResponseCompleted("uuid-1"),
    ]


def test_speed_accepts_json_integers_as_floats() -> None:
    event = decode_client_event('{"type":"response.create","input":"x","speed":2}', LIMIT)
    assert isinstance(event, ResponseCreate)
    assert event.speed == 2.0
    assert type(event.speed) is float


def test_cancel_target_takes_either_spelling() -> None:
    by_id = decode_client_event('{"type":"response.cancel","response_id":"uuid-7"}', LIMIT)
    assert by_id == ResponseCancel(response_id="uuid-7")
    assert isinstance(by_id, ResponseCancel)
    assert by_id.target == "uuid-7"
    both = decode_client_event('{"type":"response.cancel","response":"a","response_id":"b"}', LIMIT)
    assert isinstance(both, ResponseCancel)
    assert both.target == "a"


def test_cancel_without_a_target_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="response_id"):
        ResponseCancel()


@pytest.mark.parametrize("response_id", ["uuid-1", "", 'quo"te\\back', "héllo ☃ 😀", "tab\tnew\nline"])
@pytest.mark.parametrize("pcm", [b"", b"\x00", b"\x01\x02\x03", bytes(range(256)) * 7])
def test_audio_delta_fast_path_matches_encode(response_id: str, pcm: bytes) -> None:
    fast = encode_audio_delta(response_id, pcm)
    assert fast == encode(OutputAudioDelta(response_id, base64.b64encode(pcm).decode("ascii")))
    decoded = decode_server_event(fast)
    assert isinstance(decoded, OutputAudioDelta)
    assert decoded.response == response_id
    assert base64.b64decode(decoded.delta, validate=True) == pcm


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[]",
        "{}",
        '{"type":"response.create","input":"x"}',
        '{"type":"response.created"}',
        '{"type":"response.created","response":5}',
        '{"type":"session.updated","session":{"voice":"v","speed":1,"audio":{"format":"pcm"}}}',
        '{"type":"error","error":{"type":"t","code":"c"}}',
    ],
)
def test_decode_server_event_rejects_junk_with_value_error(message: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        decode_server_event(message)


def test_an_event_newer_than_the_client_is_told_apart_from_junk() -> None:
    """A newer krt may send event types this client does not know: clients skip those
    quietly, and warn only about frames that are not events at all."""
    with pytest.raises(UnknownServerEvent, match=r"response\.output_audio\.visemes"):
        decode_server_event('{"type":"response.output_audio.visemes","response":"r1"}')
    for junk in ("[]", '{"type":5}', '{"type":"response.created"}'):
        with pytest.raises(ValueError, match=r"\S") as refused:
            decode_server_event(junk)
        assert not isinstance(refused.value, UnknownServerEvent)


def test_a_create_with_a_non_json_constant_still_names_its_response():
    """``Infinity`` is not JSON, but the id next to it is readable: the client waiting on
    that response gets its end rather than silence."""
    message = '{"type":"response.create","input":"x","response_id":"r1","speed":Infinity}'
    with pytest.raises(ProtocolError) as refused:
        decode_client_event(message, LIMIT)
    assert (refused.value.code, refused.value.response_id) == ("invalid_json", "r1")
