"""The ASGI servers ``serve()`` runs in-process: uvicorn (the default) and hypercorn.

Each backend starts its server as a task of the running loop, sets ``started``
once it accepts connections, and stops on ``request_exit()``. What differs
between them is mapped here so that ``serve(app, server=...)`` behaves the
same everywhere:

- one ``Date`` and one ``Server`` per response: the server's own headers are
  turned off and ``DefaultHeaders`` adds them only where a response has none.
- the largest ``max_message_size`` of the app's handlers becomes the server's
  WebSocket limit (uvicorn ``ws_max_size``, hypercorn
  ``websocket_max_message_size``).
- open SSE streams and WebSocket peers are closed before the server waits
  for connections to finish (``notify_server_exit``).

granian is not one of them: it runs its own worker processes and its Rust
runtime, and its embedded (in-process) server, which granian calls
experimental, can abort the process on exit (granian issue #693; seen here
in 5 of 12 runs) and sometimes hung on shutdown with a stream open. Run it
with its own command instead (docs/servers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._shutdown import notify_server_exit

__all__ = ["SERVERS", "Backend", "make_backend"]

# serve()'s uvicorn WebSocket protocol, imported by uvicorn when it starts.
UVICORN_WS = "h3_fastapi.uvicorn_protocol:WebSocketProtocol"

# server name -> the package it needs (and the pip name to install).
SERVERS = {"uvicorn": "uvicorn", "hypercorn": "hypercorn"}

GRANIAN_RECIPE = (
    "serve(server='granian') is not supported: granian runs the app in its own worker"
    " process and Rust runtime, and its in-process embedded server is experimental (it can"
    " abort the process on exit). Run granian's command instead, e.g."
    " `granian --interface asgi --loop uvloop module:app`; see docs/servers.md"
)


class Backend:
    """One server running ``app`` on ``host:port`` in the current process."""

    name = ""

    def __init__(self, app: Any, host: str, port: int, options: dict[str, Any]) -> None:
        self.host = host
        self.port = port
        self.started = asyncio.Event()
        self.config: Any = None

    async def serve(self) -> None:
        """Serve until ``request_exit()``."""
        raise NotImplementedError

    def request_exit(self) -> None:
        """Ask the server to stop (it closes open streams first)."""
        raise NotImplementedError

    def bound_port(self) -> int | None:
        """The port it listens on, once started (``port=0`` picks one)."""
        return self.port or None

    def failure(self) -> str | None:
        """Why startup failed, if it did before ``serve()`` returned."""
        return None

    def run(self) -> None:
        """Serve in the foreground until SIGINT or SIGTERM."""

        async def main() -> None:
            remove = signal_exit(asyncio.get_running_loop(), self.request_exit)
            try:
                await self.serve()
            finally:
                remove()

        asyncio.run(main())


def make_backend(server: str, app: Any, host: str, port: int, options: dict[str, Any]) -> Backend:
    """The backend for ``server``; a clear error for an unknown name or a missing package."""
    if server == "granian":
        raise ValueError(GRANIAN_RECIPE)
    if server not in SERVERS:
        raise ValueError(
            f"serve(): unknown server {server!r}; choose one of {', '.join(map(repr, SERVERS))}"
        )
    package = SERVERS[server]
    if importlib.util.find_spec(package) is None:
        raise RuntimeError(
            f"serve(server={server!r}) needs the {package!r} package:"
            f" pip install 'h3-fastapi[{server}]' (or pip install {package})"
        )
    backend: type[Backend] = {"uvicorn": _Uvicorn, "hypercorn": _Hypercorn}[server]
    return backend(app, host, port, options)


class _StartupProbe:
    """ASGI wrapper: note when lifespan startup completed (or failed, or is unsupported)."""

    __slots__ = ("app", "done", "failed")

    def __init__(self, app: ASGIApp, done: asyncio.Event) -> None:
        self.app = app
        self.done = done
        self.failed: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watch(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                self.done.set()
            elif message["type"] == "lifespan.startup.failed":
                self.failed = str(message.get("message") or "lifespan startup failed")
                self.done.set()

        try:
            await self.app(scope, receive, watch)
        finally:
            # An app without lifespan support raises at once; the server goes on.
            self.done.set()


# --- uvicorn ------------------------------------------------------------------------


class _UvicornServer(uvicorn.Server):
    """uvicorn's server with a ``started`` event instead of a polled flag."""

    def __init__(self, config: uvicorn.Config, started: asyncio.Event) -> None:
        super().__init__(config)
        self.started_event = started

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.started_event.set()


