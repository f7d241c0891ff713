"""Small asyncio helpers shared by the library (private)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Literal

_NO_WAITERS: tuple[Any, ...] = ()


class LazyEvent(asyncio.Event):
    """An :class:`asyncio.Event` that creates its waiter queue on the first :meth:`wait`.

    ``asyncio.Event.__init__`` allocates a ``collections.deque`` at once, and an empty deque
    holds a 64-slot block (~600 bytes). A client, its transport and its outbox keep several
    events that are never or rarely waited on, which added up to ~4 KB per simulated device
    in ``fleet_sim``. Behaviour is that of ``asyncio.Event``: ``set()`` iterates the (empty)
    tuple until someone waits. Relies on ``Event._waiters``, which CPython 3.11-3.13 use the
    same way (checked by ``tests/sdk/test_aio.py``).
    """

    def __init__(self) -> None:
        # Deliberately not calling super().__init__(): that would allocate the deque.
        self._waiters = _NO_WAITERS  # type: ignore[assignment]
        self._value = False

    async def wait(self) -> Literal[True]:
        """Wait until the flag is set (as :meth:`asyncio.Event.wait`)."""
        if self._value:
            return True
        waiters: object = self._waiters  # typeshed says deque; it is the tuple until now
        if waiters is _NO_WAITERS:
            self._waiters = collections.deque()
        return await super().wait()
