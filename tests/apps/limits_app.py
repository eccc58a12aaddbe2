"""Rate limits under a flood: a limited route, an unlimited echo, and a flooding client.

``uvicorn tests.apps.limits_app:app`` serves ``/limited`` (100 messages/s, a
burst of 100, drop and notify) and ``/echo``; ``python -m
tests.apps.limits_app ws://host:port N`` is the flooder: it sends N frames to
``/limited`` as fast as its socket takes them, prints ``sent N`` and closes.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from fastapi import FastAPI

from h3_fastapi import H3Router, Message, Peer, RateLimit

RATE = 100
app = FastAPI()
h3 = H3Router()
passed: list[int] = []


def count(peer: Peer, message: Message) -> None:
    passed.append(len(message.raw_data))


h3.ws(
    "/limited",
    message=count,
    rate_limit=RateLimit(messages_per_second=RATE, message_burst=RATE, notice="slow down"),
)
h3.ws("/echo", message=lambda peer, message: peer.send(message.raw_data))
app.include_router(h3)


@app.get("/stats")
def stats() -> dict[str, Any]:
    return {"passed": len(passed)}


async def flood(url: str, count: int) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"{url}/limited", max_queue=None) as ws:
        frame = "x" * 100
        for _ in range(count):
            await ws.send(frame)
        print(f"sent {count}", flush=True)


if __name__ == "__main__":
    asyncio.run(flood(sys.argv[1], int(sys.argv[2])))
