"""The five crossws hooks; any of them may be ``def`` or ``async def``."""

import logging
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from h3_fastapi import CloseDetails, H3Router, Message, Peer, WSError

log = logging.getLogger("chat")
router = H3Router()


@router.ws("/_ws")
class Hooks:
    def upgrade(self, request: Request) -> dict[str, Any]:
        log.info("upgrading %s", request.url)
        return {"headers": {"x-powered-by": "h3-fastapi"}}

    async def open(self, peer: Peer) -> None:
        log.info("open %s", peer)
        await peer.send("Welcome!")

    def message(self, peer: Peer, message: Message) -> None:
        if message.text() == "boom":
            raise RuntimeError("this hook failed")  # -> error hook, then close 1011
        peer.send(f"You said: {message}")

    def close(self, peer: Peer, details: CloseDetails) -> None:
        log.info("close %s code=%s reason=%r", peer, details.code, details.reason)

    def error(self, peer: Peer, error: WSError) -> None:
        log.warning("error %s: %s (caused by %r)", peer, error, error.__cause__)


app = FastAPI()
app.include_router(router)
