"""The cross-process tests, against every backplane between processes.

``tests/apps/scale_app.py`` runs in 4 uvicorn processes on 4 ports sharing
one backplane, driven by real WebSocket (``websockets``) and SSE (``httpx``)
clients: 200 clients x 50 messages (every client gets the other 9,950 once,
in per-sender order), a WebSocket publish reaching SSE on another host (and
an HTTP publish from a worker thread), SSE replay after reconnecting
elsewhere. Each test runs once per backplane: a single Redis, a 3-shard Redis
Cluster (sharded pub/sub), PostgreSQL (LISTEN/NOTIFY) and NATS (JetStream for
the replay), each a real server started by ``tests/services.py``.

Nothing waits by sleeping: tests wait for messages with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from h3_fastapi.pubsub import parse_event_id
from tests.cross_process import (
    TIMEOUT,
    ChatMember,
    Cluster,
    FrameClient,
    join_chat,
    next_data,
    next_event,
    open_events,
    sse_events,
)
from tests.services import (  # noqa: F401 - session fixtures, asked for by name below
    nats_service,
    postgres_service,
    redis_cluster_service,
    redis_service,
)

pytestmark = pytest.mark.backplanes

# backplane -> the session fixture of its server (tests/services.py)
SERVICES = {
    "redis": "redis_service",
    "redis+cluster": "redis_cluster_service",
    "postgres": "postgres_service",
    "nats": "nats_service",
}


@pytest.fixture(scope="module", params=list(SERVICES))
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """4 processes of ``scale_app`` on one backplane (started once per backplane)."""
    service = request.getfixturevalue(SERVICES[request.param])
    cluster = Cluster(service.url, 4, service)
    yield cluster
    cluster.stop()


async def test_200_clients_on_4_processes_get_every_message_once_in_order(
    cluster: Cluster,
) -> None:
    """Each of 200 clients publishes 50 messages; each gets the other 9,950 once, in order."""
    clients, per_client = 200, 50
    servers = cluster.servers
    members = [ChatMember(i, clients, per_client) for i in range(clients)]
    started = time.monotonic()
    sockets = await asyncio.gather(
        *(
            FrameClient.connect(servers[i % len(servers)].ws_url + "/chat", m.on_frame)
            for i, m in enumerate(members)
        )
    )
    pids = await asyncio.wait_for(asyncio.gather(*(m.ready for m in members)), 30)
    assert len(set(pids)) == len(servers)  # spread over 4 processes, all subscribed
    connected = time.monotonic()

    for seq in range(per_client):  # everyone at once, each in its own order
        for i, ws in enumerate(sockets):
            body = f"{i}:{seq}"
            ws.send(body.encode() if i % 2 else body)  # odd clients send binary
    try:
        await asyncio.wait_for(asyncio.gather(*(m.received_all for m in members)), 90)
    except asyncio.TimeoutError:
        left = sorted(m.remaining for m in members)
        raise AssertionError(
            f"not every message arrived in 90 s: frames still missing per client "
            f"min {left[0]} median {left[len(left) // 2]} max {left[-1]}; "
            f"servers: {await cluster.status()}"
        ) from None
    delivered = time.monotonic()
    assert all(
        m.expected == [0 if j == m.me else per_client for j in range(clients)] for m in members
    )

    # Nothing more may arrive: each client sends an end marker, and the next
    # 199 frames every client reads must be exactly the others' markers.
    closed = [ws.protocol.close_rcvd for ws in sockets if ws.protocol.close_rcvd]
    assert not closed, f"clients were disconnected: {closed[:3]}"
    for i, ws in enumerate(sockets):
        ws.send(f"end:{i}")
    await asyncio.wait_for(asyncio.gather(*(m.markers_done for m in members)), 30)
    closed = [ws.protocol.close_rcvd for ws in sockets if ws.closed.done()]
    assert not closed, f"clients were disconnected: {closed[:3]}"
    await asyncio.gather(*(ws.close() for ws in sockets))
    total = clients * (clients - 1) * per_client
    print(
        f"\n{cluster.url.partition(':')[0]}: 200x50 over 4 processes: "
        f"connected in {connected - started:.1f}s, {total:,} "
        f"deliveries in {delivered - connected:.1f}s ({total / (delivered - connected):,.0f}/s)"
    )


async def test_websocket_publish_on_host_a_reaches_sse_on_host_b(cluster: Cluster) -> None:
    host_a, host_b = cluster.servers[0], cluster.servers[1]
    events = await open_events(host_b.url + "/events/chat")
    ws, pid_a = await join_chat(host_a.ws_url)
    try:
        await ws.send("hello from A")
        assert (await next_event(events))["data"] == "hello from A"
        await ws.send(b"binary from A")  # SSE carries text: UTF-8 of the bytes
        assert (await next_event(events))["data"] == "binary from A"
        # A plain ``def`` endpoint on A (a worker thread) publishes with
        # module-level publish: SSE on B and the WebSocket on A get it.
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                host_a.url + "/publish/chat", params={"data": "from a thread"}
            )
        assert reply.json()["pid"] == pid_a
        assert (await next_event(events))["data"] == "from a thread"
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "from a thread"
    finally:
        await ws.close()
        await events.aclose()


async def test_sse_replay_after_reconnecting_to_another_process(cluster: Cluster) -> None:
    """Disconnect, 10 publishes, reconnect elsewhere with Last-Event-ID: the 10, then live."""
    a, b, c = cluster.servers[0], cluster.servers[1], cluster.servers[2]
    publisher, _ = await join_chat(a.ws_url, "/feed")
    try:
        events = await open_events(b.url + "/feed/events/feed")
        await publisher.send("seen")
        seen = await next_event(events)
        assert seen["data"] == "seen" and parse_event_id(seen["id"])
        await events.aclose()  # the client goes away

        for i in range(10):
            await publisher.send(f"missed {i}")
        async with httpx.AsyncClient() as client:  # and one from a thread on another host
            await client.post(c.url + "/publish/feed", params={"data": "missed 10", "feed": True})

        events = sse_events(c.url + "/feed/events/feed", {"Last-Event-ID": seen["id"]})
        assert await next_event(events) == {"status": "200"}
        replayed = [await next_data(events) for _ in range(11)]
        assert [e.get("data") for e in replayed] == [f"missed {i}" for i in range(11)]
        keys = [parse_event_id(e["id"]) for e in [seen, *replayed]]
        assert keys == sorted(keys) and len(set(keys)) == 12
        await publisher.send("live")
        live = await next_data(events)
        assert live["data"] == "live" and parse_event_id(live["id"]) > keys[-1]  # type: ignore[operator]
        await events.aclose()
    finally:
        await publisher.close()
