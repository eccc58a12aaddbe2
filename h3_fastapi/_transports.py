"""Upstream transports for the proxy: the pooled client and in-process targets.

The pooled ``httpx.AsyncClient`` runs on aiohttp (several times faster than
httpcore, see ``bench/proxy_transport.py``), or on httpcore with
``H3_PROXY_TRANSPORT=httpcore``; either way the API is httpx and foreign errors
become httpx errors in one place (``map_transport_errors``). Targets starting
with ``/`` are served by the same ASGI app through a streaming transport
(``httpx.ASGITransport`` buffers whole bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
from collections.abc import AsyncIterator, Awaitable, Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import unquote

import aiohttp
import httpcore
import httpx
import yarl
from starlette.requests import Request
from starlette.types import Scope

from . import _shutdown
from ._guard import Guard, GuardedBackend, GuardedSocketFactory, TargetNotAllowed, connecting_host
from ._hooks import logger

__all__ = [
    "TRANSPORT_ENV",
    "AppTransport",
    "PooledClient",
    "close_proxy_clients",
    "internal_url",
    "pooled_client",
]

# Seconds to open a TCP connection to the upstream (then 502).
CONNECT_TIMEOUT = 10.0
KEEPALIVE_EXPIRY = 30.0
MAX_CONNECTIONS_KEPT = 100
# Environment override of the transport: "aiohttp", "httpcore" or "auto".
TRANSPORT_ENV = "H3_PROXY_TRANSPORT"

# A leading run the URL parser could read as the start of an authority.
_LEADING_SEPARATORS = re.compile(r"^[/\\\t\n\r]+")

# httpcore errors become the httpx errors of the same name, most specific first.
_HTTPCORE_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = tuple(
    (getattr(httpcore, name), getattr(httpx, name))
    for name in (
        "ConnectTimeout ReadTimeout WriteTimeout PoolTimeout TimeoutException ConnectError "
        "ReadError WriteError NetworkError RemoteProtocolError LocalProtocolError "
        "ProtocolError UnsupportedProtocol"
    ).split()
)


@contextlib.contextmanager
def map_transport_errors(request: httpx.Request, *, reading: bool = False) -> Iterator[None]:
    """Turn aiohttp, httpcore and socket errors into the httpx error that names them.

    ``TargetNotAllowed`` (the guard) passes through with the request attached.
    """
    try:
        yield
    except TargetNotAllowed as exc:
        exc.request = request
        raise
    except httpx.TransportError:
        raise
    except aiohttp.ClientConnectorError as exc:
        cause = exc.os_error
        if isinstance(cause, TargetNotAllowed):
            raise TargetNotAllowed(str(cause), request=request) from exc
        raise httpx.ConnectError(str(exc), request=request) from exc
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        timeout: type[httpx.TimeoutException] = (
            httpx.ReadTimeout if reading else httpx.ConnectTimeout
        )
        raise timeout(str(exc) or "timed out", request=request) from exc
    except (aiohttp.ClientError, OSError) as exc:
        failure: type[httpx.NetworkError] = httpx.ReadError if reading else httpx.NetworkError
        raise failure(str(exc) or type(exc).__name__, request=request) from exc
    except httpcore.TimeoutException as exc:
        raise _httpcore_error(exc)(str(exc), request=request) from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise _httpcore_error(exc)(str(exc), request=request) from exc


def _httpcore_error(exc: Exception) -> type[httpx.TransportError]:
    for foreign, ours in _HTTPCORE_ERRORS:
        if isinstance(exc, foreign):
            return ours
    return httpx.TransportError


# --- httpcore -------------------------------------------------------------------


class _HttpcoreStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with map_transport_errors(self._request, reading=True):
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class _HttpcoreTransport(httpx.AsyncBaseTransport):
    """httpx over an httpcore pool whose network backend may be the guard's.

    httpx's own ``AsyncHTTPTransport`` does not take a network backend; this
    owns its pool instead of reaching into that one.
    """

    def __init__(self, guard: Guard | None) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=None,
            max_keepalive_connections=MAX_CONNECTIONS_KEPT,
            keepalive_expiry=KEEPALIVE_EXPIRY,
            network_backend=None if guard is None else GuardedBackend(guard),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        outgoing = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with map_transport_errors(request):
            response = await self._pool.handle_async_request(outgoing)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_HttpcoreStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


# --- aiohttp --------------------------------------------------------------------


class _AiohttpStream(httpx.AsyncByteStream):
    """An aiohttp response body as an httpx stream, chunks as they arrive."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with map_transport_errors(self._request, reading=True):
            async for chunk in self._response.content.iter_any():
                yield chunk
        self._complete = True

    def arrived(self) -> bool:
        """Whether the whole body has arrived: what is left of it is buffered, reads never wait."""
        return self._response.content.is_eof()

    async def aclose(self) -> None:
        if self._complete:
            self._response.release()  # back to the pool
        else:
            self._response.close()  # cut short: the connection cannot be reused


