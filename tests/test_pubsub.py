"""MemoryPubSub: topics, namespaces, threads, and history for SSE replay.

Subscribers here are small recording objects (the ``Subscriber`` protocol:
``namespace`` and ``deliver``), so each rule is checked without a server;
``test_event_stream_replay_with_memory_history`` then drives the same history
through a real uvicorn and an SSE client.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import threading
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from h3_fastapi import EventStream, MemoryPubSub, PubSub, create_event_stream
from h3_fastapi import publish as module_publish
from h3_fastapi.pubsub import Outgoing, get_default_pubsub, parse_event_id, set_default_pubsub
from tests.conftest import ROOT
from tests.recorders import Subscriber as Recorder
from tests.sse_client import next_event


def test_memory_is_a_pubsub() -> None:
    assert isinstance(MemoryPubSub(), PubSub)


def test_publish_reaches_subscribers_once_encoded_once() -> None:
    pubsub = MemoryPubSub()
    a, b, other = Recorder("/ws"), Recorder("/ws"), Recorder("/ws")
    pubsub.subscribe("t", a)
    pubsub.subscribe("t", b)
    pubsub.subscribe("u", other)
    pubsub.subscribe("t", a)  # twice: still one subscription
    pubsub.publish("t", {"x": 1})
    assert a.data == ['{"x":1}'] and b.data == ['{"x":1}'] and other.data == []
    assert a.got[0] is b.got[0]  # one Outgoing for every receiver
    assert a.got[0].id is None  # no history: no ids
    pubsub.publish("t", b"\x00\x01")
    assert a.data[-1] == b"\x00\x01" and a.got[-1].is_binary


async def test_a_publish_from_a_hook_thread_reaches_only_who_was_subscribed_then() -> None:
    """From a ``def`` hook's thread delivery hops onto the loop; the subscribers are
    those at the publish, not those when the hop runs (a peer subscribing in between
    from another hook's thread got the message ahead of its own welcome: CI, 3.13)."""
    from h3_fastapi import _threadpool

    pubsub = MemoryPubSub()
    early, late = Recorder("/ws"), Recorder("/ws")
    pubsub.subscribe("t", early)
    loop = asyncio.get_running_loop()

    def hook() -> None:  # as a ``def`` hook runs: in a worker, its loop known
        _threadpool._current.loop = loop
        try:
            pubsub.publish("t", "before late subscribed")
        finally:
            _threadpool._current.loop = None

    thread = threading.Thread(target=hook)
    thread.start()
    thread.join()
    pubsub.subscribe("t", late)  # before the hop's callback has run
    ran = loop.create_future()
    loop.call_soon(ran.set_result, None)  # queued after the hop: runs once it has
    await asyncio.wait_for(ran, 5)
    assert early.data == ["before late subscribed"]
    assert late.data == []


def test_namespace_and_exclude() -> None:
    pubsub = MemoryPubSub()
    sender, same, other_ns, stream = Recorder("/a"), Recorder("/a"), Recorder("/b"), Recorder()
    for sub in (sender, same, other_ns, stream):
        pubsub.subscribe("t", sub)
    # peer.publish: its namespace, every subscriber but itself; streams (None) too.
    pubsub.publish("t", "p", namespace="/a", exclude=sender)
    assert (sender.data, same.data, other_ns.data, stream.data) == ([], ["p"], [], ["p"])
    # handler.publish without a namespace: everyone.
    pubsub.publish("t", "all")
    assert [s.data[-1] for s in (sender, same, other_ns, stream)] == ["all"] * 4


def test_unsubscribe_and_topic_bookkeeping() -> None:
    added: list[str] = []
    removed: list[str] = []

    class Watched(MemoryPubSub):
        def _topic_added(self, topic: str) -> None:
            added.append(topic)

        def _topic_removed(self, topic: str) -> None:
            removed.append(topic)

    pubsub = Watched()
    a, b = Recorder(), Recorder()
    pubsub.subscribe("t", a)
    pubsub.subscribe("t", b)
    assert added == ["t"] and pubsub.subscribers("t") == [a, b]
    pubsub.unsubscribe("t", a)
    assert removed == []
    pubsub.unsubscribe("t", a)  # not subscribed: no error
    pubsub.unsubscribe("nope", a)
    pubsub.unsubscribe("t", b)
    assert removed == ["t"] and "t" not in pubsub.topics
    pubsub.publish("t", "nobody")  # no subscribers: nothing happens
    assert a.data == [] and b.data == []


def test_publish_from_threads_keeps_each_threads_order() -> None:
    pubsub = MemoryPubSub()
    sub = Recorder()
    pubsub.subscribe("t", sub)

    def sender(name: str) -> None:
        for i in range(500):
            pubsub.publish("t", f"{name}:{i}")

    threads = [threading.Thread(target=sender, args=(f"s{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen: dict[str, list[int]] = {}
    for item in sub.data:
        assert isinstance(item, str)
        name, i = item.split(":")
        seen.setdefault(name, []).append(int(i))
    assert seen == {f"s{n}": list(range(500)) for n in range(4)}


async def test_module_publish_uses_the_default_pubsub() -> None:
    pubsub = MemoryPubSub()
    set_default_pubsub(pubsub)
    try:
        assert get_default_pubsub() is pubsub
        sub = Recorder()
        pubsub.subscribe("news", sub)
        await module_publish("news", "hello")
        await asyncio.to_thread(module_publish, "news", "from a thread")
        assert sub.data == ["hello", "from a thread"]
    finally:
        set_default_pubsub(None)


def test_default_pubsub_is_memory_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("H3_PUBSUB_URL", raising=False)
    set_default_pubsub(None)
    try:
        assert type(get_default_pubsub()) is MemoryPubSub
    finally:
        set_default_pubsub(None)


# --- history ------------------------------------------------------------------


def test_parse_event_id() -> None:
    assert parse_event_id("1700000000000-3") == (1700000000000, 3)
    assert parse_event_id(" 17-0 ") == (17, 0)
    assert parse_event_id("42") == (42, 0)
    for bad in (None, "", "abc", "1-x", "-1", "1-2-3", "1.5"):
        assert parse_event_id(bad) is None, bad


def test_history_stamps_increasing_ids_and_keeps_the_last_n() -> None:
    pubsub = MemoryPubSub(history=5)
    sub = Recorder()
    pubsub.subscribe("t", sub)
    for i in range(8):
        pubsub.publish("t", i)
    ids = [o.id for o in sub.got]
    assert all(i is not None and re.fullmatch(r"\d+-\d+", i) for i in ids)
    keys = [parse_event_id(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == 8  # strictly increasing
    # After the oldest kept id (the 4th publish): the four after it.
    assert [o.data for o in pubsub.replay("t", ids[3])] == ["4", "5", "6", "7"]
    assert [o.id for o in pubsub.replay("t", ids[5])] == ids[6:]
    assert pubsub.replay("t", ids[-1]) == []
    # An id no longer kept: nothing, never the whole history (a gap would be
    # silent); subscribe_from tells such a subscriber to resync.
    assert pubsub.replay("t", ids[2]) == []
    assert pubsub.replay("t", ids[0]) == []
    # "0-0" is the start: everything still kept, as asked.
    assert [o.data for o in pubsub.replay("t", "0-0")] == ["3", "4", "5", "6", "7"]
    # Not an id of ours, no id, another topic: nothing.
    assert pubsub.replay("t", "client-made-id") == []
    assert pubsub.replay("t", None) == []
    assert pubsub.replay("other", ids[0]) == []


def test_history_is_kept_without_subscribers_and_off_by_default() -> None:
    pubsub = MemoryPubSub(history=3)
    pubsub.publish("t", "a")
    pubsub.publish("t", "b")
    assert [o.data for o in pubsub.replay("t", "0")] == ["a", "b"]  # from the start
    sub = Recorder()
    pubsub.subscribe_from("t", sub, "1-0")  # not kept: a resync, nothing replayed
    pubsub.publish("t", "c")
    assert sub.data == ["c"]
    plain = MemoryPubSub()
    plain.publish("t", "a")
    assert plain.replay("t", "0") == []
    with pytest.raises(ValueError):
        MemoryPubSub(history=-1)


def test_history_does_not_stamp_a_shared_outgoing() -> None:
    pubsub = MemoryPubSub(history=2)
    sub = Recorder()
    pubsub.subscribe("t", sub)
    shared = Outgoing("x")
    pubsub.publish("t", shared)
    pubsub.publish("t", shared)
    assert shared.id is None
    assert sub.got[0].id != sub.got[1].id


def test_subscribe_from_gives_missed_then_live() -> None:
    pubsub = MemoryPubSub(history=50)
    first = Recorder()
    pubsub.subscribe("t", first)
    for i in range(5):
        pubsub.publish("t", i)
    last_seen = first.got[1].id
    late = Recorder()
    pubsub.subscribe_from("t", late, last_seen)
    pubsub.publish("t", "live")
    assert late.data == ["2", "3", "4", "live"]
    # Without an id it is a plain subscribe.
    fresh = Recorder()
    pubsub.subscribe_from("t", fresh, None)
    pubsub.publish("t", "next")
    assert fresh.data == ["next"]


def test_subscribe_from_while_another_thread_publishes_has_no_gap_or_duplicate() -> None:
    pubsub = MemoryPubSub(history=10_000)
    first = Recorder()
    pubsub.subscribe("t", first)
    started = threading.Event()

    def sender() -> None:
        for i in range(5000):
            pubsub.publish("t", i)
            if i == 100:
                started.set()

    thread = threading.Thread(target=sender)
    thread.start()
    assert started.wait(5)
    with first.lock:
        resume_at = first.got[50]
    late = Recorder()
    pubsub.subscribe_from("t", late, resume_at.id)
    thread.join()
    assert late.data == [str(i) for i in range(51, 5000)]


# --- through a real server and an SSE client ----------------------------------


async def test_event_stream_replay_with_memory_history(live_server: Any) -> None:
    """Disconnect, 10 publishes, reconnect with Last-Event-ID: the 10, then live ones."""
    pubsub = MemoryPubSub(history=100)
    app = FastAPI()

    @app.get("/events")
    async def events(request: Request) -> EventStream:
        stream = create_event_stream(request, pubsub=pubsub)
        stream.subscribe("feed")
        stream.push_comment("subscribed")
        return stream

    server = live_server(app)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        async with client.stream("GET", "/events") as response:
            lines = response.aiter_lines()
            assert await anext(lines) == ": subscribed"
            server.call(lambda: pubsub.publish("feed", "before"))
            first = await next_event(lines)
        assert first["data"] == "before"
        last_id = first["id"]
        for i in range(10):
            server.call(lambda i=i: pubsub.publish("feed", f"missed {i}"))
        async with client.stream("GET", "/events", headers={"Last-Event-ID": last_id}) as response:
            lines = response.aiter_lines()
            missed = [await next_event(lines) for _ in range(10)]
            server.call(lambda: pubsub.publish("feed", "live"))
            live = await next_event(lines)
        assert [e["data"] for e in missed] == [f"missed {i}" for i in range(10)]
        keys = [parse_event_id(e["id"]) for e in [first, *missed]]
        assert keys == sorted(keys)
        assert live["data"] == "live"


async def test_docs_scaling_memory_example(live_server: Any) -> None:
    """``docs/examples/scaling_memory.py``: history and replay without Redis."""
    path = ROOT / "docs" / "examples" / "scaling_memory.py"
    spec = importlib.util.spec_from_file_location("docs_scaling_memory_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = live_server(module.app)
    seen = Recorder()
    module.pubsub.subscribe("ticks", seen)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        for value in range(3):
            assert (await client.post("/ticks", params={"value": value})).status_code == 200
        kept = seen.got
        assert [o.data for o in kept] == ["0", "1", "2"]
        headers = {"Last-Event-ID": kept[0].id}
        async with client.stream("GET", "/ticks", headers=headers) as response:
            lines = response.aiter_lines()
            missed = [await next_event(lines) for _ in range(2)]
            assert [(e["id"], e["data"]) for e in missed] == [(o.id, o.data) for o in kept[1:]]
            await client.post("/ticks", params={"value": 3})
            assert (await next_event(lines))["data"] == "3"
