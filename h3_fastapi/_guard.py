"""The proxy's optional SSRF guard: allow-lists checked after DNS resolution.

The connection goes to the address that was checked, so a second lookup
cannot swap it (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from ._hooks import logger


class TargetNotAllowed(httpx.ConnectError):
    """The SSRF guard refused the upstream address (the client sees a plain 502)."""


# --- SSRF guard -------------------------------------------------------------

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class _Guard:
    """Which upstream addresses may be connected to, checked on the resolved IPs."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[_Network, ...]
    restrict: bool
    deny_private: bool

    def refusal(self, host: str, addresses: Iterable[str]) -> str | None:
        """Why connecting to ``host`` at ``addresses`` is refused, or ``None``."""
        name = host.lower().rstrip(".").strip("[]")
        name_ok = name in self.names or name.endswith(self.suffixes)
        found = False
        for text in addresses:
            found = True
            ip = _parse_ip(text)
            if ip is None:
                return f"{host!r} resolved to an unparsable address"
            listed = any(ip.version == net.version and ip in net for net in self.networks)
            if self.deny_private and not ip.is_global and not listed:
                return f"{host!r} resolves to non-public address {ip}"
            if self.restrict and not name_ok and not listed:
                return f"{host!r} ({ip}) is not in allow_hosts"
        return None if found else f"{host!r} did not resolve"


def _parse_ip(text: str) -> _Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _make_guard(allow_hosts: Iterable[str] | str | None, deny_private: bool) -> _Guard | None:
    if allow_hosts is None and not deny_private:
        return None
    if isinstance(allow_hosts, str):
        allow_hosts = [allow_hosts]
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[_Network] = []
    for entry in allow_hosts or ():
        entry = entry.strip().lower()
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        if entry.startswith("*."):
            suffixes.append(entry[1:])
        else:
            names.add(entry.rstrip("."))
    return _Guard(
        frozenset(names),
        tuple(suffixes),
        tuple(networks),
        restrict=allow_hosts is not None,
        deny_private=deny_private,
    )


async def _resolve_checked(guard: _Guard, host: str, port: int) -> list[str]:
    """Resolve ``host`` and return its addresses, or raise ``TargetNotAllowed``."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpx.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    reason = guard.refusal(host, addresses)
    if reason is not None:
        logger.warning("h3_fastapi: proxy refused upstream: %s", reason)
        raise TargetNotAllowed(reason)
    return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that connects only to addresses the guard allows."""

    def __init__(self, guard: _Guard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await _resolve_checked(self._guard, host, port)
        except httpx.ConnectError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        # Connect to an address that was checked, never to a second lookup.
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed by the proxy guard")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
