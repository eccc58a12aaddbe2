"""RedisPubSub against a real ``redis-server`` started here on a free port.

Two halves:

- In this process: several ``RedisPubSub`` objects on one loop stand for
  several processes (each has its own origin and connections); recording
  subscribers check delivery, order, frame types, connections, outages and
  history precisely.
- Across processes: ``tests/apps/scale_app.py`` in 4 uvicorn processes on 4
  ports sharing one Redis (``tests/cross_process.py``): a Redis restart under
  100 connected clients, and ``uvicorn --workers 2`` on one port running the
  docs example with ``H3_PUBSUB_URL``. The tests that hold for every backplane
  (200 clients x 50 messages, WebSocket to SSE, SSE replay) are in
  ``test_backplanes.py``, Redis among them.

Nothing waits by sleeping: tests wait for messages or poll a condition with a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import multiprocessing
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from h3_fastapi import MemoryPubSub, RedisPubSub
from h3_fastapi.pubsub import Outgoing, get_default_pubsub, set_default_pubsub
from tests.conftest import ROOT, ChildServer, free_port, need
from tests.cross_process import (
    Cluster,
    every_process,
    join_chat,
    next_data,
    next_event,
    sse_events,
    ws_connect,
)
from tests.recorders import Subscriber as Recorder
from tests.recorders import eventually
from tests.services import RedisServer

pytestmark = pytest.mark.redis
TIMEOUT = 10

# ---------------------------------------------------------------- helpers


def need_redis() -> None:
    need(shutil.which("redis-server") is not None, "redis-server is not installed")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis only this test uses (it may kill it)."""
    need_redis()
    server = RedisServer().start()
    yield server
    server.kill()


@contextlib.asynccontextmanager
async def backplanes(url: str, count: int, **options: Any) -> AsyncIterator[list[RedisPubSub]]:
    """``count`` RedisPubSub objects: stand-ins for ``count`` processes."""
    pubsubs = [RedisPubSub(url, **options) for _ in range(count)]
    try:
        yield pubsubs
    finally:
        for pubsub in pubsubs:
            await pubsub.close()


async def subscribed(pubsub: RedisPubSub, topic: str, subscriber: Any) -> None:
    pubsub.subscribe(topic, subscriber)
    await asyncio.wait_for(pubsub.wait_subscribed(topic), TIMEOUT)


def h3_clients(redis: RedisServer, origin: str) -> list[str]:
    """Names of the connections a RedisPubSub opened (CLIENT LIST)."""
    listing = redis.command("CLIENT", "LIST")
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    names = [part[5:] for line in text.splitlines() for part in line.split() if part[:5] == "name="]
    return [name for name in names if name.endswith(origin[:12])]


# ---------------------------------------------------------------- in one process


async def test_publish_reaches_other_processes_once_and_keeps_frame_types(
    redis_server: RedisServer,
) -> None:
    async with backplanes(redis_server.url, 3) as (a, b, c):
        subs = [Recorder(), Recorder(), Recorder()]
        for pubsub, sub in zip((a, b, c), subs, strict=True):
            await subscribed(pubsub, "room", sub)
        await a.publish("room", "text")
        await b.publish("room", b"\x00\xffbinary")
        await c.publish("room", {"json": True})
        for sub in subs:
            # Each publisher's own subscriber got its message once, locally;
            # the others got it once through Redis.
            got = await sub.wait_for(3)
            assert sorted(map(repr, got)) == sorted(
                map(repr, ["text", b"\x00\xffbinary", '{"json":true}'])
            )
        binary = next(o for o in subs[2].got if o.is_binary)
        assert binary.data == b"\x00\xffbinary"
        assert all(o.id is None for sub in subs for o in sub.got)
        # One more round proves nothing was delivered twice in between.
        await a.publish("room", "end")
        for sub in subs:
            assert (await sub.wait_for(4))[3] == "end"
            assert len(sub.got) == 4


