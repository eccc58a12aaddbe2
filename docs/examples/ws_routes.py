"""Four ways to put a WebSocket handler on a route."""

from typing import Any

from fastapi import FastAPI, WebSocket
from starlette.requests import Request

from h3_fastapi import H3Router, Message, Peer, define_websocket_handler

app = FastAPI()
router = H3Router()


# --8<-- [start:decorator]
@router.ws("/echo")
class Echo:
    async def message(self, peer: Peer, message: Message) -> None:
        await peer.send(message.text())


# --8<-- [end:decorator]

# --8<-- [start:call]
shout = router.ws(
    "/shout",
    define_websocket_handler(message=lambda peer, message: peer.send(message.text().upper())),
)
# --8<-- [end:call]


# --8<-- [start:http]
def status_page(request: Request) -> dict[str, int]:
    return {"online": len(status.peers.get("/status", ()))}


status = router.ws(
    "/status",
    define_websocket_handler(open=lambda peer: peer.send("connected"), http=status_page),
)
# --8<-- [end:http]

app.include_router(router)


# --8<-- [start:plain]
def greeter(request: Request) -> dict[str, Any]:
    """A hooks factory: called for every upgrade, with the path parameters."""
    name = request.path_params["name"]
    return {"open": lambda peer: peer.send(f"Hello, {name}!")}


app.add_api_websocket_route("/hello/{name}", define_websocket_handler(greeter))
# --8<-- [end:plain]

# --8<-- [start:endpoint]
echo_handler = define_websocket_handler(message=lambda peer, message: peer.send(message))


@app.websocket("/inside")
async def inside(websocket: WebSocket) -> None:
    # Your own endpoint can hand the connection over at any point.
    await echo_handler.handle(websocket)


# --8<-- [end:endpoint]
