"""One app on uvicorn or hypercorn: ``python servers.py [uvicorn|hypercorn] [port]``.

A WebSocket echo on ``/echo`` and an SSE countdown on ``/countdown``. The
handler caps a message at 64 KiB, and ``serve()`` hands that limit to the
server, which then refuses a bigger message while it arrives. On granian:
``granian --interface asgi --loop uvloop servers:app``.
"""

import sys
from collections.abc import AsyncIterator

from fastapi import FastAPI

from h3_fastapi import H3Router, Message, Peer, event_stream, serve

app = FastAPI()
router = H3Router()


@router.ws("/echo", max_message_size=64 * 1024)
class Echo:
    async def message(self, peer: Peer, message: Message) -> None:
        await peer.send(message.text())


@router.get("/countdown")
@event_stream
async def countdown(start: int = 3) -> AsyncIterator[str]:
    for n in range(start, 0, -1):
        yield str(n)


app.include_router(router)  # after the routes: FastAPI copies them here

if __name__ == "__main__":
    # --8<-- [start:serve]
    server = sys.argv[1] if len(sys.argv) > 1 else "uvicorn"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    serve(app, port=port, server=server)  # blocks until Ctrl+C
    # --8<-- [end:serve]
