"""Authenticate in ``upgrade``: reject with a response, or accept and remember the user."""

from typing import Any

from fastapi import Depends, FastAPI, HTTPException, WebSocket, WebSocketException, status
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from h3_fastapi import H3Router, Peer

TOKENS = {"alice-token": "alice", "bob-token": "bob"}
ADMINS = {"alice"}

router = H3Router()


# --8<-- [start:upgrade]
@router.ws("/private")
class Private:
    def upgrade(self, request: Request) -> Response | dict[str, Any]:
        # Browsers cannot set headers on a WebSocket: use a cookie or the query string.
        token = request.cookies.get("token") or request.query_params.get("token")
        user = TOKENS.get(token or "")
        if user is None:
            return PlainTextResponse(
                "Unauthorized", status_code=401, headers={"www-authenticate": "Bearer"}
            )
        room = request.query_params.get("room", "lobby")
        if room == "admins" and user not in ADMINS:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Admins only")
        return {"context": {"user": user, "room": room}}

    def open(self, peer: Peer) -> None:
        peer.send(f"Hello, {peer.context['user']}! You are in {peer.context['room']}.")


# --8<-- [end:upgrade]


# --8<-- [start:depends]
async def api_key(websocket: WebSocket) -> None:
    if websocket.headers.get("x-api-key") != "s3cret":
        raise WebSocketException(status.WS_1008_POLICY_VIOLATION)


router.ws(
    "/internal",
    {"open": lambda peer: peer.send("internal feed")},
    dependencies=[Depends(api_key)],
)
# --8<-- [end:depends]

app = FastAPI()
app.include_router(router)
