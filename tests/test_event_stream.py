"""EventStream unit tests: wire format, state machine, @event_stream, driven by a fake ASGI server.

The fake server (``FakeClient``) records every ASGI message, can hold a write
(a client that is behind) and can disconnect. Real-server behaviour lives in
``test_event_stream_server.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from h3_fastapi import EventStream, EventStreamMessage, MemoryPubSub, create_event_stream
from h3_fastapi import event_stream as event_stream_decorator
from h3_fastapi._event_stream import _GeneratorStream, format_comment, format_event
from h3_fastapi._sse import encode
from h3_fastapi.pubsub import Outgoing

# --- a fake ASGI server ---------------------------------------------------------


def make_request(
    headers: dict[str, str] | None = None,
    http_version: str = "1.1",
    method: str = "GET",
    receive: Any = None,
) -> Request:
    scope = {
        "type": "http",
        "method": method,
        "path": "/events",
        "query_string": b"",
        "http_version": http_version,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    return Request(scope, receive) if receive is not None else Request(scope)


class FakeClient:
    """An ASGI server for one response: records messages, can stall writes or leave."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.stalled = asyncio.Event()  # set while a write waits for ``writable``
        self.changed = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if not self.writable.is_set():
            self.stalled.set()
            await self.writable.wait()
            self.stalled.clear()
        self.messages.append(message)
        self.changed.set()

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)

    @property
    def ended(self) -> bool:
        return any(
            m["type"] == "http.response.body" and not m.get("more_body", False)
            for m in self.messages
        )

    async def wait_for(self, predicate: Any, timeout: float = 2.0) -> None:
        async def until() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), timeout)


def start(stream: EventStream, client: FakeClient, method: str = "GET") -> asyncio.Task[None]:
    scope = dict(stream.request.scope, method=method)
    return asyncio.get_running_loop().create_task(stream(scope, client.receive, client.send))


async def wire(*pushes: Any, comment: str | None = None) -> bytes:
    """The body bytes a client receives for ``pushes`` (each given to ``push``)."""
    stream = EventStream(make_request())
    for message in pushes:
        stream.push(message)
    if comment is not None:
        stream.push_comment(comment)
    stream.close()
    client = FakeClient()
    await asyncio.wait_for(start(stream, client), 2)
    assert client.ended
    return client.body


def parse(text: str) -> list[dict[str, Any]]:
    """A WHATWG-style event stream parser that keeps raw field values.

    Returns one dict per blank-line-terminated block: ``data`` (lines joined
    with LF, or None), ``id``, ``event``, ``retry`` (raw text or None) and
    ``comments``.
    """
    lines = re.split(r"\r\n|\r|\n", text)
    assert lines[-1] == "", "stream must end with a line break"
    blocks: list[dict[str, Any]] = []
    block: dict[str, Any] = {"data": None, "id": None, "event": None, "retry": None, "comments": []}
    for line in lines[:-1]:
        if line == "":
            blocks.append(block)
            block = {"data": None, "id": None, "event": None, "retry": None, "comments": []}
            continue
        if line.startswith(":"):
            value = line[1:]
            block["comments"].append(value[1:] if value.startswith(" ") else value)
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            block["data"] = value if block["data"] is None else block["data"] + "\n" + value
        elif name in ("id", "event", "retry"):
            block[name] = value
        else:
            raise AssertionError(f"unexpected field {name!r}")
    return blocks


# --- wire format ----------------------------------------------------------------


async def test_string_is_one_data_event() -> None:
    assert await wire("hello") == b"data: hello\n\n"


async def test_fields_are_written_in_order_id_event_retry_data() -> None:
    message = EventStreamMessage(data="d", retry=3000, event="update", id="42")
    assert await wire(message) == b"id: 42\nevent: update\nretry: 3000\ndata: d\n\n"
    as_dict = {"retry": 5, "data": "d", "event": "e", "id": 7}
    assert await wire(as_dict) == b"id: 7\nevent: e\nretry: 5\ndata: d\n\n"