async def test_local_delivery_does_not_wait_for_redis(redis_server: RedisServer) -> None:
    async with backplanes(redis_server.url, 1) as (a,):
        sub = Recorder()
        await subscribed(a, "t", sub)
        sent = a.publish("t", "now")
        assert sub.data == ["now"]  # before any await: delivered synchronously
        await sent


async def test_namespaces_and_exclude_across_processes(redis_server: RedisServer) -> None:
    async with backplanes(redis_server.url, 2) as (a, b):
        sender, here_same, here_other = Recorder("/chat"), Recorder("/chat"), Recorder("/game")
        there_same, there_other, there_stream = Recorder("/chat"), Recorder("/game"), Recorder()
        for sub in (sender, here_same, here_other):
            await subscribed(a, "t", sub)
        for sub in (there_same, there_other, there_stream):
            await subscribed(b, "t", sub)
        # peer.publish: namespace of the sender, everyone but the sender.
        await a.publish("t", "m", namespace="/chat", exclude=sender)
        await there_same.wait_for(1)
        await there_stream.wait_for(1)
        await a.publish("t", "all")  # no namespace: every subscriber
        await there_other.wait_for(1)
        await there_same.wait_for(2)
        assert sender.data == ["all"]
        assert here_same.data == ["m", "all"] and here_other.data == ["all"]
        assert there_same.data == ["m", "all"] and there_other.data == ["all"]
        assert there_stream.data == ["m", "all"]


async def test_per_publisher_order_from_the_loop_and_from_threads(
    redis_server: RedisServer,
) -> None:
    async with backplanes(redis_server.url, 2) as (a, b):
        far = Recorder()
        await subscribed(b, "t", far)
        await a.publish("t", "warm-up")  # binds ``a`` to this loop

        def from_thread(name: str) -> None:
            for i in range(1000):
                a.publish("t", f"{name}:{i}")

        threads = [threading.Thread(target=from_thread, args=(f"thread{n}",)) for n in range(3)]
        for thread in threads:
            thread.start()
        for i in range(1000):
            a.publish("t", f"loop:{i}")
            if i % 100 == 0:
                await asyncio.sleep(0)  # let the threads' publishes interleave
        for thread in threads:
            thread.join()
        got = await far.wait_for(4001, timeout=20)
        by_sender: dict[str, list[int]] = {}
        for item in got[1:]:
            assert isinstance(item, str)
            name, i = item.split(":")
            by_sender.setdefault(name, []).append(int(i))
        assert by_sender == {
            name: list(range(1000)) for name in ["loop", *(f"thread{n}" for n in range(3))]
        }


async def test_awaiting_a_publish_from_a_thread(redis_server: RedisServer) -> None:
    async with backplanes(redis_server.url, 2, history=10) as (a, b):
        far = Recorder()
        await subscribed(b, "t", far)
        await a.publish("t", "bind")

        def in_thread() -> None:
            # A thread with its own loop awaits the publish: resolved from a's loop.
            asyncio.run(_await(a.publish("t", "from thread")))

        await asyncio.to_thread(in_thread)
        # With history the awaited publish has been XADDed: the stream shows it.
        assert int(redis_server.command("XLEN", "h3:t")) == 2
        assert (await far.wait_for(2))[1] == "from thread"


async def _await(awaitable: Awaitable[Any]) -> None:
    await awaitable


