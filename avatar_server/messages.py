"""What clients send on a session's sockets, as pydantic models (docs/architecture.md "Sessions in detail").

- events socket: JSON text `{"type": "interrupt"}`, `{"type": "set_text", "text": str | null}`,
  `{"type": "pose", "keypoints": [[x, y, visibility], ...] | null}`: a union discriminated by `type`;
- audio socket: binary PCM16 (decoded by avatar_server.audio), or JSON text `{"type": "flush"}` / `{"type": "clear"}`.

A message that cannot be used is a `MessageError` with the code of the error event the client gets: `bad_message`
(not JSON, not an object with a string `type`, wrong fields), `unknown_command` (a `type` this socket does not
know). Fields a message does not define are ignored. What depends on the configuration or the model (text length,
the keypoint count) is checked where the message is applied.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, StrictStr, TypeAdapter, ValidationError

from model.errors import InputError


class MessageError(Exception):
    """A client message that cannot be used: `code` and `detail` of its error event."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Interrupt(BaseModel):
    """Barge-in: drop pending input and unplayed speech, fade to idle."""

    type: Literal["interrupt"]


class SetText(BaseModel):
    """The text condition from now on (null: none)."""

    type: Literal["set_text"]
    text: StrictStr | None = None


class Pose(BaseModel):
    """The pose condition from now on: the model's keypoints in [0, 1] image coordinates (null: none)."""

    type: Literal["pose"]
    keypoints: list[tuple[float, float, float]] | None = None

    def array(self, expected: int) -> np.ndarray | None:
        """The keypoints as float32 [expected, 3]; InputError when the model takes no pose, the count is wrong or a
        value is not finite (in float32)."""
        if self.keypoints is None:
            return None
        if not expected:
            raise InputError("this model takes no pose")
        if len(self.keypoints) != expected:
            raise InputError(f"keypoints must be a list of {expected} [x, y, visibility] triples")
        with np.errstate(over="ignore"):  # beyond float32: inf, refused below
            keypoints = np.asarray(self.keypoints, dtype=np.float32)
        if not np.isfinite(keypoints).all():
            raise InputError("keypoints must be finite numbers")
        return keypoints


class Flush(BaseModel):
    """End of utterance: feed what is pending without waiting for more."""

    type: Literal["flush"]


class Clear(BaseModel):
    """Barge-in from the audio side (the same as the events socket's interrupt)."""

    type: Literal["clear"]


EventsMessage = Annotated[Interrupt | SetText | Pose, Field(discriminator="type")]
AudioMessage = Annotated[Flush | Clear, Field(discriminator="type")]
EVENTS_MESSAGE: TypeAdapter[EventsMessage] = TypeAdapter(EventsMessage)
AUDIO_MESSAGE: TypeAdapter[AudioMessage] = TypeAdapter(AudioMessage)
AUDIO_COMMANDS = 'audio socket commands are {"type": "flush"} and {"type": "clear"}'


def load_json(text: str) -> Any:
    """A JSON text message; `bad_message` when it is not JSON or is nested too deeply for the parser."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise MessageError("bad_message", f"not JSON: {error.msg} at position {error.pos}") from None
    except RecursionError:
        raise MessageError("bad_message", "JSON nested too deeply") from None


def _first_error(error: ValidationError) -> str:
    """The first problem pydantic found, `field.path: message` (the command's own tag left out)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"][1:])
    more = error.error_count() - 1
    return (f"{where}: " if where else "") + first["msg"] + (f" (and {more} more)" if more else "")


def parse_events_message(text: str | None) -> Interrupt | SetText | Pose:
    """A command from the events socket (`text` is None for a binary message)."""
    if text is None:
        raise MessageError("bad_message", "commands are JSON text messages")
    data = load_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise MessageError("bad_message", 'a command is a JSON object with a "type"')
    try:
        return EVENTS_MESSAGE.validate_python(data)
    except ValidationError as error:
        if error.errors()[0]["type"] == "union_tag_invalid":
            raise MessageError("unknown_command", f"unknown command type {data['type']!r}") from None
        raise MessageError("bad_message", _first_error(error)) from None


def parse_audio_message(text: str) -> Flush | Clear:
    """A text command from the audio socket."""
    data = load_json(text)
    try:
        return AUDIO_MESSAGE.validate_python(data)
    except ValidationError:
        raise MessageError("unknown_command", AUDIO_COMMANDS) from None
