"""EventStream against a real uvicorn: byte-exact output, disconnect, shutdown, slow clients.

Every docs example in ``docs/examples/sse_*.py`` is imported and exercised
here. Raw sockets give byte-exact checks; ``httpx`` streams the rest. Tests
wait on events and reads with timeouts, never on sleeps.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.responses import PlainTextResponse

from h3_fastapi import H3, EventStream, EventStreamMessage
from tests.conftest import ROOT, ChildServer, LiveServer

EXAMPLES = ROOT / "docs" / "examples"


def load_example(name: str) -> ModuleType:
    """A fresh copy of ``docs/examples/<name>.py`` (own app, own state)."""
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RawSSE:
    """An HTTP/1.1 client on a plain socket that decodes chunked bodies byte-exact."""

    def __init__(
        self,
        port: int,
        path: str,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.pending = b""
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.ended = False
        self.eof = False

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            raise EOFError("connection closed")
        self.pending += data

    def read_head(self) -> RawSSE:
        while b"\r\n\r\n" not in self.pending:
            self._recv()
        head, self.pending = self.pending.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers.append((name.strip().lower(), value.strip()))
        return self

    def header_map(self) -> dict[str, str]:
        return dict(self.headers)

    def _decode_chunks(self) -> None:
        while not self.ended:
            size_line, sep, rest = self.pending.partition(b"\r\n")
            if not sep:
                return
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            if size == 0:
                self.ended = True
                self.pending = rest[2:]
                return
            self.body += rest[:size]
            assert rest[size : size + 2] == b"\r\n"
            self.pending = rest[size + 2 :]

    def read_until(self, predicate: Callable[[RawSSE], bool]) -> RawSSE:
        if not self.status:
            self.read_head()
        self._decode_chunks()
        while not predicate(self):
            self._recv()
            self._decode_chunks()
        return self

    def read_to_end(self) -> RawSSE:
        return self.read_until(lambda c: c.ended)

    def close(self) -> None:
        self.sock.close()


def parse_events(body: bytes) -> list[dict[str, str]]:
    """Blank-line separated blocks as {field: value} (data lines joined with LF)."""
    events = []
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        event: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            event[name] = event[name] + "\n" + value if name in event else value
        events.append(event)
    return events


def wait(event: threading.Event, timeout: float, what: str) -> float:
    """Wait for ``event``; return how long it took; fail with ``what`` on timeout."""
    started = time.monotonic()
    assert event.wait(timeout), f"{what} did not happen within {timeout}s"
    return time.monotonic() - started


# --- the seed example ---------------------------------------------------------------


@pytest.mark.slow  # real time: timers tick in seconds
def test_seed_clock_example_streams_and_on_closed_stops_the_timer(
    live_server: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = load_example("sse_clock")
    closed = threading.Event()

    class Recorded(EventStream):
        def on_closed(self, callback: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                result = callback()
                closed.set()
                return result

            return super().on_closed(run)

    monkeypatch.setattr(clock, "EventStream", Recorded)
    server = live_server(clock.app)
    client = RawSSE(server.port, "/")
    client.read_until(lambda c: c.body.count(b"\n\n") >= 2)
    assert client.header_map()["content-type"] == "text/event-stream"
    assert client.body == b"data: Hello world\n\n" * 2

    def timers() -> list[asyncio.Task[Any]]:
        return [
            task
            for task in asyncio.all_tasks()
            if task.get_coro().__qualname__.endswith("interval")  # type: ignore[union-attr]
            and not task.done()
        ]

    assert len(server.call(timers)) == 1
    client.close()
    assert wait(closed, 1.0, "on_closed after disconnect") < 1.0

    async def timers_finished() -> bool:
        pending = timers()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        return all(task.cancelled() for task in pending)

    assert server.loop is not None
    assert asyncio.run_coroutine_threadsafe(timers_finished(), server.loop).result(5)
    assert server.call(timers) == []


# --- wire format on a real server -----------------------------------------------------


def wire_app() -> FastAPI:
    app = FastAPI()

    @app.get("/wire")
    async def wire(request: Request) -> EventStream:
        stream = EventStream(request)
        await stream.push("early")  # before returning: resolves at once
        stream.push([EventStreamMessage("a\r\nb", id=1, event="e\nvil", retry=10), "x"])
        stream.push_comment("note")
        stream.push({"data": {"k": "ü"}})
        stream.close()
        return stream

    return app


def test_headers_and_body_are_byte_exact(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(wire_app())
    with_keep_alive = RawSSE(server.port, "/wire", {"Connection": "keep-alive"}).read_to_end()
    assert with_keep_alive.status == 200
    headers = with_keep_alive.header_map()
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == (
        "private, no-cache, no-store, no-transform, must-revalidate, max-age=0"
    )
    assert headers["x-accel-buffering"] == "no"
    assert headers["connection"] == "keep-alive"
    assert "content-length" not in headers
    assert with_keep_alive.body == (
        b"data: early\n\n"
        b"id: 1\nevent: evil\nretry: 10\ndata: a\ndata: b\n\n"
        b"data: x\n\n"
        b": note\n\n" + 'data: {"k":"ü"}\n\n'.encode()
    )
    plain = RawSSE(server.port, "/wire").read_to_end()
    assert "connection" not in plain.header_map()
    assert plain.body == with_keep_alive.body
    with_keep_alive.close()
    plain.close()


def test_h3_style_lambda_handler(live_server: Callable[..., LiveServer]) -> None:
    def make(request: Request) -> EventStream:
        stream = EventStream(request)
        stream.push(f"path={request.url.path}")
        stream.close()
        return stream.send()

    app = H3()
    app.get("/h3", lambda request: make(request))
    server = live_server(app)
    client = RawSSE(server.port, "/h3").read_to_end()
    assert client.body == b"data: path=/h3\n\n"
    client.close()


# --- ending -------------------------------------------------------------------------------


def lifecycle_app(events: dict[str, threading.Event]) -> FastAPI:
    app = FastAPI()
    producers: set[asyncio.Task[None]] = set()

    @app.get("/idle")
    async def idle(request: Request) -> EventStream:
        stream = EventStream(request)
        stream.push("ready")
        stream.on_closed(events["idle"].set)
        return stream

    @app.get("/after-close")
    async def after_close(request: Request) -> EventStream:
        stream = EventStream(request)
        stream.on_closed(events["after-close"].set)

        async def produce() -> None:
            stream.pause()
            stream.push("x")
            stream.push("y")
            assert stream.is_paused
            await stream.close()
            stream.push("late")
            await stream.push("later")
            stream.push_comment("too late")

        producers.add(asyncio.create_task(produce()))
        return stream

    @app.get("/not-returned")
    async def not_returned(request: Request) -> PlainTextResponse:
        stream = EventStream(request)
        stream.push("lost")
        stream.on_closed(events["not-returned"].set)
        return PlainTextResponse("something else")

    @app.get("/not-returned-sync")
    def not_returned_sync(request: Request) -> PlainTextResponse:
        stream = EventStream(request)
        stream.push("lost")
        stream.on_closed(events["not-returned-sync"].set)
        return PlainTextResponse("something else")

    @app.get("/ping")
    async def ping(request: Request) -> EventStream:
        return EventStream(request, ping_interval=0.2)

    return app


EVENT_NAMES = ("idle", "after-close", "not-returned", "not-returned-sync")


@pytest.fixture
def lifecycle(
    live_server: Callable[..., LiveServer],
) -> tuple[LiveServer, dict[str, threading.Event]]:
    events = {name: threading.Event() for name in EVENT_NAMES}
    return live_server(lifecycle_app(events)), events


def test_client_disconnect_runs_on_closed_within_1s_while_idle(
    lifecycle: tuple[LiveServer, dict[str, threading.Event]],
) -> None:
    server, events = lifecycle
    client = RawSSE(server.port, "/idle").read_until(lambda c: b"ready" in c.body)
    assert not events["idle"].is_set()
    client.close()
    assert wait(events["idle"], 1.0, "on_closed after disconnect") < 1.0


def test_pushes_after_close_ignored_and_paused_data_flushed(
    lifecycle: tuple[LiveServer, dict[str, threading.Event]],
) -> None:
    server, events = lifecycle
    client = RawSSE(server.port, "/after-close").read_to_end()
    assert client.body == b"data: x\n\ndata: y\n\n"
    wait(events["after-close"], 1.0, "on_closed after close()")
    client.close()


@pytest.mark.parametrize("path", ["/not-returned", "/not-returned-sync"])
def test_stream_never_returned_fires_on_closed(
    lifecycle: tuple[LiveServer, dict[str, threading.Event]], path: str
) -> None:
    server, events = lifecycle
    response = httpx.get(server.url + path, timeout=5)
    assert response.text == "something else"
    wait(events[path.strip("/")], 1.0, f"on_closed of the unreturned stream at {path}")


@pytest.mark.slow
def test_ping_comment_on_idle_stream(
    lifecycle: tuple[LiveServer, dict[str, threading.Event]],
) -> None:
    server, _ = lifecycle
    started = time.monotonic()
    client = RawSSE(server.port, "/ping").read_until(lambda c: c.body == b": ping\n\n")
    assert time.monotonic() - started < 2
    client.read_until(lambda c: c.body == b": ping\n\n: ping\n\n")
    client.close()


@pytest.mark.slow
def test_server_stop_closes_open_streams_quickly(
    lifecycle: tuple[LiveServer, dict[str, threading.Event]],
) -> None:
    server, events = lifecycle
    clients = [RawSSE(server.port, "/idle").read_until(lambda c: b"ready" in c.body)]
    started = time.monotonic()
    server.stop()
    assert not server.thread.is_alive()
    assert time.monotonic() - started < 2
    assert events["idle"].is_set()
    for client in clients:
        client.read_to_end()  # the response was ended properly, not cut
        client.close()


@pytest.mark.slow
def test_sigterm_with_50_open_streams_exits_within_2s(
    spawn_server: Callable[..., ChildServer],
) -> None:
    child = spawn_server("tests.apps.sse_app:app")
    clients = [RawSSE(child.port, "/events", timeout=10) for _ in range(50)]
    for client in clients:
        client.read_until(lambda c: c.body == b"data: hello\n\n")
    started = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    child.wait(5)
    elapsed = time.monotonic() - started
    assert elapsed < 2, f"shutdown took {elapsed:.2f}s"
    for client in clients:
        client.read_to_end()
        client.close()
    output = child.text
    assert output.count("closed") == 50, output


# --- slow clients -------------------------------------------------------------------------


def test_client_that_stops_reading_is_closed_with_bounded_buffer(
    live_server: Callable[..., LiveServer],
) -> None:
    limit = 256 * 1024
    chunk = "x" * 16 * 1024
    seen: list[int] = []
    closed = threading.Event()
    app = FastAPI()

    @app.get("/flood")
    async def flood(request: Request) -> EventStream:
        stream = EventStream(request, max_buffer=limit)

        async def produce() -> None:
            while True:
                stream.push(chunk)  # not awaited: a producer ignoring backpressure
                seen.append(stream.buffered_amount)
                await asyncio.sleep(0)

        task = asyncio.create_task(produce())
        stream.on_closed(task.cancel)
        stream.on_closed(closed.set)
        return stream

    server = live_server(app)
    client = RawSSE(server.port, "/flood", rcvbuf=4096)
    client.read_head()  # then never read again
    wait(closed, 10, "overflow close of a client that stopped reading")
    assert max(seen) <= limit + len(chunk) + 16
    client.close()


# --- @event_stream ------------------------------------------------------------------------


def test_generator_example_dependencies_resolve_and_finally_runs_on_disconnect(
    live_server: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example("sse_generator")
    gone = threading.Event()

    class Watching(set[str]):
        def discard(self, user: str) -> None:
            super().discard(user)
            gone.set()

    watching = Watching()
    monkeypatch.setattr(example, "watching", watching)
    server = live_server(example.app)
    client = RawSSE(server.port, "/ticks?every=0.02", {"X-User": "alice"})
    client.read_until(lambda c: c.body.count(b"\n\n") >= 2)
    first, second = parse_events(client.body)[:2]
    assert first == {"id": "1", "event": "tick", "data": '{"n":1,"user":"alice"}'}
    assert second["id"] == "2"
    assert watching == {"alice"}
    client.close()
    assert wait(gone, 1.0, "generator finally after disconnect") < 1.0
    assert watching == set()


def test_event_stream_decorator_with_depends_and_path_params(
    live_server: Callable[..., LiveServer],
) -> None:
    from h3_fastapi import event_stream

    app = FastAPI()

    def prefix() -> str:
        return "item"

    @app.get("/items/{count}")
    @event_stream
    async def items(count: int, label: str = Depends(prefix)):  # type: ignore[no-untyped-def]
        for n in range(count):
            yield f"{label} {n}"

    server = live_server(app)
    client = RawSSE(server.port, "/items/3").read_to_end()
    assert client.body == b"data: item 0\n\ndata: item 1\n\ndata: item 2\n\n"
    client.close()
    bad = httpx.get(server.url + "/items/x", timeout=5)
    assert bad.status_code == 422


@pytest.mark.parametrize("use_h3", [False, True])
def test_spec_form_event_stream_on_unannotated_request(
    live_server: Callable[..., LiveServer], use_h3: bool
) -> None:
    from h3_fastapi import event_stream

    app: FastAPI = H3() if use_h3 else FastAPI()

    @app.get("/clock")
    @event_stream
    async def clock(request):  # type: ignore[no-untyped-def]
        yield f"tick {request.url.path}"

    server = live_server(app)
    client = RawSSE(server.port, "/clock").read_to_end()
    assert client.body == b"data: tick /clock\n\n"
    client.close()


# --- the other docs examples --------------------------------------------------------------


def test_progress_example_pushes_from_a_thread_in_order(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server(load_example("sse_progress").app)
    client = RawSSE(server.port, "/progress?steps=20").read_to_end()
    events = parse_events(client.body)
    assert [e["event"] for e in events] == ["progress"] * 20 + ["result"]
    assert [json.loads(e["data"])["done"] for e in events[:-1]] == list(range(1, 21))
    assert events[-1]["data"] == "finished"
    client.close()


def test_pubsub_example_publish_reaches_stream(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(load_example("sse_pubsub").app)
    client = RawSSE(server.port, "/news").read_head()  # subscribed before headers are sent
    posted = httpx.post(server.url + "/news", json={"title": "hello"}, timeout=5)
    assert posted.json() == {"published": True}
    client.read_until(lambda c: b"\n\n" in c.body)
    assert client.body == b'data: {"title":"hello"}\n\n'
    client.close()


def test_sse_starlette_migration_example(live_server: Callable[..., LiveServer]) -> None:
    pytest.importorskip("sse_starlette")
    server = live_server(load_example("sse_migration").app)
    client = RawSSE(server.port, "/legacy").read_to_end()
    events = parse_events(client.body)
    assert events == [{"id": str(i), "event": "item", "data": f"item {i}"} for i in range(3)]
    client.close()


def test_every_code_block_in_the_sse_guide_is_a_tested_example() -> None:
    guide = (ROOT / "docs" / "sse.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", guide, re.S)
    assert blocks
    included = []
    for block in blocks:
        match = re.fullmatch(r'--8<-- "docs/examples/(sse_\w+)\.py"\n', block)
        assert match, f"code block not included from docs/examples: {block!r}"
        included.append(match.group(1))
    examples = sorted(path.stem for path in EXAMPLES.glob("sse_*.py"))
    assert sorted(included) == examples
    this_module = open(__file__, encoding="utf-8").read()
    for name in examples:
        assert f'load_example("{name}")' in this_module, f"{name} is not exercised"
