"""The example app (``make run``): the h3 seed ports, the demos, the banner, two workers.

In-process tests run the app on a real uvicorn (``live_server``) and replace the
seed modules' ``print`` (their ``console.log``) with a recorder the tests wait on.
Process tests start ``python -m example_app`` exactly as ``make run`` does and read
its banner to learn the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from example_app import clock, routes, sse_seed, websocket_seed
from tests.conftest import free_port, need, which
from tests.processes import ChildProcess
from tests.recorders import Lines

TIMEOUT = 5


class Printed(Lines):
    """Stands in for ``print`` in a seed module; ``fail_on`` makes it raise for some lines."""

    fail_on: str | None = None

    def __call__(self, *args: Any) -> None:
        super().__call__(*args)
        if self.fail_on and self.lines[-1].startswith(self.fail_on):
            raise RuntimeError("print failed")


@pytest.fixture
def printed(monkeypatch: pytest.MonkeyPatch) -> Printed:
    recorder = Printed()
    monkeypatch.setattr(websocket_seed, "print", recorder, raising=False)
    monkeypatch.setattr(sse_seed, "print", recorder, raising=False)
    return recorder


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def sse_events(response: httpx.Response, count: int) -> list[tuple[float, dict[str, str]]]:
    """The next ``count`` events of an SSE response, each with the time it arrived."""
    events: list[tuple[float, dict[str, str]]] = []
    fields: dict[str, str] = {}
    lines = response.aiter_lines()
    while len(events) < count:
        line = await asyncio.wait_for(anext(lines), TIMEOUT)
        if line == "":
            if fields:
                events.append((time.monotonic(), fields))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return events


# ---------------------------------------------------------------- seed: websocket.mjs


async def test_websocket_seed_chat_ping_and_logging(printed: Printed, live_server: Any) -> None:
    server = live_server(websocket_seed.app)
    async with httpx.AsyncClient(base_url=server.url) as client:
        page = await client.get("/")
        assert page.status_code == 200 and 'new URL("/_ws"' in page.text
        upgrade_required = await client.get("/_ws")
        assert upgrade_required.status_code == 426
        assert upgrade_required.text == "WebSocket upgrade is required."

    url = server.ws_url + "/_ws"
    async with websockets.connect(url) as a:
        assert await recv(a) == "Welcome to the server!"
        a_id = printed.wait_for(r"^\[open\] ").split()[1]
        async with websockets.connect(url) as b:
            assert await recv(b) == "Welcome to the server!"
            b_id = next(line for line in printed.lines if b_id_line(line, a_id)).split()[1]
            assert await recv(a) == f"[system] {b_id} joined!"

            await a.send("ping")
            assert await recv(a) == "pong"  # only to the sender
            await a.send("hello")
            assert await recv(a) == "hello"  # echo
            assert await recv(b) == f"[{a_id}] hello"  # broadcast, without the ping
            printed.wait_for(rf"^\[message\] {a_id}$")
        assert await recv(a) == f"[system] {b_id} has left the chat!"
        printed.wait_for(rf"^\[close\] {b_id} 1000$")


def b_id_line(line: str, a_id: str) -> bool:
    return line.startswith("[open] ") and a_id not in line


async def test_websocket_seed_error_hook(printed: Printed, live_server: Any) -> None:
    server = live_server(websocket_seed.app)
    async with websockets.connect(server.ws_url + "/_ws") as ws:
        assert await recv(ws) == "Welcome to the server!"
        printed.fail_on = "[message]"  # the message hook now raises at its first line
        await ws.send("hello")
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    line = printed.wait_for(r"^\[error\] ")
    assert "message hook raised RuntimeError: print failed" in line
    printed.wait_for(r"^\[close\] \S+ 1011$")


# ---------------------------------------------------------------- seed: server-sent-events.mjs


@pytest.mark.slow
async def test_sse_seed_pushes_every_second_and_clears_its_timer(
    printed: Printed, live_server: Any
) -> None:
    server = live_server(sse_seed.app)
    async with (
        httpx.AsyncClient(base_url=server.url) as client,
        client.stream("GET", "/") as response,
    ):
        assert response.headers["content-type"] == "text/event-stream"
        started = time.monotonic()
        (t1, first), (t2, second) = await sse_events(response, 2)
    assert first == second == {"data": "Hello world"}
    assert 0.7 < t1 - started < 1.6 and 0.7 < t2 - t1 < 1.6, "one message a second"
    printed.wait_for(r"^Connection closed$")

    def timers() -> list[asyncio.Task[Any]]:
        tasks = asyncio.all_tasks()
        return [t for t in tasks if t.get_coro().__qualname__.endswith("every_second")]

    # on_closed cancelled the interval: no timer task is left on the server's loop.
    assert server.call(timers) == []


# ---------------------------------------------------------------- the whole app


@pytest.mark.slow
async def test_example_app_routes(live_server: Any) -> None:
    server = live_server(routes.app)
    async with httpx.AsyncClient(base_url=server.url) as client:
        for path in ("/", "/chat"):
            page = await client.get(path)
            assert page.status_code == 200
            assert "<title>h3-fastapi chat</title>" in page.text
            assert page.headers["x-worker-pid"] == str(os.getpid())
        clock_page = await client.get("/clock")
        assert 'new EventSource("/clock/events")' in clock_page.text
        assert (await client.get("/_ws")).status_code == 426
        async with client.stream("GET", "/sse") as response:
            assert (await sse_events(response, 1))[0][1] == {"data": "Hello world"}
        async with client.stream("GET", "/clock/events") as response:
            (_, a), (t_b, b), (t_c, c) = await sse_events(response, 3)
        assert a["event"] == b["event"] == "tick"
        assert re.fullmatch(r"\d\d:\d\d:\d\d", a["data"])
        assert a["data"] != b["data"] != c["data"], "the clock ticks"
        assert 0.8 < t_c - t_b < 1.2
    async with websockets.connect(server.ws_url + "/_ws") as ws:
        assert ws.response.headers["x-worker-pid"] == str(os.getpid())
        assert await recv(ws) == "Welcome to the server!"


def test_clock_module_is_a_fastapi_router() -> None:
    paths = {route.path for route in clock.router.routes}  # type: ignore[attr-defined]
    assert paths == {"/clock", "/clock/events"}


# ---------------------------------------------------------------- python -m example_app


class ExampleApp(ChildProcess):
    """``python -m example_app`` in a child process, as ``make run`` starts it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        if "--log-level" not in args:
            args = (*args, "--log-level", "warning")
        super().__init__([sys.executable, "-m", "example_app", *args], env=env, name="example_app")
        self.url = ""

    def read_banner(self) -> str:
        """Wait for the banner; remember the chat URL it names."""
        banner = self.wait_for(r"Press Ctrl\+C to stop\.")
        m = re.search(r"Chat \(open it in two tabs\)\s+(http://\S+)", banner)
        assert m, banner
        self.url = m[1]
        return banner

    @property
    def base(self) -> str:
        m = re.match(r"http://[^/]+", self.url)
        assert m
        return m[0]

    def stop(self, timeout: float = 10) -> float:
        """SIGTERM; seconds until the process exited (it must not need SIGKILL)."""
        seconds = super().stop(timeout)
        if self.killed:
            raise AssertionError("example app did not stop on SIGTERM")
        return seconds


