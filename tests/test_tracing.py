"""Tracing: a publish in one process and its delivery in another form one trace.

Two uvicorn processes share a real Redis. A WebSocket client of process A sends
a message that A's hook publishes; a client of process B receives it. Each
process writes its finished spans to a file; the test reads them: the
``process room`` span in B is a child of the ``publish room`` span in A (same
trace id), which is a child of A's connection span. Process A runs behind
opentelemetry-instrumentation-asgi's middleware: its connection has that
middleware's server span and no second one of ours; B has ours.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.test_redis import RedisServer, need_redis

TIMEOUT = 10
pytestmark = [pytest.mark.redis, pytest.mark.slow]


def spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def spans_until(path: Path, name: str) -> list[dict[str, Any]]:
    """The spans in ``path`` once one called ``name`` is there (polled)."""
    deadline = time.monotonic() + TIMEOUT
    while not any(s["name"] == name for s in spans(path)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no span {name!r} in {spans(path)}")
        await asyncio.sleep(0.05)
    return spans(path)


def only(found: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    matching = [s for s in found if all(s.get(k) == v for k, v in fields.items())]
    assert len(matching) == 1, (fields, [(s["name"], s["kind"]) for s in found])
    return matching[0]


async def test_a_publish_across_two_processes_is_one_trace(
    spawn_server: Any, tmp_path: Path
) -> None:
    need_redis()
    redis = RedisServer().start()
    try:
        env = {"REDIS_URL": redis.url}
        a_file, b_file = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
        a = spawn_server(
            "tests.apps.traced_app:app", env={**env, "TRACE_FILE": str(a_file), "ASGI_OTEL": "1"}
        )
        b = spawn_server("tests.apps.traced_app:app", env={**env, "TRACE_FILE": str(b_file)})
        async with connect(f"{b.ws_url}/ws") as receiver, connect(f"{a.ws_url}/ws") as sender:
            for server in (a, b):
                await asyncio.to_thread(httpx.get, f"{server.url}/subscribed", timeout=TIMEOUT)
            await sender.send("hello")
            assert await asyncio.wait_for(receiver.recv(), TIMEOUT) == "hello"
        a_spans = await spans_until(a_file, "HTTP /ws")
        b_spans = await spans_until(b_file, "WebSocket /ws")
    finally:
        redis.kill()

    publish = only(a_spans, name="publish room")
    process = only(b_spans, name="process room")
    trace_id = publish["context"]["trace_id"]
    assert process["context"]["trace_id"] == trace_id
    assert process["parent_id"] == publish["context"]["span_id"]
    assert process["kind"] == "SpanKind.CONSUMER"
    assert publish["kind"] == "SpanKind.PRODUCER"

    # A: the middleware's server span is the connection's; ours is not made.
    server_a = only(a_spans, name="HTTP /ws", kind="SpanKind.SERVER")
    assert publish["parent_id"] == server_a["context"]["span_id"]
    assert publish["context"]["trace_id"] == server_a["context"]["trace_id"]
    assert not [s for s in a_spans if s["name"] == "WebSocket /ws"]
    assert server_a["attributes"]["websocket.close_code"] == 1000
    assert [e["name"] for e in server_a["events"]].count("message.received") == 1

    # B: no middleware, so one span of ours per connection, closed with its code.
    server_b = only(b_spans, name="WebSocket /ws", kind="SpanKind.SERVER")
    assert server_b["attributes"]["http.route"] == "/ws"
    assert server_b["attributes"]["websocket.close_code"] == 1000
