"""Proxy hardening: SSRF guard on every host form, linear header rewrites, bounded
decompression, redacted logs, RFC 6265 cookie attributes, safe path joins, and
locations that never echo a client-chosen Host.

Real upstreams and proxies on 127.0.0.1 (uvicorn in a thread), real httpx clients.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import Response, StreamingResponse

from h3_fastapi import ProxyOptions, fetch_with_event, join_proxy_path, proxy, proxy_request
from h3_fastapi._guard import make_guard
from h3_fastapi._headers import rewrite_cookie, rewrite_location_headers
from tests.apps.proxy_app import make_upstream
from tests.conftest import ROOT, LiveServer

MIB = 1024 * 1024
TRANSPORT_ENV = "H3_PROXY_TRANSPORT"


@pytest.fixture(params=["aiohttp", "httpcore"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TRANSPORT_ENV, str(request.param))
    return str(request.param)


@pytest.fixture
def upstream(live_server: Callable[..., LiveServer]) -> LiveServer:
    app, _ = make_upstream()
    return live_server(app)


def proxy_app(target: Callable[[Request], str], **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/go")
    async def go(request: Request) -> Response:
        return await proxy_request(request, target(request), **options)

    return app


# --- 1. SSRF guard: every host form, on the address actually connected to ---------------

LOOPBACK_FORMS = ["2130706433", "127.1", "0x7f.1", "0177.0.0.1", "0x7f000001", "0", "[::1]"]


@pytest.mark.slow  # every host form on both transports, seconds of teardown
async def test_numeric_host_forms_are_refused(
    transport: str, live_server: Callable[..., LiveServer], upstream: LiveServer
) -> None:
    port = upstream.port
    async with httpx.AsyncClient() as client:
        for form in LOOPBACK_FORMS:
            for options in ({"deny_private": True}, {"allow_hosts": ["example.com"]}):
                server = live_server(
                    proxy_app(lambda r, form=form: f"http://{form}:{port}/echo", **options)
                )
                response = await client.get(server.url + "/go")
                assert response.status_code == 502, (form, options, response.text[:80])
                assert response.text == "Bad Gateway"
        # The same forms do reach the upstream when the network is allowed.
        allowed = live_server(
            proxy_app(
                lambda r: f"http://0x7f.1:{port}/echo",
                deny_private=True,
                allow_hosts=["127.0.0.0/8"],
            )
        )
        assert (await client.get(allowed.url + "/go")).status_code == 200


async def test_numeric_host_forms_are_refused_after_redirects(
    transport: str, live_server: Callable[..., LiveServer], upstream: LiveServer
) -> None:
    port = upstream.port
    app = FastAPI()

    @app.get("/f")
    async def follow(request: Request) -> dict[str, Any]:
        refused = []
        for form in LOOPBACK_FORMS:
            try:
                await fetch_with_event(
                    request,
                    f"http://localhost:{port}/status/302?to=http://{form}:{port}/echo",
                    allow_hosts=["localhost"],
                )
            except httpx.TransportError:
                refused.append(form)
        return {"refused": refused}

    server = live_server(app)
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(server.url + "/f")).json() == {"refused": LOOPBACK_FORMS}


def test_ipv6_forms_embedding_private_ipv4_are_refused() -> None:
    guard = make_guard(None, deny_private=True)
    assert guard is not None
    for address in (
        "::ffff:127.0.0.1",
        "::7f00:1",  # IPv4-compatible
        "64:ff9b::7f00:1",  # NAT64
        "64:ff9b::a9fe:a9fe",  # NAT64 to 169.254.169.254
        "2002:7f00:1::1",  # 6to4
        "2002:a00:1::",  # 6to4 to 10.0.0.1
    ):
        assert guard.address_refusal("h", address) is not None, address
    for address in ("64:ff9b::808:808", "2002:808:808::1", "8.8.8.8"):
        assert guard.address_refusal("h", address) is None, address
    allowed = make_guard(["127.0.0.0/8"], deny_private=True)
    assert allowed is not None
    assert allowed.address_refusal("h", "64:ff9b::7f00:1") is None  # unless allowed


def test_aiohttp_floor_has_the_socket_factory() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '"aiohttp>=3.12"' in text  # TCPConnector(socket_factory=) is where the guard sits


# --- 2. header rewrites are linear and capped -----------------------------------------------


def timed(value: str) -> float:
    start = time.perf_counter()
    rewrite_location_headers([("refresh", value)], True, "http://up.test", "http://proxy.test")
    return time.perf_counter() - start


def test_refresh_rewrite_is_linear() -> None:
    up, me = "http://up.test", "http://proxy.test"
    for n in (8_000, 30_000):
        assert timed("0; url=a" + " " * n + "x") < 0.05
        assert timed("1;" * n + " url=x") < 0.05
    assert rewrite_location_headers(
        [("refresh", '5 ;  URL = "http://up.test/n?x=1"  ')], True, up, me
    ) == [("refresh", '5 ;  URL = "http://proxy.test/n?x=1"  ')]


# --- 9. Set-Cookie attributes as RFC 6265 reads them ----------------------------------------


def test_cookie_attributes_with_spaces_are_rewritten() -> None:
    cookie = "sid=1; Domain =up.test; Path =/api ;HttpOnly"
    domain = rewrite_cookie(cookie, "proxy.test", "domain")
    assert "up.test" not in domain and "Domain=proxy.test" in domain
    assert rewrite_cookie(cookie, "", "domain") == "sid=1; Path =/api ;HttpOnly"
    assert "Path=/" in rewrite_cookie(cookie, {"/api": "/"}, "path")
    assert rewrite_cookie("domain=x; Path=/", "p", "domain") == "domain=x; Path=/"  # a name


HEADER_TEXT = st.text(alphabet=st.sampled_from(" \t;,=.'\"0123456789urlURL/:abx?#"), max_size=3000)


@settings(max_examples=150, deadline=None)
@given(value=HEADER_TEXT, repeat=st.integers(min_value=1, max_value=20))
def test_header_rewriters_are_total_and_fast(value: str, repeat: int) -> None:
    value = value * repeat  # up to 60 kB of adversarial text
    up, me = "http://up.test", ""
    start = time.perf_counter()
    for name in ("location", "refresh"):
        out = rewrite_location_headers([(name, value)], True, up, me)
        assert out[0][0] == name and isinstance(out[0][1], str)
        rewrite_location_headers([(name, value)], {"http://up.test/": "/x/"}, up, me)
    for attribute in ("domain", "path"):
        cookie = rewrite_cookie(value, "p.test", attribute)
        assert isinstance(cookie, str)
        if len(value) <= 8192:
            kept = [
                part.partition("=")[2].strip()
                for part in cookie.split(";")[1:]
                if part.partition("=")[0].strip().lower() == attribute and "=" in part
            ]
            assert all(v == "p.test" for v in kept), cookie
    assert time.perf_counter() - start < 0.5


# --- 3. compressed bodies: relayed as they are, decoded only when bounded -------------------


def gzip_bomb(mib: int) -> bytes:
    """A gzip body that inflates to ``mib`` MiB of zeros (about 1 kB per MiB)."""
    block = bytes(MIB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    middle = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    last = deflate.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = crc.to_bytes(4, "little") + (mib * MIB % 2**32).to_bytes(4, "little")
    return header + first + middle * (mib - 1) + last + trailer


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.slow  # measures RSS
async def test_decompression_bomb_stays_bounded(
    transport: str, live_server: Callable[..., LiveServer]
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("RSS is read from /proc")
    bomb = gzip_bomb(800)
    assert len(bomb) < 1 * MIB
    upstream = FastAPI()

    @upstream.get("/bomb")
    async def send_bomb() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(bomb), 64 * 1024):
                yield bomb[i : i + 64 * 1024]

        return StreamingResponse(body(), headers={"content-encoding": "gzip"})

    up = live_server(upstream)
    relay = live_server(proxy_app(lambda r: up.url + "/bomb"))
    asked = live_server(proxy_app(lambda r: up.url + "/bomb", forward_headers=["accept-encoding"]))
    async with httpx.AsyncClient(timeout=60) as client:
        # The client accepts gzip and the proxy forwarded that: relayed compressed, as is.
        async with client.stream("GET", asked.url + "/go") as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        assert response.headers["content-encoding"] == "gzip"
        assert raw == bomb
        # Compressed unasked: decoded for the client, in bounded pieces, and cut.
        Path("/proc/self/clear_refs").write_text("5")  # noqa: ASYNC240 (procfs, instant)
        before = vm_kib("VmRSS")
        received = 0
        with pytest.raises(httpx.HTTPError):
            async with client.stream("GET", relay.url + "/go") as response:
                assert "content-encoding" not in response.headers
                async for chunk in response.aiter_raw():
                    received += len(chunk)
        grown_mib = (vm_kib("VmHWM") - before) / 1024
    assert 0 < received < 200 * MIB
    assert grown_mib < 8, f"peak RSS grew {grown_mib:.1f} MiB"


# --- 8. secrets stay out of logs; userinfo works on every transport -------------------------


async def test_failure_logs_redact_credentials_and_query(
    transport: str, live_server: Callable[..., LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = "http://user:hunter2@127.0.0.1:9/x?api_key=topsecret"
    server = live_server(proxy_app(lambda r: secret_url))
    with caplog.at_level(logging.WARNING, logger="h3_fastapi"):
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url + "/go")).status_code == 502
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "127.0.0.1:9/x" in text
    assert "hunter2" not in text and "topsecret" not in text and "user" not in text


async def test_userinfo_works_on_every_transport(
    transport: str, live_server: Callable[..., LiveServer], upstream: LiveServer
) -> None:
    server = live_server(proxy_app(lambda r: f"http://ann:pw@127.0.0.1:{upstream.port}/echo"))
    async with httpx.AsyncClient() as client:
        response = await client.get(server.url + "/go")
    assert response.status_code == 200
    auth = [v for k, v in response.json()["headers"] if k == "authorization"]
    assert auth == ["Basic YW5uOnB3"]


# --- 11. Location never echoes a Host the client chose --------------------------------------


async def test_location_rewrite_ignores_a_forged_host(
    live_server: Callable[..., LiveServer], upstream: LiveServer
) -> None:
    target = f"{upstream.url}/status/302?to={upstream.url}/echo?x=1"
    plain = live_server(proxy_app(lambda r: target))
    public = live_server(proxy_app(lambda r: target, public_origin="https://example.org"))
    async with httpx.AsyncClient() as client:
        forged = await client.get(plain.url + "/go", headers={"host": "evil.test"})
        assert forged.headers["location"] == "/echo?x=1"
        direct = await client.get(plain.url + "/go")
        assert direct.headers["location"] == plain.url + "/echo?x=1"
        configured = await client.get(public.url + "/go", headers={"host": "evil.test"})
        assert configured.headers["location"] == "https://example.org/echo?x=1"


def test_relative_location_never_becomes_protocol_relative() -> None:
    headers = [("location", "http://up.test//evil.test/x")]
    out = rewrite_location_headers(headers, True, "http://up.test", "")
    assert out == [("location", "/.//evil.test/x")]


# --- 10. path joins for gateways -------------------------------------------------------------


def test_join_proxy_path_refuses_dot_segments_in_every_encoding() -> None:
    base = "http://api.test/v2"
    assert join_proxy_path(base, "users/1", "a=1") == "http://api.test/v2/users/1?a=1"
    assert join_proxy_path(base + "/", "a b/c?d") == "http://api.test/v2/a%20b/c%3Fd"
    for escape in (
        "..",
        "../x",
        "a/../../x",
        "%2e%2e/x",
        ".%2e/x",
        "%2E./x",
        "..%2fx",
        "..%5cx",
        "a\\..\\x",
        "%252e%252e/x",
        "%2e",
    ):
        with pytest.raises(ValueError):
            join_proxy_path(base, escape)


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"security_{name}", ROOT / "docs" / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_gateway_example_stays_under_its_base_path(
    live_server: Callable[..., LiveServer], upstream: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = load_example("proxy_gateway")
    monkeypatch.setattr(gateway, "API_URL", upstream.url + "/echo")
    server = live_server(gateway.app)
    async with httpx.AsyncClient() as client:
        inside = await client.get(server.url + "/api/inside")
        assert inside.status_code == 200 and inside.json()["path"] == "/echo/inside"
        for escape in ("/api/%2e%2e/status/200", "/api/..%2fstatus/200", "/api/.%2E/status/200"):
            response = await client.get(server.url + escape)
            assert response.status_code == 400, (escape, response.text[:80])


def test_options_are_one_frozen_object() -> None:
    options = ProxyOptions(timeout=2.0, fetch_options={"redirect": "follow"})
    with pytest.raises(AttributeError):
        options.timeout = 3.0  # type: ignore[misc]
    assert options.follow(False) is True
    with pytest.raises(TypeError):
        ProxyOptions(fetch_options={"nope": 1})
    assert callable(proxy) and os.environ.get(TRANSPORT_ENV, "auto") in (
        "auto",
        "aiohttp",
        "httpcore",
    )
