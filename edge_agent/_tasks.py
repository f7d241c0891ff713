"""``start()``: structured start-up on top of :class:`asyncio.TaskGroup`.

``asyncio.TaskGroup`` has no ``start`` (anyio's task groups do, but the project does not
depend on anyio). :func:`start` runs ``func(*args, task_status=status)`` as a named task of
the group and returns only once the task called ``status.started()``, so "ready" is reported
only when every subsystem really is. If the task fails first, its exception propagates through
the task group; if it returns without starting, :func:`start` raises :class:`RuntimeError`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["IGNORED", "TaskStatus", "start"]


class TaskStatus(Protocol):
    """Handed to a task started with :func:`start`."""

    def started(self) -> None:
        """Signal that the task is ready."""
        ...


class _Status:
    def __init__(self, future: asyncio.Future[None]) -> None:
        self._future = future

    def started(self) -> None:
        if not self._future.done():
            self._future.set_result(None)


class _Ignored:
    def started(self) -> None:
        """Do nothing."""


IGNORED: TaskStatus = _Ignored()
"""A :class:`TaskStatus` for tasks run directly, without :func:`start`."""


async def start(
    tg: asyncio.TaskGroup,
    func: Callable[..., Coroutine[Any, Any, None]],
    *args: Any,
    name: str,
) -> asyncio.Task[None]:
    """Start ``func(*args, task_status=...)`` in ``tg``; return its task once it is ready.

    Raises:
        RuntimeError: The task finished without calling ``task_status.started()``.
    """
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = tg.create_task(func(*args, task_status=_Status(future)), name=name)
    try:
        await asyncio.wait({future, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not future.done():
            future.cancel()
    if future.cancelled():
        raise RuntimeError(f"{name} ended before it was ready")
    return task
