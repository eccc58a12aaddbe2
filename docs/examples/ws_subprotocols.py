"""Subprotocols: none is accepted unless ``upgrade`` picks one."""

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from h3_fastapi import H3Router, Message, Peer

SUPPORTED = ["chat.v2", "chat.v1"]  # our order of preference

router = H3Router()


@router.ws("/chat")
class Versioned:
    def upgrade(self, request: Request) -> Response | dict[str, Any]:
        header = request.headers.get("sec-websocket-protocol", "")
        offered = [p.strip() for p in header.split(",") if p.strip()]
        for protocol in SUPPORTED:
            if protocol in offered:
                return {"protocol": protocol, "context": {"protocol": protocol}}
        return PlainTextResponse("Supported subprotocols: chat.v2, chat.v1", status_code=400)

    def message(self, peer: Peer, message: Message) -> None:
        if peer.context["protocol"] == "chat.v2":
            peer.send({"text": message.text()})  # v2 speaks JSON
        else:
            peer.send(message.text())


app = FastAPI()
app.include_router(router)
