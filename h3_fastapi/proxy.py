"""Streaming reverse proxy on httpx, with h3's header discipline, and WebSocket proxying.

One request through ``proxy_request``: the incoming headers are filtered
(``_headers.py``), the body is handed to httpx as a stream, and the upstream
response comes back as a ``ProxyResponse`` that relays the body chunk by chunk.
A watcher on the ASGI ``receive`` channel notices the client leaving and
cancels the upstream at once, whether we are still waiting for its headers or
already streaming its body.

Upstream connections come from one pooled ``httpx.AsyncClient`` per app and
event loop (``_transports.py``, closed when the server stops). Its transport runs on aiohttp when
that is installed (several times faster than httpcore, see
``bench/proxy_transport.py``), else on httpx's own; either way the public API
is httpx. Targets starting with
``/`` never leave the process: they are served by the same ASGI app.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ._guard import TargetNotAllowed, _Guard, _make_guard
from ._headers import (
    HeaderInput,
    filter_response_headers,
    get_proxy_request_headers,
    merge_headers,
    origin_of,
    rewrite_cookie,
    rewrite_location_headers,
    x_forwarded,
)
from ._hooks import call_maybe_async, logger
from ._transports import _app_of, _AppTransport, _internal_url, _pooled_client, close_proxy_clients
from ._websocket_proxy import create_websocket_proxy

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
        forwarded = x_forwarded(forwarded, request)
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
