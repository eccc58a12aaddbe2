"""Compare httpx transports for the proxy: httpcore (httpx default) vs httpx-aiohttp.

Run: ``python bench/proxy_transport.py`` (needs ``pip install httpx-aiohttp``).

An upstream (raw ASGI on uvicorn, in a child process) serves small bodies,
a large streamed download and an upload sink. Each transport is driven
through the same ``httpx.AsyncClient`` API the proxy uses
(``client.send(request, stream=True)``), so the numbers are what the proxy
would see. Prints requests/s and MiB/s per transport and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
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


def _start_upstream(port: int) -> subprocess.Popen[bytes]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "uvicorn", "bench.proxy_transport:upstream"]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, "PYTHONPATH": root})
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
        print("httpx-aiohttp not installed: measuring httpcore only")
    else:
        makers["aiohttp"] = lambda: httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits), timeout=timeout
        )
    return makers


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
    args = parser.parse_args()
    port = _free_port()
    proc = _start_upstream(port)
    try:
        results = asyncio.run(run(args, f"http://127.0.0.1:{port}"))
    finally:
        proc.terminate()
        proc.wait()
    names = list(results)
    metrics = list(results[names[0]])
    print(f"{'metric':<18}" + "".join(f"{n:>12}" for n in names) + ("   ratio" if len(names) > 1 else ""))
    for metric in metrics:
        values = [results[n][metric] for n in names]
        line = f"{metric:<18}" + "".join(f"{v:>12.1f}" for v in values)
        if len(values) > 1 and values[0]:
            line += f"   {values[1] / values[0]:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
