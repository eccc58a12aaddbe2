"""Header discipline for the proxy: what crosses it, what is rewritten on the way.

Follows h3 v2: hop-by-hop request headers (and any header the request's
``Connection`` names) never reach the upstream, hop-by-hop and framing response
headers never reach the client, ``Set-Cookie`` values stay separate and can
have their ``Domain``/``Path`` rewritten, and ``Location``/``Refresh`` pointing
at the upstream are turned back into the proxy's own origin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote, urlsplit

from starlette.requests import Request

__all__ = [
    "FRAMING_REQUEST_HEADERS",
    "IGNORED_REQUEST_HEADERS",
    "IGNORED_RESPONSE_HEADERS",
    "MAX_REWRITTEN_HEADER",
    "HeaderInput",
    "connection_tokens",
    "filter_request_headers",
    "filter_response_headers",
    "get_proxy_request_headers",
    "join_proxy_path",
    "merge_headers",
    "origin_of",
    "rewrite_cookie",
    "rewrite_location_headers",
    "split_refresh",
    "x_forwarded",
]

# Request headers the proxy never forwards as they came in.
IGNORED_REQUEST_HEADERS = frozenset(
    {
        "transfer-encoding",
        "accept-encoding",  # the body is decoded on the way back
        "connection",
        "keep-alive",
        "upgrade",
        "expect",
        "te",
        "trailer",
        "host",
        "proxy-authorization",  # credentials for this proxy, not the upstream
        "proxy-connection",
    }
)

# The true hop-by-hop subset: ``forward_headers`` cannot force these through.
# Only the "soft" drops (``host``, ``accept-encoding``, ``expect``) can be.
FRAMING_REQUEST_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    }
)

# Upstream response headers the client never sees.
IGNORED_RESPONSE_HEADERS = frozenset(
    {
        "content-encoding",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "upgrade",
        "trailer",
        "te",
    }
)

# A mapping, or (name, value) pairs; a ``None`` value removes the header.
HeaderInput = Mapping[str, "str | None"] | Iterable[tuple[str, "str | None"]]


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """The lower-cased field names that ``Connection`` header values nominate."""
    tokens: set[str] = set()
    for value in values:
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def filter_request_headers(
    items: Iterable[tuple[str, str]],
    *,
    host: bool = False,
    forward_headers: Iterable[str] | None = None,
    filter_headers: Iterable[str] | None = None,
) -> dict[str, str]:
    """The incoming request headers that may be forwarded, as a lower-cased dict.

    ``filter_headers`` always wins; ``forward_headers`` forces through a
    "soft" drop but never a hop-by-hop header or one ``Connection`` names.
    Repeated headers are joined with ``", "`` (``cookie`` with ``"; "``).
    """
    pairs = [(name.lower(), value) for name, value in items]
    denied = {h.lower() for h in filter_headers or ()}
    forced = {h.lower() for h in forward_headers or ()}
    nominated = connection_tokens(v for n, v in pairs if n == "connection")
    headers: dict[str, str] = {}
    for name, value in pairs:
        if name in denied or name in nominated:
            continue
        keep = (
            name not in IGNORED_REQUEST_HEADERS
            or (name == "host" and host)
            or (name in forced and name not in FRAMING_REQUEST_HEADERS)
        )
        if not keep:
            continue
        if name in headers:
            separator = "; " if name == "cookie" else ", "
            headers[name] = headers[name] + separator + value
        else:
            headers[name] = value
    return headers


def filter_response_headers(
    items: Iterable[tuple[str, str]], *, keep_content_encoding: bool = False
) -> list[tuple[str, str]]:
    """Upstream response headers minus hop-by-hop, framing and ``Connection``-named ones.

    Order and repeats are kept, so each ``Set-Cookie`` stays its own header.
    ``keep_content_encoding`` keeps ``Content-Encoding`` (the body is relayed
    compressed, as it came).
    """
    pairs = [(name.lower(), value) for name, value in items]
    nominated = connection_tokens(v for n, v in pairs if n == "connection")
    return [
        (name, value)
        for name, value in pairs
        if (name not in IGNORED_RESPONSE_HEADERS or (keep_content_encoding and name == _CODING))
        and name not in nominated
    ]


_CODING = "content-encoding"


def merge_headers(base: Mapping[str, str], *inputs: HeaderInput | None) -> dict[str, str]:
    """``base`` overlaid with each input in turn (names lower-cased; ``None`` removes)."""
    merged = {name.lower(): value for name, value in base.items()}
    for headers in inputs:
        if not headers:
            continue
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            key = str(name).lower()
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = str(value)
    return merged


# Header values longer than this are relayed without being parsed or rewritten.
MAX_REWRITTEN_HEADER = 8192


def rewrite_cookie(cookie: str, rewrite: str | Mapping[str, str], attribute: str) -> str:
    """Rewrite one ``Set-Cookie`` attribute (``domain`` or ``path``) by a map.

    A string applies to every value; a mapping is looked up by the current
    value, ``"*"`` matching any. An empty replacement removes the attribute.
    Attributes are read as RFC 6265 5.2 does (name and value trimmed of
    whitespace, case-insensitive name), so ``Domain =x`` is the ``Domain``
    attribute a browser sees. One pass over the value: linear time.
    """
    if len(cookie) > MAX_REWRITTEN_HEADER:
        return cookie
    mapping: Mapping[str, str] = {"*": rewrite} if isinstance(rewrite, str) else rewrite
    first, *attributes = cookie.split(";")
    parts = [first]
    for text in attributes:
        name, has_value, value = text.partition("=")
        if name.strip().lower() != attribute:
            parts.append(text)
            continue
        previous = value.strip()
        if previous in mapping:
            replacement = mapping[previous]
        elif "*" in mapping:
            replacement = mapping["*"]
        else:
            parts.append(text)
            continue
        if replacement:
            parts.append(f" {name.strip()}={replacement}" if has_value else text)
    return ";".join(parts)


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute URL (default port left out), else ``None``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if not scheme or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _rewrite_origin(value: str, target_origin: str | None, request_origin: str) -> str | None:
    if not target_origin or target_origin == request_origin:
        return None
    if value.startswith("//"):  # protocol-relative: resolve against the target
        value = target_origin.split(":", 1)[0] + ":" + value
    if origin_of(value) != target_origin:
        return None  # relative or third-party: not ours to rewrite
    parts = urlsplit(value)
    path = parts.path or "/"
    if not request_origin and path.startswith(("//", "/\\")):
        path = "/." + path  # a relative "//host/..." would leave the origin
    rewritten = request_origin + path
    if parts.query:
        rewritten += "?" + parts.query
    if parts.fragment:
        rewritten += "#" + parts.fragment
    return rewritten


def _rewrite_prefix(value: str, mapping: Mapping[str, str]) -> str | None:
    for prefix, replacement in mapping.items():
        if value.startswith(prefix):
            return replacement + value[len(prefix) :]
    return None


def split_refresh(value: str) -> tuple[str, str, str, str] | None:
    """``(before, quote, url, after)`` of a ``Refresh`` value such as ``5; url='/x'``.

    Read left to right once (no backtracking): the delay, a ``;`` or ``,``,
    ``url``, ``=``, an optional quote, the URL up to the matching quote.
    ``None`` when the value has no URL or is longer than ``MAX_REWRITTEN_HEADER``.
    """
    if len(value) > MAX_REWRITTEN_HEADER:
        return None
    i, n = 0, len(value)
    while i < n and (value[i].isdigit() or value[i] in ". \t"):
        i += 1
    if i < n and value[i] in ";,":
        i += 1
    while i < n and value[i] in " \t":
        i += 1
    if value[i : i + 3].lower() != "url":
        return None
    i += 3
    while i < n and value[i] in " \t":
        i += 1
    if i >= n or value[i] != "=":
        return None
    i += 1
    while i < n and value[i] in " \t":
        i += 1
    quote = value[i] if i < n and value[i] in "'\"" else ""
    start = i + len(quote)
    rest = value[start:]
    url = rest.rstrip(" \t")
    after = rest[len(url) :]
    if quote and url.endswith(quote):
        url = url[: -len(quote)]
    elif quote:
        return None
    return value[:i], quote, url, after


def rewrite_location_headers(
    headers: list[tuple[str, str]],
    rewrite: bool | Mapping[str, str],
    target_origin: str | None,
    request_origin: str,
) -> list[tuple[str, str]]:
    """Rewrite ``location`` and ``refresh`` like nginx ``proxy_redirect``.

    ``True``: a URL on ``target_origin`` moves to ``request_origin`` (path,
    query and fragment kept). A mapping: the first matching URL prefix is
    replaced. Other values pass through untouched.
    """

    def rewrite_value(value: str) -> str | None:
        if rewrite is True:
            return _rewrite_origin(value, target_origin, request_origin)
        if isinstance(rewrite, Mapping):
            return _rewrite_prefix(value, rewrite)
        return None

    result: list[tuple[str, str]] = []
    for name, value in headers:
        if name == "location" and value and len(value) <= MAX_REWRITTEN_HEADER:
            value = rewrite_value(value) or value
        elif name == "refresh" and value:
            parts = split_refresh(value)
            new_url = rewrite_value(parts[2]) if parts else None
            if parts and new_url:
                before, quote, _, after = parts
                value = before + quote + new_url + quote + after
        result.append((name, value))
    return result


def get_proxy_request_headers(
    request: Request,
    *,
    host: bool = False,
    forward_headers: Iterable[str] | None = None,
    filter_headers: Iterable[str] | None = None,
) -> dict[str, str]:
    """The incoming request headers that are safe to forward (lower-case names).

    Drops ``transfer-encoding, accept-encoding, connection, keep-alive,
    upgrade, expect, te, trailer, host, proxy-authorization,
    proxy-connection`` and every header the request's ``Connection`` names.
    ``host=True`` keeps ``host``; ``forward_headers`` keeps the soft drops
    (``host``, ``accept-encoding``, ``expect``) but never a hop-by-hop one;
    ``filter_headers`` drops more and wins over both.
    """
    items = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
    return filter_request_headers(
        items, host=host, forward_headers=forward_headers, filter_headers=filter_headers
    )


def x_forwarded(headers: dict[str, str], request: Request) -> dict[str, str]:
    """``xfwd``: append the client to ``x-forwarded-for``, set proto/host/port."""
    headers = dict(headers)
    client = request.client
    if client is not None and client.host:
        previous = headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{previous}, {client.host}" if previous else client.host
    url = request.url
    headers["x-forwarded-proto"] = url.scheme
    headers["x-forwarded-host"] = url.netloc
    headers["x-forwarded-port"] = str(url.port or (443 if url.scheme == "https" else 80))
    return headers


def join_proxy_path(base: str, path: str, query: str = "") -> str:
    """``base`` + ``/`` + ``path`` (+ ``?query``) that cannot leave ``base``'s path.

    For the gateway pattern, ``proxy_request(request, join_proxy_path(BASE, path,
    request.url.query))``: ``f"{BASE}/{path}"`` would let ``../``, ``%2e%2e/`` or
    ``..%2f`` (the server decodes those before routing) climb out of ``BASE``,
    because the URL parser removes dot segments. Here ``path`` is split on ``/``
    and ``\\``; a segment that is, or decodes to, ``.`` or ``..``, or decodes to
    something holding a slash, raises ``ValueError`` (answer 400 or 404); every
    segment is percent-encoded, so ``?`` and ``#`` stay in the path. ``query`` is
    appended as it is (the raw query string).
    """
    segments = []
    for segment in path.replace("\\", "/").split("/"):
        if not segment:
            continue
        decoded = segment
        for _ in range(3):  # also what a double-decoding upstream would see
            decoded = unquote(decoded)
            if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
                raise ValueError(f"path segment {segment!r} would leave the base path")
        segments.append(quote(segment, safe=""))
    url = base.rstrip("/") + "/" + "/".join(segments)
    return f"{url}?{query}" if query else url