async def test_one_connection_per_process_and_subscribe_follows_local_topics(
    redis_server: RedisServer,
) -> None:
    async with backplanes(redis_server.url, 1, prefix="conn:") as (a,):
        subs = [Recorder() for _ in range(100)]
        for topic in range(50):
            for sub in subs:
                a.subscribe(f"topic{topic}", sub)
        await asyncio.wait_for(a.wait_subscribed("topic49"), TIMEOUT)
        await a.publish("topic0", "x")
        names = h3_clients(redis_server, a.origin)
        # 5,000 subscriptions, one subscriber connection and one publisher connection.
        assert sorted(n.split("-")[1] for n in names) == ["pub", "sub"], names
        channels = {c.decode() for c in redis_server.command("PUBSUB", "CHANNELS", "conn:*")}
        assert channels == {f"conn:topic{t}" for t in range(50)}
        # The channel stays while one local subscriber is left...
        for sub in subs[:-1]:
            a.unsubscribe("topic0", sub)
        await a.publish("topic1", "flush")  # a round trip later, nothing changed
        assert b"conn:topic0" in redis_server.command("PUBSUB", "CHANNELS", "conn:*")
        # ...and goes when the last one leaves.
        a.unsubscribe("topic0", subs[-1])
        await eventually(
            lambda: b"conn:topic0" not in redis_server.command("PUBSUB", "CHANNELS", "conn:*"),
            "UNSUBSCRIBE of conn:topic0",
        )
        assert "topic0" not in a.confirmed_topics and "topic1" in a.confirmed_topics
        # Subscribing again brings it back.
        a.subscribe("topic0", subs[0])
        await asyncio.wait_for(a.wait_subscribed("topic0"), TIMEOUT)


async def test_close_closes_the_connections_and_local_delivery_goes_on(
    redis_server: RedisServer,
) -> None:
    a = RedisPubSub(redis_server.url)
    sub = Recorder()
    await subscribed(a, "t", sub)
    await a.publish("t", "before")
    assert len(h3_clients(redis_server, a.origin)) == 2
    await a.close()
    await eventually(lambda: not h3_clients(redis_server, a.origin), "connections closed")
    assert not a.connected
    a.publish("t", "after")  # local only now, and it does not reconnect on this loop
    assert sub.data == ["before", "after"]
    assert not h3_clients(redis_server, a.origin)
    await a.close()  # idempotent


async def test_outage_local_delivery_goes_on_error_logged_once_then_resubscribed(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[Exception] = []
    caplog.set_level(logging.DEBUG, logger="h3_fastapi")
    options: dict[str, Any] = {"on_error": errors.append, "reconnect_backoff": (0.05, 0.5)}
    async with backplanes(own_redis.url, 2, **options) as (a, b):
        near, far = Recorder(), Recorder()
        await subscribed(a, "t", near)
        await subscribed(b, "t", far)
        await a.publish("t", "up")
        await far.wait_for(1)

        own_redis.kill()
        await eventually(lambda: not a.connected and not b.connected, "both see the outage")
        for i in range(200):
            a.publish("t", f"down {i}")
        await a.publish("t", "down last")  # resolves, does not raise
        assert near.data[-1] == "down last" and len(near.got) == 202  # local: all of them
        errors_logged = [
            r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "h3_fastapi"
        ]
        assert len(errors_logged) == 2, [r.getMessage() for r in errors_logged]  # one per process
        assert all("unreachable" in r.getMessage() for r in errors_logged)
        assert len(errors) == 2

        own_redis.start()  # same port
        await eventually(
            lambda: "t" in a.confirmed_topics and "t" in b.confirmed_topics,
            "reconnect and resubscribe",
            timeout=5,
        )
        await a.publish("t", "back")
        assert (await far.wait_for(2))[1] == "back"  # nothing from the outage was queued
        assert len(errors) == 2
        assert [r for r in caplog.records if "is back" in r.getMessage()]


async def test_a_silent_redis_is_noticed_by_the_health_check(own_redis: RedisServer) -> None:
    """A Redis that stops answering but keeps the socket open (a hung host)."""
    options: dict[str, Any] = {"health_check_interval": 0.2, "reconnect_backoff": (0.05, 0.2)}
    async with backplanes(own_redis.url, 1, **options) as (b,):
        far = Recorder()
        await subscribed(b, "t", far)
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)
        try:
            await eventually(lambda: not b.connected, "the silence noticed", timeout=5)
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        await eventually(lambda: "t" in b.confirmed_topics, "resubscribed", timeout=5)
        async with backplanes(own_redis.url, 1) as (a,):
            await a.publish("t", "after")
            assert await far.wait_for(1) == ["after"]


