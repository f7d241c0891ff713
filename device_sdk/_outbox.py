"""Durable QoS 1 outbox on SQLite: persisted before sending, deleted on PUBACK, replayed in order.

Design
------
* **One writer thread per database file** (:class:`OutboxDatabase`). It owns the only
  ``sqlite3`` connection and executes jobs from a queue. Whatever jobs are queued when it
  wakes up are committed in **one transaction** (group commit), across all devices that share
  the file; results go back to each caller's event loop with one
  ``loop.call_soon_threadsafe`` per batch. The event loop never touches SQLite.
* **Loop-side coalescing**: an :class:`Outbox` collects the inserts (and ``drop_oldest``
  deletes) issued during one loop iteration and submits them as a single job
  (``loop.call_soon``).
* **Lazy acknowledgements**: the deletes of acknowledged (or refused) messages of *all*
  outboxes of a database are queued on the :class:`OutboxDatabase` and committed together
  at most 0.1 s later, in one job and one ``executemany``. Durability: an ``enqueue`` that
  returned is on disk and stays there until its delete commits, so a crash can never lose an
  unacknowledged message; it may re-send messages acknowledged in the last 0.1 s
  (at-least-once, de-duplicated downstream by ``msg-id``). :meth:`Outbox.flush`,
  :meth:`Outbox.aclose` and :meth:`OutboxDatabase.aclose` commit them at once.
* **Ids** are allocated in memory from the table's AUTOINCREMENT sequence, so a record's
  position is known before its insert commits; ids are never reused.
* **State in memory**: each outbox keeps its unacknowledged records (waiting, in flight,
  not yet committed) in memory, bounded by ``max_messages`` / ``max_bytes``, so sending needs
  no reads. SQLite is read only when an outbox is opened (recovery after a restart).
* **Shared mode**: thousands of simulated devices use one :class:`OutboxDatabase` (one
  file, one thread, rows keyed by ``device_id``). One-file-per-device is
  :meth:`Outbox.open` with its own path (one thread per file).
* ``journal_mode=WAL`` with ``synchronous=FULL`` by default: with group commit the fsync is
  paid once per batch, so FULL costs little throughput (see ``benchmarks/bench_outbox.py``)
  while making an acknowledged ``enqueue`` survive power loss, not only a process crash.
  ``synchronous="normal"`` trades that for latency on slow storage (SD cards).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Literal, Self

from device_sdk._aio import LazyEvent
from device_sdk._clock import Clock, SystemClock
from device_sdk._exceptions import ClosedError, OutboxFullError
from device_sdk._outbox_store import (
    OutboxDatabase,
    OutboxDatabaseStatistics,
    OutboxRecord,
    OutboxStorageError,
    Synchronous,
    _Row,
)
from device_sdk.transport._base import UserProperties

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType


__all__ = [
    "Outbox",
    "OutboxConfig",
    "OutboxDatabase",
    "OutboxDatabaseStatistics",
    "OutboxRecord",
    "OutboxStatistics",
    "OutboxStorageError",
    "new_msg_id",
]

_LOG = logging.getLogger(__name__)

OverflowPolicy = Literal["reject", "drop_oldest"]


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


def _new_waiter(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    # An ack waiter may fail (nack, drop, close) after its publisher stopped caring: mark the
    # exception retrieved so asyncio does not log "exception was never retrieved".
    fut: asyncio.Future[None] = loop.create_future()
    fut.add_done_callback(_retrieve)
    return fut


class _MsgIdSource:
    """Per-process state of :func:`new_msg_id`: a random prefix and a counter."""

    __slots__ = ("counter", "prefix")

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        # 48 random bits per process (fresh after every fork, so shards never share them).
        self.prefix = secrets.token_hex(6)
        self.counter = itertools.count(secrets.randbits(32))


_MSG_IDS = _MsgIdSource()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_MSG_IDS.reseed)


def new_msg_id() -> str:
    """A unique, time-ordered message id, as 32 hex chars, without a syscall per id.

    48-bit milliseconds since the epoch, then a 48-bit random prefix drawn once per process
    (and again in a forked child), then a 32-bit counter starting at a random value. Within a
    process, (milliseconds, counter) never repeats unless 2**32 ids are drawn within one
    millisecond; across processes and restarts, a collision needs the same millisecond, the
    same 48 random bits and the same counter value.
    """
    src = _MSG_IDS
    return f"{time.time_ns() // 1_000_000:012x}{src.prefix}{next(src.counter) & 0xFFFFFFFF:08x}"


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxConfig:
    """Where and how a :class:`~device_sdk.DeviceClient` persists its QoS 1 messages.

    Attributes:
        path: SQLite file; ``None`` keeps the outbox in memory (not durable).
        max_messages: Bound on unacknowledged messages.
        max_bytes: Bound on their payload bytes.
        overflow: ``"reject"`` raises :class:`~device_sdk.OutboxFullError`; ``"drop_oldest"``
            deletes the oldest messages to make room (counted in ``dropped``).
        synchronous: SQLite ``synchronous`` mode in WAL: ``"full"`` (survives power loss) or
            ``"normal"`` (survives process crashes).
        device_id: Key of this device's rows (defaults to the thing name).
    """

    path: str | os.PathLike[str] | None = None
    max_messages: int = 10_000
    max_bytes: int = 16 * 1024 * 1024
    overflow: OverflowPolicy = "reject"
    synchronous: Synchronous = "full"
    device_id: str | None = None

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be positive")
        if self.overflow not in ("reject", "drop_oldest"):
            raise ValueError(f"unknown overflow policy {self.overflow!r}")
        if self.synchronous not in ("normal", "full"):
            raise ValueError(f"unknown synchronous mode {self.synchronous!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxStatistics:
    """Counters of one device's outbox.

    Attributes:
        depth: Unacknowledged messages (waiting + in flight + being committed).
        size_bytes: Their payload bytes.
        in_flight: Messages sent and awaiting PUBACK.
        oldest_age_s: Age of the oldest unacknowledged message (0 when empty).
        enqueued: Messages accepted since open.
        sent: Send attempts (including replays).
        acked: Messages deleted after a PUBACK.
        failed: Messages deleted after a negative PUBACK, or queued with ``enqueue_nowait``
            and lost because their insert failed.
        dropped: Messages deleted by the ``drop_oldest`` policy.
        replayed: Sends of messages that had been sent before or were recovered from disk.
        recovered: Messages found on disk when the outbox was opened.
    """

    depth: int
    size_bytes: int
    in_flight: int
    oldest_age_s: float
    enqueued: int
    sent: int
    acked: int
    failed: int
    dropped: int
    replayed: int
    recovered: int


class Outbox:
    """The durable QoS 1 queue of one device (see the module documentation).

    Producers call :meth:`enqueue` (returns once the message is committed); the sender calls
    :meth:`take`, then :meth:`ack` on PUBACK, :meth:`fail` on a negative PUBACK, or
    :meth:`requeue_in_flight` when the connection drops. Not thread-safe: use it from one
    event loop.
    """

    def __init__(
        self,
        db: OutboxDatabase,
        device_id: str,
        config: OutboxConfig,
        recovered: Iterable[OutboxRecord] = (),
        *,
        clock: Clock | None = None,
        owns_db: bool = False,
    ) -> None:
        self._db = db
        self.device_id = device_id
        self.config = config
        self._clock = clock or SystemClock()
        self._owns_db = owns_db
        self._closed = False
        self._unsent: collections.deque[OutboxRecord] = collections.deque(recovered)
        self._inflight: dict[int, OutboxRecord] = {}
        self._uncommitted: dict[int, OutboxRecord] = {}
        self._sent_before: set[int] = {r.id for r in self._unsent}
        self._ack_waiters: dict[int, asyncio.Future[None]] = {}
        self._available = LazyEvent()
        self._listener: Callable[[], None] | None = None
        self._pending_inserts: list[tuple[OutboxRecord, asyncio.Future[None] | None]] = []
        self._pending_deletes: list[int] = []
        self._flush_scheduled = False  # registered with the database's batched flush
        self._jobs_outstanding = 0
        self._idle = LazyEvent()
        self._idle.set()
        self._empty = LazyEvent()
        self._size = sum(len(r.payload) for r in self._unsent)
        self._counts = dict.fromkeys(
            ("enqueued", "sent", "acked", "failed", "dropped", "replayed"), 0
        )
        self._counts["recovered"] = len(self._unsent)
        if self._unsent:
            self._available.set()
            _LOG.info(
                "outbox %s: recovered %d unacknowledged messages", device_id, len(self._unsent)
            )
        if config.overflow == "drop_oldest":
            self._make_room(0, 0)

    # -- opening / closing --------------------------------------------------------------

    @classmethod
    async def open(
        cls, config: OutboxConfig, device_id: str, *, clock: Clock | None = None
    ) -> Outbox:
        """Open a device outbox with its own database file (``config.path``)."""
        db = await OutboxDatabase.open(config.path, synchronous=config.synchronous)
        try:
            box = await db.outbox(device_id, config, clock=clock)
        except BaseException:
            await db.aclose()
            raise
        box._owns_db = True  # noqa: SLF001 - set by our own factory
        return box

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @property
    def database(self) -> OutboxDatabase:
        """The database this outbox writes to."""
        return self._db

    async def aclose(self) -> None:
        """Commit what is queued, wake blocked takers with :class:`ClosedError`, release the file.

        Unacknowledged messages stay on disk and are replayed by the next :meth:`open`.
        """
        if self._closed:
            return
        self._closed = True
        self._available.set()
        self._flush()
        await self._db.flush_deletes()
        await self._idle.wait()
        for fut in self._ack_waiters.values():
            if not fut.done():
                fut.set_exception(ClosedError("outbox closed before the PUBACK arrived"))
        self._ack_waiters.clear()
        self._db._release(self.device_id)  # noqa: SLF001 - companion class
        if self._owns_db:
            await self._db.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"outbox of {self.device_id!r} is closed")

    # -- producing ----------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Unacknowledged messages."""
        return len(self._unsent) + len(self._inflight) + len(self._uncommitted)

    async def enqueue(
        self,
        topic: str,
        payload: bytes,
        *,
        user_properties: UserProperties = (),
        msg_id: str | None = None,
        track_ack: bool = False,
    ) -> OutboxRecord:
        """Persist a message; return once its insert is committed.

        With ``track_ack``, :meth:`wait_acked` returns a future registered before the message
        could possibly be sent.

        Enqueues issued in the same loop iteration share one transaction. If the caller is
        cancelled after the call, the message may still be committed and sent.

        Raises:
            OutboxFullError: The outbox is full and the policy is ``"reject"``, or the payload
                alone exceeds ``max_bytes``.
            OutboxStorageError: SQLite failed; nothing was stored.
            ClosedError: The outbox is closed.
        """
        loop = self._db.loop
        fut: asyncio.Future[None] = loop.create_future()
        record = self._add(topic, payload, user_properties, msg_id, track_ack, fut)
        await fut
        return record

    def enqueue_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        user_properties: UserProperties = (),
        msg_id: str | None = None,
    ) -> OutboxRecord:
        """Queue a message for persistence and delivery without waiting (event-loop thread).

        The insert is committed in the background with the other inserts of this loop
        iteration, before the message can be sent; :meth:`flush` waits for it. If the commit
        fails (disk full, I/O error), the message is dropped, counted as ``failed`` and the
        error logged.

        Raises:
            OutboxFullError: The outbox is full and the policy is ``"reject"``, or the payload
                alone exceeds ``max_bytes``.
            ClosedError: The outbox is closed.
        """
        return self._add(topic, payload, user_properties, msg_id, False, None)  # noqa: FBT003

    def _add(
        self,
        topic: str,
        payload: bytes,
        user_properties: UserProperties,
        msg_id: str | None,
        track_ack: bool,
        fut: asyncio.Future[None] | None,
    ) -> OutboxRecord:
        self._check_open()
        size = len(payload)
        if size > self.config.max_bytes:
            raise OutboxFullError(
                f"a {size}-byte message can never fit an outbox of {self.config.max_bytes} bytes",
                depth=self.depth,
                size_bytes=self._size,
            )
        self._make_room(1, size)
        record = OutboxRecord(
            self._db.allocate_id(),
            msg_id or new_msg_id(),
            topic,
            payload,
            tuple(user_properties),
            self._clock.wall(),
        )
        self._uncommitted[record.id] = record
        self._empty.clear()
        if track_ack:
            self._ack_waiters[record.id] = _new_waiter(self._db.loop)
        self._size += size
        self._counts["enqueued"] += 1
        self._pending_inserts.append((record, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._db._schedule_flush(self)  # noqa: SLF001 - companion class
        return record

    def _make_room(self, count: int, size: int) -> None:
        cfg = self.config
        while self.depth + count > cfg.max_messages or self._size + size > cfg.max_bytes:
            if cfg.overflow == "reject":
                raise OutboxFullError(
                    f"outbox of {self.device_id!r} is full ({self.depth} messages, "
                    f"{self._size} bytes; bounds {cfg.max_messages} / {cfg.max_bytes})",
                    depth=self.depth,
                    size_bytes=self._size,
                )
            victim = self._oldest()
            if victim is None:
                return
            self._forget(victim.id)
            self._counts["dropped"] += 1
            self._pending_deletes.append(victim.id)
            waiter = self._ack_waiters.pop(victim.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    OutboxFullError(
                        "message dropped by the drop_oldest policy",
                        depth=self.depth,
                        size_bytes=self._size,
                    )
                )
            _LOG.debug("outbox %s: dropped message %d (drop_oldest)", self.device_id, victim.id)
        if self._pending_deletes:
            self._schedule_flush()

    def _oldest(self) -> OutboxRecord | None:
        candidates = []
        if self._inflight:
            candidates.append(min(self._inflight.values(), key=lambda r: r.id))
        if self._unsent:
            candidates.append(self._unsent[0])
        if self._uncommitted:
            candidates.append(next(iter(self._uncommitted.values())))
        return min(candidates, key=lambda r: r.id) if candidates else None

    def _forget(self, record_id: int) -> OutboxRecord | None:
        """Remove a record from whichever in-memory set holds it."""
        rec = self._inflight.pop(record_id, None) or self._uncommitted.pop(record_id, None)
        if rec is None:
            for i, r in enumerate(self._unsent):
                if r.id == record_id:
                    rec = r
                    del self._unsent[i]
                    break
        if rec is not None:
            self._size -= len(rec.payload)
            self._sent_before.discard(record_id)
            if self.depth == 0:
                self._empty.set()
        return rec

    # -- writing ------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._db._schedule_flush(self)  # noqa: SLF001 - companion class

    def _take_pending(
        self,
    ) -> tuple[list[tuple[OutboxRecord, asyncio.Future[None] | None]], list[int], list[_Row]]:
        """Hand the queued inserts and deletes to a write job (the caller submits it).

        The caller must call :meth:`_committed` with the job's outcome.
        """
        self._flush_scheduled = False
        inserts, self._pending_inserts = self._pending_inserts, []
        deletes, self._pending_deletes = self._pending_deletes, []
        if not inserts and not deletes:
            return inserts, deletes, []
        device_id = self.device_id
        rows = [
            (
                r.id,
                device_id,
                r.msg_id,
                r.topic,
                r.payload,
                json.dumps(r.extra_properties) if r.extra_properties else "[]",
                r.created_at,
            )
            for r, _ in inserts
        ]
        self._jobs_outstanding += 1
        self._idle.clear()
        return inserts, deletes, rows

    def _flush(self) -> None:
        """Submit this outbox's queued writes now, as a job of its own."""
        inserts, deletes, rows = self._take_pending()
        if not inserts and not deletes:
            return

        def done(_result: object, error: BaseException | None) -> None:
            self._committed(inserts, deletes, error)

        self._db.submit(done, rows=rows, deletes=[(i,) for i in deletes])

    def _committed(
        self,
        inserts: list[tuple[OutboxRecord, asyncio.Future[None] | None]],
        deletes: list[int],
        error: BaseException | None,
    ) -> None:
        self._jobs_outstanding -= 1
        if self._jobs_outstanding == 0:
            self._idle.set()
        if error is not None:
            _LOG.error("outbox %s: write failed: %s", self.device_id, error)
            for record, fut in inserts:
                if self._uncommitted.pop(record.id, None) is not None:
                    self._size -= len(record.payload)
                    self._counts["enqueued"] -= 1
                waiter = self._ack_waiters.pop(record.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(error)
                if fut is None:
                    self._counts["failed"] += 1
                elif not fut.done():
                    fut.set_exception(error)
            if deletes:
                _LOG.warning(
                    "outbox %s: %d deletes failed; those messages may be sent again",
                    self.device_id,
                    len(deletes),
                )
            return
        for record, fut in inserts:
            if self._uncommitted.pop(record.id, None) is not None:
                self._unsent.append(record)
                self._available.set()
            if fut is not None and not fut.done():
                fut.set_result(None)
        if self._listener is not None and self._unsent:
            self._listener()

    async def flush(self) -> None:
        """Wait until every queued insert and delete (including lazy acks) is committed."""
        if self._flush_scheduled:
            self._flush()
        await self._db.flush_deletes()
        await self._idle.wait()

    # -- consuming ----------------------------------------------------------------------

    def take_nowait(self) -> OutboxRecord | None:
        """The next committed message in order, now marked in flight, or ``None``."""
        if not self._unsent:
            return None
        record = self._unsent.popleft()
        self._inflight[record.id] = record
        self._counts["sent"] += 1
        if record.id in self._sent_before:
            self._counts["replayed"] += 1
        else:
            self._sent_before.add(record.id)
        return record

    @property
    def ready(self) -> int:
        """Committed messages waiting to be taken."""
        return len(self._unsent)

    def _set_listener(self, listener: Callable[[], None] | None) -> None:
        """Internal: ``listener()`` runs whenever messages become ready to take (one at a time).

        Used by the client's pipelined sender so that a commit starts the next publish
        directly instead of waking a task.
        """
        self._listener = listener

    def take_batch(self, limit: int) -> list[OutboxRecord]:
        """Up to ``limit`` committed messages in order, now marked in flight (maybe none)."""
        unsent = self._unsent
        if not unsent:
            return []
        inflight = self._inflight
        sent_before = self._sent_before
        batch: list[OutboxRecord] = []
        replayed = 0
        for _ in range(min(limit, len(unsent))):
            record = unsent.popleft()
            rid = record.id
            inflight[rid] = record
            if rid in sent_before:
                replayed += 1
            else:
                sent_before.add(rid)
            batch.append(record)
        counts = self._counts
        counts["sent"] += len(batch)
        if replayed:
            counts["replayed"] += replayed
        return batch

    async def wait_available(self) -> None:
        """Wait until a committed message can be taken (returns at once if one can).

        Raises:
            ClosedError: The outbox was closed.
        """
        while True:
            self._check_open()
            if self._unsent:
                return
            self._available.clear()
            await self._available.wait()

    async def take(self) -> OutboxRecord:
        """Wait for the next message in order and mark it in flight.

        Raises:
            ClosedError: The outbox was closed.
        """
        while True:
            self._check_open()
            record = self.take_nowait()
            if record is not None:
                return record
            self._available.clear()
            await self._available.wait()

    def ack(self, record_id: int) -> bool:
        """PUBACK received: delete the message. Returns ``False`` if it was already gone.

        The message leaves memory at once; its row is deleted lazily (see the module
        documentation): a crash before that commit re-sends it.
        """
        record = self._inflight.get(record_id)
        if record is None:
            return False
        self._forget(record_id)
        self._counts["acked"] += 1
        self._db.delete_lazily(record_id)
        waiter = self._ack_waiters.pop(record_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def fail(self, record_id: int, error: BaseException) -> bool:
        """Negative PUBACK: delete the message (it can never succeed) and report ``error``."""
        record = self._inflight.get(record_id)
        if record is None:
            return False
        self._forget(record_id)
        self._counts["failed"] += 1
        self._db.delete_lazily(record_id)
        waiter = self._ack_waiters.pop(record_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        return True

    def requeue(self, record_id: int) -> bool:
        """Put one in-flight message back in front of the queue, keeping id order."""
        record = self._inflight.pop(record_id, None)
        if record is None:
            return False
        if not self._unsent or record.id < self._unsent[0].id:
            self._unsent.appendleft(record)
        else:
            index = next(
                (i for i, r in enumerate(self._unsent) if r.id > record.id), len(self._unsent)
            )
            self._unsent.insert(index, record)
        self._available.set()
        if self._listener is not None:
            self._listener()
        return True

    def requeue_in_flight(self) -> int:
        """Connection lost: every in-flight message goes back, in order, for replay."""
        records = sorted(self._inflight.values(), key=lambda r: r.id)
        self._inflight.clear()
        self._unsent.extendleft(reversed(records))
        if records:
            self._available.set()
            if self._listener is not None:
                self._listener()
        return len(records)

    def wait_acked(self, record_id: int) -> asyncio.Future[None]:
        """A future resolved by the record's PUBACK (or failed by a nack, drop or close)."""
        fut = self._ack_waiters.get(record_id)
        if fut is None:
            fut = _new_waiter(self._db.loop)
            if self._is_pending(record_id):
                self._ack_waiters[record_id] = fut
            else:
                fut.set_result(None)  # already acknowledged (or never existed)
        return fut

    def _is_pending(self, record_id: int) -> bool:
        return (
            record_id in self._inflight
            or record_id in self._uncommitted
            or any(r.id == record_id for r in self._unsent)
        )

    async def wait_empty(self) -> None:
        """Wait until every message has been acknowledged (or dropped/failed)."""
        while self.depth:
            self._empty.clear()
            await self._empty.wait()

    # -- introspection ------------------------------------------------------------------

    def statistics(self) -> OutboxStatistics:
        """Counter snapshot."""
        oldest = self._oldest()
        age = max(0.0, self._clock.wall() - oldest.created_at) if oldest is not None else 0.0
        return OutboxStatistics(
            depth=self.depth,
            size_bytes=self._size,
            in_flight=len(self._inflight),
            oldest_age_s=age,
            **self._counts,
        )
