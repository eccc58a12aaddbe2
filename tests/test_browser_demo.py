"""The demo in a real browser: headless Chromium against ``python -m example_app``.

Two tabs of the chat page talk to each other through the WebSocket at ``/_ws``,
and the SSE clock page keeps ticking. Screenshots land in the test's temporary
directory; ``H3_UPDATE_SCREENSHOTS=1`` also writes ``docs/assets/chat-demo.png``
(the picture in the README and the docs).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, need
from tests.test_example_app import example_app_process

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
ASSET = ROOT / "docs" / "assets" / "chat-demo.png"
WAIT_MS = 10_000


@pytest.fixture
def browser() -> Any:
    need(CHROMIUM.exists(), f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()


def test_chat_in_two_tabs_and_the_ticking_clock(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with example_app_process("--port", "0") as app:
        app.read_banner()
        context = browser.new_context(viewport={"width": 640, "height": 480})
        alice, bob = context.new_page(), context.new_page()
        for tab in (alice, bob):
            tab.goto(app.url)
            expect(tab.locator("#status")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
            expect(tab.locator("#log li").first).to_have_text(
                "Welcome to the server!", timeout=WAIT_MS
            )

        alice.fill("#input", "Hello from the first tab")
        alice.press("#input", "Enter")
        seen_by_bob = bob.locator("#log li", has_text="Hello from the first tab")
        expect(seen_by_bob).to_have_count(1, timeout=WAIT_MS)
        expect(seen_by_bob.locator(".who")).to_have_text(re.compile(r"^[0-9a-f]{8}$"))
        mine = alice.locator("#log li.mine")
        expect(mine).to_have_text("Hello from the first tab", timeout=WAIT_MS)

        bob.fill("#input", "Hi! Typed in the second tab")
        bob.click("button[type=submit]")
        expect(alice.locator("#log li", has_text="Typed in the second tab")).to_have_count(
            1, timeout=WAIT_MS
        )
        alice.click("#ping")
        expect(alice.locator("#log li", has_text="pong")).to_have_count(1, timeout=WAIT_MS)
        expect(bob.locator("#log li", has_text="pong")).to_have_count(0)

        shots = tmp_path / "screenshots"
        shots.mkdir()
        alice.screenshot(path=str(shots / "chat-tab-1.png"))
        bob.screenshot(path=str(shots / "chat-tab-2.png"))

        clock = context.new_page()
        clock.goto(app.base + "/clock")
        time_shown = clock.locator("#clock")
        expect(time_shown).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"), timeout=WAIT_MS)
        first = time_shown.inner_text()
        # The page changes only when the server pushes the next tick.
        expect(time_shown).not_to_have_text(first, timeout=3_000)
        expect(time_shown).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))
        expect(clock.locator("#count")).to_have_text(re.compile(r"^[2-9] events$"))
        clock.screenshot(path=str(shots / "sse-clock.png"))
        context.close()

    for name in ("chat-tab-1.png", "chat-tab-2.png", "sse-clock.png"):
        assert (shots / name).read_bytes().startswith(b"\x89PNG"), name
    side_by_side = shots / "chat-demo.png"
    _side_by_side([shots / "chat-tab-1.png", shots / "chat-tab-2.png"], side_by_side)
    if os.environ.get("H3_UPDATE_SCREENSHOTS"):
        shutil.copyfile(side_by_side, ASSET)


def _side_by_side(images: list[Path], target: Path) -> None:
    """Put the two tabs next to each other with a gap (Pillow comes with matplotlib)."""
    image_module = pytest.importorskip("PIL.Image")
    tabs = [image_module.open(path).convert("RGB") for path in images]
    gap = 16
    width = sum(tab.width for tab in tabs) + gap * (len(tabs) + 1)
    height = max(tab.height for tab in tabs) + 2 * gap
    canvas = image_module.new("RGB", (width, height), (148, 163, 184))
    x = gap
    for tab in tabs:
        canvas.paste(tab, (x, gap))
        x += tab.width + gap
    canvas.save(target, optimize=True)
