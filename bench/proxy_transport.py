"""Compare httpx transports for the proxy: httpcore (httpx's default), httpx-aiohttp, ours.

Run: ``python bench/proxy_transport.py`` (aiohttp and httpx-aiohttp are optional).

An upstream (raw ASGI on uvicorn, in a child process) serves small bodies,
a large streamed download and an upload sink. Each transport is driven
through the same ``httpx.AsyncClient`` API the proxy uses
(``client.send(request, stream=True)``), so the numbers are what the proxy
would see; then the same workloads run end to end through the proxy app of
``tests/apps/proxy_app.py`` with each transport. Prints requests/s and MiB/s
and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

CHUNK = b"x" * (64 * 1024)


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/small`` 1 KiB; ``/download?mib=N`` N MiB streamed; ``/upload`` counts bytes."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/download":
        mib = int(scope["query_string"].decode().partition("=")[2] or 1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(mib * 16):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    total = 0
    while True:
        message = await receive()
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(total).encode() if path == "/upload" else b"y" * 1024
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(port: int, app: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "uvicorn", app]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    env = {**os.environ, "PYTHONPATH": root, **(env or {})}
    proc = subprocess.Popen(cmd, cwd=root, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("upstream did not start")


async def _get(client: httpx.AsyncClient, url: str) -> int:
    response = await client.send(client.build_request("GET", url), stream=True)
    try:
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
        return size
    finally:
        await response.aclose()


async def small(client: httpx.AsyncClient, base: str, total: int, concurrency: int) -> float:
    """Requests per second for 1 KiB responses."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await _get(client, base + "/small")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


async def download(client: httpx.AsyncClient, base: str, mib: int) -> float:
    """MiB/s for one streamed download."""
    start = time.perf_counter()
    size = await _get(client, f"{base}/download?mib={mib}")
    assert size == mib * 1024 * 1024, size
    return mib / (time.perf_counter() - start)


async def upload(client: httpx.AsyncClient, base: str, mib: int) -> float:
    """MiB/s for one streamed (chunked) upload."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(mib * 16):
            yield CHUNK

    start = time.perf_counter()
    request = client.build_request("POST", base + "/upload", content=body())
    response = await client.send(request)
    assert int(response.text) == mib * 1024 * 1024, response.text
    return mib / (time.perf_counter() - start)


async def cancel_mid_stream(client: httpx.AsyncClient, base: str) -> bool:
    """Cancelling a task that is reading a body must not wedge the pool."""
    response = await client.send(
        client.build_request("GET", f"{base}/download?mib=512"), stream=True
    )
    got = asyncio.Event()

    async def read() -> None:
        async for _ in response.aiter_raw():
            got.set()

    task = asyncio.ensure_future(read())
    await asyncio.wait_for(got.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await response.aclose()
    # The pool must still serve requests afterwards.
    return await asyncio.wait_for(_get(client, base + "/small"), 10) == 1024


def _clients() -> dict[str, Callable[[], httpx.AsyncClient]]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
    timeout = httpx.Timeout(None, connect=10.0)
    makers: dict[str, Callable[[], httpx.AsyncClient]] = {
        "httpcore": lambda: httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(limits=limits), timeout=timeout
        )
    }
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        print("httpx-aiohttp not installed: skipping it")
    else:
        makers["httpx-aiohttp"] = lambda: httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits), timeout=timeout
        )
    proxy_module = importlib.import_module("h3_fastapi._transports")
    if proxy_module._aiohttp_transport(None) is not None:
        makers["h3 aiohttp"] = lambda: httpx.AsyncClient(
            transport=proxy_module._aiohttp_transport(None), timeout=timeout
        )
    return makers


async def through_proxy(
    args: argparse.Namespace, upstream_port: int
) -> dict[str, dict[str, float]]:
    """The same workloads end to end: client -> proxy (child, per transport) -> upstream."""
    results: dict[str, dict[str, float]] = {}
    loadgen = _clients().get("h3 aiohttp") or _clients()["httpcore"]
    for name in ("httpcore", "aiohttp"):
        port = _free_port()
        env = {
            "PROXY_UPSTREAM": f"http://127.0.0.1:{upstream_port}",
            "H3_PROXY_TRANSPORT": name,
        }
        proc = _start(port, "tests.apps.proxy_app:app", env)
        base = f"http://127.0.0.1:{port}"
        try:
            async with loadgen() as client:
                await small(client, base, 200, 8)
                results[f"proxy/{name}"] = {
                    "small rps c=1": await small(client, base, args.requests // 2, 1),
                    "small rps c=64": await small(client, base, args.requests // 2, 64),
                    "download MiB/s": await download(client, base, args.mib // 2),
                    "upload MiB/s": await upload(client, base, args.mib // 2),
                }
        finally:
            proc.terminate()
            proc.wait()
    return results


async def run(args: argparse.Namespace, base: str) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name, make in _clients().items():
        async with make() as client:
            await small(client, base, 200, 8)  # warm up
            row = {
                "small rps c=1": await small(client, base, args.requests, 1),
                "small rps c=64": await small(client, base, args.requests, 64),
                "download MiB/s": await download(client, base, args.mib),
                "upload MiB/s": await upload(client, base, args.mib),
                "cancel ok": float(await cancel_mid_stream(client, base)),
            }
        results[name] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--no-proxy", dest="proxy", action="store_false", help="transports only")
    args = parser.parse_args()
    port = _free_port()
    proc = _start(port, "bench.proxy_transport:upstream")
    try:
        direct = asyncio.run(run(args, f"http://127.0.0.1:{port}"))
        proxied = asyncio.run(through_proxy(args, port)) if args.proxy else {}
    finally:
        proc.terminate()
        proc.wait()
    _table("transport alone (ratios: each vs httpcore)", direct)
    if proxied:
        _table("through the proxy (ratio: aiohttp vs httpcore)", proxied)


def _table(title: str, results: dict[str, dict[str, float]]) -> None:
    names = list(results)
    metrics = list(results[names[0]])
    print(f"\n{title}")
    print(f"{'metric':<18}" + "".join(f"{n:>16}" for n in names))
    for metric in metrics:
        values = [results[n][metric] for n in names]
        line = f"{metric:<18}" + "".join(f"{v:>16.1f}" for v in values)
        if values[0] and metric != "cancel ok":
            line += "   " + " ".join(f"{v / values[0]:.2f}x" for v in values[1:])
        print(line)


if __name__ == "__main__":
    main()
