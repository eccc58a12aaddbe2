"""FastAPI dependencies on a WebSocket route: solved once per connection, before ``upgrade``."""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query

from h3_fastapi import H3Router, Peer

TOKENS = {"alice-token": "alice"}


# --8<-- [start:deps]
def current_user(token: Annotated[str | None, Query()] = None) -> str:
    user = TOKENS.get(token or "")
    if user is None:  # the client gets 401, FastAPI's JSON body and this header
        raise HTTPException(401, "Not authenticated", headers={"WWW-Authenticate": "Bearer"})
    return user


async def db_session() -> AsyncIterator[dict[str, Any]]:
    session = {"open": True}  # your database session
    try:
        yield session  # lives as long as the connection
    finally:
        session["open"] = False  # runs after the close hook


router = H3Router()


@router.ws("/rooms/{room}")
class Room:
    def upgrade(
        self,
        request: Any,
        room: str,  # path parameter
        user: Annotated[str, Depends(current_user)],
        session: Annotated[dict[str, Any], Depends(db_session)],
        history: Annotated[int, Query(ge=0)] = 10,  # ?history=x gives 422
    ) -> None:
        print(f"{user} joins {room}")  # return a dict or a Response as usual

    async def message(self, peer: Peer, message: Any) -> None:
        # Every solved value is on peer.context under its parameter name.
        await peer.send(f"{peer.context['user']}@{peer.context['room']}: {message}")

    def close(self, peer: Peer, details: Any) -> None:
        assert peer.context["session"]["open"]  # still open here


# --8<-- [end:deps]

app = FastAPI()
app.include_router(router)
