"""The proxy's optional SSRF guard: allow-lists checked on the address actually connected to.

Where the check runs, per transport:

* httpcore: ``_GuardedBackend.connect_tcp`` resolves the host itself
  (``getaddrinfo``, which reads every numeric form: ``2130706433``, ``127.1``,
  ``0x7f.1``, ``0177.0.0.1``, ``0``), checks every address and connects to a
  checked one, never to a second lookup.
* aiohttp: the connector's ``socket_factory`` sees the ``sockaddr`` aiohttp is
  about to connect to, whatever path produced it (its IP-literal shortcut, its
  resolver, its DNS cache); the host name comes from a context variable set for
  the request.
* WebSocket proxy: ``resolve_checked`` then a connect to that address.

An IPv6 address that embeds an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``,
IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``,
6to4 ``2002::/16``) is judged by the IPv4 address it reaches.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from ._hooks import logger

__all__ = ["TargetNotAllowed"]


class TargetNotAllowed(httpx.ConnectError):
    """The SSRF guard refused the upstream address (the client sees a plain 502)."""


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for or routes to, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    value = int(ip)
    if any(ip in net for net in _NAT64) or (ip in _IPV4_COMPATIBLE and value > 1):
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


def parse_ip(text: str) -> _Address | None:
    """An IP literal in canonical notation (scope id dropped), else ``None``."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Guard:
    """Which upstream addresses may be connected to, checked on the resolved IPs."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[_Network, ...]
    restrict: bool
    deny_private: bool

    def _listed(self, ip: _Address) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)

    def address_refusal(self, host: str, text: str) -> str | None:
        """Why connecting to ``host`` at the address ``text`` is refused, or ``None``."""
        ip = parse_ip(text)
        if ip is None:
            return f"{host!r} resolved to an unparsable address"
        embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        candidates: list[_Address] = [ip] if embedded is None else [ip, embedded]
        listed = any(self._listed(c) for c in candidates)
        # Judged by the IPv4 address reached, not by the embedding prefix: Python 3.13
        # calls all of 2002::/16 and 64:ff9b:1::/48 non-global, 3.12.1 all global.
        reached = ip if embedded is None else embedded
        if self.deny_private and not listed and not reached.is_global:
            return f"{host!r} resolves to non-public address {ip}"
        if self.restrict and not listed and not self.name_allowed(host):
            return f"{host!r} ({ip}) is not in allow_hosts"
        return None

    def name_allowed(self, host: str) -> bool:
        name = host.lower().rstrip(".").strip("[]")
        return name in self.names or name.endswith(self.suffixes)

    def refusal(self, host: str, addresses: Iterable[str]) -> str | None:
        """Why connecting to ``host`` at ``addresses`` is refused, or ``None``."""
        found = False
        for text in addresses:
            found = True
            reason = self.address_refusal(host, text)
            if reason is not None:
                return reason
        return None if found else f"{host!r} did not resolve"


def make_guard(allow_hosts: Iterable[str] | str | None, deny_private: bool) -> Guard | None:
    """The guard for these options, or ``None`` when nothing is restricted."""
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
    return Guard(
        frozenset(names),
        tuple(suffixes),
        tuple(networks),
        restrict=allow_hosts is not None,
        deny_private=deny_private,
    )


def refuse(reason: str) -> TargetNotAllowed:
    logger.warning("h3_fastapi: proxy refused upstream: %s", reason)
    return TargetNotAllowed(reason)


async def resolve_checked(guard: Guard, host: str, port: int) -> list[str]:
    """Resolve ``host`` (every numeric form too) and return its addresses, all allowed."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpx.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    reason = guard.refusal(host, addresses)
    if reason is not None:
        raise refuse(reason)
    return addresses


# The host name of the request the aiohttp connector is connecting for.
connecting_host: contextvars.ContextVar[str] = contextvars.ContextVar("h3_proxy_host")


class GuardedSocketFactory:
    """aiohttp ``socket_factory``: refuses a socket for an address the guard does not allow.

    It runs right before ``connect()`` with the exact ``sockaddr``, so no host form
    and no resolver path can slip past it.
    """

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def __call__(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        host = connecting_host.get("")
        reason = self._guard.address_refusal(host, str(sockaddr[0]))
        if reason is not None:
            raise refuse(reason)
        sock = socket.socket(family=family, type=kind, proto=proto)
        sock.setblocking(False)
        return sock


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that connects only to addresses the guard allows."""

    def __init__(self, guard: Guard) -> None:
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
        addresses = await resolve_checked(self._guard, host, port)
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
        raise refuse("unix sockets are not allowed by the proxy guard")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
