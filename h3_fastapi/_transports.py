"""Upstream transports for the proxy: the pooled client and in-process targets.

The pooled ``httpx.AsyncClient`` runs on aiohttp when it is installed (several
times faster than httpcore, see ``bench/proxy_transport.py``), else on httpx's
own transport. Targets starting with ``/`` are served by the same ASGI app
through a streaming transport (``httpx.ASGITransport`` buffers whole bodies).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
from collections.abc import AsyncIterator, Awaitable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import unquote

import httpcore
import httpx
from starlette.requests import Request
from starlette.types import Scope

from . import _shutdown
from ._guard import TargetNotAllowed, _Guard, _GuardedBackend, _parse_ip
from ._hooks import logger

# Seconds to open a TCP connection to the upstream (then 502).
CONNECT_TIMEOUT = 10.0
KEEPALIVE_EXPIRY = 30.0
# Environment override of the transport: "aiohttp", "httpcore" or "auto".
TRANSPORT_ENV = "H3_PROXY_TRANSPORT"

# A leading run the URL parser could read as the start of an authority.
_LEADING_SEPARATORS = re.compile(r"^[/\\\t\n\r]+")

# --- the pooled client ---------------------------------------------------------

_LIMITS = httpx.Limits(
    max_connections=None, max_keepalive_connections=100, keepalive_expiry=KEEPALIVE_EXPIRY
)


def _httpcore_transport(guard: _Guard | None) -> httpx.AsyncBaseTransport:
    transport = httpx.AsyncHTTPTransport(limits=_LIMITS, trust_env=False)
    if guard is not None:
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=_LIMITS.max_connections,
            max_keepalive_connections=_LIMITS.max_keepalive_connections,
            keepalive_expiry=_LIMITS.keepalive_expiry,
            network_backend=_GuardedBackend(guard),
        )
    return transport


def _aiohttp_transport(guard: _Guard | None) -> httpx.AsyncBaseTransport | None:
    """The aiohttp transport, or ``None`` when aiohttp is not installed."""
    try:
        aiohttp: Any = importlib.import_module("aiohttp")
        yarl: Any = importlib.import_module("yarl")
    except ImportError:
        return None
    return _AiohttpTransport(aiohttp, yarl, guard)


class _AiohttpStream(httpx.AsyncByteStream):
    """An aiohttp response body as an httpx stream, chunks as they arrive."""

    def __init__(self, response: Any, aiohttp: Any) -> None:
        self._response = response
        self._aiohttp = aiohttp
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (self._aiohttp.ClientError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        self._complete = True

    async def aclose(self) -> None:
        if self._complete:
            self._response.release()  # back to the pool
        else:
            self._response.close()  # cut short: the connection cannot be reused


class _AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx transport on an aiohttp session: no cookie jar, no decompression, no redirects.

    Several times faster than httpcore for proxying (``bench/proxy_transport.py``).
    The guard checks IP-literal hosts here (aiohttp does not ask the resolver
    about them) and names in the resolver.
    """

    def __init__(self, aiohttp: Any, yarl: Any, guard: _Guard | None) -> None:
        self._aiohttp = aiohttp
        self._yarl = yarl
        self._guard = guard
        self._ssl = httpx.create_ssl_context(trust_env=False)
        self._session: Any = None

    def _open_session(self) -> Any:
        aiohttp = self._aiohttp
        resolver = _aiohttp_resolver(aiohttp, self._guard) if self._guard is not None else None
        connector = aiohttp.TCPConnector(
            limit=0,
            keepalive_timeout=KEEPALIVE_EXPIRY,
            ssl=self._ssl,
            resolver=resolver,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            max_line_size=65536,
            max_field_size=65536,
            trust_env=False,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        aiohttp = self._aiohttp
        host = request.url.host
        if self._guard is not None and _parse_ip(host) is not None:
            reason = self._guard.refusal(host, [host])
            if reason is not None:
                logger.warning("h3_fastapi: proxy refused upstream: %s", reason)
                raise TargetNotAllowed(reason, request=request)
        if self._session is None:
            self._session = self._open_session()
        data: Any
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = request.stream
        headers = [
            (k, v) for k, v in request.headers.multi_items() if k.lower() != "transfer-encoding"
        ]
        timeouts = request.extensions.get("timeout", {})
        try:
            response = await self._session.request(
                request.method,
                self._yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=timeouts.get("connect"),
                    sock_read=timeouts.get("read"),
                ),
                server_hostname=request.extensions.get("sni_hostname"),
            )
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.TimeoutException(str(exc) or "timed out", request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.NetworkError(str(exc) or type(exc).__name__, request=request) from exc
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_AiohttpStream(response, aiohttp),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _aiohttp_resolver(aiohttp: Any, guard: _Guard) -> Any:
    base: type = aiohttp.abc.AbstractResolver

    class GuardedResolver(base):  # type: ignore[misc]
        def __init__(self) -> None:
            self._inner = aiohttp.ThreadedResolver()

        async def resolve(self, host: str, port: int = 0, family: int = 0) -> Any:
            results = await self._inner.resolve(host, port, family)
            reason = guard.refusal(host, [r["host"] for r in results])
            if reason is not None:
                logger.warning("h3_fastapi: proxy refused upstream: %s", reason)
                raise OSError(reason)
            return results

        async def close(self) -> None:
            await self._inner.close()

    return GuardedResolver()


def _new_client(guard: _Guard | None) -> httpx.AsyncClient:
    kind = os.environ.get(TRANSPORT_ENV, "auto").lower()
    transport = _aiohttp_transport(guard) if kind in ("auto", "aiohttp") else None
    if transport is None:
        if kind == "aiohttp":
            raise RuntimeError(f"{TRANSPORT_ENV}=aiohttp but aiohttp is not installed")
        transport = _httpcore_transport(guard)
    client = httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
        # A jar that accepts nothing: one user's cookies never reach another.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        follow_redirects=False,
        trust_env=False,
    )
    # The client's Accept-Encoding is not forwarded, and httpx's default is not
    # added either; Connection is managed by the transport.
    del client.headers["accept-encoding"]
    del client.headers["connection"]
    return client


