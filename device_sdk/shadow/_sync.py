"""``ShadowSync``: keep a device's state in step with its shadow, across outages and restarts.

``async with ShadowSync(device, store_path=..., handler=apply) as sync:`` runs three named
background tasks in one task group:

* ``…shadow_sync[T].connections`` — on every new connection generation (after the client
  resubscribed, see :meth:`DeviceClient.wait_resubscribed`) requests a resync: ``get`` and
  reconcile, so desired changes made while the device was offline are delivered;
* ``…shadow_sync[T].deltas`` — queues ``…/update/delta`` events (malformed ones are logged
  and skipped by the stream);
* ``…shadow_sync[T].worker`` — the only task that changes the local copy: resyncs, applies
  fresh deltas (a gap in versions means an unseen update, so it resyncs instead), validates
  the desired state against the optional pydantic model, runs the handler, and reports the
  handler's patch as ``reported`` with the document version as an optimistic lock. On a
  version conflict it re-gets, re-applies the handler to the new delta and retries.

The local copy (desired, reported, version, the not-yet-accepted reported patch) is a JSON
file written atomically (temporary file, fsync, rename, fsync of the directory) after every
change, so an application can restore its state at boot before it is even online.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, overload

import pydantic

from device_sdk._aio import LazyEvent
from device_sdk._backoff import ReconnectPolicy
from device_sdk._client import ClientState
from device_sdk._exceptions import (
    ClosedError,
    DeviceSdkError,
    RejectedError,
    VersionConflictError,
)
from device_sdk.shadow._client import ShadowClient
from device_sdk.shadow._files import dump_json, read_json, write_atomic
from device_sdk.shadow._state import LocalShadow
from device_sdk.shadow._stream import BufferedStream, Fanout

if TYPE_CHECKING:
    from device_sdk._client import DeviceClient
    from device_sdk._request import RequestChannel
    from device_sdk.shadow._model import ShadowDelta
    from device_sdk.shadow._stream import EventStream

__all__ = [
    "ReportedPatch",
    "ShadowChange",
    "ShadowHandler",
    "ShadowSync",
    "ShadowSyncStatistics",
]

M = TypeVar("M", bound=pydantic.BaseModel)

ReportedPatch = Mapping[str, Any] | pydantic.BaseModel | None
"""What a handler returns: a reported patch (a model is dumped with ``exclude_unset``), or
``None`` to report nothing."""

_DETAIL_CHARS = 500
_RETRY = ReconnectPolicy(base_s=0.5, cap_s=30.0, min_interval_s=0.1)
_STOPPED = (ClientState.CLOSING, ClientState.CLOSED, ClientState.FAILED)


@dataclasses.dataclass(frozen=True, slots=True)
class ShadowChange(Generic[M]):
    """A desired-state change for the device to apply.

    Attributes:
        delta: ``desired - reported`` as the service computed it (what to change).
        desired: The whole desired state (local copy, after this change).
        version: The shadow version this change belongs to.
        model: ``desired`` validated against the sync's model (``None`` without a model).
    """

    delta: dict[str, Any]
    desired: dict[str, Any]
    version: int
    model: M | None = None


ShadowHandler = Callable[[ShadowChange[M]], Awaitable[ReportedPatch]]
"""``async def handler(change) -> reported_patch``."""


@dataclasses.dataclass(frozen=True, slots=True)
class ShadowSyncStatistics:
    """Counters of one :class:`ShadowSync`.

    Attributes:
        resyncs: Completed ``get`` + reconcile rounds.
        deltas: Fresh delta events applied.
        stale_deltas: Delta events the local copy already reflected (skipped).
        malformed_deltas: Delta payloads that did not parse (skipped).
        reports: Reported patches the service accepted.
        conflicts: Version conflicts (each followed by a re-get and re-apply).
        rejected_reports: Reported patches the service rejected (dropped, logged).
        invalid_desired: Desired states the model refused (error reported instead).
        handler_errors: Handler exceptions (error reported instead).
        dropped_changes: Changes dropped from full :meth:`ShadowSync.changes` buffers.
    """

    resyncs: int
    deltas: int
    stale_deltas: int
    malformed_deltas: int
    reports: int
    conflicts: int
    rejected_reports: int
    invalid_desired: int
    handler_errors: int
    dropped_changes: int


class _RetryLaterError(DeviceSdkError):
    """Internal: back off and resync (too many consecutive version conflicts)."""


class ShadowSync(Generic[M]):
    """Keeps a persisted local copy of one shadow and applies desired changes to the device.

    Deliver changes either with a ``handler`` (its result is reported) or by iterating
    :meth:`changes` and calling :meth:`report`::

        async def apply(change: ShadowChange[Settings]) -> dict[str, Any]:
            await thermostat.set(change.model.target)
            return {"target": change.model.target}

        async with ShadowSync(device, store_path="shadow.json", model=Settings,
                              handler=apply) as sync:
            await sync.wait_synced()
            ...

    Invalid desired states (per ``model``) and handler exceptions are logged and reported as
    ``reported[error_field] = {"reason", "detail", "version"}``; the field is cleared (set to
    ``null``) by the next successful change. Nothing the cloud sends stops the sync.

    Args:
        device: The device client (entered before the sync).
        store_path: JSON file holding the local copy (created if missing).
        name: Named shadow, or ``None`` for the classic shadow.
        model: Pydantic model the whole desired state must validate against.
        handler: ``async def handler(change) -> reported_patch``.
        channel: Shared, entered :class:`~device_sdk.RequestChannel` (default: own one).
        error_field: Reported key used for errors.
        conflict_retries: Consecutive version conflicts tolerated before backing off.
        timeout_s: Shadow request timeout.
        max_pending_deltas: Queued delta events beyond which the queue is replaced by a resync.
        logger: Logger (defaults to this module's).
    """

    @overload
    def __init__(
        self: ShadowSync[pydantic.BaseModel],
        device: DeviceClient,
        *,
        store_path: str | os.PathLike[str],
        name: str | None = None,
        model: None = None,
        handler: ShadowHandler[pydantic.BaseModel] | None = None,
        channel: RequestChannel | None = None,
        error_field: str = "error",
        conflict_retries: int = 5,
        timeout_s: float = 10.0,
        max_pending_deltas: int = 100,
        logger: logging.Logger | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        device: DeviceClient,
        *,
        store_path: str | os.PathLike[str],
        name: str | None = None,
        model: type[M],
        handler: ShadowHandler[M] | None = None,
        channel: RequestChannel | None = None,
        error_field: str = "error",
        conflict_retries: int = 5,
        timeout_s: float = 10.0,
        max_pending_deltas: int = 100,
        logger: logging.Logger | None = None,
    ) -> None: ...

    def __init__(
        self,
        device: DeviceClient,
        *,
        store_path: str | os.PathLike[str],
        name: str | None = None,
        model: type[M] | None = None,
        handler: ShadowHandler[Any] | None = None,
        channel: RequestChannel | None = None,
        error_field: str = "error",
        conflict_retries: int = 5,
        timeout_s: float = 10.0,
        max_pending_deltas: int = 100,
        logger: logging.Logger | None = None,
    ) -> None:
        if conflict_retries < 0 or max_pending_deltas < 1:
            raise ValueError("conflict_retries must be >= 0 and max_pending_deltas >= 1")
        self._device = device
        self._client = ShadowClient(device, name=name, channel=channel, timeout_s=timeout_s)
        self._path = Path(store_path)
        self._model = model
        self._handler = handler
        self._error_field = error_field
        self._conflict_retries = conflict_retries
        self._max_deltas = max_pending_deltas
        self._log = logger or logging.getLogger(__name__)
        self._name = f"device_sdk[{device.thing_name}].shadow_sync[{self._client.topics.label}]"

        self._local = LocalShadow()
        self._changes: Fanout[ShadowChange[M]] = Fanout()
        self._deltas: collections.deque[ShadowDelta] = collections.deque()
        self._delta_stream: EventStream[ShadowDelta] | None = None
        self._resync_requested = False
        self._resynced_generation = -1
        self._conflict_streak = 0
        self._wake = LazyEvent()
        self._synced = LazyEvent()
        self._save_lock = asyncio.Lock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._counts = dict.fromkeys(
            (
                "resyncs",
                "deltas",
                "stale_deltas",
                "reports",
                "conflicts",
                "rejected_reports",
                "invalid_desired",
                "handler_errors",
            ),
            0,
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Load the local copy, subscribe to deltas and start the background tasks."""
        if self._stack is not None:
            raise RuntimeError("ShadowSync is already entered")
        self._local = await asyncio.to_thread(self._load)
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            await stack.enter_async_context(self._client)
            self._delta_stream = await stack.enter_async_context(self._client.deltas())
            tg = asyncio.TaskGroup()
            await tg.__aenter__()
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._tg = stack, tg
        self._changes.reopen()
        self._tasks = [
            tg.create_task(self._watch_connections(), name=f"{self._name}.connections"),
            tg.create_task(self._read_deltas(), name=f"{self._name}.deltas"),
            tg.create_task(self._work(), name=f"{self._name}.worker"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the background tasks and unsubscribe (the local copy stays on disk)."""
        tg, self._tg = self._tg, None
        stack, self._stack = self._stack, None
        try:
            for task in self._tasks:
                task.cancel()
            if tg is not None:
                await tg.__aexit__(None, None, None)
        finally:
            self._tasks = []
            self._changes.close()
            self._delta_stream = None
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)

    # -- public ---------------------------------------------------------------------------

    @property
    def desired(self) -> dict[str, Any]:
        """The desired state as last seen (a copy)."""
        return copy.deepcopy(self._local.desired)

    @property
    def reported(self) -> dict[str, Any]:
        """The reported state as the device knows it, pending patches included (a copy)."""
        return copy.deepcopy(self._local.reported)

    @property
    def version(self) -> int:
        """The last known shadow version (0: unknown or no shadow)."""
        return self._local.version

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Reported patches not yet accepted by the service, oldest first (a copy)."""
        return copy.deepcopy(self._local.pending)

    def changes(self, *, max_buffer: int = 16) -> BufferedStream[ShadowChange[M]]:
        """Desired changes, as ``async with sync.changes() as changes: async for c in changes``.

        Every change is delivered here (after model validation, before the handler). Without
        a handler, apply it and call :meth:`report`. When the buffer is full the oldest change
        is dropped: each change carries the complete current delta, so the newest one counts.
        Iteration ends when the sync stops.
        """
        return self._changes.stream(max_buffer)

    async def report(self, patch: ReportedPatch) -> None:
        """Merge ``patch`` into the reported state.

        Returns once the patch is applied to the local copy and persisted; the background
        worker sends it (now, or after the next reconnect and resync) and retries on version
        conflicts. :meth:`wait_synced` waits until the service has accepted it.
        """
        data = _as_patch(patch)
        if not data:
            return
        self._local.add_pending(data)
        await self._save()
        self._kick()

    async def wait_synced(self) -> None:
        """Wait until the copy is reconciled on this connection and every patch is accepted."""
        await self._synced.wait()

    def statistics(self) -> ShadowSyncStatistics:
        """Counter snapshot."""
        stream = self._delta_stream
        return ShadowSyncStatistics(
            **self._counts,
            malformed_deltas=stream.statistics().malformed if stream is not None else 0,
            dropped_changes=self._changes.dropped,
        )

    # -- persistence ----------------------------------------------------------------------

    def _load(self) -> LocalShadow:
        topics = self._client.topics
        try:
            data = read_json(self._path)
            if data is None:
                return LocalShadow()
            return LocalShadow.from_json(
                data, thing_name=topics.thing_name, shadow_name=topics.shadow_name
            )
        except (OSError, ValueError) as exc:
            self._log.warning(
                "%s: ignoring unusable local copy %s (%s); the cloud's copy wins",
                self._name,
                self._path,
                exc,
            )
            return LocalShadow()

    async def _save(self) -> None:
        """Persist the local copy; a storage failure is logged (the cloud's copy remains)."""
        async with self._save_lock:
            topics = self._client.topics
            content = dump_json(
                self._local.to_json(thing_name=topics.thing_name, shadow_name=topics.shadow_name)
            )
            try:
                await asyncio.to_thread(write_atomic, self._path, content)
            except OSError as exc:
                self._log.warning("%s: cannot save %s: %s", self._name, self._path, exc)

    # -- background tasks -----------------------------------------------------------------

    def _kick(self) -> None:
        self._synced.clear()
        self._wake.set()

    async def _watch_connections(self) -> None:
        generation = 0
        while True:
            try:
                generation = await self._device.wait_resubscribed(after=generation)
            except DeviceSdkError as exc:
                if not isinstance(exc, ClosedError):
                    self._log.warning("%s: device stopped: %s", self._name, exc)
                return
            self._resync_requested = True
            self._kick()

    async def _read_deltas(self) -> None:
        stream = self._delta_stream
        if stream is None:  # pragma: no cover - set before the task starts
            return
        try:
            async for event in stream:
                if len(self._deltas) >= self._max_deltas:
                    self._log.warning("%s: delta backlog full: resyncing instead", self._name)
                    self._deltas.clear()
                    self._resync_requested = True
                self._deltas.append(event)
                self._kick()
        except DeviceSdkError as exc:
            self._log.warning("%s: delta subscription ended: %s", self._name, exc)

    async def _work(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while await self._step():
                    pass
            except DeviceSdkError as exc:
                if self._device.state in _STOPPED:
                    return
                failures += 1
                self._log.warning("%s: sync failed (%s); retrying", self._name, exc)
            except Exception:  # noqa: BLE001 - a bug here must not stop the sync; it is logged
                failures += 1
                self._log.exception("%s: unexpected error; retrying", self._name)
            else:
                failures = 0
                if self._is_synced():
                    self._synced.set()
                continue
            self._resync_requested = True
            if not await self._pause(_RETRY.delay(failures - 1)):
                return
            self._wake.set()

    async def _pause(self, seconds: float) -> bool:
        """Back off until ``seconds`` pass or a new connection is up; False if stopping."""
        generation = self._device.connection_generation
        try:
            async with asyncio.timeout(seconds):
                await self._device.wait_resubscribed(after=generation)
        except TimeoutError:
            pass
        except DeviceSdkError:
            return False
        return True

    def _is_synced(self) -> bool:
        return (
            not self._resync_requested
            and not self._deltas
            and not self._local.pending
            and self._resynced_generation == self._device.connection_generation
        )

    async def _step(self) -> bool:
        """Do one unit of work; False when there is nothing to do."""
        if self._resync_requested:
            self._resync_requested = False
            await self._resync()
            return True
        if self._deltas:
            await self._on_delta(self._deltas.popleft())
            return True
        if self._local.pending and self._resynced_generation == self._device.connection_generation:
            await self._push()
            return True
        return False

    # -- reconciliation -------------------------------------------------------------------

    async def _resync(self) -> None:
        generation = self._device.connection_generation
        doc = await self._client.get_or_none()
        delta = self._local.apply_document(doc)
        self._counts["resyncs"] += 1
        self._resynced_generation = generation
        self._log.debug("%s: resynced at version %d", self._name, self._local.version)
        await self._save()
        if delta:
            await self._deliver(delta)

    async def _on_delta(self, event: ShadowDelta) -> None:
        if self._local.is_stale(event):
            self._counts["stale_deltas"] += 1
            return
        if not self._local.follows(event):
            # Versions in between were not seen (e.g. desired keys deleted): ask for the
            # whole document rather than guessing.
            self._resync_requested = True
            return
        delta = self._local.apply_delta(event)
        self._counts["deltas"] += 1
        await self._save()
        await self._deliver(delta)

    async def _deliver(self, delta: dict[str, Any]) -> None:
        local = self._local
        version = local.version
        desired = copy.deepcopy(local.desired)
        validated: M | None = None
        if self._model is not None:
            try:
                validated = self._model.model_validate(desired)
            except pydantic.ValidationError as exc:
                self._counts["invalid_desired"] += 1
                self._log.warning("%s: desired state v%d is invalid: %s", self._name, version, exc)
                self._report_error("invalid desired state", str(exc), version)
                await self._save()
                return
        change: ShadowChange[M] = ShadowChange(delta, desired, version, validated)
        self._changes.publish(change)
        patch: dict[str, Any] = {}
        if self._handler is not None:
            try:
                patch = _as_patch(await self._handler(change))
            except Exception as exc:  # noqa: BLE001 - application code must not stop the sync
                self._counts["handler_errors"] += 1
                self._log.exception("%s: handler failed on v%d", self._name, version)
                self._report_error("handler failed", repr(exc), version)
                await self._save()
                return
        if local.error_reported and self._error_field not in patch:
            patch[self._error_field] = None
        if self._error_field in patch:
            local.error_reported = patch[self._error_field] is not None
        if patch:
            local.add_pending(patch)
        await self._save()

    def _report_error(self, reason: str, detail: str, version: int) -> None:
        error = {"reason": reason, "detail": detail[:_DETAIL_CHARS], "version": version}
        self._local.add_pending({self._error_field: error})
        self._local.error_reported = True

    async def _push(self) -> None:
        # Send only on the connection the copy was reconciled on, once it is resubscribed
        # (returns at once when it is; while offline, waits for the next connection).
        generation = await self._device.wait_resubscribed(after=self._resynced_generation - 1)
        if generation != self._resynced_generation:
            self._resync_requested = True
            return
        local = self._local
        sent = local.take_pending()
        expected = local.version
        try:
            result = await self._client.update(reported=sent, version=expected or None)
        except VersionConflictError:
            local.restore_pending(sent)
            self._counts["conflicts"] += 1
            self._conflict_streak += 1
            if self._conflict_streak > self._conflict_retries:
                self._conflict_streak = 0
                await self._save()
                raise _RetryLaterError(
                    f"{self._conflict_retries + 1} version conflicts in a row"
                ) from None
            self._log.info("%s: version conflict at v%d: re-get, re-apply", self._name, expected)
            self._resync_requested = False
            await self._resync()
            return
        except RejectedError as exc:
            self._counts["rejected_reports"] += 1
            self._log.error("%s: reported patch rejected, dropped: %s", self._name, exc)
            await self._save()
            return
        except BaseException:
            local.restore_pending(sent)
            raise
        self._conflict_streak = 0
        self._counts["reports"] += 1
        if expected == 0 or result.version != expected + 1:
            self._resync_requested = True  # created the shadow, or raced another writer
        local.version = result.version
        await self._save()


def _as_patch(result: ReportedPatch) -> dict[str, Any]:
    if result is None:
        return {}
    if isinstance(result, pydantic.BaseModel):
        dumped: dict[str, Any] = result.model_dump(mode="json", exclude_unset=True)
        return dumped
    if isinstance(result, Mapping):
        return copy.deepcopy(dict(result))
    raise TypeError(f"a reported patch must be a mapping, a pydantic model or None, not {result!r}")
