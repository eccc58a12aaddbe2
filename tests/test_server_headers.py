"""One ``Date`` and one ``Server`` per response, on every server people run.

A real upstream sends its own ``Date``/``Server``; ``tests/apps/server_headers_app.py``
proxies it and has a plain route. Each server runs in a child process, configured
as docs/proxy.md tells users to.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.responses import PlainTextResponse

from h3_fastapi import serve
from tests.conftest import ROOT, LiveServer, free_port, need
from tests.processes import ChildProcess

APP = "tests.apps.server_headers_app:app"
UPSTREAM_DATE = "Tue, 01 Jan 2030 00:00:00 GMT"
UPSTREAM_SERVER = "upstream/1.0"

# Every server people run, each in a child process: the server-matrix tier.
pytestmark = pytest.mark.matrix


def _command(name: str, port: int, tmp: Path) -> list[str]:
    py = sys.executable
    if name == "serve":
        return [py, "-m", "tests.apps.server_headers_app", str(port)]
    if name == "uvicorn-cli":
        return [py, "-m", "uvicorn", APP, "--port", str(port), "--log-level", "warning",
                "--no-server-header", "--no-date-header"]  # fmt: skip
    if name == "hypercorn":
        config = tmp / "hypercorn.toml"
        config.write_text("include_server_header = false\ninclude_date_header = false\n")
        return [py, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}",
                "--config", str(config)]  # fmt: skip
    if name == "granian":
        return [py, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--log-level", "warning", APP]  # fmt: skip
    raise ValueError(name)


# What a plain route (no upstream) gets on each server, as the docs say.
PLAIN_SERVER = {
    "serve": ["uvicorn"],  # serve() adds its own where the response has none
    "uvicorn-cli": [],  # the flags turn uvicorn's own off everywhere
    "hypercorn": [],  # so does the config file
    "granian": ["granian"],  # granian only adds what is missing
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    app = FastAPI()

    @app.get("/hello")
    def hello() -> PlainTextResponse:
        headers = {"date": UPSTREAM_DATE, "server": UPSTREAM_SERVER}
        return PlainTextResponse("hello", headers=headers)

    server = LiveServer(app, server_header=False, date_header=False).start()
    yield server.url
    server.stop()


@pytest.fixture(params=list(PLAIN_SERVER))
def proxy_url(
    request: pytest.FixtureRequest, upstream: str, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    name: str = request.param
    if name in ("hypercorn", "granian"):
        need(importlib.util.find_spec(name) is not None, f"{name} is not installed")
    port = free_port()
    env = {"PYTHONPATH": str(ROOT), "H3_TEST_UPSTREAM": upstream}
    with ChildProcess(_command(name, port, tmp_path), env=env, name=name) as server:
        server.wait_port(port, timeout=30)
        yield name, f"http://127.0.0.1:{port}"


def _get(url: str) -> httpx.Response:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return response


def test_proxied_response_carries_the_upstreams_date_and_server_once(
    proxy_url: tuple[str, str],
) -> None:
    name, url = proxy_url
    response = _get(url + "/proxied")
    assert response.text == "hello"
    assert response.headers.get_list("date") == [UPSTREAM_DATE], name
    assert response.headers.get_list("server") == [UPSTREAM_SERVER], name


def test_plain_route_gets_the_servers_documented_defaults(proxy_url: tuple[str, str]) -> None:
    name, url = proxy_url
    response = _get(url + "/plain")
    assert response.headers.get_list("server") == PLAIN_SERVER[name]
    dates = response.headers.get_list("date")
    if PLAIN_SERVER[name]:
        assert len(dates) == 1
        sent = parsedate_to_datetime(dates[0]).timestamp()
        assert abs(sent - time.time()) < 60  # the current time, not the upstream's
    else:
        assert dates == []


async def test_serve_options_turn_the_defaults_off() -> None:
    """``serve(app, server_header=False, date_header=False)`` adds neither."""
    from tests.apps.server_headers_app import app

    server = await serve(
        app, port=0, log_level="warning", server_header=False, date_header=False
    ).ready()
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(server.url + "plain")
    finally:
        await server.close()
    assert response.status_code == 200
    assert response.headers.get_list("date") == []
    assert response.headers.get_list("server") == []
