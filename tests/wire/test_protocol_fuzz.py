"""Property tests of the one boundary client input crosses: whatever a client sends, the
decoder returns an event or a ProtocolError that becomes a well-formed ``error`` event."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from krt.wire import protocol

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    ["type", "input", "response_id", "response", "voice", "speed", "text", "session", "audio", "format"]
)
EVENT_TYPES = st.sampled_from(sorted(protocol.CLIENT_EVENT_TYPES)) | st.text(max_size=20)
EVENT_LIKE = st.builds(
    lambda event_type, fields: {"type": event_type, **fields},
    EVENT_TYPES,
    st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=5),
)


def decode_or_error(message: str | bytes) -> protocol.ClientEvent | protocol.ProtocolError:
    """The decoded event, or the ProtocolError after checking the ``error`` event it makes;
    any other exception fails the test."""
    try:
        return protocol.decode_client_event(message, protocol.MAX_EVENT_BYTES)
    except protocol.ProtocolError as error:
        refused = error
    answer = json.loads(protocol.encode(refused.to_event()))
    assert answer["type"] == "error" and answer["error"]["code"] == refused.code
    assert answer["error"]["message"]
    return refused


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_frame_is_an_event_or_a_clear_error(message):
    decode_or_error(message)


@settings(max_examples=500, deadline=None)
@given(EVENT_LIKE)
def test_any_event_shaped_object_is_an_event_or_a_clear_error(obj):
    result = decode_or_error(json.dumps(obj))
    if isinstance(result, protocol.ProtocolError):
        if obj["type"] == "response.create" and isinstance(obj.get("response_id"), str):
            # The create could not be read, but its id could: that response gets its end.
            assert result.response_id == obj["response_id"]
        else:
            assert result.response_id is None
    else:
        assert obj["type"] == result.TYPE


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=20), st.integers(min_value=protocol.MAX_EVENT_BYTES, max_value=200_000))
def test_an_oversized_create_still_names_its_response(response_id, size):
    frame = json.dumps({"type": "response.create", "response_id": response_id, "input": "a" * size})
    result = decode_or_error(frame)
    assert isinstance(result, protocol.ProtocolError) and result.code == "oversized"
    assert result.response_id == response_id
