"""Positions in a topic's history and the rule that decides whether recovery is possible.

Every publish kept in a history has a position: its event id,
``"<epoch>-<offset>"`` (a Redis stream id, or the same form from
``MemoryPubSub``). Ids only grow, and a history is trimmed only at its oldest
end. So a subscriber that last saw position ``P`` can be given exactly what it
missed if, and only if, ``P`` itself is still in the history: then everything
after ``P`` is there too, none trimmed in between. When ``P`` is gone, the
history was trimmed past it, flushed (Redis ``FLUSHALL``) or lost with a
restarted process (a new epoch): the subscriber is told to resync instead of
being fed a gap. The position ``"0-0"`` asks for everything still kept, from the start (a
resumable stream, or a client that never got anything). This is the rule of
Centrifugo's offsets and epochs, checked
with one history read and no extra state per topic, so it holds on every
backplane whose history is an append-only log.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from ._hooks import logger
from .pubsub import Outgoing, parse_event_id

__all__ = ["MAX_PART", "Recovery", "Resolved", "id_before", "recover", "tell"]

MAX_PART = 2**64 - 1


class Recovery:
    """What a subscription that resumed from a position got.

    ``recovered`` is ``True`` when every publish after the position was
    delivered (``missed`` of them, maybe 0), ``False`` when the position is no
    longer in the history: the subscriber must resync from the source of truth
    (your database). ``position`` is the newest position known on the topic
    after recovery (``None`` when the history is empty): resume from it next time.
    """

    __slots__ = ("missed", "position", "recovered", "topic")

    def __init__(self, topic: str, recovered: bool, missed: int, position: str | None) -> None:
        self.topic = topic
        self.recovered = recovered
        self.missed = missed
        self.position = position

    def as_dict(self) -> dict[str, Any]:
        """The JSON form sent to clients: ``topic``, ``recovered``, ``missed``, ``position``."""
        return {
            "topic": self.topic,
            "recovered": self.recovered,
            "missed": self.missed,
            "position": self.position,
        }

    def __repr__(self) -> str:
        state = f"recovered {self.missed}" if self.recovered else "resync"
        return f"<Recovery {self.topic!r} {state} at {self.position}>"


class Resolved:
    """An awaitable that is already finished with ``value`` (for synchronous pub/subs)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # pragma: no cover - makes this a generator


def id_before(event_id: str) -> str | None:
    """The greatest id below ``event_id``: a history read after it includes ``event_id``.

    ``"0-0"`` (the start of a topic) gives itself: read everything kept.
    ``None`` for something that is not an event id.
    """
    key = parse_event_id(event_id)
    if key is None:
        return None
    epoch, offset = key
    if offset > 0:
        return f"{epoch}-{offset - 1}"
    if epoch > 0:
        return f"{epoch - 1}-{MAX_PART}"
    return "0-0"  # the start: read everything kept


def recover(
    topic: str, last_seen: str, read: Sequence[Outgoing]
) -> tuple[list[Outgoing], Recovery]:
    """Apply the rule to ``read``: the history from ``last_seen`` on (it included), oldest first.

    Returns what to deliver (the publishes after ``last_seen``, or nothing)
    and the ``Recovery`` to report.
    """
    position = read[-1].id if read else None
    seen = parse_event_id(last_seen)
    if seen == (0, 0):  # "from the start": everything kept, as asked
        return list(read), Recovery(topic, True, len(read), position)
    if read and seen is not None and parse_event_id(read[0].id) == seen:
        missed = list(read[1:])
        return missed, Recovery(topic, True, len(missed), position)
    return [], Recovery(topic, False, 0, position)


def tell(subscriber: Any, recovery: Recovery) -> None:
    """Hand ``recovery`` to a subscriber that wants it (an optional ``recovered`` method).

    Called in order: after the missed publishes, before the live ones.
    """
    recovered = getattr(subscriber, "recovered", None)
    if recovered is None:
        return
    try:
        recovered(recovery)
    except Exception:
        logger.exception("h3_fastapi: a subscriber of %r failed its recovery", recovery.topic)