@contextlib.contextmanager
def example_app_process(*args: str, env: dict[str, str] | None = None) -> Iterator[ExampleApp]:
    app = ExampleApp(*args, env=env)
    try:
        yield app
    finally:
        with contextlib.suppress(AssertionError):
            app.stop()


@pytest.mark.slow
async def test_python_m_example_app_banner_and_clean_stop() -> None:
    with example_app_process("--port", "0") as app:
        banner = app.read_banner()
        base = app.base
        for name, path in [
            ("SSE clock", "/clock"),
            ("SSE 'Hello world' (h3 seed)", "/sse"),
            ("API docs", "/docs"),
        ]:
            assert re.search(rf"{re.escape(name)}\s+{re.escape(base + path)}\n", banner)
        ws_base = base.replace("http://", "ws://")
        assert re.search(rf"WebSocket \(h3 seed\)\s+{re.escape(ws_base)}/_ws", banner)
        assert "Pub/sub: in memory" in banner
        assert app.url == base + "/"
        async with httpx.AsyncClient(base_url=base) as client:
            assert "h3-fastapi chat" in (await client.get("/")).text
            # Open connections must not hold the shutdown.
            async with (
                client.stream("GET", "/clock/events") as stream,
                websockets.connect(ws_base + "/_ws") as ws,
            ):
                await sse_events(stream, 1)
                assert await recv(ws) == "Welcome to the server!"
                assert app.stop() < 5
                with pytest.raises(ConnectionClosed) as info:
                    await recv(ws)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_h3_demo_url_proxies_the_remote_page(live_server: Any) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    remote_html = "<!doctype html><title>remote playground</title><p>from upstream</p>"
    upstream = live_server(
        Starlette(routes=[Route("/page.html", lambda request: PlainTextResponse(remote_html))])
    )
    demo_url = upstream.url + "/page.html"  # served as text/plain, like raw.githubusercontent
    with example_app_process("--port", "0", env={"H3_DEMO_URL": demo_url}) as app:
        banner = app.read_banner()
        assert re.search(rf"Remote page, proxied\s+{re.escape(app.base)}/\s+<- {demo_url}", banner)
        assert app.url == app.base + "/chat"
        async with httpx.AsyncClient(base_url=app.base) as client:
            page = await client.get("/")
            assert page.text == remote_html
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert "h3-fastapi chat" in (await client.get("/chat")).text


