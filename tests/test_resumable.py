"""Resumable streams: an answer produced once, resumed from any point, in any worker.

Memory: the example app (``example_app/resumable.py``) in this process. Redis:
two uvicorn processes of the example app sharing a ``redis-server``; the
answer is started in one and resumed, watched and cancelled from the other.
The browser test reloads the page mid-answer in headless Chromium and has the
other worker finish it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from example_app.resumable import ANSWER
from h3_fastapi import MemoryPubSub, start_resumable
from tests import test_browser_demo
from tests.conftest import ChildServer, free_port
from tests.recorders import eventually
from tests.sse_client import next_event
from tests.test_redis import RedisServer, need_redis

browser = test_browser_demo.browser  # the headless Chromium fixture

TIMEOUT = 10
WORDS = [word + " " for word in ANSWER.split(" ")]


async def read(
    client: httpx.AsyncClient, key: str, *, last_id: str | None = None, count: int | None = None
) -> tuple[list[dict[str, str]], str | None]:
    """Data events of ``key`` (``count`` of them, or up to the end) and the end reason."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    got: list[dict[str, str]] = []
    async with client.stream("GET", f"/answer/{key}/events", headers=headers) as response:
        lines = response.aiter_lines()
        while count is None or len(got) < count:
            event = await next_event(lines)
            if event.get("event") == "end":
                return got, json.loads(event["data"])["reason"]
            if "event" not in event:
                got.append(event)
    return got, None


async def start(client: httpx.AsyncClient, delay: float) -> str:
    response = await client.post("/answer/start", params={"delay": delay})
    return str(response.json()["key"])


async def resume_exactly(first: httpx.AsyncClient, second: httpx.AsyncClient) -> None:
    """Start on ``first``, drop after 5 words, finish on ``second``: every word once."""
    key = await start(first, 0.02)
    head, _ = await read(first, key, count=5)
    watcher = asyncio.ensure_future(read(second, key))  # a second client, from the start
    tail, reason = await read(second, key, last_id=head[-1]["id"])
    assert reason == "done"
    assert [e["data"] for e in head + tail] == WORDS
    ids = [e["id"] for e in head + tail]
    assert len(set(ids)) == len(ids)
    watched, watched_reason = await asyncio.wait_for(watcher, TIMEOUT)
    assert [e["data"] for e in watched] == WORDS and watched_reason == "done"


async def cancel_elsewhere(first: httpx.AsyncClient, second: httpx.AsyncClient) -> None:
    key = await start(first, 0.2)
    got, _ = await read(second, key, count=1)
    reader = asyncio.ensure_future(read(second, key, last_id=got[0]["id"]))
    assert (await second.delete(f"/answer/{key}")).status_code == 200
    more, reason = await asyncio.wait_for(reader, TIMEOUT)
    assert reason == "cancelled" and len(got + more) < len(WORDS)


@pytest.fixture
def example(live_server: Any) -> Any:
    from example_app.routes import app

    return live_server(app)


@pytest.mark.slow  # real time: timers tick in seconds
async def test_memory_resume_watch_and_cancel(example: Any) -> None:
    async with httpx.AsyncClient(base_url=example.url, timeout=TIMEOUT) as client:
        await resume_exactly(client, client)
        await cancel_elsewhere(client, client)
        unknown, reason = await read(client, "no-such-answer")
        assert unknown == [] and reason == "unknown"


async def test_memory_producer_stops_when_nobody_listens(live_server: Any) -> None:
    pubsub = MemoryPubSub(history=100)
    closed = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                yield "tick"
                await asyncio.sleep(0.05)
        finally:
            loop.call_soon_threadsafe(closed.set)

    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/go")
    async def go() -> None:
        await start_resumable("k", endless(), pubsub=pubsub, idle_timeout=0.5)

    server = live_server(app)
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        await client.post("/go")
    await asyncio.wait_for(closed.wait(), TIMEOUT)  # the generator's finally ran

    def ended() -> Any:  # the end marker is published once the generator has closed
        last = json.loads(pubsub.replay("__h3:stream:k", "0-0")[-1].data)
        return last if "end" in last else None

    assert await eventually(ended, "the end marker") == {"end": "idle"}


# ---------------------------------------------------------------- Redis


@pytest.fixture
def two_workers() -> Iterator[list[ChildServer]]:
    need_redis()
    redis = RedisServer().start()
    env = {"H3_PUBSUB_URL": redis.url}
    children = [ChildServer("example_app:app", free_port(), [], env) for _ in range(2)]
    try:
        yield [child.wait_ready() for child in children]
    finally:
        for child in children:
            child.stop()
        redis.kill()


@pytest.mark.redis
async def test_redis_resume_and_cancel_from_another_worker(two_workers: list[ChildServer]) -> None:
    a, b = two_workers
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=TIMEOUT) as first,
        httpx.AsyncClient(base_url=b.url, timeout=TIMEOUT) as second,
    ):
        await resume_exactly(first, second)
        await cancel_elsewhere(first, second)


@pytest.mark.browser
def test_browser_reload_mid_answer_continues_on_another_worker(
    browser: Any, two_workers: list[ChildServer]
) -> None:
    """Headless Chromium: reload mid-answer, resume from worker B: the text is exact."""
    from playwright.sync_api import expect

    a, b = two_workers
    pids = [httpx.get(child.url + "/answer").headers["x-worker-pid"] for child in (a, b)]
    assert pids[0] != pids[1]
    page = browser.new_page()
    page.goto(a.url + "/answer")
    page.click("#ask")
    page.wait_for_function(
        "document.getElementById('answer').textContent.split(' ').length > 6", timeout=10_000
    )
    before = page.inner_text("#answer")
    expect(page.locator("#worker")).to_have_text(pids[0])
    page.goto(a.url + "/answer?server=" + b.url)  # a reload, the stream from worker B
    expect(page.locator("#status")).to_have_attribute("data-state", "done", timeout=15_000)
    assert page.locator("#worker").inner_text() == pids[1]
    text = page.locator("#answer").text_content()
    assert text == "".join(WORDS)  # every word once, in order, across the reload
    assert len(before.split()) < len(WORDS)  # it was reloaded mid-answer


async def test_docs_resumable_answers_example(live_server: Any) -> None:
    """``docs/examples/resumable_answers.py``: start, read two tokens, resume, stop."""
    from tests.test_presence import docs_example

    server = live_server(docs_example("resumable_answers").app)
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        key = (await client.post("/answers", params={"question": "why?"})).json()["key"]
        events: list[dict[str, str]] = []
        async with client.stream("GET", f"/answers/{key}") as response:
            lines = response.aiter_lines()
            events += [await next_event(lines) for _ in range(2)]
        async with client.stream("GET", f"/answers/{key}?last_event_id={events[-1]['id']}") as r:
            lines = r.aiter_lines()
            while (event := await next_event(lines)).get("event") != "end":
                events.append(event)
        assert "".join(e["data"] for e in events) == "Resumable streams survive reloads."
        assert json.loads(event["data"]) == {"reason": "done"}
        assert (await client.delete(f"/answers/{key}")).status_code == 200