class _AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx transport on an aiohttp session: no cookie jar, no decompression, no redirects.

    Several times faster than httpcore for proxying (``bench/proxy_transport.py``).
    The guard checks each socket's address in the connector's socket factory.
    """

    def __init__(self, guard: Guard | None) -> None:
        self._guard = guard
        self._ssl = httpx.create_ssl_context(trust_env=False)
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        guard = self._guard
        connector = aiohttp.TCPConnector(
            limit=0,
            keepalive_timeout=KEEPALIVE_EXPIRY,
            ssl=self._ssl,
            socket_factory=None if guard is None else GuardedSocketFactory(guard),
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
        # httpx already turned URL credentials into ``Authorization``; aiohttp refuses both.
        url = request.url.copy_with(userinfo=b"") if request.url.userinfo else request.url
        token = connecting_host.set(url.host)
        try:
            with map_transport_errors(request):
                response = await self._session.request(
                    request.method,
                    yarl.URL(str(url), encoded=True),
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
        finally:
            connecting_host.reset(token)
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_AiohttpStream(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


@functools.lru_cache(maxsize=512)
def _parse_url(url: str) -> httpx.URL:
    """``httpx.URL(url)``, remembered: a proxy sends to the same few URLs again and again."""
    return httpx.URL(url)


class PooledClient(httpx.AsyncClient):
    """The proxy's pooled client: an ``httpx.AsyncClient`` with a shorter way to send.

    ``send_direct`` hands a request straight to the transport. What
    ``AsyncClient.send`` adds on the way is nothing this client uses: no auth,
    no event hooks, no redirects (callers that follow them use ``send``), and a
    cookie jar that accepts nothing, so extracting cookies is pure cost.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        super().__init__(
            transport=transport,
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
            # A jar that accepts nothing: one user's cookies never reach another.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            follow_redirects=False,
            trust_env=False,
        )
        # The client's Accept-Encoding is not forwarded, and httpx's default is not
        # added either; Connection is managed by the transport.
        del self.headers["accept-encoding"]
        del self.headers["connection"]
        self._direct = transport
        self._defaults = dict(self.headers.items())
        self._timeouts = self.timeout.as_dict()

    def build_direct(
        self, method: str, url: str, headers: dict[str, str], kwargs: dict[str, Any]
    ) -> httpx.Request:
        """What ``build_request`` returns for this client, built with less work.

        ``headers`` must have lower-case names (``merge_headers`` makes them so).
        """
        extensions = dict(kwargs.get("extensions") or {})
        if "timeout" not in extensions:
            timeout = kwargs.get("timeout", self.timeout)
            extensions["timeout"] = (
                self._timeouts if timeout is self.timeout else httpx.Timeout(timeout).as_dict()
            )
        return httpx.Request(
            method,
            _parse_url(url),
            content=kwargs.get("content"),
            data=kwargs.get("data"),
            files=kwargs.get("files"),
            json=kwargs.get("json"),
            params=kwargs.get("params"),
            headers={**self._defaults, **headers},
            extensions=extensions,
        )

    async def send_direct(self, request: httpx.Request) -> httpx.Response:
        """Send without following redirects; the response body is streamed."""
        if request.url.userinfo:  # httpx turns URL credentials into Basic auth in ``send``
            return await self.send(request, stream=True, follow_redirects=False)
        response = await self._direct.handle_async_request(request)
        response.request = request
        return response


def _new_client(guard: Guard | None) -> PooledClient:
    kind = os.environ.get(TRANSPORT_ENV, "auto").lower()
    transport: httpx.AsyncBaseTransport
    if kind == "httpcore":
        transport = _HttpcoreTransport(guard)
    else:
        transport = _AiohttpTransport(guard)
    return PooledClient(transport)


_ClientKey = tuple[int, asyncio.AbstractEventLoop, "Guard | None"]
_clients: dict[_ClientKey, PooledClient] = {}


def pooled_client(app: Any, guard: Guard | None) -> PooledClient:
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


def internal_url(request: Request, target: str) -> httpx.URL:
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


class AppTransport(httpx.AsyncBaseTransport):
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


def app_of(request: Request) -> Any:
    app = request.scope.get("app")
    if app is None:
        raise RuntimeError("in-process proxy targets need scope['app'] (a Starlette/FastAPI app)")
    return app
