"""Peers: identity, per-connection context and who else is online."""

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from h3_fastapi import H3Router, Message, Peer

router = H3Router()


@router.ws("/rooms/{room}")
class Room:
    def upgrade(self, request: Request) -> dict[str, Any]:
        name = request.query_params.get("name", "anonymous")
        return {"context": {"name": name}}  # becomes peer.context

    def open(self, peer: Peer) -> None:
        # peer.peers: open peers of this namespace (default: the path, so one room)
        online = [other.context["name"] for other in peer.peers]
        peer.send({"you": peer.id, "room": peer.namespace, "online": online})

    def message(self, peer: Peer, message: Message) -> None:
        for other in peer.peers:
            if other is not peer:
                other.send({"from": peer.context["name"], "text": message.text()})


app = FastAPI()
app.include_router(router)
