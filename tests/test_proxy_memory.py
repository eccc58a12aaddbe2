"""Bodies stream through the proxy in constant memory, downloads and uploads alike.

A child-process proxy (``tests/apps/proxy_app.py:app``) relays a large
download and a large upload between this test and a child-process upstream.
The proxy's peak RSS (``VmHWM``, reset before each transfer) may grow by less
than 64 MiB. ``H3_PROXY_MEMORY_MIB`` sets the size (default 256, at least 256; 1024 for the
full 1 GiB check).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ChildServer, need

pytestmark = pytest.mark.slow
MIB = 1024 * 1024
SIZE_MIB = max(256, int(os.environ.get("H3_PROXY_MEMORY_MIB", "256")))
LIMIT = 64 * MIB


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Reset the peak RSS to the current RSS; return the current RSS in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_kib(pid, "VmRSS") * 1024


def peak(pid: int) -> int:
    return status_kib(pid, "VmHWM") * 1024


@pytest.fixture
def servers(spawn_server: Callable[..., ChildServer]) -> tuple[ChildServer, ChildServer]:
    need(sys.platform.startswith("linux"), "RSS is measured through /proc (Linux)")
    upstream = spawn_server("tests.apps.proxy_app:upstream")
    proxy = spawn_server("tests.apps.proxy_app:app", env={"PROXY_UPSTREAM": upstream.url})
    return upstream, proxy


async def warm_up(client: httpx.AsyncClient, url: str) -> None:
    for _ in range(3):
        response = await client.get(url + "/download?mib=8")
        assert len(response.content) == 8 * MIB
        response = await client.post(url + "/upload", content=b"x" * MIB)
        assert response.text == str(MIB)


async def test_download_and_upload_stream_in_constant_memory(
    servers: tuple[ChildServer, ChildServer],
) -> None:
    _, proxy = servers
    pid = proxy.proc.pid
    async with httpx.AsyncClient(timeout=120) as client:
        await warm_up(client, proxy.url)

        before = reset_peak(pid)
        started = time.monotonic()
        received = 0
        async with client.stream("GET", f"{proxy.url}/download?mib={SIZE_MIB}") as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received += len(chunk)
        download_seconds = time.monotonic() - started
        download_growth = peak(pid) - before
        assert received == SIZE_MIB * MIB

        async def body() -> AsyncIterator[bytes]:
            chunk = b"\1" * MIB
            for _ in range(SIZE_MIB):
                yield chunk

        before = reset_peak(pid)
        started = time.monotonic()
        response = await client.post(f"{proxy.url}/upload", content=body())
        upload_seconds = time.monotonic() - started
        upload_growth = peak(pid) - before
        assert response.status_code == 200
        assert response.text == str(SIZE_MIB * MIB)

    print(
        f"\n{SIZE_MIB} MiB through the proxy: download {SIZE_MIB / download_seconds:.0f} MiB/s,"
        f" RSS +{download_growth / MIB:.1f} MiB; upload {SIZE_MIB / upload_seconds:.0f} MiB/s,"
        f" RSS +{upload_growth / MIB:.1f} MiB"
    )
    assert download_growth < LIMIT, f"download grew the proxy by {download_growth / MIB:.1f} MiB"
    assert upload_growth < LIMIT, f"upload grew the proxy by {upload_growth / MIB:.1f} MiB"
