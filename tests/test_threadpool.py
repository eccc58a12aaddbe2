"""``def`` hooks run in the threadpool, in order per peer; ``sync_hooks="loop"``."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest
import websockets
from fastapi import FastAPI

from h3_fastapi import H3Router, MemoryPubSub, Peer
from h3_fastapi._compat import worker_thread_loop
from h3_fastapi._threadpool import ThreadPool
from h3_fastapi.pubsub import Outgoing

TIMEOUT = 5


def app_with(**hooks: Any) -> FastAPI:
    router = H3Router()
    router.ws("/slow", {"message": lambda peer, m: (time.sleep(1.0), peer.send("slept"))[1]})
    router.ws("/echo", {"message": lambda peer, m: peer.send(m.text())}, **hooks)
    app = FastAPI()
    app.include_router(router)
    return app


@pytest.mark.slow  # a wall-clock bound
async def test_blocking_def_hook_does_not_delay_other_peers(live_server: Any) -> None:
    # Wall-clock assertion (1 s sleep against a 100 ms bound).
    server = live_server(app_with())
    async with (
        websockets.connect(server.ws_url + "/slow") as slow,
        websockets.connect(server.ws_url + "/echo") as echo,
    ):
        await slow.send("block")
        await asyncio.sleep(0.05)  # the slow hook is sleeping now
        started = time.monotonic()
        await echo.send("hi")
        assert await asyncio.wait_for(echo.recv(), TIMEOUT) == "hi"
        assert time.monotonic() - started < 0.1
        assert await asyncio.wait_for(slow.recv(), TIMEOUT) == "slept"


async def test_order_of_hooks_kept_in_the_threadpool(live_server: Any) -> None:
    events: list[tuple[str, Any, str]] = []
    done = threading.Event()

    def open_(peer: Peer) -> None:
        time.sleep(0.05)  # a slow open still runs before the first message
        events.append(("open", None, threading.current_thread().name))

    def message(peer: Peer, m: Any) -> None:
        time.sleep(0.002 * (int(m.text()) % 3))  # uneven work: order must still hold
        events.append(("message", int(m.text()), threading.current_thread().name))
        peer.send(m.text())

    def close(peer: Peer, details: Any) -> None:
        events.append(("close", details.code, threading.current_thread().name))
        done.set()

    router = H3Router()
    router.ws("/order", {"open": open_, "message": message, "close": close})
    app = FastAPI()
    app.include_router(router)
    server = live_server(app)
    async with websockets.connect(server.ws_url + "/order") as ws:
        for i in range(30):
            await ws.send(str(i))
        for i in range(30):
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == str(i)
    await asyncio.to_thread(done.wait, TIMEOUT)
    kinds = [e[0] for e in events]
    assert kinds == ["open"] + ["message"] * 30 + ["close"]
    assert [e[1] for e in events if e[0] == "message"] == list(range(30))
    # not the loop's thread: the worker threads of the pool
    loop_thread = server.thread.name
    assert all(e[2] != loop_thread for e in events)


async def test_sync_hooks_loop_runs_on_the_event_loop(live_server: Any) -> None:
    threads: list[str] = []
    router = H3Router()

    def message(peer: Peer, m: Any) -> None:
        threads.append(threading.current_thread().name)
        peer.send(m.text())

    router.ws("/loop", {"message": message}, sync_hooks="loop")
    app = FastAPI()
    app.include_router(router)
    server = live_server(app)
    async with websockets.connect(server.ws_url + "/loop") as ws:
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "x"
    assert threads == [server.thread.name]


async def test_def_hook_returning_a_coroutine_is_awaited(live_server: Any) -> None:
    async def reply(peer: Peer, text: str) -> None:
        await peer.send(text.upper())

    router = H3Router()
    router.ws("/coro", {"message": lambda peer, m: reply(peer, m.text())})
    app = FastAPI()
    app.include_router(router)
    server = live_server(app)
    async with websockets.connect(server.ws_url + "/coro") as ws:
        await ws.send("abc")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ABC"


async def test_pool_runs_at_most_limit_hooks_at_once_and_queues_the_rest() -> None:
    pool = ThreadPool(limit=3)
    running = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    def hook(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1
        return i

    def workers() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "h3-hooks")

    before = workers()
    futures = [pool.submit(hook, i) for i in range(10)]
    assert workers() - before == 3  # threads start in submit: three, the rest wait queued
    assert not any(f.done() for f in futures)
    release.set()
    assert await asyncio.gather(*futures) == list(range(10))
    assert peak == 3


async def test_pool_copies_the_context_and_returns_errors() -> None:
    pool = ThreadPool(limit=2)
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")
    assert await pool.submit(var.get) == "caller"

    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await pool.submit(fail)


async def test_pool_result_for_a_cancelled_waiter_is_dropped() -> None:
    pool = ThreadPool(limit=1)
    started = threading.Event()
    release = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "late"

    future = pool.submit(slow)
    await asyncio.to_thread(started.wait, 5)
    future.cancel()
    release.set()
    # The worker settles nothing on the cancelled future and takes the next job.
    assert await asyncio.wait_for(pool.submit(lambda: "next"), 5) == "next"


async def test_a_hook_thread_knows_its_loop() -> None:
    """``peer.publish`` from a ``def`` hook reaches the loop through this (any pub/sub)."""
    loop = asyncio.get_running_loop()
    assert await ThreadPool(limit=1).submit(worker_thread_loop) is loop
    assert worker_thread_loop() is None  # on the loop itself: not a worker thread


async def test_a_publish_from_a_hook_thread_reaches_subscribers_on_the_loop() -> None:
    """One hop for the whole fan-out: each subscriber is handed the publish on the loop."""
    pubsub = MemoryPubSub()
    loop_thread = threading.get_ident()
    seen: list[int] = []
    done = asyncio.Event()

    class Subscriber:
        namespace = None

        def deliver(self, outgoing: Outgoing) -> None:
            seen.append(threading.get_ident())
            if len(seen) == 100:
                done.set()

    for _ in range(100):
        pubsub.subscribe("t", Subscriber())
    await ThreadPool(limit=1).submit(pubsub.publish, "t", "hello")
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert set(seen) == {loop_thread}
