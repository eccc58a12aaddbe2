"""The docs site: how it is built, and every example it shows, run against real servers.

Three parts:

1. Inspection: every fenced ``python`` block in ``docs/*.md`` comes from a file through
   the ``--8<--`` snippet syntax, every snippet it names exists, the README quick start
   is ``docs/examples/getting_started.py`` verbatim, the Chinese pages are clean UTF-8.
2. Build: ``mkdocs build --strict`` into a temporary directory passes and writes the
   ``zh`` pages.
3. Behaviour: each ``docs/examples/*.py`` imports, and the ones the guides in this
   repository's WebSockets/testing/getting-started/migration pages show are served by
   a real uvicorn and driven by real clients (``websockets``, ``httpx``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from h3_fastapi.pubsub import get_default_pubsub
from tests.conftest import ROOT
from tests.recorders import LogWatcher, eventually
from tests.wire import handshake, server_close_code

DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
TIMEOUT = 5

# ---------------------------------------------------------------- helpers


_loaded: dict[Path, ModuleType] = {}


def example(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` once (the docs examples are not a package)."""
    path = EXAMPLES / f"{name}.py"
    if str(EXAMPLES) not in sys.path:  # examples import each other, as they would in a project
        sys.path.append(str(EXAMPLES))
    if path not in _loaded:
        spec = importlib.util.spec_from_file_location(f"docs_examples_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _loaded[path] = module
    return _loaded[path]


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def recv_json(ws: Any) -> Any:
    return json.loads(await recv(ws))


async def closed_with(ws: Any) -> int | None:
    """Read until the server closes; the close code it sent."""
    try:
        while True:
            await recv(ws)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


async def rejected(url: str, **kwargs: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, **kwargs):
            pass
    return info.value


@pytest.fixture
def watch_log() -> Iterator[Callable[[str], LogWatcher]]:
    attached: list[tuple[logging.Logger, LogWatcher, int]] = []

    def watch(name: str) -> LogWatcher:
        logger = logging.getLogger(name)
        watcher = LogWatcher()
        attached.append((logger, watcher, logger.level))
        logger.addHandler(watcher)
        logger.setLevel(logging.DEBUG)
        return watcher

    yield watch
    for logger, watcher, level in attached:
        logger.removeHandler(watcher)
        logger.setLevel(level)


# ---------------------------------------------------------------- 1. inspection

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
SNIPPET = re.compile(r"""^\s*-{1,}8<-{1,}\s+(?P<q>["'])(?P<path>[^"']+)(?P=q)\s*$""")


def fenced_blocks(text: str) -> list[tuple[str, list[str], int]]:
    """(info string, body lines, line number) of every fenced block in a Markdown page."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip(), i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((info, body, start))
        i += 1
    return blocks


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: p.name)
def test_every_python_block_is_included_from_a_file(page: Path) -> None:
    """No hand-typed Python in the docs: each block is one ``--8<--`` include of a tested file."""
    for info, body, line in fenced_blocks(page.read_text(encoding="utf-8")):
        language = info.split()[0].lstrip(".").lower() if info else ""
        if language not in ("python", "py", "python3", "pycon"):
            continue
        code = [b for b in body if b.strip()]
        assert code, f"{page.name}:{line}: empty python block"
        for entry in code:
            m = SNIPPET.match(entry)
            assert m, f"{page.name}:{line}: python block is not a --8<-- include: {entry!r}"
            path = m["path"].split(":")[0]
            assert path.startswith(("docs/examples/", "example_app/")), (
                f"{page.name}:{line}: include {path} from docs/examples/ or example_app/"
            )
            assert (ROOT / path).is_file(), f"{page.name}:{line}: {path} does not exist"


def test_snippets_fail_the_build_when_a_file_is_missing() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["strict"] is True
    extensions = {
        next(iter(e)) if isinstance(e, dict) else e: (
            e[next(iter(e))] if isinstance(e, dict) else {}
        )
        for e in config["markdown_extensions"]
    }
    assert extensions["pymdownx.snippets"]["check_paths"] is True
    assert extensions["pymdownx.snippets"]["base_path"] == ["."]
    assert {"pymdownx.superfences", "admonition", "tables", "toc"} <= set(extensions)
    i18n = next(p["i18n"] for p in config["plugins"] if isinstance(p, dict) and "i18n" in p)
    assert i18n["docs_structure"] == "suffix"
    assert [lang["locale"] for lang in i18n["languages"]] == ["en", "zh"]


def test_snippet_sections_exist() -> None:
    """Every ``file.py:section`` named in a page has start and end markers in that file."""
    named = re.compile(r"""--8<--\s+["'](?P<path>[^"':]+):(?P<section>[a-z][-_0-9a-z]*)["']""")
    seen = 0
    for page in doc_pages():
        for m in named.finditer(page.read_text(encoding="utf-8")):
            source = (ROOT / m["path"]).read_text(encoding="utf-8")
            for marker in ("start", "end"):
                assert f"# --8<-- [{marker}:{m['section']}]" in source, (
                    f"{page.name}: {m['path']} has no [{marker}:{m['section']}] marker"
                )
            seen += 1
    assert seen > 0


def test_readme_starts_with_the_two_commands_and_quotes_getting_started() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = fenced_blocks(readme)
    _info, body, _ = blocks[0]
    commands = [line.split("#")[0].strip() for line in body if line.strip()]
    assert commands == ["make run", "make test"], "the README must open with the two commands"
    # Nothing but the title before them.
    before = readme.split("```", 1)[0]
    assert [line for line in before.splitlines() if line.strip()] == ["# h3-fastapi"]
    quick = [b for b in blocks if b[0].startswith("python")]
    assert quick, "README has no python quick start"
    source = (EXAMPLES / "getting_started.py").read_text(encoding="utf-8")
    assert "\n".join(quick[0][1]) + "\n" == source, (
        "README quick start differs from docs/examples/getting_started.py; copy the file over"
    )


def test_readme_links_the_screenshot() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert "docs/assets/chat-demo.png" in images
    assert (DOCS / "assets" / "chat-demo.png").stat().st_size > 5_000


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.zh.md")), ids=lambda p: p.name)
def test_chinese_pages_are_clean_utf8(page: Path) -> None:
    raw = page.read_bytes()
    text = raw.decode("utf-8")  # raises on invalid UTF-8
    assert not raw.startswith(b"\xef\xbb\xbf"), "no BOM"
    assert "\ufffd" not in text, "replacement characters: text was mangled on the way"
    bad = [c for c in text if ord(c) < 32 and c not in "\n\t"]
    assert not bad, f"control characters {bad!r}"
    han = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    assert han > 200, "a Chinese page should be mostly Chinese"
    english = page.with_name(page.name.replace(".zh.md", ".md"))
    assert english.exists(), f"{page.name} translates {english.name}, which is missing"
    # Same code: the translation includes exactly the snippets the English page does.
    includes = re.compile(r"--8<--\s+\S+")
    assert includes.findall(text) == includes.findall(english.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- 2. build


@pytest.mark.slow
def test_mkdocs_build_strict_has_the_chinese_site(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    site = tmp_path / "site"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    for page in ("websockets", "sse"):
        zh = site / "zh" / page / "index.html"
        assert zh.is_file(), f"missing {zh}"
        html = zh.read_text(encoding="utf-8")
        assert 'lang="zh"' in html
        assert sum(1 for c in html if "\u4e00" <= c <= "\u9fff") > 200
        # Same section anchors in both languages, so deep links survive the switch.
        english = (site / page / "index.html").read_text(encoding="utf-8")
        assert heading_ids(html) == heading_ids(english)
    en = (site / "websockets" / "index.html").read_text(encoding="utf-8")
    assert 'href="../zh/websockets/" hreflang="zh"' in en, "no language switch to the zh page"
    # The snippets were expanded: real code, not the include line, is on the page.
    assert "--8&lt;--" not in en and "--8<--" not in en
    assert "peer.wait_for_drain" in en
    assert (site / "reference" / "index.html").read_text(encoding="utf-8").count("h3_fastapi")


def heading_ids(html: str) -> list[str]:
    return re.findall(r'<h[2-6] id="([^"]+)"', html)


# ---------------------------------------------------------------- 3. examples import


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_example_is_importable(path: Path) -> None:
    module = example(path.stem)
    assert module.__name__.endswith(path.stem)


# ---------------------------------------------------------------- 4. getting started


async def test_getting_started_echo(live_server: Any) -> None:
    server = live_server(example("getting_started_echo").app)
    async with websockets.connect(server.ws_url + "/echo") as ws:
        await ws.send("hello")
        assert await recv(ws) == "hello"
        await ws.send('{"a": 1}')
        assert await recv(ws) == '{"a": 1}'


async def test_getting_started_chat(live_server: Any) -> None:
    server = live_server(example("getting_started").app)
    async with websockets.connect(server.ws_url + "/_ws") as a:
        assert (await recv(a)).startswith("Welcome!")
        async with websockets.connect(server.ws_url + "/_ws") as b:
            assert (await recv(b)).startswith("Welcome!")
            await a.send("hello")
            assert await recv(a) == "[you] hello"
            line = await recv(b)
            assert re.fullmatch(r"\[[0-9a-f]{8}\] hello", line), line


async def test_getting_started_h3_style(live_server: Any) -> None:
    server = live_server(example("getting_started_h3").app)
    async with httpx.AsyncClient(base_url=server.url) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "WebSocket" in page.text
        assert (await client.get("/_ws")).status_code == 426
    async with websockets.connect(server.ws_url + "/_ws") as ws:
        assert await recv(ws) == "Welcome!"
        await ws.send("echo me")
        assert await recv(ws) == "echo me"


@pytest.mark.slow  # real time: timers tick in seconds
async def test_getting_started_sse_countdown(live_server: Any) -> None:
    server = live_server(example("getting_started_sse").app)
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        response = await client.get("/countdown", params={"start": 2})  # ends by itself
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text == "data: 2\n\ndata: 1\n\ndata: liftoff\n\n"
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        assert (await client.get("/countdown", params={"start": "x"})).status_code == 422


# ---------------------------------------------------------------- 5. WebSockets guide


async def test_ws_routes_every_way_in(live_server: Any) -> None:
    server = live_server(example("ws_routes").app)
    ws_url = server.ws_url
    async with websockets.connect(ws_url + "/echo") as ws:
        await ws.send("hi")
        assert await recv(ws) == "hi"
    async with websockets.connect(ws_url + "/shout") as ws:
        await ws.send("hi")
        assert await recv(ws) == "HI"
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/echo")).status_code == 426
        assert (await client.get("/status")).json() == {"online": 0}
        async with websockets.connect(ws_url + "/status") as ws:
            assert await recv(ws) == "connected"
            assert (await client.get("/status")).json() == {"online": 1}
    async with websockets.connect(ws_url + "/hello/ada") as ws:
        assert await recv(ws) == "Hello, ada!"
    async with websockets.connect(ws_url + "/inside") as ws:
        await ws.send("through my endpoint")
        assert await recv(ws) == "through my endpoint"


async def test_ws_hooks_all_five(live_server: Any, watch_log: Any) -> None:
    log = watch_log("chat")
    server = live_server(example("ws_hooks").app)
    async with websockets.connect(server.ws_url + "/_ws") as ws:
        assert ws.response.headers["x-powered-by"] == "h3-fastapi"
        assert await recv(ws) == "Welcome!"
        log.wait_for(r"^upgrading http://127\.0\.0\.1:\d+/_ws$")
        peer_id = log.wait_for(r"^open ").split()[1]
        await ws.send("hi")
        assert await recv(ws) == "You said: hi"
        await ws.close()
    log.wait_for(rf"^close {peer_id} code=1000 reason=''$")

    async with websockets.connect(server.ws_url + "/_ws") as ws:
        assert await recv(ws) == "Welcome!"
        await ws.send("boom")
        assert await closed_with(ws) == 1011
    line = log.wait_for(r"^error .*RuntimeError\('this hook failed'\)")
    assert "message hook raised RuntimeError" in line
    log.wait_for(r"code=1011 reason='Internal Error'")


async def test_ws_peers_rooms_and_context(live_server: Any) -> None:
    server = live_server(example("ws_peers").app)
    url = server.ws_url + "/rooms"
    async with websockets.connect(url + "/blue?name=ada") as ada:
        first = await recv_json(ada)
        assert first["room"] == "/rooms/blue" and first["online"] == ["ada"]
        async with websockets.connect(url + "/blue?name=bob") as bob:
            assert (await recv_json(bob))["online"] == ["ada", "bob"]
            async with websockets.connect(url + "/green?name=cy") as cy:
                assert (await recv_json(cy))["online"] == ["cy"]  # another room
                await bob.send("hi ada")
                assert await recv_json(ada) == {"from": "bob", "text": "hi ada"}
                await cy.send("anyone?")  # alone in green: nobody gets it
                await ada.send("hi bob")
                assert await recv_json(bob) == {"from": "ada", "text": "hi bob"}


async def test_ws_pubsub_from_peers_threads_and_module(live_server: Any) -> None:
    server = live_server(example("ws_pubsub").app)
    async with (
        websockets.connect(server.ws_url + "/news") as a,
        websockets.connect(server.ws_url + "/news") as b,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        # A sync open hook runs before the server reads anything from the client,
        # so both peers are subscribed once their handshakes are done.
        await a.send("from a")
        assert await recv(b) == "from a"
        response = await client.post("/headlines", params={"text": "from a thread"})
        assert response.json() == {"sent": "from a thread"}
        assert await recv(a) == "from a thread"
        assert await recv(b) == "from a thread"
        await client.post("/alerts", params={"text": "storm"})
        assert await recv_json(a) == {"alert": "storm"}
        assert await recv_json(b) == {"alert": "storm"}
        # the sender did not get its own publish: the next thing a sees is b's
        await b.send("from b")
        assert await recv(a) == "from b"


async def test_ws_auth_in_upgrade(live_server: Any) -> None:
    server = live_server(example("ws_auth").app)
    url = server.ws_url + "/private"
    denied = await rejected(url)
    assert denied.response.status_code == 401
    assert denied.response.headers["www-authenticate"] == "Bearer"
    assert (await rejected(url + "?token=wrong")).response.status_code == 401
    forbidden = await rejected(url + "?token=bob-token&room=admins")
    assert forbidden.response.status_code == 403
    assert json.loads(forbidden.response.body) == {"detail": "Admins only"}
    async with websockets.connect(url + "?token=alice-token&room=admins") as ws:
        assert await recv(ws) == "Hello, alice! You are in admins."
    headers = {"cookie": "token=bob-token"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        assert await recv(ws) == "Hello, bob! You are in lobby."

    internal = server.ws_url + "/internal"
    assert (await rejected(internal)).response.status_code == 403
    async with websockets.connect(internal, additional_headers={"x-api-key": "s3cret"}) as ws:
        assert await recv(ws) == "internal feed"


async def test_ws_subprotocols(live_server: Any) -> None:
    server = live_server(example("ws_subprotocols").app)
    url = server.ws_url + "/chat"
    async with websockets.connect(url, subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"  # the server's preference wins
        await ws.send("hi")
        assert await recv_json(ws) == {"text": "hi"}
    async with websockets.connect(url, subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"
        await ws.send("hi")
        assert await recv(ws) == "hi"
    assert (await rejected(url, subprotocols=["mqtt"])).response.status_code == 400
    assert (await rejected(url)).response.status_code == 400


async def test_ws_binary(live_server: Any) -> None:
    server = live_server(example("ws_binary").app)
    async with websockets.connect(server.ws_url + "/files") as ws:
        await ws.send(b"\xff\x00" * 1000)
        reply = await recv_json(ws)
        assert reply["size"] == 2000 and len(reply["sha256"]) == 64
        await ws.send(json.dumps({"want": "bytes", "times": 2}))
        data = await recv(ws)
        assert isinstance(data, bytes) and data == bytes(range(256)) * 2
        await ws.send("not json")  # ValueError in the hook -> closed 1011
        assert await closed_with(ws) == 1011


async def test_ws_backpressure_download_completes(live_server: Any) -> None:
    server = live_server(example("ws_backpressure").app)
    async with websockets.connect(server.ws_url + "/download", max_size=None) as ws:
        await ws.send("48")  # 3 MiB: more than the 1 MiB high-water mark
        received = 0
        while (frame := await recv(ws)) != "done":
            received += len(frame)
        assert received == 48 * 64 * 1024


async def test_ws_backpressure_slow_reader_is_closed_1013(live_server: Any) -> None:
    module = example("ws_backpressure")
    server = live_server(module.app)
    # A raw client that never reads, with a small kernel receive buffer: the
    # 15 MiB below cannot all leave the server.
    slow, rest = await asyncio.to_thread(handshake, server.port, "/feed", 32 * 1024)
    with slow:
        # The (def) open hook runs in the threadpool: wait until it has subscribed.
        def subscribed() -> bool:
            peers = module.feed.peers.get("/feed") or ()
            return any("feed" in peer.topics for peer in peers)

        for _ in range(100):
            if server.call(subscribed):
                break
            await asyncio.sleep(0.02)
        assert server.call(subscribed)
        for _ in range(240):  # 15 MiB while the client reads nothing
            module.feed.publish("feed", b"\0" * 64 * 1024)
        # Reading now, the client finds what fitted, then the server's close frame.
        assert await asyncio.to_thread(server_close_code, slow, rest) == 1013


async def test_ws_limits(live_server: Any) -> None:
    module = example("ws_limits")
    server = live_server(module.app)
    url = server.ws_url + "/limited"
    assert (await rejected(url, origin="https://evil.example")).response.status_code == 403
    async with websockets.connect(url, origin="https://example.com") as ws:
        await ws.send("é")
        assert await recv(ws) == "2 bytes"
        await ws.send("x" * (64 * 1024 + 1))
        assert await closed_with(ws) == 1009
    async with websockets.connect(url) as ws:  # no Origin: not a browser, allowed
        await ws.send("ok")
        assert await recv(ws) == "2 bytes"
    module.limited.max_peers = 1  # the example allows 10,000; check the rule with 1
    try:
        async with websockets.connect(url) as first:
            await first.send("x")
            await recv(first)
            assert (await rejected(url)).response.status_code == 503
    finally:
        module.limited.max_peers = 10_000


# ---------------------------------------------------------------- 6. testing guide


@pytest.mark.slow
def test_testing_guide_examples_pass_under_pytest() -> None:
    """The guide's test files are real test files: run them as a user would."""
    files = ["docs/examples/testing_testclient.py", "docs/examples/testing_real_server.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b7 passed\b", result.stdout), result.stdout


# ---------------------------------------------------------------- 7. coming from h3


def upstream_app() -> Any:
    """What the proxy examples forward to: a page, an echo API, a WebSocket echo."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route, WebSocketRoute

    async def hello(request: Any) -> Any:
        return PlainTextResponse(f"hello from upstream via {request.headers.get('x-via')}")

    async def api(request: Any) -> Any:
        body = (await request.body()).decode()
        return JSONResponse({"method": request.method, "path": request.url.path, "body": body})

    async def ws_echo(websocket: Any) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await websocket.send_text("upstream: " + (message.get("text") or ""))

    return Starlette(
        routes=[
            Route("/hello", hello),
            Route("/api/{path:path}", api, methods=["GET", "POST", "PUT"]),
            WebSocketRoute("/_ws", ws_echo),
        ]
    )


@pytest.fixture
def from_h3(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, Any]:
    upstream = live_server(upstream_app())
    monkeypatch.setenv("UPSTREAM", upstream.url)
    path = EXAMPLES / "coming_from_h3.py"
    spec = importlib.util.spec_from_file_location("docs_examples_coming_from_h3_live", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.printed = LogWatcher()
    monkeypatch.setattr(module, "print", module.printed.print, raising=False)
    return module, live_server(module.app)


async def test_from_h3_app_routes(from_h3: Any) -> None:
    _, server = from_h3
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/")).text == "Hello world"
        assert (await client.get("/users/42")).json() == {"id": "42"}
        assert (await client.post("/echo", json={"a": [1, 2]})).json() == {"a": [1, 2]}


async def test_from_h3_hooks_auth_context_and_logging(from_h3: Any) -> None:
    module, server = from_h3
    url = server.ws_url + "/_ws"
    assert (await rejected(url)).response.status_code == 401
    auth = {"authorization": "Bearer s3cret"}
    async with websockets.connect(url, additional_headers=auth) as ws:
        assert ws.response.headers["x-powered-by"] == "h3-fastapi"
        await ws.send("ping?")
        assert await recv(ws) == "pong"
    module.printed.wait_for(r"^\[ws\] open \S{36} ada$")
    module.printed.wait_for(r"^\[ws\] close \S{36} 1000 $")


async def test_from_h3_peer_and_message(from_h3: Any) -> None:
    _, server = from_h3
    async with websockets.connect(server.ws_url + "/peer") as ws:
        await ws.send("hi")
        first = await recv_json(ws)
        assert first["path"] == "/peer" and first["namespace"] == "/peer"
        assert first["remote_address"] == "127.0.0.1" and first["online"] == 1
        assert first["count"] == 1 and first["topics"] == [] and len(first["id"]) == 36
        await ws.send("bye")
        assert (await recv_json(ws))["count"] == 2
        assert await closed_with(ws) == 4000
    async with websockets.connect(server.ws_url + "/message") as ws:
        await ws.send("héllo")
        text = await recv_json(ws)
        assert text["text"] == "héllo" and text["bytes"] == 6 and not text["binary"]
        assert text["raw_type"] == "str" and len(text["id"]) == 36
        await ws.send(b"\xffok")
        binary = await recv_json(ws)
        assert binary["text"] == "\ufffdok" and binary["binary"] and binary["raw_type"] == "bytes"


async def test_from_h3_pubsub(from_h3: Any) -> None:
    module, server = from_h3
    url = server.ws_url + "/chat"
    pubsub = module.chat.pubsub or get_default_pubsub()
    async with websockets.connect(url) as a:
        # ``join`` is a sync hook, so it runs in the threadpool: b comes once a is in.
        await eventually(lambda: pubsub.subscribers("chat"), "the first peer's open hook")
        async with websockets.connect(url) as b:
            # a (subscribed before b connected) hears b join
            assert re.fullmatch(r"\[system\] \S{36} joined!", await recv(a))
            await b.send("hi all")
            assert await recv(a) == "hi all"
            async with httpx.AsyncClient(base_url=server.url) as client:
                assert (await client.post("/announce")).json() == {"ok": True}
            for ws in (a, b):
                assert await recv(ws) == "from the handler"
                assert await recv(ws) == "from anywhere"


async def test_from_h3_event_stream(from_h3: Any) -> None:
    module, server = from_h3
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await asyncio.wait_for(client.get("/events"), TIMEOUT)  # the stream closes
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text == (
        "data: one message\n\n"
        "data: two\n\n"
        "data: messages\n\n"
        "id: 1\nevent: greeting\nretry: 1000\ndata: hi\n\n"
        ": a comment, ignored by browsers\n\n"
    )
    module.printed.wait_for("^Connection closed$")


async def test_from_h3_proxy(from_h3: Any) -> None:
    _, server = from_h3
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/proxy")).text == "hello from upstream via h3"
        forwarded = await client.put("/api/items/7?x=1", content=b"payload")
        assert forwarded.json() == {"method": "PUT", "path": "/api/items/7", "body": "payload"}
        headers = (await client.get("/headers", headers={"x-custom": "yes"})).json()
        assert headers["x-custom"] == "yes" and "host" not in headers
        assert (await client.get("/fetch")).text == "hello from upstream via None"
    async with websockets.connect(server.ws_url + "/upstream-ws") as ws:
        await ws.send("through the proxy")
        assert await recv(ws) == "upstream: through the proxy"


# ---------------------------------------------------------------- 8. coming from Starlette


@pytest.mark.parametrize("prefix", ["/raw", "/ws"], ids=["raw-starlette", "h3-hooks"])
async def test_from_starlette_chat_before_and_after_behave_alike(
    live_server: Any, prefix: str
) -> None:
    server = live_server(example("coming_from_starlette").app)
    url = server.ws_url + prefix
    async with websockets.connect(url + "/1") as one:
        async with websockets.connect(url + "/2") as two:
            await one.send("hi")  # both are connected: two's handshake finished first
            assert await recv(one) == "Client #1 says: hi"
            assert await recv(two) == "Client #1 says: hi"
            await two.send("hello")
            assert await recv(one) == "Client #2 says: hello"
            assert await recv(two) == "Client #2 says: hello"
        assert await recv(one) == "Client #2 left the chat"


def parse_sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in re.split(r"\r?\n\r?\n", text):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if fields:
            events.append(fields)
    return events


async def test_from_sse_starlette_same_events(live_server: Any) -> None:
    server = live_server(example("coming_from_starlette").app)
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        before = await client.get("/legacy-feed")
        after = await client.get("/feed")
    expected = [{"id": str(n), "event": "update", "data": f"update {n}"} for n in range(3)]
    assert parse_sse(before.text) == expected
    assert parse_sse(after.text) == expected
    assert after.headers["content-type"] == "text/event-stream"


# ---------------------------------------------------------------- typed messages and AsyncAPI


async def test_typed_messages_chat(live_server: Any) -> None:
    server = live_server(example("typed_messages").app)
    async with (
        websockets.connect(server.ws_url + "/chat") as alice,
        websockets.connect(server.ws_url + "/chat") as bob,
    ):
        for ws in (alice, bob):
            await ws.send(json.dumps({"type": "join", "room": "r1"}))
            assert await recv_json(ws) == {"joined": "r1"}
        await alice.send(json.dumps({"type": "say", "text": "hi"}))
        mine, theirs = await recv_json(alice), await recv_json(bob)
        assert mine == theirs
        assert mine["text"] == "hi" and set(mine) == {"userId", "text", "sentAt"}
        assert mine["sentAt"].endswith("Z")
        await bob.send(json.dumps({"type": "shout"}))
        assert await closed_with(bob) == 1007


async def test_typed_messages_model(live_server: Any) -> None:
    server = live_server(example("typed_messages").app)
    async with websockets.connect(server.ws_url + "/points") as ws:
        await ws.send("[1, 2, 3]")
        assert await recv_json(ws) == {"sum": 6}
        await ws.send('["x"]')
        assert await recv_json(ws) == {"error": "send a JSON list of integers"}


async def test_typed_sse(live_server: Any) -> None:
    server = live_server(example("typed_sse").app)
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        progress = await client.get("/jobs/j1/progress", params={"total": 2})
        notices = await client.get("/notices")
        spec = (await client.get("/openapi.json")).json()
    assert progress.text == (
        'data: {"step":1,"total":2}\n\ndata: {"step":2,"total":2}\n\n'
        'event: done\ndata: {"job":"j1"}\n\n'
    )
    assert notices.text == 'data: {"step":1,"total":1}\n\nevent: note\ndata: plain text\n\n'
    content = spec["paths"]["/jobs/{job_id}/progress"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]
    data = content["text/event-stream"]["itemSchema"]["properties"]["data"]
    assert data["contentSchema"] == {"$ref": "#/components/schemas/Progress"}
    assert list(spec["paths"]["/notices"]["get"]["responses"]["200"]["content"]) == [
        "text/event-stream"
    ]


async def test_asyncapi_app(live_server: Any) -> None:
    module = example("asyncapi_app")
    assert module.channel_addresses() == ["/games/{game_id}"]
    server = live_server(module.app)
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        document = (await client.get("/asyncapi.json")).json()
        page = await client.get("/asyncapi")
    assert document["asyncapi"] == "3.0.0"
    assert document["info"] == {"title": "Game server", "version": "1.0.0"}
    messages = [m["name"] for m in document["components"]["messages"].values()]
    assert sorted(messages) == ["Chat", "Move", "State"]
    assert "/games/{game_id}" in page.text
    async with websockets.connect(server.ws_url + "/games/g1") as ws:
        await ws.send(json.dumps({"type": "move", "x": 1, "y": 2}))
        assert list((await recv_json(ws))["players"].values()) == [[1, 2]]
