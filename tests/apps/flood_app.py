"""A broadcaster for the scale tests: many peers, one slow reader, memory stats."""

from __future__ import annotations

import asyncio
import os
import resource
from typing import Any

from fastapi import FastAPI

from h3_fastapi import H3Router, Peer, define_websocket_handler

app = FastAPI()
h3 = H3Router()
closes: list[tuple[str, int]] = []
LIMIT = int(os.environ.get("FLOOD_SEND_BUFFER", str(4 * 1024 * 1024)))


def _open(peer: Peer) -> None:
    peer.context["slow"] = peer.request.query_params.get("slow") == "1"
    peer.subscribe("flood")
    peer.send("ready")


def _close(peer: Peer, details: Any) -> None:
    closes.append(("slow" if peer.context.get("slow") else "fast", details.code))


handler = h3.ws(
    "/ws",
    define_websocket_handler(open=_open, close=_close, send_buffer_limit=LIMIT),
)
app.include_router(h3)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@app.post("/flood")
async def flood(count: int, size: int) -> dict[str, Any]:
    """Publish ``count`` numbered binary chunks, pacing on the fast readers only."""
    before = _peak_rss()
    body = os.urandom(size - 8)  # incompressible, whatever the extensions
    for i in range(count):
        handler.publish("flood", i.to_bytes(8, "big") + body)
        if i % 16 == 15:
            fast = [p for ps in handler.peers.values() for p in ps if not p.context["slow"]]
            await asyncio.gather(*(p.wait_for_drain(1024 * 1024, timeout=30) for p in fast))
    handler.publish("flood", "done")
    return {"peak_before": before, "peak_after": _peak_rss()}


@app.get("/stats")
def stats() -> dict[str, Any]:
    return {
        "peers": sum(len(p) for p in handler.peers.values()),
        "closes": closes,
        "peak_rss": _peak_rss(),
        "buffered": [
            (p.context["slow"], p.buffered_amount) for ps in handler.peers.values() for p in ps
        ],
    }