async def test_cr_and_lf_are_removed_from_id_and_event() -> None:
    message = EventStreamMessage("x", id="a\r\nb\rc\nd", event="up\ndate\r")
    assert await wire(message) == b"id: abcd\nevent: update\ndata: x\n\n"


async def test_id_written_as_str_unless_none_or_empty() -> None:
    assert await wire(EventStreamMessage("x", id=0)) == b"id: 0\ndata: x\n\n"
    assert await wire(EventStreamMessage("x", id="")) == b"data: x\n\n"
    assert await wire(EventStreamMessage("x", id=None)) == b"data: x\n\n"
    assert await wire(EventStreamMessage("x", event="")) == b"data: x\n\n"


@pytest.mark.parametrize("retry", [1.5, "100", True, False, None, 2.0])
async def test_retry_that_is_not_an_int_is_dropped(retry: Any) -> None:
    assert await wire(EventStreamMessage("x", retry=retry)) == b"data: x\n\n"


async def test_retry_int_is_written_even_zero() -> None:
    assert await wire(EventStreamMessage("x", retry=0)) == b"retry: 0\ndata: x\n\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("a\r\nb", b"data: a\ndata: b\n\n"),
        ("a\rb", b"data: a\ndata: b\n\n"),
        ("a\nb", b"data: a\ndata: b\n\n"),
        ("a\r\rb", b"data: a\ndata: \ndata: b\n\n"),
        ("a\n\nb", b"data: a\ndata: \ndata: b\n\n"),
        ("a\r\n\r\nb", b"data: a\ndata: \ndata: b\n\n"),
        ("a\n", b"data: a\ndata: \n\n"),
        ("\n", b"data: \ndata: \n\n"),
        ("a\n\rb", b"data: a\ndata: \ndata: b\n\n"),
    ],
)
async def test_data_is_split_on_every_line_break(data: str, expected: bytes) -> None:
    assert await wire(data) == expected


async def test_injection_attempt_stays_data() -> None:
    body = await wire("hi\n\nevent: x\ndata: y")
    assert body == b"data: hi\ndata: \ndata: event: x\ndata: data: y\n\n"
    (event,) = parse(body.decode())
    assert event["event"] is None
    assert event["data"] == "hi\n\nevent: x\ndata: y"
    id_injection = await wire(EventStreamMessage("ok", id="1\n\ndata: evil", event="e\ndata: x"))
    (event,) = parse(id_injection.decode())
    assert event == {
        "data": "ok",
        "id": "1data: evil",
        "event": "edata: x",
        "retry": None,
        "comments": [],
    }


async def test_comments() -> None:
    assert await wire(comment="hello") == b": hello\n\n"
    assert await wire(comment="a\r\nb\rc\nd") == b": a\n: b\n: c\n: d\n\n"
    assert await wire(comment="") == b": \n\n"
    assert format_comment("x") == ": x\n\n"


async def test_empty_data() -> None:
    assert await wire("") == b"data: \n\n"
    assert await wire(EventStreamMessage()) == b"data: \n\n"


async def test_unicode_is_utf8() -> None:
    assert await wire("héllo 👋 世界") == "data: héllo 👋 世界\n\n".encode()
    assert (
        await wire(EventStreamMessage("x", id="ü", event="é"))
        == "id: ü\nevent: é\ndata: x\n\n".encode()
    )


async def test_lone_surrogate_never_raises() -> None:
    assert await wire("a\ud800b") == b"data: a?b\n\n"


async def test_lists_are_several_events_in_order() -> None:
    assert await wire(["a", "b"]) == b"data: a\n\ndata: b\n\n"
    body = await wire([EventStreamMessage("1", id=1), {"data": "2", "event": "e"}, "3"])
    assert body == b"id: 1\ndata: 1\n\nevent: e\ndata: 2\n\ndata: 3\n\n"
    assert await wire([]) == b""
    assert await wire((1, 2)) == b"data: 1\n\ndata: 2\n\n"


async def test_data_that_is_not_str_is_json() -> None:
    assert (
        await wire({"temp": 21.5, "city": "Zürich"})
        == 'data: {"temp":21.5,"city":"Zürich"}\n\n'.encode()
    )
    assert await wire(EventStreamMessage([1, "a"])) == b'data: [1,"a"]\n\n'
    assert await wire(EventStreamMessage(None)) == b"data: null\n\n"
    assert await wire(EventStreamMessage(True)) == b"data: true\n\n"
    assert await wire(5) == b"data: 5\n\n"
    # A dict is a message only with "data" and nothing but message fields.
    assert await wire({"data": {"a": 1}, "id": "x"}) == b'id: x\ndata: {"a":1}\n\n'
    assert await wire({"data": 1, "other": 2}) == b'data: {"data":1,"other":2}\n\n'
    # Bytes are UTF-8 text, not a JSON string.
    assert await wire(EventStreamMessage(b"raw\nbytes")) == b"data: raw\ndata: bytes\n\n"


async def test_pydantic_model_data_is_json() -> None:
    from pydantic import BaseModel

    class Point(BaseModel):
        x: int
        y: int

    assert await wire(Point(x=1, y=2)) == b'data: {"x":1,"y":2}\n\n'


async def test_sse_starlette_server_sent_event_is_accepted() -> None:
    sse = pytest.importorskip("sse_starlette")
    event = sse.ServerSentEvent(data="a\nb", event="up", id="3", retry=100)
    assert await wire(event) == b"id: 3\nevent: up\nretry: 100\ndata: a\ndata: b\n\n"
    ping = sse.ServerSentEvent(comment="keep alive")
    assert await wire(ping) == b": keep alive\n\n"
    no_data = sse.ServerSentEvent(id="9")
    assert await wire(no_data) == b"id: 9\n\n"
    json_event = sse.JSONServerSentEvent(data={"a": 1})
    assert await wire(json_event) == b'data: {"a":1}\n\n'


def test_module_does_not_import_sse_starlette() -> None:
    import subprocess
    import sys

    code = "import sys, h3_fastapi; print('sse_starlette' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


text = st.text()
optional_text = st.one_of(st.none(), st.text())


@settings(max_examples=400, deadline=None)
@given(
    data=text,
    id=optional_text,
    event=optional_text,
    retry=st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.booleans()),
)
def test_any_unicode_in_any_field_is_exactly_one_event(
    data: str, id: str | None, event: str | None, retry: Any
) -> None:
    encoded = format_event(data, id, event, retry)
    (parsed,) = parse(encoded.encode("utf-8").decode("utf-8"))
    assert parsed["data"] == re.sub(r"\r\n|\r", "\n", data)
    if id:
        assert parsed["id"] == id.replace("\r", "").replace("\n", "")
    else:
        assert parsed["id"] is None
    if event:
        assert parsed["event"] == event.replace("\r", "").replace("\n", "")
    else:
        assert parsed["event"] is None
    if isinstance(retry, int) and not isinstance(retry, bool):
        assert parsed["retry"] == str(retry)
    else:
        assert parsed["retry"] is None
    assert parsed["comments"] == []


@settings(max_examples=200, deadline=None)
@given(comment=text)
def test_any_comment_is_only_comment_lines(comment: str) -> None:
    (parsed,) = parse(format_comment(comment))
    assert parsed["data"] is None
    assert parsed["comments"] == re.split(r"\r\n|\r|\n", comment)


