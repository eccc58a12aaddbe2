"""An app that documents its WebSocket and SSE routes with AsyncAPI 3.0."""

from typing import Annotated, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from h3_fastapi import H3Router, Peer, add_asyncapi, get_asyncapi

# --8<-- [start:app]
router = H3Router()


class Move(BaseModel):
    type: Literal["move"]
    x: int
    y: int


class Chat(BaseModel):
    type: Literal["chat"]
    text: str


class State(BaseModel):
    players: dict[str, tuple[int, int]]


@router.ws("/games/{game_id}", send=State)
class Game:
    """A receive operation with one message per union member; a send operation of State."""

    async def message(
        self, peer: Peer, event: Annotated[Move | Chat, Field(discriminator="type")]
    ) -> None:
        if isinstance(event, Move):
            await peer.send(State(players={peer.id[:8]: (event.x, event.y)}))


app = FastAPI(title="Game server", version="1.0.0")
app.include_router(router)
add_asyncapi(app)  # GET /asyncapi.json and the page at GET /asyncapi
# --8<-- [end:app]


# --8<-- [start:document]
def channel_addresses() -> list[str]:
    document = get_asyncapi(app)  # a dict: dump it, validate it, generate clients from it
    return [channel["address"] for channel in document["channels"].values()]


# --8<-- [end:document]
