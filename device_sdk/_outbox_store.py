"""SQLite storage of the outbox: one file, one writer thread, group commit.

The writer thread owns the only ``sqlite3`` connection of a database file. Jobs queued while
it works are committed together in one transaction (across all devices sharing the file);
their results go back to each caller's event loop with one ``loop.call_soon_threadsafe`` per
batch, so the event loop never touches SQLite. See :mod:`device_sdk._outbox` for the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from device_sdk._exceptions import ClosedError, DeviceSdkError
from device_sdk.transport._base import MSG_ID_PROPERTY, UserProperties

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from device_sdk._clock import Clock
    from device_sdk._outbox import Outbox, OutboxConfig

__all__ = [
    "OutboxDatabase",
    "OutboxDatabaseStatistics",
    "OutboxRecord",
    "OutboxStorageError",
    "Synchronous",
]

_LOG = logging.getLogger(__name__)

Synchronous = Literal["normal", "full"]

_MAX_BATCH_JOBS = 512
_ACK_FLUSH_S = 0.1
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id       TEXT    NOT NULL,
    msg_id          TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    user_properties TEXT    NOT NULL DEFAULT '[]',
    created_at      REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_device_order ON outbox (device_id, id);
"""


class OutboxStorageError(DeviceSdkError):
    """SQLite failed (disk full, I/O error, corrupt file); the message was not persisted."""


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One persisted QoS 1 message.

    Attributes:
        id: Position in the outbox (AUTOINCREMENT, never reused).
        msg_id: De-duplication id, sent as MQTT 5 user property ``msg-id``.
        topic: Topic name.
        payload: Payload bytes.
        extra_properties: Caller's user properties (without ``msg-id``).
        created_at: Enqueue time, seconds since the epoch.
    """

    id: int
    msg_id: str
    topic: str
    payload: bytes
    extra_properties: UserProperties
    created_at: float

    @property
    def user_properties(self) -> UserProperties:
        """User properties to send: ``msg-id`` first, then the caller's."""
        return ((MSG_ID_PROPERTY, self.msg_id), *self.extra_properties)


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxDatabaseStatistics:
    """Counters of the writer thread of one database file.

    Attributes:
        transactions: Committed transactions.
        jobs: Jobs executed (one per outbox per loop iteration with work).
        rows_inserted: Rows inserted.
        rows_deleted: Rows deleted.
        max_batch_jobs: Largest number of jobs committed in one transaction.
        busy_s: Time the writer thread spent executing SQL.
    """

    transactions: int
    jobs: int
    rows_inserted: int
    rows_deleted: int
    max_batch_jobs: int
    busy_s: float


