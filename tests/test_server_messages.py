"""Socket messages (avatar_server/messages.py) and the session's events, without a network: which error event
code each kind of bad message gets, and that the pydantic models hand the routes what they apply."""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import pytest

from avatar_server.events import SessionState, state_event
from avatar_server.messages import (
    Clear,
    Flush,
    Interrupt,
    MessageError,
    Pose,
    SetText,
    parse_audio_message,
    parse_events_message,
)
from model.errors import InputError


def code_of(parse: Callable[[Any], object], text: str | None) -> str:
    with pytest.raises(MessageError) as error:
        parse(text)
    return error.value.code


@pytest.mark.parametrize("text, code", [
    (None, "bad_message"),                       # a binary message
    ("not json", "bad_message"),
    ("[" * 100_000, "bad_message"),              # deeper than the parser goes
    ("[1, 2]", "bad_message"), ("{}", "bad_message"), ('{"type": 5}', "bad_message"),
    ('{"type": "dance"}', "unknown_command"), ('{"type": "flush"}', "unknown_command"),
    ('{"type": "set_text", "text": 5}', "bad_message"),
    ('{"type": "pose", "keypoints": "nope"}', "bad_message"),
    ('{"type": "pose", "keypoints": [[0.5, 0.5]]}', "bad_message"),
])
def test_bad_events_messages_get_their_error_codes(text: str | None, code: str) -> None:
    assert code_of(parse_events_message, text) == code


def test_events_messages_parse_into_their_models() -> None:
    assert isinstance(parse_events_message('{"type": "interrupt", "extra": 1}'), Interrupt)  # extra fields ignored
    assert parse_events_message('{"type": "set_text"}') == SetText(type="set_text", text=None)
    assert parse_events_message('{"type": "set_text", "text": "calm"}').text == "calm"
    pose = parse_events_message(json.dumps({"type": "pose", "keypoints": [[0.5, "0.25", 1]] * 4}))
    assert isinstance(pose, Pose)
    keypoints = pose.array(4)
    assert keypoints is not None and keypoints.dtype == np.float32 and keypoints.shape == (4, 3)
    assert Pose(type="pose").array(4) is None
    for bad, expected in ((pose, 5), (pose, 0), (Pose(type="pose", keypoints=[(1e300, 0, 1)]), 1),
                          (Pose(type="pose", keypoints=[(float("nan"), 0, 1)]), 1)):
        with pytest.raises(InputError):
            bad.array(expected)


def test_audio_socket_commands() -> None:
    assert isinstance(parse_audio_message('{"type": "flush"}'), Flush)
    assert isinstance(parse_audio_message('{"type": "clear", "why": "barge-in"}'), Clear)
    assert code_of(parse_audio_message, "") == "bad_message"
    for text in ('{"type": "interrupt"}', "{}", "5", '{"type": null}'):
        assert code_of(parse_audio_message, text) == "unknown_command"


def test_session_states_are_the_strings_clients_see() -> None:
    assert json.loads(json.dumps(state_event(SessionState.SPEAKING))) == {"type": "state", "state": "speaking"}
    assert [s.value for s in SessionState] == ["connecting", "idle", "silent", "speaking", "closed"]
