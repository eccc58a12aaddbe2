"""The app ``tests/test_reliability.py`` runs in a child uvicorn: echo, faults, SSE, debug.

``GET /debug`` reports what the process holds (open peers, pub/sub topics,
asyncio tasks, RSS, hook counters, open event streams). Given query
parameters such as ``?peers=0&closes=12`` it first waits (up to ``timeout``
seconds, default 10) until every named stat has that value, so tests wait on
the server's own state instead of sleeping. ``met`` says whether it did.

With ``H3_TEST_PRINT_CLOSES=1`` the close hook prints ``CLOSED <path> <code>``
(read from the child's stdout by the graceful-shutdown test).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import psutil
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from h3_fastapi import CloseDetails, H3Router, Message, Peer, WSError, event_stream
from h3_fastapi.pubsub import MemoryPubSub, get_default_pubsub

PRINT_CLOSES = os.environ.get("H3_TEST_PRINT_CLOSES") == "1"
BLOCK_SECONDS = 5.0

stats: dict[str, int] = {
    "opens": 0,
    "closes": 0,
    "errors": 0,
    "upgrading": 0,
    "blocked": 0,
    "streams_open": 0,
    "streams_closed": 0,
}
close_codes: Counter[int] = Counter()
error_causes: list[str] = []
_changed: asyncio.Event | None = None
_release_upgrades: asyncio.Event | None = None


def _event() -> asyncio.Event:
    global _changed
    if _changed is None:
        _changed = asyncio.Event()
    return _changed


def _notify() -> None:
    """Wake every ``/debug`` request that waits for a condition."""
    global _changed
    event = _event()
    _changed = asyncio.Event()
    event.set()


def _bump(name: str, delta: int = 1) -> None:
    stats[name] += delta
    _notify()


# --- WebSocket hooks -----------------------------------------------------------


async def upgrade(request: Request) -> None:
    if request.query_params.get("hold") != "1":
        return
    # Hold the handshake until the test says so (it drops the client meanwhile).
    global _release_upgrades
    if _release_upgrades is None:
        _release_upgrades = asyncio.Event()
    _bump("upgrading")
    try:
        await asyncio.wait_for(_release_upgrades.wait(), 10)
    finally:
        _bump("upgrading", -1)


def open_(peer: Peer) -> None:
    peer.subscribe("everyone")
    peer.subscribe(f"peer:{peer.id}")
    _bump("opens")


def message(peer: Peer, message: Message) -> Any:
    text = message.text()
    if text == "raise":
        raise RuntimeError("message hook failed on purpose")
    if text == "block":
        return _block(peer)
    if text.startswith("broadcast:"):
        # Reaches every other open peer: shows a peer whose hook blocks still
        # receives while it blocks.
        return peer.publish("everyone", text)
    # The echo goes through the pub/sub (the peer's own topic), so every
    # cycle also subscribes, publishes and unsubscribes.
    return ws.publish(f"peer:{peer.id}", text)


async def _block(peer: Peer) -> None:
    _bump("blocked")
    try:
        await asyncio.sleep(BLOCK_SECONDS)  # the scenario: a hook that takes 5 s
    finally:
        _bump("blocked", -1)
    peer.send("unblocked")


def close(peer: Peer, details: CloseDetails) -> None:
    close_codes[details.code] += 1
    if PRINT_CLOSES:
        print(f"CLOSED {peer.request.url.path} {details.code}", flush=True)
    _bump("closes")


def error(peer: Peer, err: WSError) -> None:
    error_causes.append(repr(err.__cause__))
    _bump("errors")


router = H3Router()
ws = router.ws(
    "/ws",
    {"upgrade": upgrade, "open": open_, "message": message, "close": close, "error": error},
)

app = FastAPI()
app.include_router(router)


# --- SSE -------------------------------------------------------------------


@app.get("/sse")
@event_stream
async def sse(request: Request, size: int = 16, interval: float = 0.0) -> AsyncIterator[Any]:
    """Events of ``size`` bytes, as fast as the client reads (or every ``interval`` s)."""
    _bump("streams_open")
    try:
        payload = "x" * size
        n = 0
        while True:
            yield {"id": n, "event": "fill", "data": payload}
            n += 1
            if interval:
                await asyncio.sleep(interval)
    finally:
        _bump("streams_open", -1)
        _bump("streams_closed")


# --- debug -----------------------------------------------------------------


def snapshot(collect: bool) -> dict[str, Any]:
    if collect:
        gc.collect()
    pubsub = get_default_pubsub()
    topics = len(pubsub.topics) if isinstance(pubsub, MemoryPubSub) else -1
    peers = sum(len(p) for p in ws.peers.values())
    return {
        **stats,
        "peers": peers,
        "topics": topics,
        # This request's own task is one of them; a test compares like with like.
        "tasks": len(asyncio.all_tasks()),
        "rss": psutil.Process().memory_info().rss,
        "close_codes": {str(k): v for k, v in sorted(close_codes.items())},
        "error_causes": error_causes[-5:],
    }


@app.get("/debug")
async def debug(request: Request) -> dict[str, Any]:
    wanted = {k: int(v) for k, v in request.query_params.items() if k not in ("timeout", "gc")}
    collect = request.query_params.get("gc") == "1"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(request.query_params.get("timeout", "10"))

    def met(snap: dict[str, Any]) -> bool:
        return all(snap.get(k) == v for k, v in wanted.items())

    snap = snapshot(False)
    while not met(snap):
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            await asyncio.wait_for(_event().wait(), remaining)
        except asyncio.TimeoutError:
            pass
        snap = snapshot(False)
    snap = snapshot(collect) if collect else snap
    snap["met"] = met(snap)
    return snap


@app.post("/debug/release")
async def release() -> PlainTextResponse:
    """Let held upgrades continue."""
    if _release_upgrades is not None:
        _release_upgrades.set()
    return PlainTextResponse("released")


@app.post("/debug/reset")
async def reset() -> PlainTextResponse:
    global _release_upgrades
    _release_upgrades = None
    return PlainTextResponse("reset")