_INSERT = (
    "INSERT INTO outbox (id, device_id, msg_id, topic, payload, user_properties, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_DELETE = "DELETE FROM outbox WHERE id = ?"

_Row = tuple[int, str, str, str, bytes, str, float]


@dataclasses.dataclass(slots=True)
class _Job:
    """Rows to insert, ids to delete, and/or an arbitrary function (reads, maintenance)."""

    loop: asyncio.AbstractEventLoop | None
    callback: Callable[[Any, BaseException | None], None] | None
    rows: list[_Row] = dataclasses.field(default_factory=list)
    deletes: list[tuple[int]] = dataclasses.field(default_factory=list)
    fn: Callable[[sqlite3.Connection], Any] | None = None


def _execute(conn: sqlite3.Connection, batch: list[_Job]) -> list[Any]:
    # All inserts of the batch, then all deletes: a delete always targets a row inserted in
    # the same batch or an earlier transaction, because an outbox submits a record's insert
    # before any delete of it.
    rows = [row for job in batch for row in job.rows]
    if rows:
        conn.executemany(_INSERT, rows)
    gone = [key for job in batch for key in job.deletes]
    if gone:
        conn.executemany(_DELETE, gone)
    return [job.fn(conn) if job.fn is not None else None for job in batch]


def _deliver(items: list[tuple[Callable[[Any, BaseException | None], None], Any, Any]]) -> None:
    for callback, result, error in items:
        try:
            callback(result, error)
        except Exception:  # noqa: BLE001 - one bad callback must not starve the others
            _LOG.exception("outbox completion callback failed")


class _Writer(threading.Thread):
    """The single thread that owns the SQLite connection of one database file."""

    def __init__(self, path: str, synchronous: Synchronous, commit_delay_s: float = 0.0) -> None:
        super().__init__(name=f"device_sdk-outbox[{Path(path).name}]", daemon=True)
        self._path = path
        self._synchronous = synchronous
        self._commit_delay_s = commit_delay_s
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.init_error: BaseException | None = None
        self.first_id = 1
        self.stats = dict.fromkeys(
            ("transactions", "jobs", "rows_inserted", "rows_deleted", "max_batch_jobs"), 0
        )
        self.busy_s = 0.0

    def submit(self, job: _Job | None) -> None:
        self._jobs.put(job)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA journal_size_limit=4194304")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        top = conn.execute("SELECT max(id) FROM outbox").fetchone()
        self.first_id = max(seq[0] if seq else 0, top[0] or 0) + 1
        return conn

    def run(self) -> None:
        try:
            conn = self._open()
        except Exception as exc:  # noqa: BLE001 - reported to the opener, then the thread ends
            self.init_error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            stop = False
            while not stop:
                job = self._jobs.get()
                if job is None:
                    break
                if self._commit_delay_s > 0:
                    time.sleep(self._commit_delay_s)  # let more jobs join this transaction
                batch = [job]
                while len(batch) < _MAX_BATCH_JOBS:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._run_batch(conn, batch)
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        started = time.perf_counter()
        outcomes: list[tuple[_Job, Any, BaseException | None]]
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = _execute(conn, batch)
            conn.execute("COMMIT")
            outcomes = [(job, result, None) for job, result in zip(batch, results, strict=True)]
            self._count(batch)
        except Exception:  # noqa: BLE001 - isolate the failing job below
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            outcomes = [self._run_alone(conn, job) for job in batch]
        self.busy_s += time.perf_counter() - started
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job, result, error in outcomes:
            if job.callback is not None and job.loop is not None:
                by_loop.setdefault(job.loop, []).append((job.callback, result, error))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                _LOG.debug("outbox results dropped: event loop closed")

    def _run_alone(
        self, conn: sqlite3.Connection, job: _Job
    ) -> tuple[_Job, Any, BaseException | None]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            (result,) = _execute(conn, [job])
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - reported to the job's caller
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            _LOG.exception("outbox write failed")
            return job, None, OutboxStorageError(f"outbox storage failed: {exc}")
        self._count([job])
        return job, result, None

    def _count(self, batch: list[_Job]) -> None:
        s = self.stats
        s["transactions"] += 1
        s["jobs"] += len(batch)
        s["max_batch_jobs"] = max(s["max_batch_jobs"], len(batch))
        for job in batch:
            s["rows_inserted"] += len(job.rows)
            s["rows_deleted"] += len(job.deletes)


class OutboxDatabase:
    """One SQLite file and its writer thread, shared by any number of device outboxes.

    Use one per process for a simulated fleet (rows are keyed by device id), or let each
    :class:`Outbox` own one (:meth:`Outbox.open`). Open with :meth:`open`, close with
    :meth:`aclose` or ``async with``.
    """

    def __init__(self, writer: _Writer, path: str) -> None:
        self._writer = writer
        self._path = path
        # The loop that opened the database: callbacks run there. Cached because
        # asyncio.get_running_loop() costs a getpid() system call per call on Python 3.11.
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(writer.first_id)
        self._devices: set[str] = set()
        self._closed = False
        # Deletes of acknowledged rows, from every outbox of this database: one job per
        # _ACK_FLUSH_S (lazy: a crash in between re-sends them, never loses an unacked one).
        self._lazy_deletes: list[tuple[int]] = []
        self._lazy_handle: asyncio.TimerHandle | None = None
        # Outboxes with queued writes: flushed together, in one job, once per loop iteration.
        self._dirty: list[Outbox] = []
        self._dirty_handle: asyncio.Handle | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] | None,
        *,
        synchronous: Synchronous = "full",
        commit_delay_s: float = 0.0,
    ) -> Self:
        """Open (creating if needed) the database at ``path`` (``None``: in memory).

        Args:
            path: The SQLite file, or ``None`` for a database in memory.
            synchronous: SQLite ``synchronous`` mode in WAL (``"full"``: survives power loss).
            commit_delay_s: Group-commit window: the writer waits this long after the first
                queued job so that jobs queued meanwhile (by any outbox) share its
                transaction and its one result hand-off to the loop. Adds that much latency
                to ``enqueue``; ``0`` (default) commits as soon as the writer is free. A few
                milliseconds suit a simulated fleet sharing one file.

        Raises:
            OutboxStorageError: The file cannot be opened or initialised.
            ValueError: ``commit_delay_s`` is outside 0..1 s.
        """
        target = ":memory:" if path is None else os.fspath(path)
        if not 0.0 <= commit_delay_s <= 1.0:
            raise ValueError("commit_delay_s must be within 0..1 s")
        writer = _Writer(target, synchronous, commit_delay_s)
        writer.start()
        await asyncio.to_thread(writer.ready.wait)
        if writer.init_error is not None:
            raise OutboxStorageError(f"cannot open outbox {target!r}: {writer.init_error}") from (
                writer.init_error
            )
        return cls(writer, target)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the database was opened on (its callbacks run there)."""
        return self._loop

    @property
    def path(self) -> str:
        """The database file (``":memory:"`` when not durable)."""
        return self._path

    def allocate_id(self) -> int:
        """Next record id (thread-safe under the GIL: ``itertools.count``)."""
        return next(self._ids)

    def submit(
        self,
        callback: Callable[[Any, BaseException | None], None] | None,
        *,
        rows: list[_Row] | None = None,
        deletes: list[tuple[int]] | None = None,
        fn: Callable[[sqlite3.Connection], Any] | None = None,
    ) -> None:
        """Queue work for the writer thread; ``callback(result, error)`` runs on this loop.

        Rows and deletes of all jobs queued together are written with one ``executemany``
        each, in one transaction; ``fn`` (if any) runs in that transaction afterwards.
        """
        if self._closed:
            raise ClosedError("outbox database is closed")
        loop = self._loop if callback is not None else None
        self._writer.submit(_Job(loop, callback, rows or [], deletes or [], fn))

    def _schedule_flush(self, outbox: Outbox) -> None:
        """Internal: ``outbox`` has queued writes; flush it with the others at the loop's turn."""
        self._dirty.append(outbox)
        if self._dirty_handle is None:
            self._dirty_handle = self._loop.call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        """Submit the queued writes of every dirty outbox as one job (one callback back)."""
        self._dirty_handle = None
        dirty, self._dirty = self._dirty, []
        parts = []
        rows: list[_Row] = []
        gone: list[tuple[int]] = []
        for box in dirty:
            if not box._flush_scheduled:  # noqa: SLF001 - flushed on its own meanwhile
                continue
            inserts, deletes, box_rows = box._take_pending()  # noqa: SLF001
            if inserts or deletes:
                parts.append((box, inserts, deletes))
                rows.extend(box_rows)
                gone.extend((i,) for i in deletes)
        if not parts:
            return

        def done(_result: object, error: BaseException | None) -> None:
            for box, inserts, deletes in parts:
                box._committed(inserts, deletes, error)  # noqa: SLF001

        if self._closed:
            done(None, ClosedError("outbox database is closed"))
            return
        self.submit(done, rows=rows, deletes=gone)

    def delete_lazily(self, record_id: int) -> None:
        """Queue the delete of an acknowledged row (call on the event loop).

        Deletes from all outboxes of this database are committed together, at most
        ``_ACK_FLUSH_S`` (0.1 s) later, in one job with one ``executemany``: acknowledgements
        are persisted lazily. A crash before that commit makes the next :meth:`outbox` replay
        those messages (at-least-once); it can never lose an unacknowledged one.
        """
        self._lazy_deletes.append((record_id,))
        if self._lazy_handle is None:
            self._lazy_handle = self._loop.call_later(_ACK_FLUSH_S, self._flush_deletes)

    def _flush_deletes(self) -> asyncio.Future[None] | None:
        """Submit the queued lazy deletes now; the future resolves once they are committed."""
        if self._lazy_handle is not None:
            self._lazy_handle.cancel()
            self._lazy_handle = None
        gone, self._lazy_deletes = self._lazy_deletes, []
        if not gone or self._closed:
            return None
        fut: asyncio.Future[None] = self._loop.create_future()

        def done(_result: object, error: BaseException | None) -> None:
            if error is not None:
                _LOG.warning(
                    "outbox: %d deletes failed; those messages may be sent again", len(gone)
                )
            if not fut.done():
                fut.set_result(None)

        self.submit(done, deletes=gone)
        return fut

    async def flush_deletes(self) -> None:
        """Commit the queued deletes of acknowledged rows now and wait for the commit."""
        fut = self._flush_deletes()
        if fut is not None:
            await fut

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` on the writer thread (in a transaction) and return its result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        self.submit(done, fn=fn)
        return await fut

    async def outbox(
        self,
        device_id: str,
        config: OutboxConfig | None = None,
        *,
        clock: Clock | None = None,
    ) -> Outbox:
        """Open the outbox of ``device_id`` in this database, recovering its unacked rows.

        ``config.path`` and ``config.synchronous`` are ignored here (the database decides).

        Raises:
            ValueError: ``device_id`` already has an open outbox in this database.
        """
        if device_id in self._devices:
            raise ValueError(f"outbox of {device_id!r} is already open in {self._path}")
        self._devices.add(device_id)
        self._flush_deletes()  # queued before the read: acked rows are not recovered
        try:
            rows = await self.run(
                lambda conn: conn.execute(
                    "SELECT id, msg_id, topic, payload, user_properties, created_at "
                    "FROM outbox WHERE device_id = ? ORDER BY id",
                    (device_id,),
                ).fetchall()
            )
        except BaseException:
            self._devices.discard(device_id)
            raise
        from device_sdk._outbox import Outbox, OutboxConfig  # noqa: PLC0415 - companion module

        records = [
            OutboxRecord(
                r[0], r[1], r[2], bytes(r[3]), tuple((k, v) for k, v in json.loads(r[4])), r[5]
            )
            for r in rows
        ]
        return Outbox(self, device_id, config or OutboxConfig(), records, clock=clock)

    def _release(self, device_id: str) -> None:
        self._devices.discard(device_id)

    def statistics(self) -> OutboxDatabaseStatistics:
        """Writer-thread counters."""
        return OutboxDatabaseStatistics(**self._writer.stats, busy_s=self._writer.busy_s)

    async def aclose(self) -> None:
        """Finish queued writes and stop the writer thread."""
        if self._closed:
            return
        if self._dirty_handle is not None:
            self._dirty_handle.cancel()
            self._flush_dirty()
        self._flush_deletes()
        self._closed = True
        self._writer.submit(None)
        await asyncio.to_thread(self._writer.join)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
