"""What the proxy does with a compressed upstream body, and a decoder that cannot blow up.

The rule: ``Content-Encoding`` answers the ``Accept-Encoding`` that went upstream.

* The request that went upstream carried ``Accept-Encoding`` (the client's, kept
  with ``forward_headers=["accept-encoding"]``, or one set with ``headers=``): the
  body is relayed as it came, compressed, with its ``Content-Encoding``. The
  proxy never inflates it.
* The upstream compressed although nobody asked (no ``Accept-Encoding`` went
  upstream): the client may not understand the coding, so ``gzip``/``deflate``
  are decoded for it and ``Content-Encoding`` is dropped. Decoding is bounded:
  each step yields at most ``PIECE`` bytes (memory stays flat however far a body
  inflates) and a body that inflates past ``MAX_RATIO`` times its compressed size
  plus ``SLACK`` is cut (a decompression bomb). Other codings (``br``, ``zstd``,
  unknown ones) are relayed as they are, with their ``Content-Encoding``.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import httpx

__all__ = ["MAX_RATIO", "PIECE", "SLACK", "DecodingLimitExceeded", "bounded_decode", "decodable"]

PIECE = 64 * 1024
MAX_RATIO = 100
SLACK = 1024 * 1024

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class DecodingLimitExceeded(httpx.DecodingError):
    """An upstream body inflated past the proxy's bound."""


def decodable(encoding: str) -> bool:
    """Whether ``encoding`` (one ``Content-Encoding`` value) is one the proxy decodes."""
    return encoding.strip().lower() in _WBITS


async def bounded_decode(chunks: AsyncIterator[bytes], encoding: str) -> AsyncIterator[bytes]:
    """Inflate ``chunks`` (raw, ``gzip``/``deflate``) in pieces of at most ``PIECE`` bytes."""
    wbits = _WBITS[encoding.strip().lower()]
    decoder = zlib.decompressobj(wbits)
    first = True
    read = written = 0
    async for chunk in chunks:
        read += len(chunk)
        data = chunk
        while data:
            try:
                piece = decoder.decompress(data, PIECE)
            except zlib.error as exc:
                if not (first and wbits == zlib.MAX_WBITS):
                    raise httpx.DecodingError(str(exc)) from exc
                # "deflate" sent as a raw stream without the zlib header.
                decoder = zlib.decompressobj(-zlib.MAX_WBITS)
                wbits = -zlib.MAX_WBITS
                continue
            first = False
            data = decoder.unconsumed_tail
            written += len(piece)
            if written > MAX_RATIO * read + SLACK:
                raise DecodingLimitExceeded(
                    f"the upstream body inflated past {MAX_RATIO}x its size ({read} bytes read)"
                )
            if piece:
                yield piece
            if decoder.eof:
                return
    while not decoder.eof:  # output zlib still holds after the last chunk
        piece = decoder.decompress(b"", PIECE)
        if not piece:
            return
        written += len(piece)
        if written > MAX_RATIO * read + SLACK:
            raise DecodingLimitExceeded(f"the upstream body inflated past {MAX_RATIO}x its size")
        yield piece