@given(data=st.binary() | st.text().map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_bytes_are_sent_as_their_utf8_text(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    assert encode(data) == format_event(text).encode("utf-8", "replace")


# --- headers --------------------------------------------------------------------


def header_dict(stream: EventStream) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in stream.raw_headers}


def test_headers_exact_and_no_charset() -> None:
    headers = header_dict(EventStream(make_request()))
    assert headers == {
        "content-type": "text/event-stream",
        "cache-control": "private, no-cache, no-store, no-transform, must-revalidate, max-age=0",
        "x-accel-buffering": "no",
    }


@pytest.mark.parametrize(
    ("connection", "http_version", "expected"),
    [
        ("keep-alive", "1.1", True),
        ("Keep-Alive", "1.1", True),
        ("Upgrade, keep-alive", "1.1", True),
        ("close", "1.1", False),
        ("keep-alive-ish", "1.1", False),
        ("keep-alive", "2", False),
        ("keep-alive", "1.0", False),
    ],
)
def test_connection_keep_alive_only_when_asked_on_http11(
    connection: str, http_version: str, expected: bool
) -> None:
    request = make_request({"connection": connection}, http_version=http_version)
    headers = header_dict(EventStream(request))
    assert ("connection" in headers) is expected
    if expected:
        assert headers["connection"] == "keep-alive"


def test_extra_headers_replace_defaults_and_headers_stay_mutable() -> None:
    stream = create_event_stream(make_request(), headers={"Cache-Control": "no-store", "X-A": "1"})
    stream.headers["x-b"] = "2"
    headers = header_dict(stream)
    assert headers["cache-control"] == "no-store"
    assert headers["x-a"] == "1"
    assert headers["x-b"] == "2"
    assert headers["content-type"] == "text/event-stream"


def test_last_event_id_and_send_returns_self() -> None:
    stream = EventStream(make_request({"last-event-id": "17"}))
    assert stream.last_event_id == "17"
    assert stream.send() is stream
    assert EventStream(make_request()).last_event_id is None


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError):
        EventStream(make_request(), max_buffer=0)
    with pytest.raises(ValueError):
        EventStream(make_request(), ping_interval=-1)
    with pytest.raises(ValueError):
        EventStream(make_request(), send_timeout=0)


# --- the writer -------------------------------------------------------------------


async def test_events_queued_while_client_is_behind_go_in_one_send_in_order() -> None:
    stream = EventStream(make_request())
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: len(client.messages) == 1)  # headers
    client.writable.clear()
    first = stream.push("1")
    await asyncio.wait_for(client.stalled.wait(), 2)
    for n in range(2, 11):
        stream.push(str(n))
    client.writable.set()
    await asyncio.wait_for(first, 2)
    await asyncio.wait_for(stream.flush(), 2)
    assert client.bodies == [
        b"data: 1\n\n",
        b"".join(f"data: {n}\n\n".encode() for n in range(2, 11)),
    ]
    await asyncio.wait_for(stream.close(), 2)
    await asyncio.wait_for(task, 2)
    assert client.ended


async def test_awaiting_push_waits_once_the_stream_is_backed_up() -> None:
    stream = EventStream(make_request(), max_buffer=1000)  # waits from 500 bytes
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: len(client.messages) == 1)
    client.writable.clear()
    ahead = stream.push("x")  # 9 bytes queued: the producer goes on at once
    await asyncio.wait_for(_await(ahead), 1)
    await asyncio.wait_for(client.stalled.wait(), 2)
    everything = asyncio.ensure_future(_await(stream.flush()))
    backed_up = asyncio.ensure_future(_await(stream.push("y" * 600)))
    await asyncio.sleep(0)  # both tasks run up to their wait
    assert not backed_up.done()
    assert not everything.done()  # ``flush`` waits until "x" is handed to the server
    client.writable.set()
    await asyncio.wait_for(backed_up, 2)
    await asyncio.wait_for(everything, 2)
    assert client.bodies == [b"data: x\n\n", f"data: {'y' * 600}\n\n".encode()]
    stream.close()
    await asyncio.wait_for(task, 2)


async def test_awaited_pushes_go_out_in_few_sends() -> None:
    stream = EventStream(make_request())
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: len(client.messages) == 1)
    for n in range(1000):
        await stream.push(str(n))
    await stream.close()
    await asyncio.wait_for(task, 2)
    assert client.body == b"".join(f"data: {n}\n\n".encode() for n in range(1000))
    assert len(client.bodies) <= 3  # the events, and the end


async def _await(awaitable: Any) -> None:
    await awaitable


async def test_awaiting_push_and_close_before_start_never_deadlocks() -> None:
    stream = EventStream(make_request())
    await asyncio.wait_for(_await(stream.push("early")), 1)
    await asyncio.wait_for(_await(stream.flush()), 1)
    await asyncio.wait_for(_await(stream.close()), 1)
    client = FakeClient()
    await asyncio.wait_for(start(stream, client), 2)
    assert client.body == b"data: early\n\n"
    assert client.ended


