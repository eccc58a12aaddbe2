"""Shared fixtures: real uvicorn servers on 127.0.0.1 with random ports.

``live_server(app)`` runs uvicorn in a thread of this process (the test can
look at handler state); ``spawn_server("module:app")`` runs it in a child
process (for signals and memory), through ``tests/processes.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn

from tests.processes import ROOT, ChildServer, free_port

__all__ = ["CI", "ROOT", "ChildServer", "LiveServer", "free_port", "need", "which"]

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, reason: str) -> None:
    """Skip loudly when a system component is missing; under CI that is a failure."""
    if condition:
        return
    if CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {reason} (install it or run `make test` as root)")


class _ThreadServer(uvicorn.Server):
    """uvicorn that signals a thread-safe event once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.listening.set()


class LiveServer:
    """uvicorn in a background thread with its own event loop."""

    def __init__(self, app: Any, **options: Any) -> None:
        options.setdefault("log_level", "warning")
        options.setdefault("lifespan", "on")
        if os.environ.get("H3_TEST_WS"):  # run the suite on another WebSocket protocol
            options.setdefault("ws", os.environ["H3_TEST_WS"])
        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, **options)
        self.server = _ThreadServer(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> LiveServer:
        self.thread.start()
        if not self.server.listening.wait(15) or not self.server.started:
            raise RuntimeError("uvicorn did not start")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def call(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` on the server's loop and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return func()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(app: Any, **options: Any) -> LiveServer:
        server = LiveServer(app, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def spawn_server() -> Iterator[Callable[..., ChildServer]]:
    children: list[ChildServer] = []

    def start(target: str, *args: str, env: dict[str, str] | None = None) -> ChildServer:
        child = ChildServer(target, free_port(), list(args), env or {})
        children.append(child)
        return child.wait_ready()

    yield start
    for child in children:
        child.stop()


def which(name: str) -> str | None:
    return shutil.which(name)