class _Uvicorn(Backend):
    name = "uvicorn"

    def __init__(self, app: Any, host: str, port: int, options: dict[str, Any]) -> None:
        super().__init__(app, host, port, options)
        # h3-fastapi's WebSocket protocol (uvicorn's websockets-sansio with a short
        # frame path, uvicorn_protocol.py) and no permessage-deflate unless asked
        # for, as h3 on Node (crossws over ws) does: compressed connections take
        # the long path, and browsers always offer it.
        options = {"ws": UVICORN_WS, "ws_per_message_deflate": False, **options}
        self.config = uvicorn.Config(app, host=host, port=port, **options)
        self.server = _UvicornServer(self.config, self.started)

    def _fresh(self) -> None:
        """A new uvicorn server once one stopped, so a closed ``Server`` can start again."""
        self.started = asyncio.Event()
        self.server = _UvicornServer(self.config, self.started)

    async def serve(self) -> None:
        try:
            await self.server.serve()
        finally:
            self._fresh()

    def request_exit(self) -> None:
        self.server.should_exit = True

    def run(self) -> None:
        """uvicorn's own ``run()``: its loop setting and signal handling."""
        try:
            self.server.run()
        finally:
            self._fresh()

    def bound_port(self) -> int | None:
        for server in self.server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None


# --- hypercorn ----------------------------------------------------------------------


class _Hypercorn(Backend):
    name = "hypercorn"

    def __init__(self, app: Any, host: str, port: int, options: dict[str, Any]) -> None:
        from hypercorn.config import Config

        super().__init__(app, host, port, options)
        config = Config()
        bind_host = f"[{host}]" if ":" in host else host
        config.bind = [f"{bind_host}:{port}"]
        log_level = options.pop("log_level", None)
        if log_level is not None:
            config.loglevel = str(log_level).upper()
        for key, value in options.items():
            if not hasattr(config, key):
                raise TypeError(f"serve(server='hypercorn'): hypercorn has no setting {key!r}")
            setattr(config, key, value)
        self.config = config
        self.probe = _StartupProbe(app, self.started)
        self.exit = asyncio.Event()

    async def serve(self) -> None:
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.utils import wrap_app

        # Bind and listen here: ``port=0`` gets its real port, and connections
        # queue from the moment startup completes.
        sockets = self.config.create_sockets()
        for sock in sockets.insecure_sockets:
            sock.listen(self.config.backlog)
            self.port = int(sock.getsockname()[1])
        probe: Any = self.probe
        app = wrap_app(probe, self.config.wsgi_max_body_size, "asgi")
        try:
            await worker_serve(app, self.config, sockets=sockets, shutdown_trigger=self._exit_asked)
        finally:
            # Ready for another start.
            self.exit = asyncio.Event()
            self.started = self.probe.done = asyncio.Event()

    async def _exit_asked(self) -> None:
        await self.exit.wait()
        await notify_server_exit()

    def request_exit(self) -> None:
        self.exit.set()

    def failure(self) -> str | None:
        return self.probe.failed


def signal_exit(loop: asyncio.AbstractEventLoop, stop: Callable[[], Any]) -> Callable[[], None]:
    """Call ``stop`` on SIGINT/SIGTERM; return a function that removes the handlers."""
    import signal

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop)
            installed.append(sig)

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove
