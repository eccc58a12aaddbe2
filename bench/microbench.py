"""Framework CPU per message, without sockets: a fake ASGI server drives each app.

Run: ``python -m bench.microbench [--h3-path DIR]`` (``DIR`` holds a patched
``h3_fastapi`` to compare with the working tree). It measures process CPU
time, so other processes on the machine barely move it; it leaves out
uvicorn's socket and frame work, so it shows the framework's own cost that
the end-to-end numbers in ``python -m bench`` include.

- echo: N text messages in, N out, on one connection; ``receive`` yields to
  the loop once per message like a real server waiting for the network.
  Hooks ``async def``, and ``def`` in the threadpool or on the loop (issue 13).
- typed echo: the same with a 64-byte JSON message, validated into a Pydantic
  model by a typed hook, parsed untyped, or validated by hand in FastAPI (issue 12).
- sse: one stream of N events; ``send`` never blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from collections.abc import Callable
from typing import Any

ECHO_APPS = (
    ("h3", "/echo"),
    ("h3", "/echo-threadpool"),
    ("h3", "/echo-loop"),
    ("h3_starlette", "/echo"),
    ("starlette", "/echo"),
    ("fastapi", "/echo"),
)
TYPED_ECHO_APPS = (
    ("h3", "/echo-typed"),
    ("h3", "/echo-json"),
    ("fastapi", "/echo-typed"),
)
SSE_ROUTES = ("/h3", "/h3-push", "/raw", "/sse-starlette", "/h3-typed", "/fastapi-sse")
TEXT = "e" * 32
# The JSON message of the typed echo, 64 bytes as in ``python -m bench --only echo-json``.
JSON = '{"id":1,"text":"' + "e" * 46 + '"}'


async def _echo_once(app: Any, path: str, messages: int, text: str) -> tuple[float, int]:
    """CPU seconds to echo ``messages`` messages through ``app``; and how many came back."""
    sent = 0
    queue = [{"type": "websocket.connect"}]
    queue += [{"type": "websocket.receive", "text": text}] * messages
    position = 0
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal position
        await asyncio.sleep(0)  # a real server waits for the next frame
        if position < len(queue):
            position += 1
            return queue[position - 1]
        if sent >= messages:
            return {"type": "websocket.disconnect", "code": 1000}
        await asyncio.wait_for(finished.wait(), 10)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        nonlocal sent
        if message["type"] == "websocket.send" and message.get("text") == text:
            sent += 1
            if sent >= messages:
                finished.set()

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "http_version": "1.1",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
        "state": {},
        "extensions": {"websocket.http.response": {}},
    }
    start = time.process_time()
    await asyncio.wait_for(app(scope, receive, send), 60)
    return time.process_time() - start, sent


async def _sse_once(app: Any, path: str, events: int) -> tuple[float, int]:
    """CPU seconds to stream ``events`` events from ``path``; and how many sends it took."""
    sends = 0
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal sends
        if message["type"] == "http.response.body":
            sends += 1
            if not message.get("more_body"):
                done.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": f"n={events}".encode(),
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    start = time.process_time()
    await asyncio.wait_for(app(scope, receive, send), 60)
    return time.process_time() - start, sends


def _interleaved(runs: dict[str, Callable[[], tuple[float, int]]], rounds: int) -> dict[str, Any]:
    """Run each variant once per round, in turn; keep each one's fastest run.

    Interleaving spreads any slow spell of the machine over all variants, and
    the minimum is the run least disturbed by other processes.
    """
    best: dict[str, tuple[float, int]] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            result = run()
            if name not in best or result[0] < best[name][0]:
                best[name] = result
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h3-path", default=None, help="import h3_fastapi from this directory")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", choices=("echo", "typed", "sse"), default=None)
    args = parser.parse_args()
    if args.h3_path:
        sys.path.insert(0, args.h3_path)
    import uvloop

    h3_fastapi = importlib.import_module("h3_fastapi")
    print(f"h3_fastapi from {h3_fastapi.__file__}")
    ws_apps = importlib.import_module("bench.servers.websocket_apps")
    sse_app = importlib.import_module("bench.servers.sse_apps").app
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    n = args.messages
    echo_groups = (
        ("echo", "echo", ECHO_APPS, TEXT),
        ("typed", "typed echo (JSON)", TYPED_ECHO_APPS, JSON),
    )
    for group, title, apps, text in echo_groups:
        if args.only not in (None, group):
            continue
        print(
            f"{title}, {n} messages of {len(text)} bytes, fastest of {args.repeat}"
            " (CPU µs per message):"
        )
        echo_runs = {
            f"{name} {path}": (
                lambda app=getattr(ws_apps, name), path=path, text=text: loop.run_until_complete(
                    _echo_once(app, path, n, text)
                )
            )
            for name, path in apps
        }
        for label, (cpu, sent) in _interleaved(echo_runs, args.repeat).items():
            print(f"  {label:<24} {1e6 * cpu / n:7.2f} µs   ({sent} echoed)")
    if args.only in (None, "sse"):
        print(f"sse, one stream of {n} events, fastest of {args.repeat} (CPU µs per event):")
        sse_runs = {
            path: lambda path=path: loop.run_until_complete(_sse_once(sse_app, path, n))
            for path in SSE_ROUTES
        }
        for label, (cpu, sends) in _interleaved(sse_runs, args.repeat).items():
            print(f"  {label:<24} {1e6 * cpu / n:7.2f} µs   ({sends} ASGI sends)")
    loop.close()


if __name__ == "__main__":
    main()
