"""Offsets, epochs and recovery: a client that reconnects gets exactly what it missed,
or is told to resync; never a silent gap, never a duplicate.

Memory: the app of ``tests/apps/recovery_app.py`` in this process (a second
``MemoryPubSub`` stands for a restarted process). Redis: the same app in two
uvicorn processes sharing a ``redis-server``; the client reconnects to the
other process, and a ``FLUSHALL`` loses the history.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from h3_fastapi import MemoryPubSub, Recovery
from h3_fastapi.pubsub import Outgoing, parse_event_id
from tests.apps.recovery_app import make_app
from tests.conftest import ChildServer
from tests.sse_client import comment, next_event
from tests.test_redis import RedisServer, need_redis

TIMEOUT = 10


class Recorder:
    namespace = None

    def __init__(self) -> None:
        self.got: list[Outgoing] = []
        self.recoveries: list[Recovery] = []

    def deliver(self, outgoing: Outgoing) -> None:
        self.got.append(outgoing)

    def recovered(self, recovery: Recovery) -> None:
        self.recoveries.append(recovery)


def test_memory_rule_trimmed_history_is_a_resync_never_a_gap() -> None:
    pubsub = MemoryPubSub(history=5)
    seen = Recorder()
    pubsub.subscribe("t", seen)
    for i in range(8):
        pubsub.publish("t", i)
    ids = [o.id for o in seen.got]
    # Still kept: exactly what followed, and the subscriber is told so.
    ok = Recorder()
    pubsub.subscribe_from("t", ok, ids[4])
    assert [o.data for o in ok.got] == ["5", "6", "7"]
    assert [(r.recovered, r.missed, r.position) for r in ok.recoveries] == [(True, 3, ids[-1])]
    # Trimmed away: nothing replayed, a resync with the newest position.
    late = Recorder()
    pubsub.subscribe_from("t", late, ids[1])
    pubsub.publish("t", "live")
    assert [o.data for o in late.got] == ["live"]
    assert [(r.recovered, r.position) for r in late.recoveries] == [(False, ids[-1])]


async def read_missed(client: httpx.AsyncClient, path: str, last_id: str, count: int) -> Any:
    """Reconnect with ``last_id``; the ``count`` events then a live one."""
    async with client.stream("GET", path, headers={"Last-Event-ID": last_id}) as response:
        lines = response.aiter_lines()
        if count == 0:
            await comment(lines, "subscribed")
        # The missed ones come once the subscription is confirmed (before or
        # after the comment): then a publish is live.
        missed = [await next_event(lines) for _ in range(count)]
        await client.post("/publish/t", params={"count": 1})
        live = await next_event(lines)
    return missed, live


async def first_id(client: httpx.AsyncClient, path: str) -> str:
    async with client.stream("GET", path) as response:
        lines = response.aiter_lines()
        await comment(lines, "subscribed")
        await client.post("/publish/t", params={"count": 1})
        return (await next_event(lines))["id"]


def check_exact(missed: list[dict[str, str]], live: dict[str, str], last_id: str, n: int) -> None:
    assert [e["data"] for e in missed] == [f"m{i}" for i in range(n)]
    assert all("event" not in e for e in missed)  # no resync among them
    keys = [parse_event_id(last_id)] + [parse_event_id(e["id"]) for e in [*missed, live]]
    assert keys == sorted(keys) and len(set(keys)) == n + 2  # in order, none twice
    assert live["data"] == "m0" and "event" not in live


@pytest.mark.parametrize("missed", [1, 100, 10_000])
async def test_memory_sse_recovers_exactly_what_was_missed(live_server: Any, missed: int) -> None:
    server = live_server(make_app(MemoryPubSub(history=20_000)))
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        last_id = await first_id(client, "/feed/t")
        await client.post("/publish/t", params={"count": missed})
        got, live = await read_missed(client, "/feed/t", last_id, missed)
    check_exact(got, live, last_id, missed)


async def test_memory_restarted_process_tells_the_client_to_resync(live_server: Any) -> None:
    before = live_server(make_app(MemoryPubSub(history=100)))
    async with httpx.AsyncClient(base_url=before.url, timeout=TIMEOUT) as client:
        last_id = await first_id(client, "/feed/t")
    before.stop()
    after = live_server(make_app(MemoryPubSub(history=100)))  # its history is new
    async with httpx.AsyncClient(base_url=after.url, timeout=TIMEOUT) as client:
        await client.post("/publish/t", params={"count": 3})
        resync, live = await read_missed(client, "/feed/t", last_id, 1)
    assert resync[0]["event"] == "resync"
    told = json.loads(resync[0]["data"])
    assert told["recovered"] is False and told["topic"] == "t"
    assert resync[0]["id"] == told["position"]  # the next reconnect resumes from there
    assert parse_event_id(live["id"]) > parse_event_id(told["position"])  # type: ignore[operator]


async def test_memory_websocket_positions_and_recovery(live_server: Any) -> None:
    server = live_server(make_app(MemoryPubSub(history=1000)))
    url = server.ws_url + "/ws"
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"subscribe": "t"}))
            assert json.loads(await ws.recv())["ready"] == "t"
            await client.post("/publish/t", params={"count": 3})
            frames = [json.loads(await ws.recv()) for _ in range(3)]
        assert [f["data"] for f in frames] == ["m0", "m1", "m2"]
        await client.post("/publish/t", params={"count": 100})
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"subscribe": "t", "since": frames[-1]["position"]}))
            missed = [json.loads(await ws.recv()) for _ in range(100)]
            told = json.loads(await ws.recv())
            ready = json.loads(await ws.recv())
            await ws.send(json.dumps({"subscribe": "u", "since": "1-0"}))  # not ours: resync
            other = json.loads(await ws.recv())
    assert [f["data"] for f in missed] == [f"m{i}" for i in range(100)]
    newest = missed[-1]["position"]
    assert told == {"topic": "t", "recovered": True, "missed": 100, "position": newest}
    assert ready == {"ready": "t", "recovered": True}
    assert other == {"topic": "u", "recovered": False, "missed": 0, "position": None}


# ---------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def two_processes(redis: RedisServer) -> Iterator[list[ChildServer]]:
    from tests.conftest import free_port

    env = {"RECOVERY_REDIS_URL": redis.url, "RECOVERY_PREFIX": "rec:"}
    children = [ChildServer("tests.apps.recovery_app:app", free_port(), [], env) for _ in range(2)]
    try:
        yield [child.wait_ready() for child in children]
    finally:
        for child in children:
            child.stop()


@pytest.mark.redis
@pytest.mark.parametrize("missed", [1, 100, 10_000])
async def test_redis_sse_recovers_on_another_process(
    two_processes: list[ChildServer], missed: int
) -> None:
    a, b = two_processes
    topic = "/feed/t"
    async with httpx.AsyncClient(base_url=a.url, timeout=TIMEOUT) as client_a:
        last_id = await first_id(client_a, topic)
        await client_a.post("/publish/t", params={"count": missed})
    async with httpx.AsyncClient(base_url=b.url, timeout=TIMEOUT) as client_b:
        got, live = await read_missed(client_b, topic, last_id, missed)
    check_exact(got, live, last_id, missed)


@pytest.mark.redis
async def test_redis_flushall_tells_the_client_to_resync(
    two_processes: list[ChildServer], redis: RedisServer
) -> None:
    a, b = two_processes
    async with httpx.AsyncClient(base_url=a.url, timeout=TIMEOUT) as client_a:
        last_id = await first_id(client_a, "/feed/t")
        await client_a.post("/publish/t", params={"count": 5})  # missed, then lost
    redis.command("FLUSHALL")
    async with httpx.AsyncClient(base_url=b.url, timeout=TIMEOUT) as client_b:
        resync, live = await read_missed(client_b, "/feed/t", last_id, 1)
        # Published after the flush: a new stream; a client resuming in it recovers.
        again, live_again = await read_missed(client_b, "/feed/t", live["id"], 0)
    told = json.loads(resync[0]["data"])
    assert resync[0]["event"] == "resync" and told["recovered"] is False
    assert told["position"] is None and "id" not in resync[0]  # nothing kept at all
    assert live["data"] == "m0" and "event" not in live
    assert again == [] and live_again["data"] == "m0" and "event" not in live_again