async def test_pause_holds_and_resume_flushes_in_one_send() -> None:
    stream = EventStream(make_request())
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: len(client.messages) == 1)
    stream.pause()
    assert stream.is_paused
    stream.push("a")
    stream.push_comment("c")
    stream.push("b")
    assert stream.buffered_amount == len(b"data: a\n\n: c\n\ndata: b\n\n")
    await asyncio.sleep(0)  # let a (wrongly) woken writer run
    assert client.bodies == []
    await asyncio.wait_for(_await(stream.resume()), 2)
    assert not stream.is_paused
    assert client.bodies == [b"data: a\n\n: c\n\ndata: b\n\n"]
    assert stream.buffered_amount == 0
    stream.close()
    await asyncio.wait_for(task, 2)


async def test_flush_while_paused_sends_held_events() -> None:
    stream = EventStream(make_request())
    client = FakeClient()
    task = start(stream, client)
    # Flush a running stream (3.10 and 3.11's wait_for let it start by accident).
    await client.wait_for(lambda: len(client.messages) == 1)
    stream.pause()
    stream.push("held")
    await asyncio.wait_for(_await(stream.flush()), 2)
    assert client.body == b"data: held\n\n"
    assert stream.is_paused
    stream.close()
    await asyncio.wait_for(task, 2)


async def test_close_flushes_paused_data_then_ends_then_on_closed() -> None:
    stream = EventStream(make_request())
    client = FakeClient()
    order: list[str] = []
    closed = asyncio.Event()

    def on_closed() -> None:
        order.append(f"closed ended={client.ended}")
        closed.set()

    stream.on_closed(on_closed)
    task = start(stream, client)
    stream.pause()
    stream.push("x")
    stream.push("y")
    closing = stream.close()
    assert stream.is_closed
    await asyncio.wait_for(_await(closing), 2)
    await asyncio.wait_for(closed.wait(), 1)
    assert client.body == b"data: x\n\ndata: y\n\n"
    assert order == ["closed ended=True"]
    await asyncio.wait_for(task, 2)


async def test_pushes_after_close_are_ignored_and_close_is_idempotent() -> None:
    stream = EventStream(make_request())
    calls: list[int] = []
    stream.on_closed(lambda: calls.append(1))
    client = FakeClient()
    task = start(stream, client)
    stream.push("a")
    stream.close()
    stream.close()
    stream.push("b")
    stream.push_comment("c")
    await asyncio.wait_for(_await(stream.close()), 2)
    await asyncio.wait_for(task, 2)
    await asyncio.sleep(0)
    stream.push("d")
    assert client.body == b"data: a\n\n"
    assert [m.get("more_body") for m in client.messages[1:]] == [True, False]
    await _settle()
    assert calls == [1]


