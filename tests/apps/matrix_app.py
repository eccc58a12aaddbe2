"""The app ``tests/test_server_matrix.py`` serves on every ASGI server.

WebSocket ``/ws``: the peer gets ``{"id": ...}`` on open; ``pub:<text>`` is
published to every other peer of ``room``; ``close:<code>:<reason>`` makes the
server close; anything else is echoed with its frame type. The upgrade hook
rejects ``?token=bad`` with 401 + headers + body and accepts the subprotocol
named by ``?pick=``. The close hook's details are at ``GET /closes/{peer_id}``.

SSE ``/sse``: ``count`` events (id, event, data), then one every ``interval``
seconds until the client leaves; ``GET /stats`` counts streams whose
``on_closed`` ran.

``GET /closes/...`` and ``GET /stats?sse_closed=N`` wait (up to 10 s) until
the value is there, so tests never sleep.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from h3_fastapi import CloseDetails, H3Router, Message, Peer, create_event_stream

closes: dict[str, dict[str, Any]] = {}
stats = {"sse_open": 0, "sse_closed": 0}
_changed: asyncio.Event | None = None


def _event() -> asyncio.Event:
    global _changed
    if _changed is None:
        _changed = asyncio.Event()
    return _changed


def _notify() -> None:
    global _changed
    event = _event()
    _changed = asyncio.Event()
    event.set()


async def _wait_until(predicate: Any, timeout: float = 10) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(_event().wait(), remaining)
        except asyncio.TimeoutError:
            pass
    return True


router = H3Router()


@router.ws("/ws")
class Acceptance:
    def upgrade(self, request: Request) -> Any:
        if request.query_params.get("token") == "bad":
            return PlainTextResponse(
                "unauthorized: bad token",
                status_code=401,
                headers={"x-reason": "token", "www-authenticate": "Bearer"},
            )
        pick = request.query_params.get("pick")
        return {"protocol": pick} if pick else None

    def open(self, peer: Peer) -> None:
        peer.subscribe("room")
        peer.send({"id": peer.id})

    def message(self, peer: Peer, message: Message) -> Any:
        if message.is_binary:
            return peer.send(message.data)
        text = message.text()
        if text.startswith("pub:"):
            return peer.publish("room", text[4:])
        if text.startswith("close:"):
            _, code, reason = text.split(":", 2)
            peer.close(int(code), reason)
            return None
        return peer.send(text)

    def close(self, peer: Peer, details: CloseDetails) -> None:
        closes[peer.id] = {"code": int(details.code), "reason": details.reason}
        _notify()


app = FastAPI()
app.include_router(router)


@app.get("/closes/{peer_id}")
async def close_details(peer_id: str) -> Response:
    if not await _wait_until(lambda: peer_id in closes):
        return JSONResponse({"error": "close hook did not run"}, status_code=404)
    return JSONResponse(closes[peer_id])


@app.get("/sse")
async def sse(request: Request, count: int = 3, interval: float = 0.2) -> Response:
    stream = create_event_stream(request)
    stats["sse_open"] += 1

    def closed() -> None:
        stats["sse_open"] -= 1
        stats["sse_closed"] += 1
        _notify()

    stream.on_closed(closed)

    async def produce() -> None:
        for n in range(count):
            await stream.push({"id": n, "event": "tick", "data": f"event {n}"})
        n = count
        while not stream.is_closed:
            await asyncio.sleep(interval)
            await stream.push({"id": n, "event": "tick", "data": f"event {n}"})
            n += 1

    task = asyncio.get_running_loop().create_task(produce())
    stream.on_closed(task.cancel)
    return stream


@app.get("/stats")
async def get_stats(sse_closed: int | None = None) -> dict[str, int]:
    if sse_closed is not None:
        await _wait_until(lambda: stats["sse_closed"] >= sse_closed)
    return stats