_ClientKey = tuple[int, asyncio.AbstractEventLoop, "_Guard | None"]
_clients: dict[_ClientKey, httpx.AsyncClient] = {}


def _pooled_client(app: Any, guard: _Guard | None) -> httpx.AsyncClient:
    """The app's client for this event loop (and guard), made on first use."""
    key = (id(app), asyncio.get_running_loop(), guard)
    client = _clients.get(key)
    if client is None or client.is_closed:
        client = _new_client(guard)
        _clients[key] = client

        def close() -> Awaitable[None]:
            if _clients.get(key) is client:
                del _clients[key]
            return client.aclose()

        _shutdown.on_server_exit(client, close)
    return client


async def close_proxy_clients(app: Any = None) -> None:
    """Close the pooled upstream clients of this event loop (of ``app`` only, if given).

    Runs by itself when uvicorn stops; call it from a lifespan handler on other servers.
    """
    loop = asyncio.get_running_loop()
    for key, client in list(_clients.items()):
        if key[1] is loop and (app is None or key[0] == id(app)):
            del _clients[key]
            _shutdown.remove_server_exit(client)
            await client.aclose()


# --- in-process targets ----------------------------------------------------------


def _internal_path(target: str) -> str:
    """``target`` with its leading separator run collapsed to one ``/``."""
    return _LEADING_SEPARATORS.sub("/", target, count=1)


def _internal_url(request: Request, target: str) -> httpx.URL:
    root = request.scope.get("root_path", "") or ""
    path = _internal_path(target)
    if root and not path.startswith(root.rstrip("/") + "/"):
        path = root.rstrip("/") + path
    base = request.base_url
    return httpx.URL(f"{base.scheme}://{base.netloc}{path}")


class _AppStream(httpx.AsyncByteStream):
    """The body an in-process app sends, handed over chunk by chunk."""

    def __init__(self, exchange: _AppExchange) -> None:
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        queue = self._exchange.queue
        while True:
            chunk = await queue.get()
            if chunk is None:
                break
            yield chunk
        if self._exchange.failed:
            raise httpx.ReadError("the app failed while sending the response body")

    async def aclose(self) -> None:
        await self._exchange.finish()


class _AppExchange:
    """One request/response between the proxy and an in-process ASGI app."""

    def __init__(self, request: httpx.Request) -> None:
        self.request = request
        self.body = request.stream.__aiter__()  # type: ignore[union-attr]
        self.body_done = False
        self.gone = asyncio.Event()
        self.started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
        self.failed = False
        self.ended = False
        self.task: asyncio.Task[None] | None = None

    async def receive(self) -> dict[str, Any]:
        if not self.body_done:
            try:
                chunk = await self.body.__anext__()
            except StopAsyncIteration:
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": bytes(chunk), "more_body": True}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone.is_set():
            raise OSError("the proxy closed the in-process response")
        kind = message["type"]
        if kind == "http.response.start":
            if not self.started.done():
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
                self.started.set_result((int(message["status"]), headers))
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if body:
                await self.queue.put(bytes(body))
            if not message.get("more_body", False) and not self.ended:
                self._end()

    async def run(self, app: Any, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self.receive, self.send)
        except Exception as exc:
            self.failed = True
            if not self.started.done():
                self.started.set_exception(exc)
            else:
                logger.error("h3_fastapi: in-process proxy target raised", exc_info=exc)
        finally:
            if not self.started.done():
                self.started.set_exception(RuntimeError("the app sent no response"))
            if not self.ended:  # the body was cut short: wake the reader with an error
                self.failed = True
                self._end()

    def _end(self) -> None:
        self.ended = True
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            asyncio.get_running_loop().create_task(self.queue.put(None))

    async def finish(self) -> None:
        self.gone.set()
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})


class _AppTransport(httpx.AsyncBaseTransport):
    """Serve httpx requests with an ASGI app in this process, streaming both ways.

    Unlike ``httpx.ASGITransport`` the response is returned as soon as the app
    starts it, so endless streams (SSE) work and memory stays flat.
    """

    def __init__(self, app: Any, parent: Scope) -> None:
        self.app = app
        self.parent = parent

    def _scope(self, request: httpx.Request) -> dict[str, Any]:
        parent = self.parent
        raw_path, _, query = request.url.raw_path.partition(b"?")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": parent.get("scheme", "http"),
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": parent.get("root_path", ""),
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": parent.get("client"),
            "server": parent.get("server"),
            "extensions": {},
        }
        if "state" in parent:
            scope["state"] = dict(parent["state"])
        return scope

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        exchange = _AppExchange(request)
        exchange.task = asyncio.get_running_loop().create_task(
            exchange.run(self.app, self._scope(request))
        )
        try:
            status, headers = await exchange.started
        except BaseException:
            await exchange.finish()
            raise
        return httpx.Response(status, headers=headers, stream=_AppStream(exchange), request=request)


def _app_of(request: Request) -> Any:
    app = request.scope.get("app")
    if app is None:
        raise RuntimeError("in-process proxy targets need scope['app'] (a Starlette/FastAPI app)")
    return app