async def test_publish_with_redis_down_from_the_start_stays_local(caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="h3_fastapi")
    async with backplanes(f"redis://127.0.0.1:{free_port()}/0", 1) as (a,):
        sub = Recorder()
        a.subscribe("t", sub)
        for i in range(50):
            a.publish("t", i)
        await a.publish("t", "last")
        assert len(sub.got) == 51
        await eventually(lambda: caplog.records, "the outage log line")
        assert len([r for r in caplog.records if r.name == "h3_fastapi"]) == 1


async def test_malformed_messages_are_ignored(redis_server: RedisServer) -> None:
    async with backplanes(redis_server.url, 2) as (a, b):
        sub = Recorder()
        await subscribed(a, "t", sub)
        for junk in ("not an envelope", '\n["x"]\npayload', "\nnot json\nx", "\n[1, 2, 3]\nx"):
            redis_server.command("PUBLISH", "h3:t", junk)
        await b.publish("t", "valid")
        assert await sub.wait_for(1) == ["valid"]


DEEP = "[" * 200_000  # json.loads of this raises RecursionError


async def test_poisoned_channel_data_is_skipped_with_one_warning_and_no_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A deeply nested envelope used to end the session: a fake outage, lost deliveries."""
    caplog.set_level(logging.DEBUG, logger="h3_fastapi")
    errors: list[Exception] = []
    async with backplanes(redis_server.url, 2, prefix="poison:", on_error=errors.append) as (
        a,
        b,
    ):
        sub = Recorder()
        await subscribed(a, "t", sub)
        for poison in (f"\n{DEEP}\nx", f'\n["{a.origin}",' + "[" * 3000 + "\nx", "x" * 100):
            redis_server.command("PUBLISH", "poison:t", poison)
        await b.publish("t", "valid")
        assert await sub.wait_for(1) == ["valid"]
        assert errors == [] and a.connected
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "not an h3 envelope" in warnings[0].getMessage()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_poisoned_history_entry_is_skipped_and_publishing_goes_on(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A poisoned stream entry used to kill the publisher task: every publish then hung."""
    caplog.set_level(logging.WARNING, logger="h3_fastapi")
    errors: list[Exception] = []
    async with backplanes(
        redis_server.url, 1, history=10, prefix="phist:", on_error=errors.append
    ) as (a,):
        sub = Recorder()
        await subscribed(a, "t", sub)
        await a.publish("t", "before")
        redis_server.command("XADD", "phist:t", "*", "m", f"{DEEP}\nx")
        redis_server.command("XADD", "phist:t", "*", "m", "no header at all")
        await a.publish("t", "after")
        assert [o.data for o in await a.fetch_history("t", "0-0")] == ["before", "after"]
        late = Recorder()
        before = (await sub.wait_for(1)) and sub.got[0].id
        assert before is not None
        recovery = await asyncio.wait_for(a.subscribe_from("t", late, before), TIMEOUT)
        assert recovery.recovered and recovery.missed == 1
        await asyncio.wait_for(a.publish("t", "live"), TIMEOUT)  # the publisher is alive
        assert await late.wait_for(2) == ["after", "live"]
        assert errors == []
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_a_subscriber_that_raises_does_not_stop_the_publisher(
    redis_server: RedisServer,
) -> None:
    class Broken:
        namespace = None

        def deliver(self, outgoing: Outgoing) -> None:
            raise RuntimeError("subscriber bug")

    async with backplanes(redis_server.url, 2, history=10, prefix="broken:") as (a, b):
        good, far = Recorder(), Recorder()
        a.subscribe("t", Broken())
        a.subscribe("t", good)
        await subscribed(b, "t", far)
        for i in range(3):
            await asyncio.wait_for(a.publish("t", i), TIMEOUT)
        assert await good.wait_for(3) == ["0", "1", "2"]
        assert await far.wait_for(3) == ["0", "1", "2"]


async def test_an_out_of_range_last_event_id_is_no_outage(redis_server: RedisServer) -> None:
    errors: list[Exception] = []
    async with backplanes(
        redis_server.url, 1, history=10, prefix="range:", on_error=errors.append
    ) as (a,):
        sub = Recorder()
        await subscribed(a, "t", sub)
        await a.publish("t", "one")
        for bad in ("18446744073709551616-0", "\xb2", "1" * 4301):
            assert await a.fetch_history("t", bad) == []
            late = Recorder()
            await asyncio.wait_for(a.subscribe_from("t", late, bad), TIMEOUT)
        await a.publish("t", "two")
        await sub.wait_for(2)
        assert errors == [] and a.connected


async def test_logs_never_show_the_redis_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="h3_fastapi")
    port = free_port()
    for url in (
        f"redis://127.0.0.1:{port}/0?password=hunter2",
        f"redis://user:hunter2@127.0.0.1:{port}/0",
        f"redis://:hunter2@127.0.0.1:{port}/0?db=0",
    ):
        caplog.clear()
        async with backplanes(url, 1, reconnect_backoff=(0.05, 0.1)) as (a,):
            a.subscribe("t", Recorder())
            await eventually(lambda: "unreachable" in caplog.text, "the outage log line")
        assert "hunter2" not in caplog.text and "127.0.0.1" in caplog.text


def _publish_from_forked_child(pubsub: RedisPubSub, parent_origin: str) -> None:
    async def run() -> None:
        assert pubsub.origin != parent_origin  # or the parent would skip it as its own
        await pubsub.publish("t", "from the child")
        await pubsub.close()

    asyncio.run(run())


async def test_a_forked_worker_gets_its_own_origin(redis_server: RedisServer) -> None:
    """gunicorn ``--preload`` builds the pub/sub before forking its workers."""
    async with backplanes(redis_server.url, 1, prefix="fork:") as (a,):
        sub = Recorder()
        await subscribed(a, "t", sub)
        child = multiprocessing.get_context("fork").Process(
            target=_publish_from_forked_child, args=(a, a.origin)
        )
        child.start()
        await asyncio.to_thread(child.join, 20)
        assert child.exitcode == 0
        assert await sub.wait_for(1) == ["from the child"]


# ---------------------------------------------------------------- history


async def test_history_ids_are_stream_ids_and_replay_crosses_processes(
    redis_server: RedisServer,
) -> None:
    async with backplanes(redis_server.url, 3, history=5, prefix="hist:") as (a, b, c):
        near, far = Recorder(), Recorder()
        await subscribed(a, "news", near)
        await subscribed(b, "news", far)
        for i in range(8):
            a.publish("news", f"n{i}")
        await a.publish("news", b"\x01bin")
        await far.wait_for(9)
        await near.wait_for(9)
        stream = redis_server.command("XRANGE", "hist:news", "-", "+")
        stream_ids = [entry_id.decode() for entry_id, _ in stream]
        # The ids every process saw are the stream ids, the same everywhere.
        assert [o.id for o in far.got][-len(stream_ids) :] == stream_ids
        assert [o.id for o in near.got] == [o.id for o in far.got]
        ids = [o.id for o in far.got]
        # A process that never saw the topic reads the history from Redis: the
        # last 5 at most (history=5), oldest first, frame types kept.
        missed = await c.fetch_history("news", ids[2])
        assert [o.data for o in missed] == ["n4", "n5", "n6", "n7", b"\x01bin"]
        assert [o.id for o in missed] == ids[4:]
        assert await c.fetch_history("news", ids[-1]) == []
        assert await c.fetch_history("news", "made-up") == []
        assert c.replay("news", ids[2]) == []  # Redis history is read asynchronously only


async def test_subscribe_from_is_gapless_while_others_publish(redis_server: RedisServer) -> None:
    async with backplanes(redis_server.url, 2, history=1000, prefix="gap:") as (a, b):
        watcher = Recorder()
        await subscribed(b, "t", watcher)

        async def publisher() -> None:
            for i in range(600):
                a.publish("t", i)
                if i % 20 == 0:
                    await asyncio.sleep(0)

        task = asyncio.create_task(publisher())
        await watcher.wait_for(200)
        resume = watcher.got[150]
        late = Recorder()
        # ``late`` lives in b, which is subscribed already; and in a fresh process c.
        await b.subscribe_from("t", late, resume.id)
        async with backplanes(redis_server.url, 1, history=1000, prefix="gap:") as (c,):
            elsewhere = Recorder()
            await c.subscribe_from("t", elsewhere, resume.id)
            await task
            await a.publish("t", "done")
            await late.wait_for(600 - 151 + 1)
            await elsewhere.wait_for(600 - 151 + 1)
            expected = [str(i) for i in range(151, 600)] + ["done"]
            assert late.data == expected
            assert elsewhere.data == expected


async def test_unsubscribe_during_catch_up(redis_server: RedisServer) -> None:
    async with backplanes(redis_server.url, 1, history=10, prefix="cu:") as (a,):
        first = Recorder()
        await subscribed(a, "t", first)
        await a.publish("t", "one")
        late = Recorder()
        pending = a.subscribe_from("t", late, "0-0")
        a.unsubscribe("t", late)
        await pending
        await a.publish("t", "two")
        await first.wait_for(2)
        assert late.data == []
        assert a.subscribers("t") == [first]


# ---------------------------------------------------------------- packaging


def test_without_the_redis_package() -> None:
    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['redis.asyncio'] = None\n"
        "import h3_fastapi\n"  # imports fine without the extra
        "try:\n    h3_fastapi.RedisPubSub('redis://localhost')\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "pip install 'h3-fastapi[redis]'" in out.stdout


def test_env_selects_redis_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H3_PUBSUB_URL", "redis://127.0.0.1:1/0")
    set_default_pubsub(None)
    try:
        pubsub = get_default_pubsub()
        assert isinstance(pubsub, RedisPubSub) and pubsub.url == "redis://127.0.0.1:1/0"
    finally:
        set_default_pubsub(None)
    monkeypatch.setenv("H3_PUBSUB_URL", "memory://")
    try:
        assert type(get_default_pubsub()) is MemoryPubSub
    finally:
        set_default_pubsub(None)


# ---------------------------------------------------------------- across processes
# The cross-process tests that hold for every backplane are in test_backplanes.py.


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:
    cluster = Cluster(redis_server.url, 4, redis_server)
    yield cluster
    cluster.stop()


async def test_redis_restart_with_100_clients_connected(cluster: Cluster) -> None:
    """Kill Redis under 100 clients, restart it: nobody is dropped, publishes resume < 5 s."""
    servers = cluster.servers
    joined = await asyncio.gather(*(join_chat(servers[i % 4].ws_url) for i in range(100)))
    sockets = [ws for ws, _ in joined]
    by_server = [[ws for i, ws in enumerate(sockets) if i % 4 == s] for s in range(4)]
    try:
        cluster.service.kill()
        await eventually(
            lambda: every_process(cluster, lambda s: not s["connected"]),
            "every process sees the outage",
        )
        # Local delivery goes on: a client on server 0 reaches the 24 others there.
        await by_server[0][0].send("during the outage")
        for ws in by_server[0][1:]:
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "during the outage"

        cluster.service.start()  # same port
        restarted = time.monotonic()
        try:
            await eventually(
                lambda: every_process(
                    cluster, lambda s: s["connected"] and "chat" in s["confirmed"]
                ),
                "every process resubscribed",
                timeout=5,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {await cluster.status()}") from None
        resubscribed = time.monotonic() - restarted
        for s in range(4):
            await by_server[s][0].send(f"after:{s}")

        async def gets_the_others(ws: ClientConnection) -> None:
            expected = {f"after:{s}" for s in range(4) if by_server[s][0] is not ws}
            got = set()
            while len(got) < len(expected):
                frame = await ws.recv()
                # Nothing published during the outage crosses later (at-most-once).
                assert frame != "during the outage", "an outage publish was queued"
                got.add(frame)
            assert got == expected

        await asyncio.wait_for(
            asyncio.gather(*(gets_the_others(ws) for ws in sockets)),
            max(0.1, 5 - (time.monotonic() - restarted)),
        )
        recovered = time.monotonic() - restarted
        assert all(ws.close_code is None for ws in sockets), "a client was disconnected"
        assert [s["peers"] for s in await cluster.status()] == [25, 25, 25, 25]
        print(
            f"\nredis restart: resubscribed in {resubscribed:.2f}s, all delivered {recovered:.2f}s"
        )
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))


