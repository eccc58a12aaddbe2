"""AsyncAPI 3.0: the documents validate against the official JSON Schema.

The schema comes from the npm package ``@asyncapi/specs`` that ``make test``
installs into tests/asyncapi/node_modules (``npm ci --prefix tests/asyncapi``);
it is validated with ``jsonschema``. The HTML page is read in headless Chromium.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from h3_fastapi import H3, define_websocket_handler, get_asyncapi
from tests.apps import typed_app
from tests.conftest import ROOT, need

SPECS = ROOT / "tests" / "asyncapi" / "node_modules" / "@asyncapi" / "specs" / "schemas"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def validator() -> Any:
    schema_file = SPECS / "3.0.0-without-$id.json"
    need(schema_file.exists(), f"{schema_file} is missing (npm ci --prefix tests/asyncapi)")
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(schema_file.read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/schema")
    return jsonschema.Draft7Validator(schema)


def assert_valid(validator: Any, document: dict[str, Any]) -> None:
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)


def test_the_validator_rejects_a_broken_document(validator: Any) -> None:
    """The check can fail: an operation without its channel is not AsyncAPI 3.0."""
    document = get_asyncapi(typed_app.app)
    broken = json.loads(json.dumps(document))
    del next(iter(broken["operations"].values()))["channel"]
    assert list(validator.iter_errors(broken))


def test_typed_app_document(validator: Any) -> None:
    document = get_asyncapi(typed_app.app)
    assert_valid(validator, document)
    assert document["asyncapi"] == "3.0.0"
    assert document["info"] == {"title": "Typed test app", "version": "1.2.3"}
    channels = document["channels"]
    addresses = {c["address"] for c in channels.values()}
    assert {
        "/api/rooms/{room}",
        "/api/sum",
        "/api/untyped",
        "/api/factory/{room}",
        "/api/ticks",
        "/api/events",
        "/sub/inner",
    } <= addresses
    assert "/api/json" not in addresses and "/asyncapi.json" not in addresses

    room = next(c for c in channels.values() if c["address"] == "/api/rooms/{room}")
    assert room["parameters"] == {"room": {"description": "Path parameter room"}}
    assert room["bindings"]["ws"]["method"] == "GET"
    operations = document["operations"]
    receive = next(
        op
        for op in operations.values()
        if op["action"] == "receive" and op["channel"]["$ref"].endswith("/api_rooms_room")
    )
    # The discriminated union: one message per member, nested models shared.
    names = [ref["$ref"].rsplit("/", 1)[-1] for ref in receive["messages"]]
    assert names == ["Draw", "Say"]
    schemas = document["components"]["schemas"]
    assert schemas["Draw"]["properties"]["points"]["items"] == {
        "$ref": "#/components/schemas/Point"
    }
    assert "Point" in schemas
    send = operations["api_rooms_room.send"]
    out = send["messages"][0]["$ref"].rsplit("/", 1)[-1]
    assert out == "Outgoing"
    assert "sentAt" in schemas["Outgoing"]["properties"]  # serialization schema, by alias

    sums = document["components"]["messages"]["api_sum.receive"]["payload"]
    assert sums == {"type": "array", "items": {"type": "integer"}}
    ticks = document["components"]["messages"]["Tick"]
    assert ticks["payload"] == {"$ref": "#/components/schemas/Tick"}


def test_example_app_document(validator: Any) -> None:
    from example_app import app

    document = get_asyncapi(app)
    assert_valid(validator, document)
    addresses = {c["address"] for c in document["channels"].values()}
    assert {"/_ws", "/clock/events"} <= addresses


def test_document_for_an_app_without_realtime_routes(validator: Any) -> None:
    app = H3()
    assert_valid(validator, get_asyncapi(app, title="Empty", version="0"))
    app.ws("/x", define_websocket_handler())  # no message hook: a channel, no operations
    document = get_asyncapi(app)
    assert_valid(validator, document)
    assert list(document["operations"]) == []


async def test_served_json_and_page(live_server: Any) -> None:
    server = live_server(typed_app.app)
    async with httpx.AsyncClient(base_url=server.url) as client:
        served = (await client.get("/asyncapi.json")).json()
        page = await client.get("/asyncapi")
    assert served == json.loads(json.dumps(get_asyncapi(typed_app.app)))
    assert page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text and "http" not in page.text.split("</style>")[0]


@pytest.mark.browser
def test_page_renders_channels_in_chromium(live_server: Any) -> None:
    need(CHROMIUM.exists(), f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    server = live_server(typed_app.app)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"{server.url}/asyncapi")
            sync_api.expect(page.locator("header h1")).to_have_text("Typed test app")
            room = page.locator("[data-channel='api_rooms_room']")
            sync_api.expect(room.locator("h3")).to_contain_text("/api/rooms/{room}")
            sync_api.expect(room.locator(".op.receive summary")).to_have_text(["Draw", "Say"])
            room.locator(".op.receive summary", has_text="Draw").click()
            sync_api.expect(room.locator(".op.receive pre").first).to_contain_text("points")
            sync_api.expect(page.locator("section.channel")).to_have_count(
                len(get_asyncapi(typed_app.app)["channels"])
            )
            assert requests == [f"{server.url}/asyncapi"]  # nothing else: works offline
        finally:
            browser.close()
