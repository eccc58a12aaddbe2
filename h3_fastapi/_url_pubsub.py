"""``UrlPubSub``: a ``BackplanePubSub`` built from a URL and the options all transports share.

``RedisPubSub``, ``RedisClusterPubSub``, ``PostgresPubSub`` and ``NatsPubSub``
take the same options with the same meaning (prefix, history, on_error,
backoff, health checks, timeouts, pending bound) and differ only in the
backplane they build from the URL: each names it in ``make_backplane``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .backplane import BackplanePubSub
from .pubsub import Backplane, check_history

__all__ = ["UrlPubSub", "redacted"]

_SECRET_PARAMS = {"password", "pass", "pwd", "secret", "token", "auth", "api_key", "apikey"}


def redacted(url: str) -> str:
    """``url`` without secrets, for log lines: userinfo and ``?password=``-like values."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<unparsable URL>"
    if parts.username or parts.password is not None:
        host = "***@" + host
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs])
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


class UrlPubSub(BackplanePubSub):
    """The options every URL-configured backplane takes; see ``RedisPubSub``.

    Options a transport adds (``table=`` for PostgreSQL) are passed on to its
    ``make_backplane``.
    """

    #: The URL used when none is given.
    default_url = ""
    #: What the log lines call the backplane, before its redacted URL.
    label = "backplane"

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "h3:",
        history: int = 0,
        history_ttl: float | None = None,
        on_error: Callable[[Exception], Any] | None = None,
        reconnect_backoff: tuple[float, float] = (0.1, 2.0),
        health_check_interval: float = 15.0,
        command_timeout: float = 5.0,
        max_pending: int = 10_000,
        **transport: Any,
    ) -> None:
        check_history(history, history_ttl)
        url = url or self.default_url
        backplane = self.make_backplane(
            url,
            prefix=prefix,
            history=history,
            reconnect_backoff=reconnect_backoff,
            health_check_interval=health_check_interval,
            command_timeout=command_timeout,
            # Only when set: a ``make_backplane`` written before the option still works.
            **({"history_ttl": history_ttl} if history_ttl is not None else {}),
            **transport,
        )
        super().__init__(
            backplane,
            on_error=on_error,
            reconnect_backoff=reconnect_backoff,
            command_timeout=command_timeout,
            max_pending=max_pending,
            name=f"{self.label} {self.shown(url)}",
        )
        self.url = url
        self.prefix = prefix
        self.history_ttl = history_ttl
        self.health_check_interval = health_check_interval

    def make_backplane(self, url: str, **options: Any) -> Backplane:
        """The transport's backplane for ``url`` (options as ``__init__`` got them)."""
        raise NotImplementedError

    def shown(self, url: str) -> str:
        """``url`` as log lines show it."""
        return redacted(url)
