"""The crossws demo behaviours as a FastAPI app, used by the WebSocket tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from pydantic import BaseModel
from starlette.responses import PlainTextResponse

from h3_fastapi import H3Router, Message, Peer, define_websocket_handler


class EventLog(list[tuple[str, str, Any]]):
    """Hook calls as they happen; tests wait on it instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def append(self, item: tuple[str, str, Any]) -> None:
        with self.changed:
            super().append(item)
            self.changed.notify_all()

    def wait(self, predicate: Callable[[list[Any]], bool], timeout: float = 5) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"hook events never matched; got {list(self)}")


app = FastAPI()
h3 = H3Router()
events = EventLog()


class Point(BaseModel):
    x: int
    y: int


@h3.ws("/_ws")
class Chat:
    """Welcome, ping/pong, echo + publish to the rest of ``chat``, ``peers``."""

    def upgrade(self, request: Any) -> Any:
        token = request.query_params.get("token")
        if token == "bad":
            return PlainTextResponse(
                "unauthorized: bad token",
                status_code=401,
                headers={"x-reason": "token", "www-authenticate": "Bearer"},
            )
        if token == "raise":
            raise HTTPException(403, "forbidden by exception", headers={"x-raised": "1"})
        request.context["user"] = request.query_params.get("user", "anon")
        result: dict[str, Any] = {
            "headers": {"set-cookie": "session=abc; Path=/", "x-upgrade": "yes"},
            "context": {"token": token},
        }
        protocol = request.query_params.get("accept_protocol")
        if protocol:
            result["protocol"] = protocol
        if request.query_params.get("room"):
            result["namespace"] = "room:" + request.query_params["room"]
        return result

    def open(self, peer: Peer) -> None:
        events.append(("open", peer.id, dict(peer.context)))
        peer.send({"welcome": peer.id, "namespace": peer.namespace, "user": peer.context["user"]})
        peer.subscribe("chat")
        peer.publish("chat", f"[system] {peer} joined")

    async def message(self, peer: Peer, message: Message) -> None:
        text = message.text()
        if text == "ping":
            peer.send("pong")
        elif text == "peers":
            peer.send([p.id for p in peer.peers])
        elif text == "request":
            req = peer.request
            peer.send(
                {
                    "url": str(req.url),
                    "path": req.url.path,
                    "query": dict(req.query_params),
                    "header": req.headers.get("x-custom"),
                    "remote": peer.remote_address,
                    "context": {k: v for k, v in peer.context.items() if k != "user"},
                }
            )
        elif text == "model":
            peer.send(Point(x=1, y=2))
        elif text == "close-me":
            peer.close(4000, "as you wish")
        elif text == "boom":
            raise RuntimeError("boom")
        elif message.is_binary:
            await peer.send(message.bytes())
        else:
            peer.publish("chat", f"[{peer}] {text}")
            await peer.send(message)

    def close(self, peer: Peer, details: Any) -> None:
        events.append(("close", peer.id, (details.code, details.reason)))

    def error(self, peer: Peer, error: Exception) -> None:
        events.append(("error", peer.id, repr(error.__cause__)))


def _echo(peer: Peer, message: Message) -> Any:
    return peer.send(message.data)


echo = h3.ws("/echo", define_websocket_handler(message=_echo))


def room_hooks(request: Any) -> dict[str, Any]:
    """A factory: hooks per upgrade, seeing path parameters."""
    room = request.path_params["room"]
    return {
        "open": lambda peer: peer.send(f"room {room} ns {peer.namespace}"),
        "message": lambda peer, message: peer.send(f"{room}:{message}"),
    }


h3.ws("/rooms/{room}", room_hooks)


def require_key(websocket: WebSocket) -> str:
    key = websocket.query_params.get("key")
    if key != "secret":
        raise HTTPException(401, "missing key")
    return key


h3.ws(
    "/guarded",
    define_websocket_handler(open=lambda peer: peer.send("in")),
    dependencies=[Depends(require_key)],
)
app.include_router(h3)

# plain FastAPI way in
app.add_api_websocket_route(
    "/raw", define_websocket_handler(message=lambda p, m: p.send(m.text().upper()))
)


@app.get("/publish")
def publish_http(topic: str, message: str) -> dict[str, bool]:
    """A plain ``def`` endpoint (threadpool) publishing to every subscriber."""
    Chat.publish(topic, message)
    return {"ok": True}


@app.get("/peers")
def peers_http(request: Request) -> dict[str, list[str]]:
    return {ns: [p.id for p in peers] for ns, peers in Chat.peers.items()}
