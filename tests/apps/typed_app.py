"""Typed messages (SPEC §6): typed hooks in every way in, typed sends and typed SSE items.

Also the app whose AsyncAPI document tests/test_asyncapi.py validates: path
parameters, a discriminated union, nested models, an included router and a
mounted sub-app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.sse import ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from h3_fastapi import (
    H3,
    EventStream,
    H3Router,
    Message,
    Peer,
    WSError,
    add_asyncapi,
    define_websocket_handler,
    event_stream,
)
from tests.apps.chat_app import EventLog

events = EventLog()
STAMP = datetime(2024, 5, 17, 12, 30, tzinfo=timezone.utc)


class Point(BaseModel):
    x: int
    y: int


class Draw(BaseModel):
    type: Literal["draw"] = "draw"
    points: list[Point]


class Say(BaseModel):
    type: Literal["say"] = "say"
    text: str = Field(max_length=200)


Incoming = Annotated[Draw | Say, Field(discriminator="type")]


class Outgoing(BaseModel):
    """What the room sends: aliases (camelCase) and a datetime."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    user_name: str
    sent_at: datetime
    kind: str
    points: list[Point] = []


class Tick(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    tick_number: int
    at: datetime


app = FastAPI(title="Typed test app", version="1.2.3")
h3 = H3Router(prefix="/api")


def record_error(peer: Peer, error: WSError) -> None:
    events.append(("error", peer.id, error))


@h3.ws("/rooms/{room}", send=Outgoing)
class Room:
    """Decorated class: the discriminated union arrives validated."""

    async def message(self, peer: Peer, message: Incoming) -> None:
        if isinstance(message, Draw):
            out = Outgoing(user_name=peer.id[:8], sent_at=STAMP, kind="draw", points=message.points)
        else:
            out = Outgoing(user_name=peer.id[:8], sent_at=STAMP, kind=f"say:{message.text}")
        await peer.send(out)

    def error(self, peer: Peer, error: WSError) -> None:
        record_error(peer, error)


def sum_numbers(peer: Peer, numbers: list[int]) -> Any:
    """A sync keyword hook typed with a plain list type."""
    return peer.send(sum(numbers))


h3.ws("/sum", message=sum_numbers, error=record_error)


async def untyped(peer: Peer, message: Message) -> None:
    point = message.model(Point)  # a ValidationError here is an ordinary hook error: 1011
    await peer.send(point)


h3.ws("/untyped", {"message": untyped, "error": record_error})


class PerConnection:
    """A factory's class: annotations resolved per class, not per upgrade."""

    def __init__(self, request: Request) -> None:
        self.room = request.path_params.get("room", "")

    async def message(self, peer: Peer, message: Point) -> None:
        await peer.send({"room": self.room, "x": message.x, "y": message.y})

    def error(self, peer: Peer, error: WSError) -> None:
        record_error(peer, error)


h3.ws("/factory/{room}", PerConnection)


@h3.get("/ticks")
@event_stream
async def ticks(request: Request, count: int = 3) -> AsyncIterator[Tick]:
    """Typed items: dicts are validated into ``Tick`` and sent by alias."""
    for n in range(count):
        if n % 2:
            yield {"tick_number": n, "at": STAMP}
        else:
            yield Tick(tick_number=n, at=STAMP)
    yield ServerSentEvent(data={"done": True}, event="end", id="last")


@h3.get("/bad-ticks")
@event_stream
async def bad_ticks(request: Request) -> AsyncIterator[Tick]:
    yield Tick(tick_number=0, at=STAMP)
    yield {"tick_number": "not a number"}  # fails validation: the stream ends here
    yield Tick(tick_number=2, at=STAMP)


@h3.get("/sync-ticks")
@event_stream
def sync_ticks(request: Request) -> Iterator[Tick]:
    """A plain generator runs in the threadpool."""
    yield Tick(tick_number=7, at=STAMP)


@h3.get("/events", response_class=EventStream)
async def pushed(request: Request) -> EventStream:
    stream = EventStream(request)
    stream.push(ServerSentEvent(data="quoted", event="json"))
    stream.push(ServerSentEvent(raw_data="raw text", id="7", retry=1000))
    stream.push(Tick(tick_number=1, at=STAMP))
    stream.close()
    return stream


@h3.get("/annotated")
async def annotated(request: Request) -> EventStream:
    stream = EventStream(request)
    stream.close()
    return stream


@h3.get("/json")
async def plain_json() -> dict[str, int]:
    return {"ok": 1}


app.include_router(h3)

# A mounted H3 sub-app with its own WebSocket route.
inner = H3()
inner.ws("/inner", define_websocket_handler(message=lambda peer, message: None))
app.mount("/sub", inner)

add_asyncapi(app)