async def _settle() -> None:
    """Let callback tasks scheduled with call_soon/create_task run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_on_closed_exactly_once_sync_async_errors_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = EventStream(make_request())
    seen: list[str] = []
    done = asyncio.Event()

    def boom() -> None:
        raise RuntimeError("callback failed")

    async def later() -> None:
        await asyncio.sleep(0)
        seen.append("async")
        done.set()

    stream.on_closed(lambda: seen.append("sync"))
    stream.on_closed(boom)
    stream.on_closed(later)
    client = FakeClient()
    task = start(stream, client)
    client.gone.set()  # client leaves
    stream.close()  # and the app closes too: still once
    with caplog.at_level(logging.ERROR, logger="h3_fastapi"):
        await asyncio.wait_for(done.wait(), 1)
        await asyncio.wait_for(task, 2)
    assert seen == ["sync", "async"]
    assert "callback failed" in caplog.text

    late = asyncio.Event()
    stream.on_closed(late.set)  # registered after the end: runs soon
    await asyncio.wait_for(late.wait(), 1)
    await _settle()
    assert seen == ["sync", "async"]


async def test_client_disconnect_ends_idle_stream_promptly() -> None:
    stream = EventStream(make_request())
    closed = asyncio.Event()
    stream.on_closed(closed.set)
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: len(client.messages) == 1)
    client.gone.set()
    await asyncio.wait_for(closed.wait(), 1)
    await asyncio.wait_for(task, 1)
    assert stream.is_closed
    assert stream.push("x") is not None  # returns an awaitable, never raises
    await asyncio.wait_for(_await(stream.push("x")), 1)


async def test_disconnect_while_a_write_is_stuck_ends_the_response() -> None:
    stream = EventStream(make_request())
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: len(client.messages) == 1)
    client.writable.clear()
    stream.push("x")
    await asyncio.wait_for(client.stalled.wait(), 2)
    client.gone.set()
    await asyncio.wait_for(task, 1)  # the stuck write was interrupted
    assert stream.is_closed


async def test_overflow_closes_stream_and_frees_memory() -> None:
    stream = EventStream(make_request(), max_buffer=100)
    closed = asyncio.Event()
    stream.on_closed(closed.set)
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: len(client.messages) == 1)
    client.writable.clear()  # the client stops reading
    stream.push("x" * 50)
    await asyncio.wait_for(client.stalled.wait(), 2)
    stream.push("y" * 30)
    assert not stream.is_closed  # 58 + 38 bytes: still within 100
    assert stream.buffered_amount == 96
    stream.push("z" * 40)
    assert stream.is_closed
    assert stream.buffered_amount == 0
    await asyncio.wait_for(closed.wait(), 1)
    await asyncio.wait_for(task, 1)  # the stuck write was cut, no exception
    assert not client.ended


async def test_single_event_larger_than_max_buffer_is_sent() -> None:
    stream = EventStream(make_request(), max_buffer=10)
    client = FakeClient()
    task = start(stream, client)
    await asyncio.wait_for(_await(stream.push("x" * 100)), 2)
    assert not stream.is_closed
    stream.close()
    await asyncio.wait_for(task, 2)
    assert client.body == b"data: " + b"x" * 100 + b"\n\n"


async def test_send_timeout_closes_a_stuck_stream() -> None:
    stream = EventStream(make_request(), send_timeout=0.05)
    closed = asyncio.Event()
    stream.on_closed(closed.set)
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: len(client.messages) == 1)
    client.writable.clear()
    stream.push("x")
    await asyncio.wait_for(closed.wait(), 2)
    await asyncio.wait_for(task, 1)


async def test_ping_comment_when_idle() -> None:
    stream = EventStream(make_request(), ping_interval=0.05)
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: b": ping\n\n" in client.bodies)
    stream.pause()
    count = client.bodies.count(b": ping\n\n")
    await client.wait_for(lambda: client.bodies.count(b": ping\n\n") > count)  # not paused
    stream.close()
    await asyncio.wait_for(task, 2)


async def test_no_ping_by_default() -> None:
    stream = EventStream(make_request())
    assert stream.ping_interval is None
    assert EventStream(make_request(), ping_interval=0).ping_interval is None


async def test_head_gets_headers_only() -> None:
    stream = EventStream(make_request(method="HEAD"))
    stream.push("x")
    closed = asyncio.Event()
    stream.on_closed(closed.set)
    client = FakeClient()
    await asyncio.wait_for(start(stream, client, method="HEAD"), 2)
    assert client.messages[0]["type"] == "http.response.start"
    assert client.body == b""
    assert client.ended
    await asyncio.wait_for(closed.wait(), 1)


async def test_background_task_runs_after_normal_close() -> None:
    from starlette.background import BackgroundTask

    ran = asyncio.Event()
    stream = EventStream(make_request())
    stream.background = BackgroundTask(ran.set)
    stream.push("x")
    stream.close()
    client = FakeClient()
    await asyncio.wait_for(start(stream, client), 2)
    assert ran.is_set()
    assert client.body == b"data: x\n\n"


async def test_sending_twice_is_an_error() -> None:
    stream = EventStream(make_request())
    stream.close()
    await start(stream, FakeClient())
    with pytest.raises(RuntimeError):
        await start(stream, FakeClient())


async def test_stream_never_returned_fires_on_closed_when_request_task_ends() -> None:
    closed = asyncio.Event()

    async def endpoint() -> str:
        stream = EventStream(make_request())
        stream.push("lost")
        stream.on_closed(closed.set)
        return "something else"

    assert await asyncio.get_running_loop().create_task(endpoint()) == "something else"
    await asyncio.wait_for(closed.wait(), 1)


# --- pub/sub ------------------------------------------------------------------------


async def test_subscribe_receives_publishes_and_leaves_topics_on_close() -> None:
    pubsub = MemoryPubSub()
    stream = EventStream(make_request(), pubsub=pubsub)
    stream.subscribe("news")
    stream.subscribe("news")
    assert pubsub.subscribers("news") == [stream]
    assert stream.namespace is None
    client = FakeClient()
    task = start(stream, client)
    pubsub.publish("news", {"title": "a"})
    pubsub.publish("news", "line1\nline2", namespace="/some-ws-route")
    await asyncio.wait_for(_await(stream.flush()), 2)
    await client.wait_for(lambda: client.body.count(b"\n\n") == 2)
    assert client.body == b'data: {"title":"a"}\n\ndata: line1\ndata: line2\n\n'
    stream.unsubscribe("news")
    assert pubsub.subscribers("news") == []
    stream.subscribe("other")
    client.gone.set()
    await asyncio.wait_for(task, 2)
    assert pubsub.subscribers("other") == []
    assert stream.topics == set()


class ReplayingPubSub(MemoryPubSub):
    def __init__(self) -> None:
        super().__init__(history=10)
        self.asked: list[tuple[str, str | None]] = []

    def subscribe_from(self, topic: str, subscriber: Any, last_event_id: str | None) -> Any:
        self.asked.append((topic, last_event_id))
        return super().subscribe_from(topic, subscriber, last_event_id)


async def test_subscribe_replays_after_last_event_id_then_live() -> None:
    pubsub = ReplayingPubSub()
    ids: list[str | None] = []

    class Sink:
        namespace = None

        def deliver(self, outgoing: Outgoing) -> None:
            ids.append(outgoing.id)

    pubsub.subscribe("news", Sink())  # type: ignore[arg-type]
    for data in ("seen", "missed 1", "missed\n2"):
        pubsub.publish("news", data)
    first, missed_1, missed_2 = ids
    stream = EventStream(make_request({"last-event-id": str(first)}), pubsub=pubsub)
    stream.subscribe("news")
    assert pubsub.asked == [("news", first)]
    pubsub.publish("news", "live")
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: client.body.count(b"\n\n") == 3)
    assert (
        client.body
        == (
            f"id: {missed_1}\ndata: missed 1\n\nid: {missed_2}\ndata: missed\ndata: 2\n\n"
            f"id: {ids[-1]}\ndata: live\n\n"
        ).encode()
    )
    stream.close()
    await asyncio.wait_for(task, 2)

    fresh = ReplayingPubSub()
    EventStream(make_request(), pubsub=fresh).subscribe("news")
    assert fresh.asked == []  # no Last-Event-ID, no replay


# --- @event_stream --------------------------------------------------------------------


async def test_event_stream_decorator_pushes_yields_and_closes_generator() -> None:
    finished = asyncio.Event()
    first_sent = asyncio.Event()

    @event_stream_decorator
    async def ticks(request: Request, every: float = 0.0) -> AsyncIterator[Any]:
        try:
            yield "first"
            first_sent.set()
            yield EventStreamMessage({"n": 2}, event="tick", id=2)
            while True:
                await asyncio.sleep(every)
                yield ": not a comment"
        finally:
            finished.set()

    stream = await ticks(request=make_request())
    assert isinstance(stream, EventStream)
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: b"event: tick" in client.body)
    assert client.body.startswith(b'data: first\n\nid: 2\nevent: tick\ndata: {"n":2}\n\n')
    client.gone.set()
    await asyncio.wait_for(finished.wait(), 1)
    await asyncio.wait_for(task, 1)


async def test_event_stream_generator_end_closes_stream_and_error_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @event_stream_decorator(ping_interval=30)
    async def short(request: Request) -> AsyncIterator[str]:
        yield "a"
        yield "b"

    stream = await short(make_request())
    assert stream.ping_interval == 30
    client = FakeClient()
    await asyncio.wait_for(start(stream, client), 2)
    assert client.body == b"data: a\n\ndata: b\n\n"
    assert client.ended

    @event_stream_decorator
    async def broken(request: Request) -> AsyncIterator[str]:
        yield "a"
        raise ValueError("generator broke")

    stream = await broken(make_request())
    client = FakeClient()
    with caplog.at_level(logging.ERROR, logger="h3_fastapi"):
        await asyncio.wait_for(start(stream, client), 2)
    assert client.body == b"data: a\n\n"
    assert client.ended
    assert "generator broke" in caplog.text


def test_event_stream_signature_adds_request_keeps_params() -> None:
    def dep() -> str:
        return "x"

    @event_stream_decorator
    async def no_request(q: int, user: str = Depends(dep)) -> AsyncIterator[str]:
        yield "x"

    params = inspect.signature(no_request).parameters
    assert list(params) == ["q", "user", "_h3_request"]
    assert params["q"].annotation is int  # string annotations resolved
    assert params["_h3_request"].annotation is Request
    assert inspect.signature(no_request).return_annotation is EventStream
    assert not hasattr(no_request, "__wrapped__")
    assert no_request.__name__ == "no_request"

    @event_stream_decorator
    async def h3_style(request):  # type: ignore[no-untyped-def]
        yield "x"

    assert list(inspect.signature(h3_style).parameters) == ["request"]
    assert inspect.signature(h3_style).parameters["request"].annotation is Request


def test_event_stream_signature_resolves_what_it_can() -> None:
    @event_stream_decorator
    async def partly(q: int, hidden: NotImportedAnywhere = None) -> AsyncIterator[str]:  # type: ignore[name-defined]  # noqa: F821
        yield "x"

    params = inspect.signature(partly).parameters
    assert params["q"].annotation is int
    assert params["hidden"].annotation == "NotImportedAnywhere"


def test_event_stream_rejects_non_generators() -> None:
    async def not_a_generator(request: Request) -> str:
        return "x"

    with pytest.raises(TypeError):
        event_stream_decorator(not_a_generator)


def test_event_stream_routes_as_a_plain_endpoint_in_fastapi() -> None:
    """FastAPI must not treat it as its own generator (JSON lines) endpoint."""
    app = FastAPI()

    @app.get("/s")
    @event_stream_decorator
    async def stream(q: int = 1) -> AsyncIterator[str]:
        yield str(q)

    route = next(r for r in app.routes if getattr(r, "path", None) == "/s")
    assert not getattr(route, "is_json_stream", False)
    assert not getattr(route, "is_sse_stream", False)
    assert getattr(route, "response_model", None) is None
    schema = app.openapi()
    names = [p["name"] for p in schema["paths"]["/s"]["get"].get("parameters", [])]
    assert names == ["q"]


async def test_generator_stream_waits_below_a_small_max_buffer() -> None:
    async def produce() -> AsyncIterator[str]:
        for n in range(100):
            yield f"{n:03d}" * 30  # 100 events of 98 bytes: ten times max_buffer

    stream = _GeneratorStream(make_request(), produce(), max_buffer=1000)
    client = FakeClient()
    await asyncio.wait_for(start(stream, client), 2)
    assert client.ended  # ended by the generator, not cut for overflow
    assert client.body == b"".join(f"data: {f'{n:03d}' * 30}\n\n".encode() for n in range(100))


async def test_pushes_from_a_thread_arrive_in_order_before_its_close() -> None:
    stream = EventStream(make_request())
    client = FakeClient()
    task = start(stream, client)
    await client.wait_for(lambda: len(client.messages) == 1)

    def produce() -> None:
        for n in range(5000):
            stream.push(str(n))
            if n == 2500:
                stream.pause()  # hopped behind the pushes before it
                stream.push_comment("held")
                stream.resume()
        stream.close()  # after everything this thread pushed

    await asyncio.get_running_loop().run_in_executor(None, produce)
    await asyncio.wait_for(task, 5)
    expected = [f"data: {n}\n\n" for n in range(5000)]
    expected.insert(2501, ": held\n\n")
    assert client.body == "".join(expected).encode()
    assert client.ended
