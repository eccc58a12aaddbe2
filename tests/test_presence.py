"""Presence: who is in a topic, across processes, with join and leave events.

Memory: the app of ``tests/apps/recovery_app.py`` in this process. Redis: the
same app in 4 uvicorn processes sharing a ``redis-server``; one is killed with
SIGKILL (no goodbye) and the others drop its member within the TTL (2 s here).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import websockets

from h3_fastapi import MemoryPubSub
from tests.apps.recovery_app import make_app
from tests.conftest import ChildServer, free_port
from tests.test_redis import RedisServer, need_redis

TIMEOUT = 10


async def until(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> float:
    """Poll ``check`` until true (a deadline, not a sleep); the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def join(url: str, info: dict[str, Any]) -> Any:
    ws = await websockets.connect(url + "/ws")
    await ws.send(json.dumps({"subscribe": "room", "presence": info}))
    while "ready" not in (frame := json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))):
        pass
    assert frame["ready"] == "room"
    return ws


async def presence_event(ws: Any, kind: str, name: str) -> dict[str, Any]:
    """The next presence event of ``kind`` about ``name`` (other frames skipped)."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if frame.get("presence") == kind and frame["member"]["info"]["name"] == name:
            return frame  # type: ignore[no-any-return]


async def names(client: httpx.AsyncClient) -> list[str]:
    members = (await client.get("/presence/room")).json()
    return sorted(m["info"]["name"] for m in members)


async def test_memory_presence_join_leave_and_list(live_server: Any) -> None:
    server = live_server(make_app(MemoryPubSub()))
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        ann = await join(server.ws_url, {"name": "ann"})
        bob = await join(server.ws_url, {"name": "bob"})
        event = await presence_event(ann, "join", "bob")
        assert event["topic"] == "room" and event["member"]["info"] == {"name": "bob"}
        assert await names(client) == ["ann", "bob"]
        await bob.close()
        left = await presence_event(ann, "leave", "bob")
        assert left["member"]["id"] == event["member"]["id"]
        assert await names(client) == ["ann"]
        await ann.close()
        await until(lambda: _equals(names(client), []))


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.mark.redis
async def test_redis_presence_across_four_processes_and_a_killed_one(redis: RedisServer) -> None:
    env = {"RECOVERY_REDIS_URL": redis.url, "RECOVERY_PREFIX": "pres:"}
    children = [ChildServer("tests.apps.recovery_app:app", free_port(), [], env) for _ in range(4)]
    clients: list[httpx.AsyncClient] = []
    sockets: list[Any] = []
    try:
        for child in children:
            child.wait_ready()
            clients.append(httpx.AsyncClient(base_url=child.url, timeout=TIMEOUT))
        for i, child in enumerate(children):
            sockets.append(await join(child.ws_url, {"name": f"p{i}"}))
        everyone = [f"p{i}" for i in range(4)]
        for client in clients:  # every process sees all four
            await until(lambda client=client: _equals(names(client), everyone))
        # p0 was told of p3's join (through Redis, from another process).
        assert (await presence_event(sockets[0], "join", "p3"))["topic"] == "room"
        children[3].proc.send_signal(signal.SIGKILL)
        children[3].proc.wait()
        left = asyncio.ensure_future(presence_event(sockets[0], "leave", "p3"))
        took = []
        for client in clients[:3]:
            took.append(await until(lambda client=client: _equals(names(client), everyone[:3])))
        event = await left
        assert event["member"]["info"] == {"name": "p3"}
        assert max(took) < 5  # ttl 2 s, heartbeat 0.5 s
    finally:
        for ws in sockets:
            await ws.close()
        for client in clients:
            await client.aclose()
        for child in children:
            child.stop()


def docs_example(name: str) -> Any:
    import importlib.util

    from tests.conftest import ROOT

    path = ROOT / "docs" / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_{name}_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_docs_presence_recovery_example(live_server: Any) -> None:
    """``docs/examples/presence_recovery.py``: members, positions, recovery, SSE resync."""
    from tests.sse_client import next_event

    server = live_server(docs_example("presence_recovery").app)
    url = server.ws_url + "/room"

    async def frame(ws: Any) -> dict[str, Any]:
        while True:  # presence events are shown elsewhere; skip them here
            got = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if "presence" not in got:
                return got  # type: ignore[no-any-return]

    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        async with websockets.connect(url) as ann, websockets.connect(url) as bob:
            await ann.send(json.dumps({"join": "ann"}))
            await bob.send(json.dumps({"join": "bob"}))
            await presence_event(ann, "join", "bob")
            members = (await client.get("/room/members")).json()
            assert sorted(m["info"]["name"] for m in members) == ["ann", "bob"]
            await bob.send(json.dumps({"say": "hi"}))
            hi = await frame(ann)
            assert hi["data"] == "hi" and hi["topic"] == "room"
            await ann.close()
            for text in ("one", "two", "three"):
                await bob.send(json.dumps({"say": text}))
            async with websockets.connect(url) as again:
                await again.send(json.dumps({"join": "ann", "since": hi["position"]}))
                missed = [await frame(again) for _ in range(4)]
        assert [m.get("data") for m in missed[:3]] == ["one", "two", "three"]
        assert missed[3] == {
            "topic": "room",
            "recovered": True,
            "missed": 3,
            "position": missed[2]["position"],
        }
        headers = {"Last-Event-ID": "1-0"}  # from before any history kept here
        async with client.stream("GET", "/room/events", headers=headers) as response:
            event = await next_event(response.aiter_lines())
        assert event["event"] == "resync" and json.loads(event["data"])["recovered"] is False