# ---------------------------------------------------------------- two workers over Redis


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = which("redis-server")
    need(binary is not None, "redis-server is not installed")
    assert binary is not None
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    with ChildProcess([*command, "--appendonly", "no"]) as proc:
        proc.wait_for("Ready to accept connections", timeout=10)
        yield f"redis://127.0.0.1:{port}/0"


@pytest.mark.redis
async def test_two_workers_share_one_chat_through_redis() -> None:
    pytest.importorskip("redis")
    with redis_server() as redis_url:
        port = free_port()
        args = ("--redis", redis_url, "--workers", "2", "--port", str(port), "--log-level", "info")
        with example_app_process(*args) as app:
            banner = app.read_banner()
            assert f"Pub/sub: Redis at {redis_url}, 2 worker(s) share one chat." in banner
            app.wait_for(r"Application startup complete", count=2)
            url = f"ws://127.0.0.1:{port}/_ws"
            # Connect until two clients sit on different workers.
            clients: dict[str, Any] = {}
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(40):
                    ws = await stack.enter_async_context(websockets.connect(url))
                    pid = ws.response.headers["x-worker-pid"]
                    clients.setdefault(pid, ws)
                    if len(clients) == 2:
                        break
                assert len(clients) == 2, "40 connections all landed on one worker"
                a, b = clients.values()
                a_id = await _probe_until_delivered(a, b)
                b_id = await _probe_until_delivered(b, a)
                # Subscriptions are live both ways now. Each sends two messages, the last
                # one a marker; per-publisher order means that once both markers are in,
                # everything before them is too: each message exactly once, no self-echo.
                await a.send("across workers")
                await b.send("and back")
                await a.send("end a")
                await b.send("end b")
                expected_a = ["across workers", "end a", f"[{b_id}] and back", f"[{b_id}] end b"]
                expected_b = ["and back", "end b", f"[{a_id}] across workers", f"[{a_id}] end a"]
                got_a = await _chat_until(a, ["end a", f"[{b_id}] end b"])
                got_b = await _chat_until(b, ["end b", f"[{a_id}] end a"])
                assert sorted(got_a) == sorted(expected_a), got_a
                assert sorted(got_b) == sorted(expected_b), got_b
                assert got_a.index("across workers") < got_a.index("end a")
                assert got_a.index(f"[{b_id}] and back") < got_a.index(f"[{b_id}] end b")


async def _chat_until(ws: Any, markers: list[str]) -> list[str]:
    """Chat messages (no notices, no probes) until every marker has arrived."""
    got: list[str] = []
    while not all(marker in got for marker in markers):
        got.append(await _next_chat(ws))
    return got


async def _next_chat(ws: Any) -> str:
    """The next message that is not a join/leave notice or a probe."""
    while True:
        message: str = await recv(ws)
        if not message.startswith("[system]") and "probe" not in message:
            return message


async def _probe_until_delivered(sender: Any, receiver: Any) -> str:
    """Publish probes until one crosses (Redis SUBSCRIBE is asynchronous); the sender's id."""
    for attempt in range(50):
        await sender.send(f"probe {attempt}")
        with contextlib.suppress(TimeoutError):
            while True:
                message = await asyncio.wait_for(receiver.recv(), 0.2)
                m = re.fullmatch(r"\[(\S+)\] probe \d+", message)
                if m:
                    return m[1]
    raise AssertionError("no publish crossed between the two workers")
