"""Redis history for SSE replay: one stream per topic, written with the publish.

With ``history=N`` a publish is one Lua call that XADDs the envelope to the
stream ``prefix + topic`` (``MAXLEN ~ N``) and PUBLISHes ``stream id "\\n"
envelope`` on the channel of the same name, so the stream order is the publish
order and every receiver learns the stream id, which becomes the event id.
Replay reads the stream with XREVRANGE after the client's ``Last-Event-ID``.
With ``history_ttl`` the same call sets the stream to expire that long after
this (its latest) publish.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["HISTORY_SCRIPT", "history_entries"]

# KEYS[1] stream; ARGV: maxlen, channel, envelope, publish command, expiry in ms (0: none).
HISTORY_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[3])
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
redis.call(ARGV[4], ARGV[2], id .. '\\n' .. ARGV[3])
return id
"""


def history_entries(entries: Iterable[Any]) -> list[tuple[str, bytes]]:
    """XREVRANGE entries (newest first) -> ``(stream id, envelope)``, oldest first.

    Entries without the envelope field are skipped (the stream is not only ours).
    """
    found = []
    for entry_id, fields in entries:
        envelope = fields.get(b"m") if isinstance(fields, dict) else None
        if isinstance(envelope, bytes):
            found.append((_text(entry_id), envelope))
    found.reverse()
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
