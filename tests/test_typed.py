"""Typed messages against a real uvicorn: typed hooks, typed sends, typed SSE, OpenAPI."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from pydantic import BaseModel, Field, ValidationError
from websockets.exceptions import ConnectionClosed

from h3_fastapi import Message, WSError, define_websocket_handler
from h3_fastapi._typing import message_type_of, typed_message_hook
from tests.apps import typed_app

TIMEOUT = 5


@pytest.fixture
def server(live_server: Any) -> Any:
    typed_app.events.clear()
    return live_server(typed_app.app)


async def recv_json(ws: Any) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def close_code(ws: Any) -> int | None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code is not None
    return int(ws.close_code)


def errors_of(peer_prefix: str | None = None) -> list[WSError]:
    typed_app.events.wait(lambda events: any(e[0] == "error" for e in events), TIMEOUT)
    return [e[2] for e in typed_app.events if e[0] == "error"]


# --- Message.model -----------------------------------------------------------


class Item(BaseModel):
    name: str
    qty: int = Field(ge=0)


def test_message_model_validates_any_pydantic_type() -> None:
    assert Message('{"name": "a", "qty": 2}').model(Item) == Item(name="a", qty=2)
    assert Message(b"[1, 2, 3]").model(list[int]) == [1, 2, 3]
    draw = Message('{"type": "draw", "points": [{"x": 1, "y": 2}]}').model(typed_app.Incoming)
    assert isinstance(draw, typed_app.Draw) and draw.points == [typed_app.Point(x=1, y=2)]
    with pytest.raises(ValidationError):
        Message('{"name": "a", "qty": -1}').model(Item)
    with pytest.raises(ValueError):  # not JSON at all: still a ValidationError (a ValueError)
        Message("not json").model(Item)


def test_untyped_hooks_are_not_wrapped_and_typed_ones_resolve_once() -> None:
    def plain(peer: Any, message: Message) -> None: ...

    def bare(peer, message):  # type: ignore[no-untyped-def]
        ...

    def typed(peer: Any, message: Item) -> None: ...

    assert typed_message_hook(plain) is plain
    assert typed_message_hook(bare) is bare
    wrapped = typed_message_hook(typed)
    assert wrapped is not typed and message_type_of(wrapped) is Item
    handler = define_websocket_handler(message=typed)
    assert handler.message_type is Item
    assert define_websocket_handler(message=plain).message_type is Message


# --- typed WebSocket messages on a real server ------------------------------


async def test_discriminated_union_and_typed_send_with_aliases_and_datetimes(server: Any) -> None:
    async with websockets.connect(f"{server.ws_url}/api/rooms/lobby") as ws:
        await ws.send(json.dumps({"type": "draw", "points": [{"x": 1, "y": 2}]}))
        drawn = await recv_json(ws)
        assert drawn["kind"] == "draw"
        assert drawn["points"] == [{"x": 1, "y": 2}]
        assert drawn["sentAt"] == "2024-05-17T12:30:00Z"  # alias + ISO datetime
        assert "userName" in drawn and "user_name" not in drawn
        await ws.send(json.dumps({"type": "say", "text": "hi"}))
        assert (await recv_json(ws))["kind"] == "say:hi"


async def test_invalid_message_calls_error_with_validation_cause_then_1007(server: Any) -> None:
    async with websockets.connect(f"{server.ws_url}/api/rooms/lobby") as ws:
        await ws.send(json.dumps({"type": "shout", "text": "?"}))  # no such union member
        assert await close_code(ws) == 1007
    (error,) = errors_of()
    assert isinstance(error, WSError)
    assert isinstance(error.__cause__, ValidationError)


async def test_invalid_json_is_1007_too(server: Any) -> None:
    async with websockets.connect(f"{server.ws_url}/api/sum") as ws:
        await ws.send(json.dumps([1, 2, 3]))
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "6"
        await ws.send("[1, 2,")
        assert await close_code(ws) == 1007
    (error,) = errors_of()
    assert isinstance(error.__cause__, ValidationError)


async def test_other_hook_errors_stay_1011(server: Any) -> None:
    """``message.model`` in an untyped hook raising is an ordinary hook error."""
    async with websockets.connect(f"{server.ws_url}/api/untyped") as ws:
        await ws.send(json.dumps({"x": 1, "y": 2}))
        assert await recv_json(ws) == {"x": 1, "y": 2}
        await ws.send(json.dumps({"x": "nope"}))
        assert await close_code(ws) == 1011
    (error,) = errors_of()
    assert isinstance(error.__cause__, ValidationError)


async def test_factory_hooks_class_is_typed_per_upgrade(server: Any) -> None:
    for room in ("a", "b"):
        async with websockets.connect(f"{server.ws_url}/api/factory/{room}") as ws:
            await ws.send(json.dumps({"x": 3, "y": 4}))
            assert await recv_json(ws) == {"room": room, "x": 3, "y": 4}
    async with websockets.connect(f"{server.ws_url}/api/factory/c") as ws:
        await ws.send(json.dumps({"x": 3}))
        assert await close_code(ws) == 1007


# --- typed SSE ---------------------------------------------------------------


def sse_events(text: str) -> list[dict[str, str]]:
    found = []
    for block in text.split("\n\n"):
        if not block:
            continue
        event: dict[str, str] = {}
        for line in block.split("\n"):
            key, _, value = line.partition(": ")
            event[key] = f"{event[key]}\n{value}" if key in event else value
        found.append(event)
    return found


async def test_typed_sse_items_are_validated_and_sent_by_alias(server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        response = await client.get("/api/ticks", params={"count": 2})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [json.loads(e["data"]) for e in events[:2]] == [
        {"tickNumber": 0, "at": "2024-05-17T12:30:00Z"},
        {"tickNumber": 1, "at": "2024-05-17T12:30:00Z"},  # a dict, validated into Tick
    ]
    # A fastapi.sse.ServerSentEvent passes through with its fields.
    assert events[2] == {"id": "last", "event": "end", "data": '{"done":true}'}


async def test_invalid_sse_item_ends_the_stream(server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        response = await client.get("/api/bad-ticks")
    events = sse_events(response.text)
    assert [json.loads(e["data"])["tickNumber"] for e in events] == [0]


async def test_sync_generator_items_are_typed(server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        response = await client.get("/api/sync-ticks")
    assert sse_events(response.text) == [{"data": '{"tickNumber":7,"at":"2024-05-17T12:30:00Z"}'}]


async def test_push_takes_fastapi_server_sent_event_and_models(server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        response = await client.get("/api/events")
    assert response.text == (
        'event: json\ndata: "quoted"\n\n'  # data is JSON, as in FastAPI
        "id: 7\nretry: 1000\ndata: raw text\n\n"  # raw_data as is
        'data: {"tickNumber":1,"at":"2024-05-17T12:30:00Z"}\n\n'
    )


# --- OpenAPI -----------------------------------------------------------------


async def test_openapi_documents_event_streams_as_text_event_stream(server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in ("/api/ticks", "/api/sync-ticks", "/api/events", "/api/annotated"):
        content = paths[path]["get"]["responses"]["200"]["content"]
        assert list(content) == ["text/event-stream"], path
        assert content["text/event-stream"]["itemSchema"]["type"] == "object"
    typed = paths["/api/ticks"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    data = typed["itemSchema"]["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    assert data["contentSchema"] == {"$ref": "#/components/schemas/Tick"}
    assert typed["itemSchema"]["required"] == ["data"]
    assert "tickNumber" in spec["components"]["schemas"]["Tick"]["properties"]
    untyped = paths["/api/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert untyped["itemSchema"]["properties"]["data"] == {"type": "string"}
    # Ordinary routes keep application/json.
    assert "application/json" in paths["/api/json"]["get"]["responses"]["200"]["content"]
