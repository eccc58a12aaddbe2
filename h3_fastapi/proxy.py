"""Streaming reverse proxy on httpx, with h3's header discipline, and WebSocket proxying.

One request through ``proxy_request``: the incoming headers are filtered
(``_headers.py``), the body is handed to httpx as a stream, and the upstream
response comes back as a ``ProxyResponse`` that relays the body chunk by chunk.
A watcher on the ASGI ``receive`` channel notices the client leaving and
cancels the upstream at once, whether we are still waiting for its headers or
already streaming its body.

Upstream connections come from one pooled ``httpx.AsyncClient`` per app and
event loop (closed when the server stops). Its transport runs on aiohttp when
that is installed (several times faster than httpcore, see
``bench/proxy_transport.py``), else on httpx's own; either way the public API
is httpx. Targets starting with
``/`` never leave the process: they are served by the same ASGI app.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import math
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import unquote, urlsplit

import httpcore
import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from . import _shutdown
from ._headers import (
    HeaderInput,
    filter_request_headers,
    filter_response_headers,
    merge_headers,
    origin_of,
    rewrite_cookie,
    rewrite_location_headers,
)
from ._hooks import call_maybe_async, logger

__all__ = [
    "ProxyResponse",
    "TargetNotAllowed",
    "close_proxy_clients",
    "create_websocket_proxy",
    "fetch_with_event",
    "get_proxy_request_headers",
    "proxy",
    "proxy_request",
]

# Seconds to open a TCP connection to the upstream (then 502).
CONNECT_TIMEOUT = 10.0
KEEPALIVE_EXPIRY = 30.0
# Environment override of the transport: "aiohttp", "httpcore" or "auto".
TRANSPORT_ENV = "H3_PROXY_TRANSPORT"

_FETCH_OPTIONS = frozenset(
    {
        "method",
        "headers",
        "body",
        "content",
        "json",
        "data",
        "files",
        "params",
        "redirect",
        "follow_redirects",
        "timeout",
        "extensions",
    }
)
_BODY_OPTIONS = ("body", "content", "json", "data", "files")
# A leading run the URL parser could read as the start of an authority.
_LEADING_SEPARATORS = re.compile(r"^[/\\\t\n\r]+")


class TargetNotAllowed(httpx.ConnectError):
    """The SSRF guard refused the upstream address (the client sees a plain 502)."""


# --- SSRF guard -------------------------------------------------------------

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class _Guard:
    """Which upstream addresses may be connected to, checked on the resolved IPs."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[_Network, ...]
    restrict: bool
    deny_private: bool

    def refusal(self, host: str, addresses: Iterable[str]) -> str | None:
        """Why connecting to ``host`` at ``addresses`` is refused, or ``None``."""
        name = host.lower().rstrip(".").strip("[]")
        name_ok = name in self.names or name.endswith(self.suffixes)
        found = False
        for text in addresses:
            found = True
            ip = _parse_ip(text)
            if ip is None:
                return f"{host!r} resolved to an unparsable address"
            listed = any(ip.version == net.version and ip in net for net in self.networks)
            if self.deny_private and not ip.is_global and not listed:
                return f"{host!r} resolves to non-public address {ip}"
            if self.restrict and not name_ok and not listed:
                return f"{host!r} ({ip}) is not in allow_hosts"
        return None if found else f"{host!r} did not resolve"


def _parse_ip(text: str) -> _Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _make_guard(allow_hosts: Iterable[str] | str | None, deny_private: bool) -> _Guard | None:
    if allow_hosts is None and not deny_private:
        return None
    if isinstance(allow_hosts, str):
        allow_hosts = [allow_hosts]
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[_Network] = []
    for entry in allow_hosts or ():
        entry = entry.strip().lower()
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        if entry.startswith("*."):
            suffixes.append(entry[1:])
        else:
            names.add(entry.rstrip("."))
    return _Guard(
        frozenset(names),
        tuple(suffixes),
        tuple(networks),
        restrict=allow_hosts is not None,
        deny_private=deny_private,
    )


