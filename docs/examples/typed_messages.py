"""Typed WebSocket messages: a Pydantic type on the ``message`` hook, models sent by alias."""

from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from h3_fastapi import H3Router, Message, Peer, WSError

router = H3Router()


# --8<-- [start:models]
class Join(BaseModel):
    type: Literal["join"]
    room: str


class Say(BaseModel):
    type: Literal["say"]
    text: str = Field(max_length=500)


# One of the two, chosen by "type": Pydantic reads the tag and validates only that model.
Command = Annotated[Join | Say, Field(discriminator="type")]


class Chat(BaseModel):
    """What the server sends: camelCase on the wire, an ISO 8601 timestamp."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    user_id: str
    text: str
    sent_at: datetime


class Joined(BaseModel):
    joined: str


# --8<-- [end:models]


# --8<-- [start:hook]
@router.ws("/chat", send=Chat | Joined)
class ChatRoom:
    async def message(self, peer: Peer, command: Command) -> None:
        if isinstance(command, Join):
            peer.subscribe(command.room)
            peer.context["room"] = command.room
            await peer.send(Joined(joined=command.room))
            return
        chat = Chat(user_id=peer.id[:8], text=command.text, sent_at=datetime.now(timezone.utc))
        await peer.send(chat)  # {"userId": ..., "text": ..., "sentAt": "2025-...Z"}
        peer.publish(peer.context.get("room", "lobby"), chat)

    def error(self, peer: Peer, error: WSError) -> None:
        # An invalid command: error.__cause__ is the pydantic.ValidationError,
        # and the connection is then closed with 1007 (invalid data).
        print("rejected:", error.__cause__)


# --8<-- [end:hook]


# --8<-- [start:model]
@router.ws("/points")
class Points:
    async def message(self, peer: Peer, message: Message) -> None:
        try:
            points = message.model(list[int])  # any type Pydantic validates
        except ValueError:  # pydantic.ValidationError is a ValueError
            await peer.send({"error": "send a JSON list of integers"})
            return
        await peer.send({"sum": sum(points)})


# --8<-- [end:model]


app = FastAPI()
app.include_router(router)
