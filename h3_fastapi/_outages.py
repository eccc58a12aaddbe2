"""``Outages``: a backplane's failures, logged and reported once per outage, not per message."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._compat import spawn
from ._hooks import logger

if TYPE_CHECKING:
    from .backplane import BackplanePubSub

__all__ = ["Outages"]


class Outages:
    """The stages of one ``BackplanePubSub`` that are failing (``"publish"``, ``"subscribe"``).

    The first failure of an outage is logged as an error and given to the
    pub/sub's ``on_error``; further failures while it lasts are debug lines; its
    end is one warning.
    """

    __slots__ = ("_failing", "_owner")

    def __init__(self, owner: BackplanePubSub) -> None:
        self._owner = owner
        self._failing: set[str] = set()

    def failed(self, stage: str, exc: Exception) -> None:
        """``stage`` failed with ``exc``: log and report it if this begins an outage."""
        first = not self._failing
        self._failing.add(stage)
        name = self._owner.name
        if not first:
            logger.debug("h3_fastapi: %s %s still failing: %r", name, stage, exc)
            return
        logger.error(
            "h3_fastapi: %s unreachable (%s: %s: %s); publishes reach only "
            "this process until it is back",
            name,
            stage,
            type(exc).__name__,
            exc,
        )
        self.report(exc)

    def ended(self, stage: str) -> None:
        """``stage`` works again; the outage ends when no stage is failing."""
        if stage not in self._failing:
            return
        self._failing.discard(stage)
        if not self._failing:
            owner = self._owner
            logger.warning(
                "h3_fastapi: %s is back; %d topics subscribed again",
                owner.name,
                len(owner.topics),
            )

    def report(self, exc: Exception) -> None:
        """Give ``exc`` to ``on_error`` (sync or async); its own failures are logged."""
        owner = self._owner
        callback = owner.on_error
        if callback is None:
            return
        kind = type(owner).__name__
        try:
            result = callback(exc)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                spawn(result, what=f"{kind} on_error callback")
        except Exception:
            logger.exception("h3_fastapi: %s on_error callback raised", kind)
