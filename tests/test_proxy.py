"""proxy / proxy_request / get_proxy_request_headers / fetch_with_event: forwarding and errors.

Every test runs a real upstream (``tests/apps/proxy_app.py``) and a real proxy
app on 127.0.0.1 with uvicorn, and talks to the proxy with httpx. Core
behaviour runs on both transports (httpx-aiohttp and httpcore).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from h3_fastapi import fetch_with_event, get_proxy_request_headers, proxy, proxy_request
from h3_fastapi._headers import (
    filter_request_headers,
    filter_response_headers,
    rewrite_cookie,
    rewrite_location_headers,
)
from tests.apps.proxy_app import Signals, make_upstream
from tests.conftest import ROOT, LiveServer, free_port

proxy_module = importlib.import_module("h3_fastapi._transports")  # the package re-exports proxy()

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "REPORT"]


@pytest.fixture(params=["aiohttp", "httpcore"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name = str(request.param)
    if name == "aiohttp" and importlib.util.find_spec("aiohttp") is None:
        pytest.skip("aiohttp is not installed: only the httpcore transport is tested")
    monkeypatch.setenv(proxy_module.TRANSPORT_ENV, name)
    return name


class Upstream:
    def __init__(self, server: LiveServer, signals: Signals) -> None:
        self.server = server
        self.signals = signals
        self.url = server.url


@pytest.fixture
def upstream(live_server: Callable[..., LiveServer]) -> Upstream:
    app, signals = make_upstream()
    return Upstream(live_server(app), signals)


class ProxyServer:
    """A proxy app: ``/p/<path>`` forwards to ``base/<path>`` with ``options``."""

    def __init__(self, server: LiveServer, responses: list[Response]) -> None:
        self.server = server
        self.url = server.url
        self.responses = responses


def serve_proxy(
    live_server: Callable[..., LiveServer],
    base: str,
    *,
    forward: Callable[..., Any] = proxy_request,
    server: dict[str, Any] | None = None,
    **options: Any,
) -> ProxyServer:
    app = FastAPI()
    responses: list[Response] = []

    @app.api_route("/p/{path:path}", methods=ALL_METHODS)
    async def endpoint(request: Request, path: str) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        response: Response = await forward(request, f"{base}/{path}{query}", **options)
        responses.append(response)
        return response

    return ProxyServer(live_server(app, **(server or {})), responses)


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k == name]


async def wait_signal(signals: Signals, name: str, timeout: float = 5.0) -> bool:
    return await asyncio.to_thread(signals[name].wait, timeout)


# --- header rules (pure functions) --------------------------------------------------


def test_request_header_filter_drops_hop_by_hop_and_connection_named() -> None:
    items = [
        ("Host", "proxy.test"),
        ("Accept", "text/html"),
        ("Accept-Encoding", "gzip"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive, X-Secret"),
        ("Keep-Alive", "timeout=5"),
        ("Upgrade", "h2c"),
        ("Expect", "100-continue"),
        ("TE", "trailers"),
        ("Trailer", "x-t"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Connection", "keep-alive"),
        ("X-Secret", "hop"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("X-Multi", "1"),
        ("X-Multi", "2"),
    ]
    assert filter_request_headers(items) == {
        "accept": "text/html",
        "cookie": "a=1; b=2",
        "x-multi": "1, 2",
    }
    assert filter_request_headers(items, host=True)["host"] == "proxy.test"
    forced = filter_request_headers(
        items, forward_headers=["Accept-Encoding", "EXPECT", "connection", "x-secret", "te"]
    )
    assert forced["accept-encoding"] == "gzip" and forced["expect"] == "100-continue"
    assert not {"connection", "x-secret", "te"} & set(forced)
    # filter beats forward, case-insensitively
    both = filter_request_headers(
        items, forward_headers=["accept-encoding"], filter_headers=["ACCEPT-ENCODING", "Cookie"]
    )
    assert "accept-encoding" not in both and "cookie" not in both


def test_response_header_filter_keeps_each_set_cookie() -> None:
    items = [
        ("Content-Length", "3"),
        ("Content-Encoding", "gzip"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "x-hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Connection", "close"),
        ("Upgrade", "h2"),
        ("Trailer", "x"),
        ("TE", "trailers"),
        ("Set-Cookie", "a=1, b"),
        ("Set-Cookie", "c=2"),
        ("X-Kept", "yes"),
    ]
    assert filter_response_headers(items) == [
        ("set-cookie", "a=1, b"),
        ("set-cookie", "c=2"),
        ("x-kept", "yes"),
    ]


def test_cookie_rewrite_maps_and_removal() -> None:
    cookie = "sid=1; Domain=up.test; Path=/api; HttpOnly"
    assert rewrite_cookie(cookie, "proxy.test", "domain") == (
        "sid=1; Domain=proxy.test; Path=/api; HttpOnly"
    )
    assert rewrite_cookie(cookie, {"up.test": "p.test"}, "domain").count("Domain=p.test") == 1
    assert rewrite_cookie(cookie, {"other": "x"}, "domain") == cookie
    assert rewrite_cookie(cookie, {"*": "/"}, "path") == "sid=1; Domain=up.test; Path=/; HttpOnly"
    assert rewrite_cookie(cookie, "", "domain") == "sid=1; Path=/api; HttpOnly"
    assert rewrite_cookie(cookie, {"/api": ""}, "path") == "sid=1; Domain=up.test; HttpOnly"


def test_location_and_refresh_rewrite() -> None:
    up, me = "http://up.test:8080", "https://proxy.test"
    headers = [
        ("location", "http://up.test:8080/a?b=1#c"),
        ("refresh", "5; URL='http://up.test:8080/next'"),
    ]
    assert rewrite_location_headers(headers, True, up, me) == [
        ("location", "https://proxy.test/a?b=1#c"),
        ("refresh", "5; URL='https://proxy.test/next'"),
    ]
    for untouched in ("/relative", "http://third.test/x", "http://up.test/x"):
        assert rewrite_location_headers([("location", untouched)], True, up, me)[0][1] == untouched
    assert rewrite_location_headers([("location", "//up.test:8080/p")], True, up, me) == [
        ("location", "https://proxy.test/p")
    ]
    mapped = rewrite_location_headers(
        [("location", "http://up.test:8080/two/x")], {"http://up.test:8080/two/": "/one/"}, up, me
    )
    assert mapped == [("location", "/one/x")]
    assert rewrite_location_headers(headers, False, up, me) == headers


# --- headers end to end ----------------------------------------------------------------


async def test_request_headers_dropped_and_forwarded(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy_server = serve_proxy(live_server, upstream.url)
    async with httpx.AsyncClient() as client:
        response = await client.get(
            proxy_server.url + "/p/echo",
            headers={
                "accept": "application/json",
                "accept-encoding": "gzip, br",
                "connection": "keep-alive, x-secret",
                "x-secret": "only for the proxy",
                "keep-alive": "timeout=5",
                "te": "trailers",
                "trailer": "x-t",
                "upgrade": "websocket",
                "proxy-authorization": "Basic cHJveHk6cGFzcw==",
                "proxy-connection": "keep-alive",
                "cookie": "sid=1",
                "authorization": "Bearer t",
                "x-custom": "kept",
            },
        )
    assert response.status_code == 200
    echo = response.json()
    names = {k for k, _ in echo["headers"]}
    for dropped in (
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ):
        assert dropped not in names, dropped
    assert "gzip, br" not in header_values(echo, "accept-encoding")
    assert "x-secret" not in ",".join(header_values(echo, "connection"))
    assert header_values(echo, "host") == [upstream.url.removeprefix("http://")]
    assert header_values(echo, "accept") == ["application/json"]
    assert header_values(echo, "cookie") == ["sid=1"]
    assert header_values(echo, "authorization") == ["Bearer t"]
    assert header_values(echo, "x-custom") == ["kept"]
    # content-length travels with a body; transfer-encoding is never copied from the client
    async with httpx.AsyncClient() as client:
        posted = (await client.post(proxy_server.url + "/p/echo/x", content=b"12345")).json()
    assert header_values(posted, "content-length") == ["5"]
    assert header_values(posted, "transfer-encoding") == []


async def test_forward_and_filter_headers(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    forwarding = serve_proxy(
        live_server,
        upstream.url,
        forward_headers=["accept-encoding", "Connection", "x-named"],
        filter_headers=["Cookie"],
        headers={"x-added": "1", "authorization": None},
    )
    async with httpx.AsyncClient() as client:
        response = await client.get(
            forwarding.url + "/p/echo",
            headers={
                "accept-encoding": "identity",
                "connection": "keep-alive, x-named",
                "x-named": "hop",
                "cookie": "sid=1",
                "authorization": "Bearer t",
            },
        )
    echo = response.json()
    assert header_values(echo, "accept-encoding") == ["identity"]  # forced through
    assert header_values(echo, "x-named") == []  # Connection-named: never forced
    assert header_values(echo, "cookie") == []  # filtered
    assert header_values(echo, "x-added") == ["1"]
    assert header_values(echo, "authorization") == []  # None removes

    filtering = serve_proxy(
        live_server,
        upstream.url,
        forward_headers=["accept-encoding"],
        filter_headers=["accept-encoding"],
    )
    async with httpx.AsyncClient() as client:
        response = await client.get(
            filtering.url + "/p/echo", headers={"accept-encoding": "identity"}
        )
    assert header_values(response.json(), "accept-encoding") != ["identity"]  # filter wins


async def test_response_headers_dropped_and_body_decoded(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy_server = serve_proxy(live_server, upstream.url)
    async with httpx.AsyncClient() as client:
        response = await client.get(proxy_server.url + "/p/hop")
    assert response.status_code == 200
    assert response.content == b"decoded body"
    assert response.headers["x-kept"] == "yes"
    assert "content-encoding" not in response.headers
    # What the proxy itself sent (the server adds its own framing on top).
    sent = {k.decode() for k, _ in proxy_server.responses[-1].raw_headers}
    assert sent.isdisjoint(
        {
            "content-encoding",
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-connection",
            "upgrade",
            "trailer",
            "te",
            "x-hop-secret",
        }
    ), sent
    assert "x-kept" in sent and "content-type" in sent


# --- methods, bodies, statuses ------------------------------------------------------------


async def test_methods_query_and_bodies_pass_through(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy_server = serve_proxy(live_server, upstream.url)
    base = proxy_server.url + "/p/echo/x%20y"
    binary = bytes(range(256)) * 64

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(50):
            yield bytes([i]) * 10_000

    streamed = b"".join(bytes([i]) * 10_000 for i in range(50))
    async with httpx.AsyncClient() as client:
        got = (await client.post(base + "?a=1&a=2&q=%C3%A9", json={"k": [1, "é"]})).json()
        assert got["method"] == "POST"
        assert got["path"] == "/echo/x y"
        assert got["query"] == "a=1&a=2&q=%C3%A9"
        assert json.loads(got["body_text"]) == {"k": [1, "é"]}
        assert header_values(got, "content-type") == ["application/json"]

        got = (await client.put(base, content=binary)).json()
        assert (got["method"], got["body_len"]) == ("PUT", len(binary))
        assert got["body_sha256"] == hashlib.sha256(binary).hexdigest()

        got = (await client.post(base, content=chunks())).json()
        assert got["body_len"] == len(streamed)
        assert got["body_sha256"] == hashlib.sha256(streamed).hexdigest()

        propfind = b'<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>'
        got = (await client.request("PROPFIND", base, content=propfind)).json()
        assert (got["method"], got["body_text"]) == ("PROPFIND", propfind.decode())

        for method in ("PATCH", "DELETE", "OPTIONS", "GET"):
            got = (await client.request(method, base)).json()
            assert (got["method"], got["body_len"]) == (method, 0)

        head = await client.head(proxy_server.url + "/p/status/200")
        assert head.status_code == 200 and head.content == b""


async def test_status_passes_through(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy_server = serve_proxy(live_server, upstream.url)
    async with httpx.AsyncClient() as client:
        for code in (200, 201, 204, 302, 304, 404, 418, 500, 503):
            response = await client.get(proxy_server.url + f"/p/status/{code}")
            assert response.status_code == code
            if code not in (204, 304):
                assert response.text == f"status {code}"


async def test_redirect_is_relayed_not_followed(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy_server = serve_proxy(live_server, upstream.url)
    async with httpx.AsyncClient() as client:
        response = await client.get(proxy_server.url + "/p/status/302?to=/echo/followed")
    assert response.status_code == 302
    assert response.headers["location"] == "/echo/followed"
    assert response.text == "status 302"


async def test_location_rewrite_modes(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    default = serve_proxy(live_server, upstream.url)
    mapped = serve_proxy(
        live_server, upstream.url, location_rewrite={upstream.url + "/echo": "/mapped"}
    )
    verbatim = serve_proxy(live_server, upstream.url, location_rewrite=False)
    async with httpx.AsyncClient() as client:
        r = await client.get(default.url + "/p/redirect")
        assert r.headers["location"] == default.url + "/echo?x=1#frag"
        assert r.headers["refresh"] == f"5; url={default.url}/later"
        r = await client.get(default.url + "/p/redirect?kind=relative")
        assert r.headers["location"] == "/echo?x=2"
        r = await client.get(default.url + "/p/redirect?kind=other")
        assert r.headers["location"] == "http://elsewhere.test/x"
        r = await client.get(default.url + "/p/redirect?kind=protocol-relative")
        assert r.headers["location"] == default.url + "/echo"
        r = await client.get(mapped.url + "/p/redirect")
        assert r.headers["location"] == "/mapped?x=1#frag"
        r = await client.get(verbatim.url + "/p/redirect")
        assert r.headers["location"] == upstream.url + "/echo?x=1#frag"


async def test_two_set_cookies_arrive_separately_and_rewritten(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy_server = serve_proxy(
        live_server,
        upstream.url,
        cookie_domain_rewrite={"upstream.test": "proxy.test"},
        cookie_path_rewrite={"/api": "/", "*": ""},
    )
    async with httpx.AsyncClient() as client:
        response = await client.get(proxy_server.url + "/p/cookies")
    assert response.headers.get_list("set-cookie") == [
        "a=1; Domain=proxy.test; Path=/; HttpOnly",
        "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Domain=other.test",
    ]
    removing = serve_proxy(live_server, upstream.url, cookie_domain_rewrite="")
    async with httpx.AsyncClient() as client:
        response = await client.get(removing.url + "/p/cookies")
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 2 and not any("Domain" in c for c in cookies)


async def test_no_cookie_jar_shared_between_users(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy_server = serve_proxy(live_server, upstream.url)
    async with httpx.AsyncClient() as alice, httpx.AsyncClient() as bob:
        await alice.get(proxy_server.url + "/p/cookies")  # upstream sets a=1, b=2
        echo = (await bob.get(proxy_server.url + "/p/echo")).json()
    assert header_values(echo, "cookie") == []


async def test_one_pooled_client_per_app_closed_on_shutdown(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy_server = serve_proxy(live_server, upstream.url)
    async with httpx.AsyncClient() as client:
        ports = {
            (await client.get(proxy_server.url + "/p/echo")).json()["client_port"] for _ in range(5)
        }
    assert len(ports) == 1  # one keep-alive upstream connection, reused
    clients = [c for key, c in proxy_module._clients.items() if key[1] is proxy_server.server.loop]
    assert len(clients) == 1
    proxy_server.server.stop()
    assert clients[0].is_closed
    assert all(key[1] is not proxy_server.server.loop for key in proxy_module._clients)


# --- failures, timeouts, disconnects --------------------------------------------------------


async def test_unreachable_upstream_is_502_without_detail(
    transport: str, live_server: Callable[..., LiveServer]
) -> None:
    port = free_port()
    proxy_server = serve_proxy(live_server, f"http://127.0.0.1:{port}")
    async with httpx.AsyncClient() as client:
        response = await client.get(proxy_server.url + "/p/anything")
    assert response.status_code == 502
    assert response.text == "Bad Gateway"
    assert str(port) not in response.text


@pytest.mark.slow
async def test_timeout_is_504_for_headers_only(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy_server = serve_proxy(live_server, upstream.url, timeout=0.3)
    async with httpx.AsyncClient(timeout=10) as client:
        started = time.monotonic()
        response = await client.get(proxy_server.url + "/p/hang?id=t504")
        assert response.status_code == 504
        assert response.text == "Gateway Timeout"
        assert time.monotonic() - started < 5
        # the abandoned upstream request is cancelled too
        assert await wait_signal(upstream.signals, "t504")
        # a body slower than the timeout after fast headers is not cut
        response = await client.get(proxy_server.url + "/p/slow-body?pause=0.6")
    assert response.status_code == 200
    assert response.text == "first,second"


async def test_client_leaving_cancels_streaming_upstream(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    """A proxied SSE stream stops upstream as soon as the browser leaves."""
    proxy_server = serve_proxy(live_server, upstream.url)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", proxy_server.url + "/p/sse?id=sse1") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async for chunk in response.aiter_bytes():
            assert chunk.startswith(b"data: first")
            break
    # The upstream stream is idle: only a cancelled upstream request ends it.
    assert await wait_signal(upstream.signals, "sse1")


async def test_client_leaving_before_headers_cancels_upstream(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    proxy_server = serve_proxy(live_server, upstream.url)
    async with httpx.AsyncClient(timeout=10) as client:
        request = asyncio.ensure_future(client.get(proxy_server.url + "/p/hang?id=early"))
        assert await wait_signal(upstream.signals, "early:request")
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    assert await wait_signal(upstream.signals, "early")


async def test_propagate_abort_error_raises_client_disconnect(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    raised = asyncio.Event()
    loop = asyncio.get_running_loop()
    app = FastAPI()

    @app.get("/p")
    async def endpoint(request: Request) -> Response:
        try:
            return await proxy(request, upstream.url + "/hang?id=abort", propagate_abort_error=True)
        except ClientDisconnect:
            loop.call_soon_threadsafe(raised.set)
            raise

    server = live_server(app)
    async with httpx.AsyncClient(timeout=10) as client:
        request = asyncio.ensure_future(client.get(server.url + "/p"))
        assert await wait_signal(upstream.signals, "abort:request")
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    await asyncio.wait_for(raised.wait(), 5)
    assert await wait_signal(upstream.signals, "abort")


# --- proxy(), options, on_response ---------------------------------------------------------


async def test_proxy_sends_only_given_headers_and_options(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    seen: list[tuple[int, str]] = []

    async def on_response(request: Request, response: httpx.Response) -> None:
        seen.append((response.status_code, request.url.path))

    app = FastAPI()

    @app.post("/p")
    async def endpoint(request: Request) -> Response:
        return await proxy(
            request,
            upstream.url + "/echo/opt",
            headers={"x-a": "1"},
            fetch_options={"method": "PUT", "body": b"given", "params": {"q": "v"}},
            on_response=on_response,
        )

    server = live_server(app)
    async with httpx.AsyncClient() as client:
        response = await client.post(
            server.url + "/p", content=b"ignored", headers={"cookie": "sid=1"}
        )
    echo = response.json()
    assert (echo["method"], echo["body_text"], echo["query"]) == ("PUT", "given", "q=v")
    assert header_values(echo, "x-a") == ["1"]
    assert header_values(echo, "cookie") == []
    assert seen == [(200, "/p")]


async def test_xfwd_appends_and_overwrites(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    # (uvicorn's own proxy_headers would take the spoofed x-forwarded-for as the client)
    proxy_server = serve_proxy(
        live_server, upstream.url, xfwd=True, server={"proxy_headers": False}
    )
    explicit = serve_proxy(
        live_server,
        upstream.url,
        xfwd=True,
        headers={"x-forwarded-proto": "https"},
        server={"proxy_headers": False},
    )
    spoofed = {
        "x-forwarded-for": "203.0.113.9",
        "x-forwarded-host": "evil.test",
        "x-forwarded-proto": "gopher",
        "x-forwarded-port": "1",
    }
    async with httpx.AsyncClient() as client:
        echo = (await client.get(proxy_server.url + "/p/echo", headers=spoofed)).json()
        overridden = (await client.get(explicit.url + "/p/echo", headers=spoofed)).json()
    assert header_values(echo, "x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]
    assert header_values(echo, "x-forwarded-host") == [proxy_server.url.removeprefix("http://")]
    assert header_values(echo, "x-forwarded-proto") == ["http"]
    assert header_values(echo, "x-forwarded-port") == [str(proxy_server.server.port)]
    assert header_values(overridden, "x-forwarded-proto") == ["https"]


async def test_get_proxy_request_headers(live_server: Callable[..., LiveServer]) -> None:
    app = FastAPI()

    @app.get("/h")
    async def endpoint(request: Request) -> dict[str, Any]:
        return {
            "plain": get_proxy_request_headers(request),
            "host": get_proxy_request_headers(request, host=True),
            "filtered": get_proxy_request_headers(request, filter_headers=["X-A"]),
        }

    server = live_server(app)
    async with httpx.AsyncClient() as client:
        got = (await client.get(server.url + "/h", headers={"x-a": "1", "te": "x"})).json()
    assert got["plain"]["x-a"] == "1" and "host" not in got["plain"] and "te" not in got["plain"]
    assert got["host"]["host"] == server.url.removeprefix("http://")
    assert "x-a" not in got["filtered"]


# --- in-process targets and fetch_with_event -------------------------------------------------


def internal_app(signals: Signals) -> FastAPI:
    app = FastAPI()

    @app.api_route("/internal/echo", methods=["GET", "POST"])
    async def echo(request: Request) -> dict[str, Any]:
        return {
            "method": request.method,
            "host": request.headers.get("host"),
            "cookie": request.headers.get("cookie"),
            "body": (await request.body()).decode(),
            "client": request.client.host if request.client else None,
        }

    @app.get("/evil.test/x")
    async def local() -> PlainTextResponse:
        return PlainTextResponse("stayed on the app")

    @app.get("/internal/stream")
    async def stream() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"data: one\n\n"
                await asyncio.Event().wait()
            finally:
                signals["internal-stream"].set()

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.api_route("/via/{rest:path}", methods=["GET", "POST"])
    async def via(request: Request, rest: str) -> Response:
        return await proxy_request(request, request.query_params["to"])

    return app


async def test_internal_target_is_served_in_process(live_server: Callable[..., LiveServer]) -> None:
    signals = Signals()
    server = live_server(internal_app(signals))
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            server.url + "/via/x",
            params={"to": "/internal/echo"},
            content=b"payload",
            headers={"cookie": "sid=1"},
        )
        got = response.json()
        assert got == {
            "method": "POST",
            "host": server.url.removeprefix("http://"),
            "cookie": "sid=1",
            "body": "payload",
            "client": "127.0.0.1",
        }
        for sneaky in ("//evil.test/x", "/\\evil.test/x", "/\t/evil.test/x", "/\r\n//evil.test/x"):
            response = await client.get(server.url + "/via/x", params={"to": sneaky})
            assert (response.status_code, response.text) == (200, "stayed on the app"), sneaky
        # An endless in-process stream is relayed as it comes and cancelled when we leave.
        async with client.stream(
            "GET", server.url + "/via/x", params={"to": "/internal/stream"}
        ) as streamed:
            async for chunk in streamed.aiter_bytes():
                assert chunk == b"data: one\n\n"
                break
    assert await wait_signal(signals, "internal-stream")


async def test_fetch_with_event(live_server: Callable[..., LiveServer], upstream: Upstream) -> None:
    app = internal_app(Signals())

    @app.get("/fetch")
    async def fetch(request: Request) -> dict[str, Any]:
        internal = await fetch_with_event(request, "/internal/echo")
        external = await fetch_with_event(
            request, upstream.url + "/echo/ext", method="POST", json=[1]
        )
        redirected = await fetch_with_event(request, upstream.url + "/status/302?to=/echo/r")
        manual = await fetch_with_event(request, upstream.url + "/status/302", redirect="manual")
        assert isinstance(internal, httpx.Response) and isinstance(external, httpx.Response)
        return {
            "internal": internal.json(),
            "external": external.json(),
            "redirected": redirected.json()["path"],
            "manual": manual.status_code,
        }

    server = live_server(app)
    async with httpx.AsyncClient() as client:
        got = (await client.get(server.url + "/fetch", headers={"cookie": "sid=1"})).json()
    assert got["internal"]["cookie"] == "sid=1"  # in-process: the request's headers go along
    assert got["internal"]["host"] == server.url.removeprefix("http://")
    assert header_values(got["external"], "cookie") == []  # external: never
    assert json.loads(got["external"]["body_text"]) == [1]
    assert got["redirected"] == "/echo/r"  # followed, like fetch
    assert got["manual"] == 302


# --- SSRF guard --------------------------------------------------------------------------------


async def test_guard_refuses_private_addresses_after_resolution(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    port = upstream.server.port
    cases = {
        # (target host, options) -> status
        ("127.0.0.1", "deny"): 502,
        ("localhost", "deny"): 502,  # a name that resolves to loopback is refused too
        ("127.0.0.1", "allow-net"): 200,
        ("localhost", "allow-name"): 200,
        ("127.0.0.1", "allow-name"): 502,
    }
    options: dict[str, dict[str, Any]] = {
        "deny": {"deny_private": True},
        "allow-net": {"deny_private": True, "allow_hosts": ["127.0.0.0/8", "::1"]},
        "allow-name": {"allow_hosts": ["localhost"]},
    }
    async with httpx.AsyncClient() as client:
        for (host, kind), status in cases.items():
            proxy_server = serve_proxy(live_server, f"http://{host}:{port}", **options[kind])
            response = await client.get(proxy_server.url + "/p/echo")
            assert response.status_code == status, (host, kind)
            if status == 502:
                assert response.text == "Bad Gateway"


async def test_guard_applies_to_followed_redirects(
    transport: str, live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    """Allowed by name, but a redirect to a refused address is not followed."""
    port = upstream.server.port
    app = FastAPI()

    @app.get("/f")
    async def endpoint(request: Request) -> dict[str, Any]:
        try:
            await fetch_with_event(
                request,
                f"http://localhost:{port}/status/302?to=http://127.0.0.1:{port}/echo",
                allow_hosts=["localhost"],
            )
        except httpx.TransportError:
            return {"refused": True}
        return {"refused": False}

    server = live_server(app)
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url + "/f")).json() == {"refused": True}


# --- docs examples and the seed ---------------------------------------------------------------


def example(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` (the docs examples are not a package)."""
    module_name = f"docs_examples_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(
        module_name, ROOT / "docs" / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


