"""A real headless Chromium ``EventSource`` against ``tests/apps/sse_app.py`` on uvicorn.

Proves what only a browser can: typed events reach ``addEventListener``,
multi-line data arrives intact, ``retry`` is honoured and, after the server
closes the stream, the browser reconnects sending ``Last-Event-ID``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.apps import sse_app
from tests.conftest import LiveServer, need

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"


def test_event_source_typed_events_multiline_and_reconnect_with_last_event_id(
    live_server: Callable[..., LiveServer],
) -> None:
    need(os.path.exists(CHROMIUM), f"Chromium is not installed at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    server = live_server(sse_app.app)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            page.goto(server.url + "/page")
            page.wait_for_function("window.done === true", timeout=10_000)
            results = page.evaluate("window.results")
        finally:
            browser.close()

    received = [r for r in results if r["kind"] != "error"]
    assert received == [
        {"kind": "greeting", "type": "greeting", "data": "hi", "id": "1"},
        # \r\n and \r become \n in the browser, like every line break
        {"kind": "message", "type": "message", "data": "line 1\nline 2\nline 3\nline 4", "id": "2"},
        # the reconnect carried Last-Event-ID: 2
        {"kind": "resumed", "type": "resumed", "data": "last=2", "id": "3"},
    ]
    errors = [r for r in results if r["kind"] == "error"]
    assert errors, "the browser should have seen the server end the stream"
    assert errors[0]["state"] == 0  # CONNECTING: it reconnects rather than giving up