async def _resolve_checked(guard: _Guard, host: str, port: int) -> list[str]:
    """Resolve ``host`` and return its addresses, or raise ``TargetNotAllowed``."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpx.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    reason = guard.refusal(host, addresses)
    if reason is not None:
        logger.warning("h3_fastapi: proxy refused upstream: %s", reason)
        raise TargetNotAllowed(reason)
    return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that connects only to addresses the guard allows."""

    def __init__(self, guard: _Guard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await _resolve_checked(self._guard, host, port)
        except httpx.ConnectError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        # Connect to an address that was checked, never to a second lookup.
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed by the proxy guard")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


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


# --- the client connection --------------------------------------------------------


class _ClientWatch:
    """Notices the downstream client leaving, from the request body or ``receive``."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        # While the body is being forwarded, it alone reads ``receive``.
        self.body_pending = False

    def _set_gone(self) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    def start(self) -> None:
        """Watch ``receive`` from now on (once the body is no longer read)."""
        if self._task is None and not self.gone.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        receive = self._request.receive
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self._set_gone()
                    return
        except Exception as exc:  # the server's receive failed: stop watching
            logger.debug("h3_fastapi: proxy disconnect watch ended: %r", exc)

    async def body(self) -> AsyncIterator[bytes]:
        """The incoming body, streamed; a disconnect marks the client gone."""
        self.body_pending = True
        try:
            async for chunk in self._request.stream():
                if chunk:
                    yield chunk
        except ClientDisconnect:
            self._set_gone()
            raise
        finally:
            self.body_pending = False
            self.start()


class ProxyResponse(StreamingResponse):
    """A response relaying an upstream ``httpx.Response`` body as it arrives.

    The upstream is closed when the body ends, fails, or the client leaves
    (then at once, without waiting for the next chunk).
    """

    def __init__(
        self,
        upstream: httpx.Response,
        headers: list[tuple[str, str]],
        watch: _ClientWatch,
        client: httpx.AsyncClient | None,
    ) -> None:
        self.upstream = upstream
        self.status_code = upstream.status_code
        self.background = None
        self.media_type = None
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        encoding = upstream.headers.get("content-encoding", "identity").strip().lower()
        self.body_iterator = (
            upstream.aiter_raw() if encoding in ("", "identity") else upstream.aiter_bytes()
        )
        self._watch = watch
        self._client = client

    async def _pump(self, send: Send) -> None:
        try:
            async for chunk in self.body_iterator:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception:
            if self._client is None or not self._client.is_closed:
                raise
            # The server is shutting down and closed the pool: end the body cleanly.
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self._watch
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            pump = asyncio.get_running_loop().create_task(self._pump(send))
            await asyncio.wait({pump, watch.gone}, return_when=asyncio.FIRST_COMPLETED)
            if not pump.done():  # the client left: stop reading the upstream now
                pump.cancel()
                await asyncio.wait({pump})
                return
            pump.result()
        finally:
            watch.stop()
            await self.upstream.aclose()


# --- forwarding --------------------------------------------------------------------


def _check_fetch_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    unknown = set(options) - _FETCH_OPTIONS
    if unknown:
        raise TypeError(f"unknown fetch_options: {', '.join(sorted(unknown))}")
    return options


def _follow(options: Mapping[str, Any], default: bool) -> bool:
    if "follow_redirects" in options:
        return bool(options["follow_redirects"])
    redirect = options.get("redirect")
    if redirect is None:
        return default
    if redirect not in ("manual", "follow"):
        raise ValueError("fetch_options redirect must be 'manual' or 'follow'")
    return bool(redirect == "follow")


def _request_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if "body" in options:
        kwargs["content"] = options["body"]
    for key in ("content", "json", "data", "files", "params", "extensions"):
        if key in options:
            kwargs[key] = options[key]
    if "timeout" in options:
        kwargs["timeout"] = options["timeout"]
    return kwargs


def _deadline(timeout: float | None) -> float | None:
    if timeout is None or timeout <= 0 or not math.isfinite(timeout):
        return None
    return float(timeout)


async def _open(
    request: Request,
    target: str,
    method: str,
    headers: dict[str, str],
    kwargs: dict[str, Any],
    *,
    follow: bool,
    client: httpx.AsyncClient | None,
    guard: _Guard | None,
) -> tuple[httpx.Response, httpx.AsyncClient | None]:
    """Send the upstream request; return its response once the headers are in."""
    if target.startswith("/"):
        kwargs = {k: v for k, v in kwargs.items() if k != "timeout"}
        upstream_request = httpx.Request(
            method, _internal_url(request, target), headers=headers, **kwargs
        )
        transport = _AppTransport(_app_of(request), request.scope)
        return await transport.handle_async_request(upstream_request), None
    if client is None:
        client = _pooled_client(_app_of_or_none(request), guard)
    upstream_request = client.build_request(method, target, headers=headers, **kwargs)
    response = await client.send(upstream_request, stream=True, follow_redirects=follow)
    return response, client


def _app_of_or_none(request: Request) -> Any:
    return request.scope.get("app")


def _response_headers(
    request: Request,
    target: str,
    upstream: httpx.Response,
    *,
    cookie_domain_rewrite: str | Mapping[str, str] | None,
    cookie_path_rewrite: str | Mapping[str, str] | None,
    location_rewrite: bool | Mapping[str, str],
) -> list[tuple[str, str]]:
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.headers.raw]
    kept = filter_response_headers(raw)
    headers = [(k, v) for k, v in kept if k != "set-cookie"]
    for name, cookie in kept:
        if name != "set-cookie":
            continue
        if cookie_domain_rewrite is not None:
            cookie = rewrite_cookie(cookie, cookie_domain_rewrite, "domain")
        if cookie_path_rewrite is not None:
            cookie = rewrite_cookie(cookie, cookie_path_rewrite, "path")
        headers.append(("set-cookie", cookie))
    internal = target.startswith("/")
    if location_rewrite is not False and (location_rewrite is not True or not internal):
        base = request.base_url
        headers = rewrite_location_headers(
            headers,
            location_rewrite,
            None if internal else origin_of(target),
            f"{base.scheme}://{base.netloc}",
        )
    return headers


async def _forward(
    request: Request,
    target: str,
    *,
    method: str,
    headers: dict[str, str],
    kwargs: dict[str, Any],
    watch: _ClientWatch,
    follow: bool,
    cookie_domain_rewrite: str | Mapping[str, str] | None,
    cookie_path_rewrite: str | Mapping[str, str] | None,
    location_rewrite: bool | Mapping[str, str],
    on_response: Callable[..., Any] | None,
    timeout: float | None,
    propagate_abort_error: bool,
    client: httpx.AsyncClient | None,
    guard: _Guard | None,
) -> Response:
    if guard is not None and client is not None:
        raise TypeError("allow_hosts/deny_private work with the built-in client, not client=")
    loop = asyncio.get_running_loop()
    sending = loop.create_task(
        _open(
            request,
            target,
            method,
            headers,
            kwargs,
            follow=follow,
            client=client,
            guard=guard,
        )
    )
    try:
        waiting: set[asyncio.Future[Any]] = {sending, watch.gone}
        done, _ = await asyncio.wait(
            waiting, timeout=_deadline(timeout), return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        sending.cancel()
        watch.stop()
        raise
    if sending not in done:
        sending.cancel()
        await asyncio.wait({sending})
        if not sending.cancelled() and sending.exception() is None:
            await sending.result()[0].aclose()
        watch.stop()
        if watch.gone.done():
            return _client_gone(propagate_abort_error)
        return PlainTextResponse("Gateway Timeout", status_code=504)
    exc = sending.exception()
    if exc is not None:
        watch.stop()
        if isinstance(exc, ClientDisconnect) or watch.gone.done():
            return _client_gone(propagate_abort_error)
        logger.warning("h3_fastapi: proxy to %s failed: %r", target, exc)
        return PlainTextResponse("Bad Gateway", status_code=502)
    upstream, used_client = sending.result()
    if not watch.body_pending:  # (a full-duplex transport may still be uploading)
        watch.start()
    try:
        response_headers = _response_headers(
            request,
            target,
            upstream,
            cookie_domain_rewrite=cookie_domain_rewrite,
            cookie_path_rewrite=cookie_path_rewrite,
            location_rewrite=location_rewrite,
        )
        if on_response is not None:
            await call_maybe_async(on_response, request, upstream)
    except BaseException:
        watch.stop()
        await upstream.aclose()
        raise
    return ProxyResponse(upstream, response_headers, watch, used_client)


def _client_gone(propagate: bool) -> Response:
    if propagate:
        raise ClientDisconnect()
    # Never delivered: the client has left (nginx's 499 Client Closed Request).
    return Response(status_code=499)


# --- public API ------------------------------------------------------------------------


async def proxy(
    request: Request,
    target: str,
    *,
    headers: HeaderInput | None = None,
    fetch_options: Mapping[str, Any] | None = None,
    cookie_domain_rewrite: str | Mapping[str, str] | None = None,
    cookie_path_rewrite: str | Mapping[str, str] | None = None,
    location_rewrite: bool | Mapping[str, str] = True,
    on_response: Callable[..., Any] | None = None,
    timeout: float | None = None,
    propagate_abort_error: bool = False,
    client: httpx.AsyncClient | None = None,
    allow_hosts: Iterable[str] | str | None = None,
    deny_private: bool = False,
) -> Response:
    """Send a request to ``target`` and return its response, streaming the body.

    Unlike ``proxy_request`` nothing of the incoming request is forwarded but
    what ``headers`` and ``fetch_options`` (``method``, ``headers``, ``body``
    or ``content``/``json``/``data``/``files``, ``params``, ``redirect``
    ``"manual"``/``"follow"``, ``timeout``, ``extensions``) say; the method is
    ``GET`` by default. A ``target`` starting with ``/`` is served in-process
    by the same app.

    Responses: the upstream status and filtered headers (hop-by-hop, framing
    and ``Connection``-named ones dropped); each ``Set-Cookie`` kept and
    rewritten by ``cookie_domain_rewrite``/``cookie_path_rewrite`` (a string
    for every value or a map by current value, ``"*"`` for any; ``""``
    removes the attribute); ``Location``/``Refresh`` on the target origin
    moved to the proxy origin (``location_rewrite=True``), by prefix map, or
    left alone (``False``). Redirects are relayed, not followed.

    Failures: unreachable upstream -> 502 ``Bad Gateway`` (no detail);
    no response headers within ``timeout`` seconds -> 504 (a body that
    streams slowly afterwards is never cut); client gone -> the upstream is
    cancelled at once (``propagate_abort_error=True`` raises
    ``ClientDisconnect`` instead of returning an undeliverable 499).

    ``on_response(request, upstream)`` (sync or async) sees the
    ``httpx.Response`` before its body is relayed. ``client`` replaces the
    pooled client. ``allow_hosts`` (names, ``*.suffix``, IPs, CIDR networks)
    and ``deny_private`` guard against SSRF on the resolved addresses.
    """
    options = _check_fetch_options(fetch_options)
    merged = merge_headers({}, options.get("headers"), headers)
    if any(key in options for key in _BODY_OPTIONS):
        merged.pop("content-length", None)
    watch = _ClientWatch(request)
    if not any(key in options for key in _BODY_OPTIONS):
        watch.start()  # else the body may be read from the request: watch after the headers
    return await _forward(
        request,
        target,
        method=str(options.get("method") or "GET").upper(),
        headers=merged,
        kwargs=_request_kwargs(options),
        watch=watch,
        follow=_follow(options, default=False),
        cookie_domain_rewrite=cookie_domain_rewrite,
        cookie_path_rewrite=cookie_path_rewrite,
        location_rewrite=location_rewrite,
        on_response=on_response,
        timeout=timeout,
        propagate_abort_error=propagate_abort_error,
        client=client,
        guard=_make_guard(allow_hosts, deny_private),
    )


def _has_body(request: Request) -> bool:
    headers = request.headers
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return str(request.scope.get("http_version", "1.1")).startswith(("2", "3"))


def _x_forwarded(headers: dict[str, str], request: Request) -> dict[str, str]:
    headers = dict(headers)
    client = request.client
    if client is not None and client.host:
        previous = headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{previous}, {client.host}" if previous else client.host
    url = request.url
    headers["x-forwarded-proto"] = url.scheme
    headers["x-forwarded-host"] = url.netloc
    headers["x-forwarded-port"] = str(url.port or (443 if url.scheme == "https" else 80))
    return headers


async def proxy_request(
    request: Request,
    target: str,
    *,
    forward_headers: Iterable[str] | None = None,
    filter_headers: Iterable[str] | None = None,
    xfwd: bool = False,
    headers: HeaderInput | None = None,
    fetch_options: Mapping[str, Any] | None = None,
    cookie_domain_rewrite: str | Mapping[str, str] | None = None,
    cookie_path_rewrite: str | Mapping[str, str] | None = None,
    location_rewrite: bool | Mapping[str, str] = True,
    on_response: Callable[..., Any] | None = None,
    timeout: float | None = None,
    propagate_abort_error: bool = False,
    client: httpx.AsyncClient | None = None,
    allow_hosts: Iterable[str] | str | None = None,
    deny_private: bool = False,
) -> Response:
    """Forward the incoming request (method, filtered headers, streamed body) to ``target``.

    The incoming headers pass ``get_proxy_request_headers`` (``forward_headers``
    forces through ``host``, ``accept-encoding`` or ``expect``; ``filter_headers``
    drops more and always wins). ``xfwd=True`` appends the client address to
    ``x-forwarded-for`` and overwrites ``x-forwarded-proto/host/port``;
    ``fetch_options["headers"]`` then ``headers`` are applied last and win
    (a ``None`` value removes a header). The body is streamed for every method
    but ``GET``/``HEAD``. ``Cookie`` and ``Authorization`` are forwarded: filter
    them for upstreams you do not trust. Other options as in ``proxy``.
    """
    options = _check_fetch_options(fetch_options)
    method = str(options.get("method") or request.method).upper()
    forwarded = get_proxy_request_headers(
        request,
        host=target.startswith("/"),
        forward_headers=forward_headers,
        filter_headers=filter_headers,
    )
    if xfwd:
        forwarded = _x_forwarded(forwarded, request)
    merged = merge_headers(forwarded, options.get("headers"), headers)
    watch = _ClientWatch(request)
    kwargs = _request_kwargs(options)
    has_body = _has_body(request)
    overridden = any(key in options for key in _BODY_OPTIONS)
    if overridden or method in ("GET", "HEAD") or not has_body:
        if overridden or has_body:
            merged.pop("content-length", None)
        watch.start()
    else:
        kwargs["content"] = watch.body()
    return await _forward(
        request,
        target,
        method=method,
        headers=merged,
        kwargs=kwargs,
        watch=watch,
        follow=_follow(options, default=False),
        cookie_domain_rewrite=cookie_domain_rewrite,
        cookie_path_rewrite=cookie_path_rewrite,
        location_rewrite=location_rewrite,
        on_response=on_response,
        timeout=timeout,
        propagate_abort_error=propagate_abort_error,
        client=client,
        guard=_make_guard(allow_hosts, deny_private),
    )


def get_proxy_request_headers(
    request: Request,
    *,
    host: bool = False,
    forward_headers: Iterable[str] | None = None,
    filter_headers: Iterable[str] | None = None,
) -> dict[str, str]:
    """The incoming request headers that are safe to forward (lower-case names).

    Drops ``transfer-encoding, accept-encoding, connection, keep-alive,
    upgrade, expect, te, trailer, host, proxy-authorization,
    proxy-connection`` and every header the request's ``Connection`` names.
    ``host=True`` keeps ``host``; ``forward_headers`` keeps the soft drops
    (``host``, ``accept-encoding``, ``expect``) but never a hop-by-hop one;
    ``filter_headers`` drops more and wins over both.
    """
    items = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
    return filter_request_headers(
        items, host=host, forward_headers=forward_headers, filter_headers=filter_headers
    )


async def fetch_with_event(request: Request, url: str, **init: Any) -> httpx.Response:
    """Fetch ``url`` for this request and return the ``httpx.Response``.

    A ``url`` starting with ``/`` is served in-process by the same app and
    carries the request's filtered headers (``host`` included); any other URL
    is fetched with the pooled client *without* the request's headers or
    cookies. ``init`` takes the ``fetch_options`` keys (``method``,
    ``headers``, ``body``/``content``/``json``/``data``/``files``, ``params``,
    ``redirect``, ``timeout``, ``extensions``) plus ``stream`` (return before
    the body is read; then ``await response.aclose()``), ``client``,
    ``allow_hosts`` and ``deny_private``. External redirects are followed
    unless ``redirect="manual"``, as with ``fetch``.
    """
    stream = bool(init.pop("stream", False))
    client: httpx.AsyncClient | None = init.pop("client", None)
    guard = _make_guard(init.pop("allow_hosts", None), bool(init.pop("deny_private", False)))
    if guard is not None and client is not None:
        raise TypeError("allow_hosts/deny_private work with the built-in client, not client=")
    options = _check_fetch_options(init)
    kwargs = _request_kwargs(options)
    method = str(options.get("method") or "GET").upper()
    if url.startswith("/"):
        headers = merge_headers(
            get_proxy_request_headers(request, host=True), options.get("headers")
        )
        if any(key in options for key in _BODY_OPTIONS):
            headers.pop("content-length", None)
        response, _ = await _open(
            request, url, method, headers, kwargs, follow=False, client=None, guard=None
        )
    else:
        headers = merge_headers({}, options.get("headers"))
        if client is None:
            client = _pooled_client(_app_of_or_none(request), guard)
        upstream_request = client.build_request(method, url, headers=headers, **kwargs)
        response = await client.send(
            upstream_request, stream=True, follow_redirects=_follow(options, default=True)
        )
    if not stream:
        try:
            await response.aread()
        finally:
            await response.aclose()
    return response


# --- WebSocket proxy ------------------------------------------------------------------

DEFAULT_WS_BUFFER_LIMIT = 1024 * 1024
_WS_HANDSHAKE_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "origin",
        "user-agent",
        "content-length",
    }
)
_UNSENDABLE_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})
_CONTEXT_KEY = "_h3_websocket_proxy"


def _sendable(code: int | None, fallback: int) -> int:
    if code is None or code in _UNSENDABLE_CLOSE_CODES or not (1000 <= code <= 4999):
        return fallback
    return code


class _Link:
    """One client connection's upstream: connecting, then relaying."""

    def __init__(self) -> None:
        self.connecting: asyncio.Task[Any] | None = None
        self.upstream: Any = None
        self.pending: list[str | bytes] = []
        self.pending_size = 0
        self.ready = False
        self.relay: asyncio.Task[None] | None = None
        self.closed = False


class _WebSocketProxy:
    """Hooks relaying every client connection to its own upstream WebSocket."""

    def __init__(
        self,
        target: str | Callable[[Request], str],
        *,
        protocols: Iterable[str] | None,
        headers: HeaderInput | None,
        forward_headers: Iterable[str] | None,
        filter_headers: Iterable[str] | None,
        xfwd: bool,
        buffer_limit: int,
        open_timeout: float,
        max_message_size: int | None,
        guard: _Guard | None,
        connect_options: Mapping[str, Any],
    ) -> None:
        self.target = target
        self.protocols = None if protocols is None else list(protocols)
        self.headers = headers
        self.forward_headers = forward_headers
        self.filter_headers = filter_headers
        self.xfwd = xfwd
        self.buffer_limit = buffer_limit
        self.open_timeout = open_timeout
        self.max_message_size = max_message_size
        self.guard = guard
        self.connect_options = dict(connect_options)

    def hooks(self) -> dict[str, Callable[..., Any]]:
        return {
            "upgrade": self.upgrade,
            "open": self.open,
            "message": self.message,
            "close": self.close,
        }

    async def _connect(self, request: Request, offered: list[str]) -> Any:
        connect: Any = importlib.import_module("websockets.asyncio.client").connect
        target = self.target(request) if callable(self.target) else self.target
        forwarded = get_proxy_request_headers(
            request, forward_headers=self.forward_headers, filter_headers=self.filter_headers
        )
        if self.xfwd:
            forwarded = _x_forwarded(forwarded, request)
        forwarded = {k: v for k, v in forwarded.items() if k not in _WS_HANDSHAKE_HEADERS}
        merged = merge_headers(forwarded, self.headers)
        options: dict[str, Any] = {
            "additional_headers": list(merged.items()),
            "origin": request.headers.get("origin"),
            "user_agent_header": request.headers.get("user-agent"),
            "subprotocols": (self.protocols if self.protocols is not None else offered) or None,
            "open_timeout": self.open_timeout,
            "max_size": self.max_message_size,
            **self.connect_options,
        }
        if self.guard is None:
            return await connect(target, **options)
        # Connect only to addresses the guard checked (no second DNS lookup).
        parts = urlsplit(target)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        addresses = await _resolve_checked(self.guard, parts.hostname or "", port)
        error: Exception | None = None
        for address in addresses:
            try:
                return await connect(target, host=address, port=port, **options)
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    async def upgrade(self, request: Any) -> dict[str, Any] | None:
        offered = [str(p) for p in request.scope.get("subprotocols") or ()]
        link = _Link()
        request.context[_CONTEXT_KEY] = link
        link.connecting = asyncio.get_running_loop().create_task(self._connect(request, offered))
        if not offered:
            return None  # accept now; messages wait in the buffer until the upstream opens
        # The client asked for subprotocols: answer with the one the upstream chose.
        await asyncio.wait({link.connecting})
        if link.connecting.cancelled() or link.connecting.exception() is not None:
            return None  # accepted, then closed 1011 in open()
        chosen = link.connecting.result().subprotocol
        return {"protocol": chosen} if chosen and chosen in offered else None

    async def open(self, peer: Any) -> None:
        link: _Link = peer.context[_CONTEXT_KEY]
        link.relay = asyncio.get_running_loop().create_task(self._relay(peer, link))

    async def _relay(self, peer: Any, link: _Link) -> None:
        assert link.connecting is not None
        try:
            upstream = await link.connecting
        except Exception as exc:
            logger.warning("h3_fastapi: WebSocket proxy could not reach upstream: %r", exc)
            peer.close(1011, "Upstream unavailable")
            return
        link.upstream = upstream
        if link.closed:
            await upstream.close(1001, "")
            return
        try:
            while link.pending:
                data = link.pending.pop(0)
                link.pending_size -= len(data)
                await upstream.send(data)
            link.ready = True
            async for data in upstream:
                await peer.send(data)
        except Exception as exc:
            logger.debug("h3_fastapi: WebSocket proxy relay ended: %r", exc)
        rcvd = upstream.protocol.close_rcvd
        if rcvd is not None:
            peer.close(_sendable(rcvd.code, 1000), rcvd.reason)
        else:
            peer.close(1011, "Upstream connection lost")

    async def message(self, peer: Any, message: Any) -> None:
        link: _Link = peer.context[_CONTEXT_KEY]
        data = message.raw_data
        if link.ready:
            try:
                await link.upstream.send(data)
            except Exception as exc:  # the upstream went away; the relay closes the peer
                logger.debug("h3_fastapi: WebSocket proxy send failed: %r", exc)
            return
        link.pending.append(data)
        link.pending_size += len(data)
        if link.pending_size > self.buffer_limit:
            link.pending.clear()
            link.pending_size = 0
            peer.close(1009, "Too much data before the upstream opened")

    async def close(self, peer: Any, details: Any) -> None:
        link: _Link | None = peer.context.get(_CONTEXT_KEY)
        if link is None:
            return
        link.closed = True
        if link.connecting is not None and not link.connecting.done():
            link.connecting.cancel()
        upstream = link.upstream
        if upstream is not None:
            code = _sendable(details.code, 1000 if details.code == 1005 else 1001)
            try:
                await upstream.close(code, details.reason or "")
            except Exception as exc:
                logger.debug("h3_fastapi: WebSocket proxy upstream close failed: %r", exc)
        relay = link.relay
        if relay is not None and not relay.done() and relay is not asyncio.current_task():
            relay.cancel()
            await asyncio.wait({relay})


def create_websocket_proxy(
    target: str | Callable[[Request], str],
    *,
    protocols: Iterable[str] | None = None,
    headers: HeaderInput | None = None,
    forward_headers: Iterable[str] | None = None,
    filter_headers: Iterable[str] | None = None,
    xfwd: bool = False,
    buffer_limit: int = DEFAULT_WS_BUFFER_LIMIT,
    open_timeout: float = 10.0,
    max_message_size: int | None = 16 * 1024 * 1024,
    allow_hosts: Iterable[str] | str | None = None,
    deny_private: bool = False,
    **connect_options: Any,
) -> dict[str, Callable[..., Any]]:
    """Hooks that relay each WebSocket client to its own connection to ``target``.

    ``target`` is a ``ws://``/``wss://`` URL (or ``request -> URL``). Text
    and binary messages go both ways; a close code and reason from either
    side is passed to the other. The subprotocols the client offers (or
    ``protocols``) are offered upstream and the one the upstream picks is
    accepted. Filtered client headers (cookies, authorization) are forwarded
    as in ``proxy_request``; ``headers`` adds or (with ``None``) removes.

    The client is accepted before the upstream opens (unless it asked for a
    subprotocol): what it sends meanwhile is buffered up to ``buffer_limit``
    bytes, then it is closed 1009. An upstream that cannot be reached closes
    the client 1011. Extra keywords go to ``websockets.connect``. Needs the
    ``websockets`` package.

    Use with ``define_websocket_handler(create_websocket_proxy(url))``.
    """
    proxy_hooks = _WebSocketProxy(
        target,
        protocols=protocols,
        headers=headers,
        forward_headers=forward_headers,
        filter_headers=filter_headers,
        xfwd=xfwd,
        buffer_limit=buffer_limit,
        open_timeout=open_timeout,
        max_message_size=max_message_size,
        guard=_make_guard(allow_hosts, deny_private),
        connect_options=connect_options,
    )
    return proxy_hooks.hooks()
