"""The envelope a publish travels in between processes: a pure codec, no I/O.

Wire form: ``header "\\n" payload``. The header is JSON,
``[origin, namespace, binary]`` or ``[origin, namespace, binary, extensions]``:

- ``origin``: the publishing pub/sub's random id. A process drops envelopes
  carrying its own origin (it delivered them locally already), which is also
  how ``exclude=`` holds across processes: the excluded subscriber lives in the
  origin process, the only one that applies it.
- ``namespace``: the publisher's namespace or ``null``.
- ``binary``: the payload is bytes (a binary frame) rather than UTF-8 text.
- ``extensions``: an optional JSON object for what later versions carry (a
  trace context, say); decoders ignore keys they do not know.

Everything from a backplane is untrusted: ``decode`` accepts only a short
header of exactly that shape and raises ``MalformedEnvelope`` for anything else,
never ``RecursionError`` or ``MemoryError`` from a crafted one.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

__all__ = ["MAX_HEADER", "Envelope", "MalformedEnvelope", "decode", "encode"]

# A real header is ``["<32 hex>", "<namespace>", false]``: far below this (a
# namespace is a route path). Parsing is bounded by it; nesting deeper than the
# recursion limit within it is caught.
MAX_HEADER = 4096


class MalformedEnvelope(ValueError):
    """Data on a backplane that is not an envelope this codec wrote."""


class Envelope:
    """A decoded envelope."""

    __slots__ = ("data", "extensions", "namespace", "origin")

    def __init__(
        self,
        origin: str,
        namespace: str | None,
        data: str | bytes,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        self.origin = origin
        self.namespace = namespace
        self.data = data
        self.extensions = extensions

    def __repr__(self) -> str:
        return f"<Envelope from {self.origin[:8]} ns={self.namespace!r} {len(self.data)} bytes>"


def encode(
    origin: str,
    namespace: str | None,
    data: str | bytes,
    extensions: dict[str, Any] | None = None,
) -> bytes:
    """``data`` from ``origin`` (in ``namespace``) as envelope bytes."""
    binary = isinstance(data, bytes)
    if extensions:
        header = json.dumps([origin, namespace, binary, extensions]).encode()
        if len(header) > MAX_HEADER:
            raise ValueError(f"envelope header over {MAX_HEADER} bytes")
    else:
        header = _header(origin, namespace, binary)
    payload = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    return header + b"\n" + payload


def decode(raw: bytes) -> Envelope:
    """Envelope bytes -> ``Envelope``; ``MalformedEnvelope`` for anything else."""
    newline = raw.find(b"\n", 0, MAX_HEADER + 1)
    if newline < 0:
        raise MalformedEnvelope("no envelope header (or one over the size limit)")
    origin, namespace, binary, extensions = _parse_header(raw[:newline])
    payload = raw[newline + 1 :]
    if binary:
        return Envelope(origin, namespace, payload, extensions)
    try:
        text = payload.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise MalformedEnvelope(f"text payload is not UTF-8: {exc}") from None
    return Envelope(origin, namespace, text, extensions)


@lru_cache(maxsize=256)
def _header(origin: str, namespace: str | None, binary: bool) -> bytes:
    header = json.dumps([origin, namespace, binary]).encode()
    if len(header) > MAX_HEADER:
        raise ValueError(f"envelope header over {MAX_HEADER} bytes (namespace too long)")
    return header


Header = tuple[str, "str | None", bool, "dict[str, Any] | None"]


def _parse_header(header: bytes) -> Header:
    # Headers repeat (one per publisher and namespace): parse each once.
    # Extensions vary per message, so those headers are not cached.
    if header.endswith(b"]") and header.count(b"{") == 0:
        return _parse_plain_header(header)
    return _parse(header)


@lru_cache(maxsize=256)
def _parse_plain_header(header: bytes) -> Header:
    return _parse(header)


def _parse(header: bytes) -> Header:
    if not header.startswith(b'["'):
        raise MalformedEnvelope("envelope header is not a JSON list starting with the origin")
    try:
        fields = json.loads(header)
    except (ValueError, RecursionError) as exc:
        raise MalformedEnvelope(f"envelope header is not JSON: {type(exc).__name__}") from None
    if not isinstance(fields, list) or len(fields) not in (3, 4):
        raise MalformedEnvelope("envelope header is not [origin, namespace, binary]")
    origin, namespace, binary = fields[:3]
    extensions = fields[3] if len(fields) == 4 else None
    if (
        not isinstance(origin, str)
        or not (namespace is None or isinstance(namespace, str))
        or not isinstance(binary, bool)
        or not (extensions is None or isinstance(extensions, dict))
    ):
        raise MalformedEnvelope("envelope header fields have the wrong types")
    return origin, namespace, binary, extensions
