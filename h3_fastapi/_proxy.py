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
from dataclasses import dataclass, field
from typing import Any, TypedDict
from urllib.parse import urlsplit, urlunsplit

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from typing_extensions import Unpack

from ._decoding import bounded_decode, decodable
from ._guard import Guard, make_guard
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
from ._ops import ops
from ._transports import AppTransport, app_of, internal_url, pooled_client

__all__ = [
    "ProxyOptions",
    "ProxyResponse",
    "fetch_with_event",
    "proxy",
    "proxy_request",
    "redact_url",
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


class _ClientWatch:
    """Notices the downstream client leaving, from the request body or ``receive``."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        # While the body is being forwarded, it alone reads ``receive``.
        self.body_pending = False

    def _set_gone(self) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    def start(self) -> None:
        """Watch ``receive`` from now on (once the body is no longer read)."""
        if self._task is None and not self._stopped and not self.gone.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            # Dropping the reference matters: the cancelled task keeps its CancelledError,
            # whose traceback holds ``_run``'s frame and so this object. Were it to hold the
            # task too, every request would leave a reference cycle (the request, its
            # scope, the server's cycle...) for the garbage collector to find.
            task.cancel()

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
        decode: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.status_code = upstream.status_code
        self.background = None
        self.media_type = None
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        # Relayed as it came, unless the upstream compressed unasked (``_decoding.py``).
        raw = upstream.aiter_raw()
        self.body_iterator = raw if decode is None else bounded_decode(raw, decode)
        self._watch = watch
        self._client = client
        # Whether the whole upstream body has arrived (the aiohttp transport knows), so
        # the last chunk can be sent as the last (``more_body=False``) and a body that
        # came whole with the headers needs no pump task.
        arrived = getattr(upstream.stream, "arrived", None)
        self._arrived: Callable[[], bool] | None = arrived if decode is None else None

    async def _pump(self, send: Send) -> None:
        arrived = self._arrived
        ended = False
        try:
            async for chunk in self.body_iterator:
                if chunk and not ended:
                    ended = arrived is not None and arrived()
                    message = {"type": "http.response.body", "body": chunk, "more_body": not ended}
                    await send(message)
        except Exception:
            if self._client is None or not self._client.is_closed:
                raise
            # The server is shutting down and closed the pool: end the body cleanly.
        if not ended:
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
            if self._arrived is not None and self._arrived():
                await self._pump(send)  # nothing left to wait for: no task, no watch needed
                return
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


@dataclass(frozen=True)
class ProxyOptions:
    """What ``proxy``, ``proxy_request`` and ``fetch_with_event`` share (h3's ``ProxyOptions``).

    Built from their keyword arguments; frozen, so one value can be reused.

    * ``headers``: added last, win over everything; a ``None`` value removes a header.
    * ``fetch_options``: ``method``, ``headers``, ``body`` (or ``content``/``json``/
      ``data``/``files``), ``params``, ``redirect`` (``"manual"``/``"follow"``) or
      ``follow_redirects``, ``timeout``, ``extensions``.
    * ``cookie_domain_rewrite``/``cookie_path_rewrite``: a string for every value or a
      map by current value (``"*"`` any); ``""`` removes the attribute.
    * ``location_rewrite``: ``True`` moves ``Location``/``Refresh`` on the target origin
      to the proxy (``public_origin``, else a relative URL unless the request came
      straight to the server's own address); a map rewrites by prefix; ``False`` keeps.
    * ``on_response(request, upstream)``: sync or async, sees the ``httpx.Response``.
    * ``timeout``: seconds to wait for the response headers (then 504); never cuts a body.
    * ``propagate_abort_error``: raise ``ClientDisconnect`` instead of returning 499.
    * ``client``: your own ``httpx.AsyncClient`` instead of the pooled one.
    * ``allow_hosts``/``deny_private``: the SSRF guard (pooled client only).
    * ``public_origin``: ``scheme://host[:port]`` the proxy is reached at, for rewrites.
    """

    headers: HeaderInput | None = None
    fetch_options: Mapping[str, Any] = field(default_factory=dict)
    cookie_domain_rewrite: str | Mapping[str, str] | None = None
    cookie_path_rewrite: str | Mapping[str, str] | None = None
    location_rewrite: bool | Mapping[str, str] = True
    on_response: Callable[..., Any] | None = None
    timeout: float | None = None
    propagate_abort_error: bool = False
    client: httpx.AsyncClient | None = None
    allow_hosts: Iterable[str] | str | None = None
    deny_private: bool = False
    public_origin: str | None = None
    _guard: Guard | None = field(init=False, repr=False, compare=False, default=None)
    _has_body: bool = field(init=False, repr=False, compare=False, default=False)
    _request_kwargs: Mapping[str, Any] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        unknown = set(self.fetch_options) - _FETCH_OPTIONS
        if unknown:
            raise TypeError(f"unknown fetch_options: {', '.join(sorted(unknown))}")
        if self.client is not None and (self.allow_hosts is not None or self.deny_private):
            raise TypeError("allow_hosts/deny_private work with the built-in client, not client=")
        redirect = self.fetch_options.get("redirect")
        if redirect is not None and redirect not in ("manual", "follow"):
            raise ValueError("fetch_options redirect must be 'manual' or 'follow'")
        object.__setattr__(self, "_guard", make_guard(self.allow_hosts, self.deny_private))
        options = self.fetch_options
        object.__setattr__(self, "_has_body", any(key in options for key in _BODY_OPTIONS))
        kwargs = {key: options[key] for key in _REQUEST_KEYS if key in options}
        if "body" in options:
            kwargs["content"] = options["body"]
        object.__setattr__(self, "_request_kwargs", kwargs)

    @property
    def guard(self) -> Guard | None:
        """The SSRF guard these options ask for, or ``None``."""
        return self._guard

    @property
    def has_body(self) -> bool:
        """Whether ``fetch_options`` sets the body."""
        return self._has_body

    def follow(self, default: bool) -> bool:
        options = self.fetch_options
        if "follow_redirects" in options:
            return bool(options["follow_redirects"])
        redirect = options.get("redirect")
        return default if redirect is None else redirect == "follow"

    def method(self, default: str) -> str:
        return str(self.fetch_options.get("method") or default).upper()

    def request_kwargs(self) -> dict[str, Any]:
        """``fetch_options`` as ``httpx.Client.build_request`` keywords (a fresh dict)."""
        return dict(self._request_kwargs)

    def deadline(self) -> float | None:
        timeout = self.timeout
        if timeout is None or timeout <= 0 or not math.isfinite(timeout):
            return None
        return float(timeout)


_REQUEST_KEYS = ("content", "json", "data", "files", "params", "extensions", "timeout")


class _ProxyKeywords(TypedDict, total=False):
    """The keyword options of ``proxy`` and ``proxy_request``: ``ProxyOptions``'s fields.

    Written once here so both signatures stay the same and type-checked; the
    defaults and their meaning are those of ``ProxyOptions``.
    """

    headers: HeaderInput | None
    fetch_options: Mapping[str, Any] | None
    cookie_domain_rewrite: str | Mapping[str, str] | None
    cookie_path_rewrite: str | Mapping[str, str] | None
    location_rewrite: bool | Mapping[str, str]
    on_response: Callable[..., Any] | None
    timeout: float | None
    propagate_abort_error: bool
    client: httpx.AsyncClient | None
    allow_hosts: Iterable[str] | str | None
    deny_private: bool
    public_origin: str | None


def _options_from(keywords: _ProxyKeywords) -> ProxyOptions:
    """The ``ProxyOptions`` of a public function's keyword arguments (unknown ones: TypeError)."""
    if not keywords:
        return _DEFAULT_OPTIONS  # frozen, so one value serves every call without options
    chosen: dict[str, Any] = dict(keywords)
    chosen["fetch_options"] = dict(chosen.get("fetch_options") or {})
    return ProxyOptions(**chosen)


_DEFAULT_OPTIONS = ProxyOptions()


@dataclass(frozen=True)
class _Outgoing:
    """The upstream request to send: method, headers, httpx keywords, redirects."""

    method: str
    headers: dict[str, str]
    kwargs: dict[str, Any]
    follow: bool


def redact_url(url: str) -> str:
    """``url`` fit for a log: no credentials, no query, no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "?…" if parts.query else "", ""))


async def _open(
    request: Request, target: str, outgoing: _Outgoing, options: ProxyOptions
) -> tuple[httpx.Response, httpx.AsyncClient | None]:
    """Send the upstream request; return its response once the headers are in."""
    if target.startswith("/"):
        kwargs = {k: v for k, v in outgoing.kwargs.items() if k != "timeout"}
        upstream_request = httpx.Request(
            outgoing.method, internal_url(request, target), headers=outgoing.headers, **kwargs
        )
        transport = AppTransport(app_of(request), request.scope)
        return await transport.handle_async_request(upstream_request), None
    client = options.client
    if client is None:
        pooled = pooled_client(request.scope.get("app"), options.guard)
        if not outgoing.follow:  # the common case, on a shorter path (``PooledClient``)
            built = pooled.build_direct(outgoing.method, target, outgoing.headers, outgoing.kwargs)
            return await pooled.send_direct(built), pooled
        client = pooled
    upstream_request = client.build_request(
        outgoing.method, target, headers=outgoing.headers, **outgoing.kwargs
    )
    response = await client.send(upstream_request, stream=True, follow_redirects=outgoing.follow)
    return response, client


def _proxy_origin(request: Request, options: ProxyOptions) -> str:
    """Where rewritten locations point: ``public_origin``, the request's origin, or ``""``.

    The request's own origin comes from its ``Host``, which the client chose; it is
    used only when that names the address the server listens on. Otherwise a
    location becomes relative (a browser resolves it against what it asked for),
    so a forged ``Host`` never comes back in an absolute redirect.
    """
    if options.public_origin:
        return options.public_origin.rstrip("/")
    server = request.scope.get("server")
    base = request.base_url
    if server:
        host, port = str(server[0]), server[1]
        host = f"[{host}]" if ":" in host else host
        own = {f"{host}:{port}"} if port is not None else {host}
        if port in (80, 443, None):
            own.add(host)
        if base.netloc.lower() in own:
            return f"{base.scheme}://{base.netloc}"
    return ""


def _content_coding(upstream: httpx.Response) -> tuple[bool, str | None]:
    """(keep ``Content-Encoding``, coding to decode) for this upstream response."""
    coding = upstream.headers.get("content-encoding", "").strip().lower()
    if coding in ("", "identity"):
        return False, None
    if "accept-encoding" not in upstream.request.headers and decodable(coding):
        return False, coding  # compressed unasked: decode for the client (bounded)
    return True, None


def _response_headers(
    request: Request, target: str, upstream: httpx.Response, options: ProxyOptions, keep: bool
) -> list[tuple[str, str]]:
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.headers.raw]
    headers = filter_response_headers(raw, keep_content_encoding=keep)
    if options.cookie_domain_rewrite is not None or options.cookie_path_rewrite is not None:
        headers = [(k, _rewrite_cookie(v, options) if k == "set-cookie" else v) for k, v in headers]
    rewrite = options.location_rewrite
    internal = target.startswith("/")
    if (
        rewrite is not False
        and (rewrite is not True or not internal)
        and any(k == "location" or k == "refresh" for k, _ in headers)
    ):
        headers = rewrite_location_headers(
            headers,
            rewrite,
            None if internal else origin_of(target),
            _proxy_origin(request, options),
        )
    return headers


def _rewrite_cookie(cookie: str, options: ProxyOptions) -> str:
    if options.cookie_domain_rewrite is not None:
        cookie = rewrite_cookie(cookie, options.cookie_domain_rewrite, "domain")
    if options.cookie_path_rewrite is not None:
        cookie = rewrite_cookie(cookie, options.cookie_path_rewrite, "path")
    return cookie


async def _headers_or_failure(
    sending: asyncio.Task[tuple[httpx.Response, httpx.AsyncClient | None]],
    watch: _ClientWatch,
    target: str,
    options: ProxyOptions,
) -> Response | None:
    """Wait for the upstream's headers; a failure response (499/502/504) if they never come."""
    try:
        waiting: set[asyncio.Future[Any]] = {sending, watch.gone}
        done, _ = await asyncio.wait(
            waiting, timeout=options.deadline(), return_when=asyncio.FIRST_COMPLETED
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
            return _client_gone(options.propagate_abort_error)
        return PlainTextResponse("Gateway Timeout", status_code=504)
    exc = sending.exception()
    if exc is None:
        return None
    watch.stop()
    if isinstance(exc, ClientDisconnect) or watch.gone.done():
        return _client_gone(options.propagate_abort_error)
    logger.warning("h3_fastapi: proxy to %s failed: %s", redact_url(target), _describe(exc, target))
    return PlainTextResponse("Bad Gateway", status_code=502)


def _describe(exc: BaseException, target: str) -> str:
    """The exception's type and message, with the target URL in it redacted."""
    text = str(exc).replace(target, redact_url(target))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@ops.observe_proxy  # metrics and span per proxied request, when enabled (_ops.py)
async def _forward(
    request: Request, target: str, outgoing: _Outgoing, watch: _ClientWatch, options: ProxyOptions
) -> Response:
    sending = asyncio.get_running_loop().create_task(_open(request, target, outgoing, options))
    failure = await _headers_or_failure(sending, watch, target, options)
    if failure is not None:
        return failure
    upstream, used_client = sending.result()
    if not watch.body_pending:  # (a full-duplex transport may still be uploading)
        watch.start()
    try:
        keep, decode = _content_coding(upstream)
        response_headers = _response_headers(request, target, upstream, options, keep)
        if options.on_response is not None:
            await call_maybe_async(options.on_response, request, upstream)
    except BaseException:
        watch.stop()
        await upstream.aclose()
        raise
    return ProxyResponse(upstream, response_headers, watch, used_client, decode)


def _client_gone(propagate: bool) -> Response:
    if propagate:
        raise ClientDisconnect()
    # Never delivered: the client has left (nginx's 499 Client Closed Request).
    return Response(status_code=499)


# --- public API ------------------------------------------------------------------------


async def proxy(request: Request, target: str, **keywords: Unpack[_ProxyKeywords]) -> Response:
    """Send a request to ``target`` and return its response, streaming the body.

    Unlike ``proxy_request`` nothing of the incoming request is forwarded but
    what ``headers`` and ``fetch_options`` say; the method is ``GET`` by
    default. A ``target`` starting with ``/`` is served in-process by the same
    app. The options are described on ``ProxyOptions``.

    Responses: the upstream status and filtered headers (hop-by-hop, framing
    and ``Connection``-named ones dropped); each ``Set-Cookie`` kept and
    rewritten; ``Location``/``Refresh`` on the target origin moved to the
    proxy. Redirects are relayed, not followed.

    Failures: unreachable upstream -> 502 ``Bad Gateway`` (no detail);
    no response headers within ``timeout`` seconds -> 504 (a body that
    streams slowly afterwards is never cut); client gone -> the upstream is
    cancelled at once (``propagate_abort_error=True`` raises
    ``ClientDisconnect`` instead of returning an undeliverable 499).
    """
    options = _options_from(keywords)
    merged = merge_headers({}, options.fetch_options.get("headers"), options.headers)
    if options.has_body:
        merged.pop("content-length", None)
    watch = _ClientWatch(request)
    if not options.has_body:
        watch.start()  # else the body may be read from the request: watch after the headers
    outgoing = _Outgoing(
        options.method("GET"), merged, options.request_kwargs(), options.follow(False)
    )
    return await _forward(request, target, outgoing, watch, options)


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
    **keywords: Unpack[_ProxyKeywords],
) -> Response:
    """Forward the incoming request (method, filtered headers, streamed body) to ``target``.

    The incoming headers pass ``get_proxy_request_headers`` (``forward_headers``
    forces through ``host``, ``accept-encoding`` or ``expect``; ``filter_headers``
    drops more and always wins). ``xfwd=True`` appends the client address to
    ``x-forwarded-for`` and overwrites ``x-forwarded-proto/host/port``;
    ``fetch_options["headers"]`` then ``headers`` are applied last and win
    (a ``None`` value removes a header). The body is streamed for every method
    but ``GET``/``HEAD``. ``Cookie`` and ``Authorization`` are forwarded: filter
    them for upstreams you do not trust. Other options as in ``proxy``
    (see ``ProxyOptions``).
    """
    options = _options_from(keywords)
    method = options.method(request.method)
    forwarded = get_proxy_request_headers(
        request,
        host=target.startswith("/"),
        forward_headers=forward_headers,
        filter_headers=filter_headers,
    )
    if xfwd:
        forwarded = x_forwarded(forwarded, request)
    merged = merge_headers(forwarded, options.fetch_options.get("headers"), options.headers)
    watch = _ClientWatch(request)
    kwargs = options.request_kwargs()
    has_body = _has_body(request)
    if options.has_body or method in ("GET", "HEAD") or not has_body:
        if options.has_body or has_body:
            merged.pop("content-length", None)
        watch.start()
    else:
        kwargs["content"] = watch.body()
    outgoing = _Outgoing(method, merged, kwargs, options.follow(False))
    return await _forward(request, target, outgoing, watch, options)


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
    options = ProxyOptions(
        client=init.pop("client", None),
        allow_hosts=init.pop("allow_hosts", None),
        deny_private=bool(init.pop("deny_private", False)),
        fetch_options=init,
    )
    internal = url.startswith("/")
    base = get_proxy_request_headers(request, host=True) if internal else {}
    headers = merge_headers(base, options.fetch_options.get("headers"))
    if internal and options.has_body:
        headers.pop("content-length", None)
    outgoing = _Outgoing(
        options.method("GET"), headers, options.request_kwargs(), options.follow(not internal)
    )
    response, _ = await _open(request, url, outgoing, options)
    if not stream:
        try:
            await response.aread()
        finally:
            await response.aclose()
    return response