# ---------------------------------------------------------------- the docs recipe


def _example(name: str) -> ModuleType:
    path = ROOT / "docs" / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scaling_test_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_docs_recipe_uvicorn_workers_2_on_one_port(redis_server: RedisServer) -> None:
    """``H3_PUBSUB_URL=... uvicorn scaling_app:app --workers 2``: one chat across workers."""
    server = ChildServer(
        "scaling_app:app",
        free_port(),
        ["--workers", "2", "--app-dir", str(Path("docs") / "examples")],
        {"H3_PUBSUB_URL": redis_server.url},
    )
    try:
        server.wait_ready(30)
        sockets: list[ClientConnection] = []

        def subscribed_workers() -> int:
            reply = redis_server.command("PUBSUB", "NUMSUB", "h3:chat")
            return int(reply[1])

        # The kernel hands connections to either worker: connect until both
        # workers have a chat member (each worker subscribes "h3:chat" once).
        while subscribed_workers() < 2 and len(sockets) < 60:
            sockets += await asyncio.gather(
                *(ws_connect(server.ws_url + "/chat") for _ in range(4))
            )
            with contextlib.suppress(AssertionError):
                await eventually(lambda: subscribed_workers() >= 2, "both workers", timeout=0.5)
        assert subscribed_workers() == 2, "every connection went to one worker"

        # Both workers are subscribed already: the stream is live once it answers.
        events = sse_events(server.url + "/chat/events")
        assert await next_event(events) == {"status": "200"}
        await sockets[0].send("hello workers")
        for ws in sockets[1:]:
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello workers"
        assert (await next_event(events))["data"] == "hello workers"
        async with httpx.AsyncClient() as client:
            await client.post(server.url + "/chat/announce", params={"text": "announcement"})
        for ws in sockets:
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "announcement"
        await events.aclose()
        await asyncio.gather(*(ws.close() for ws in sockets))
    finally:
        server.stop()


async def test_docs_redis_example_replays_from_the_stream(
    redis_server: RedisServer, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docs/examples/scaling_redis.py``: prefix, history, replay, publish from HTTP."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    module = _example("scaling_redis")
    server = live_server(module.app)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        events = sse_events(server.url + "/news")
        assert await next_event(events) == {"status": "200"}
        # The stream is subscribed once it answers; Redis confirms it shortly.
        await eventually(lambda: "news" in module.pubsub.confirmed_topics, "subscription")
        async with websockets.connect(server.ws_url + "/newsroom", proxy=None) as reporter:
            await eventually(lambda: len(module.pubsub.subscribers("news")) == 2, "reporter")
            await reporter.send("first")
            first = await next_data(events)
            assert first["data"] == "first"
            await events.aclose()
            for i in range(3):
                await client.post("/news", params={"text": f"while away {i}"})
            assert await asyncio.wait_for(reporter.recv(), TIMEOUT) == "while away 0"
        assert redis_server.command("XLEN", "myapp:news") == 4  # the prefix names the stream
        events = sse_events(server.url + "/news", {"Last-Event-ID": first["id"]})
        assert await next_event(events) == {"status": "200"}
        missed = [(await next_data(events))["data"] for _ in range(3)]
        assert missed == [f"while away {i}" for i in range(3)]
        await client.post("/news", params={"text": "live"})
        assert (await next_data(events))["data"] == "live"
        await events.aclose()