async def test_seed_example_proxies_html_page(
    live_server: Callable[..., LiveServer], upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h3's WebSocket seed: ``/`` proxies a page (here from a local upstream)."""
    from example_app import websocket_seed

    monkeypatch.setattr(websocket_seed, "demo_url", upstream.url + "/page")
    server = live_server(websocket_seed.app)
    async with httpx.AsyncClient() as client:
        response = await client.get(server.url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == "<!doctype html><h1>upstream page</h1>"


async def test_docs_example_basic(
    live_server: Callable[..., LiveServer], upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_basic = example("proxy_basic")
    monkeypatch.setattr(proxy_basic, "PAGE_URL", upstream.url + "/page")
    server = live_server(proxy_basic.app)
    async with httpx.AsyncClient() as client:
        response = await client.get(server.url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>upstream page</h1>" in response.text


async def test_docs_example_gateway(
    live_server: Callable[..., LiveServer], upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_gateway = example("proxy_gateway")
    monkeypatch.setattr(proxy_gateway, "API_URL", upstream.url)
    server = live_server(proxy_gateway.app, proxy_headers=False)
    async with httpx.AsyncClient(timeout=10) as client:
        echo = (
            await client.post(
                server.url + "/api/echo/x?y=1",
                content=b"body",
                headers={"cookie": "sid=1", "x-forwarded-for": "198.51.100.1"},
            )
        ).json()
        cookies = (await client.get(server.url + "/api/cookies")).headers.get_list("set-cookie")
        # Short only for the upstream that hangs: on a loaded machine the first
        # requests took over 0.3 s and got the 504 too.
        monkeypatch.setattr(proxy_gateway, "TIMEOUT", 0.3)
        slow = await client.get(server.url + "/api/hang?id=docs")
    assert (echo["path"], echo["query"], echo["body_text"]) == ("/echo/x", "y=1", "body")
    assert header_values(echo, "cookie") == []
    assert header_values(echo, "x-forwarded-for") == ["198.51.100.1, 127.0.0.1"]
    assert cookies == [
        "a=1; Path=/api; HttpOnly",
        "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/api/",
    ]
    assert slow.status_code == 504


async def test_docs_example_fetch(
    live_server: Callable[..., LiveServer], upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_fetch = example("proxy_fetch")
    monkeypatch.setattr(proxy_fetch, "API_URL", upstream.url)
    server = live_server(proxy_fetch.app)
    async with httpx.AsyncClient() as client:
        got = (await client.get(server.url + "/dashboard", headers={"cookie": "sid=7"})).json()
    assert got == {"me": {"cookie": "sid=7"}, "status": 200, "upstream_method": "GET"}


async def test_docs_example_guard(
    live_server: Callable[..., LiveServer], upstream: Upstream
) -> None:
    server = live_server(example("proxy_guard").app)
    port = upstream.server.port
    async with httpx.AsyncClient() as client:
        for url in (f"http://127.0.0.1:{port}/page", f"http://localhost:{port}/page"):
            response = await client.get(server.url + "/preview", params={"url": url})
            assert (response.status_code, response.text) == (502, "Bad Gateway")
        response = await client.get(server.url + "/preview", params={"url": "file:///etc/passwd"})
        assert response.status_code == 400
