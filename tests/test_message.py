"""``Message`` views and the outgoing serialisation rules (no server needed)."""

from __future__ import annotations

import dataclasses
import datetime
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, field_serializer

from h3_fastapi import Message
from h3_fastapi._serialize import to_text, to_wire
from h3_fastapi.pubsub import Outgoing


def test_text_message_views() -> None:
    message = Message("héllo")
    assert message.text() == "héllo"
    assert str(message) == "héllo"
    assert message.bytes() == "héllo".encode()
    assert message.data == message.raw_data == "héllo"
    assert not message.is_binary
    assert len(message.id) == 36 and message.id == message.id


def test_binary_message_views_and_invalid_utf8() -> None:
    message = Message(b"\xff\xfeok")
    assert message.is_binary
    assert message.bytes() == b"\xff\xfeok"
    assert message.text() == "\ufffd\ufffdok"  # never raises


def test_json_and_invalid_json() -> None:
    assert Message('{"a": [1, 2]}').json() == {"a": [1, 2]}
    assert Message(b'{"b": true}').json() == {"b": True}
    with pytest.raises(ValueError, match="not valid JSON"):
        Message("{nope").json()
    with pytest.raises(ValueError):
        Message(b"\xff").json()


@given(st.binary())
def test_any_bytes_decode_without_raising(data: bytes) -> None:
    message = Message(data)
    assert message.text() == data.decode("utf-8", "replace")
    assert message.bytes() == data
    assert message.is_binary


@given(st.text())
def test_any_text_round_trips(text: str) -> None:
    message = Message(text)
    assert message.text() == text
    assert message.bytes() == text.encode("utf-8")
    assert to_wire(message) == text


class Model(BaseModel):
    name: str
    tags: list[str]


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        (b"\x00bin", b"\x00bin"),
        (bytearray(b"ba"), b"ba"),
        (memoryview(b"mv"), b"mv"),
        (None, ""),
        (42, "42"),
        (1.5, "1.5"),
        (True, "true"),
        (False, "false"),
        ({"a": 1, "b": "é"}, '{"a":1,"b":"é"}'),
        ([1, "two", None], '[1,"two",null]'),
        (Point(1, 2), '{"x":1,"y":2}'),
        (Model(name="n", tags=["t"]), '{"name":"n","tags":["t"]}'),
        (Message("from a peer"), "from a peer"),
    ],
)
def test_serialisation_rules(value: object, expected: str | bytes) -> None:
    wire = to_wire(value)
    assert wire == expected
    assert type(wire) is type(expected)


class _Opaque:
    def __str__(self) -> str:
        return "opaque"


class Rich(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    when: datetime.datetime
    user_name: str = Field(alias="userName")
    secret: str = Field(exclude=True)

    @field_serializer("when")
    def _iso_date(self, value: datetime.datetime) -> str:
        return value.date().isoformat()


class WithOpaque(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    thing: _Opaque


def test_a_model_is_sent_as_its_own_json_by_alias() -> None:
    rich = Rich(when=datetime.datetime(2026, 11, 30, 12), userName="ada", secret="s")
    assert to_wire(rich) == '{"when":"2026-11-30","userName":"ada"}'
    assert to_wire(rich) == rich.model_dump_json(by_alias=True)
    # A field its serializer cannot encode: the generic encoder's fallback, as before.
    assert to_wire(WithOpaque(thing=_Opaque())) == '{"thing":"opaque"}'
    assert to_wire([rich]) == '[{"when":"2026-11-30","userName":"ada"}]'


def test_outgoing_is_encoded_once_and_shared() -> None:
    outgoing = Outgoing.encode({"k": "v"})
    assert Outgoing.encode(outgoing) is outgoing
    assert outgoing.message is outgoing.message
    assert outgoing.message == {"type": "websocket.send", "text": '{"k":"v"}'}
    binary = Outgoing.encode(b"\x01")
    assert binary.is_binary and binary.message == {"type": "websocket.send", "bytes": b"\x01"}
    assert json.loads(to_text({"n": 1})) == {"n": 1}
    assert to_text(b"caf\xc3\xa9") == "café"
