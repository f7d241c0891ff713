"""The durable outbox against real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from device_sdk import (
    ClosedError,
    NegativeAckError,
    OutboxConfig,
    OutboxDatabase,
    OutboxFullError,
    OutboxStorageError,
)
from device_sdk._outbox import Outbox, new_msg_id
from tests.sdk._fakes import FakeClock


def _rows(path: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, device_id, topic FROM outbox ORDER BY id").fetchall()


async def _open(path: Path, **kwargs: object) -> Outbox:
    return await Outbox.open(OutboxConfig(path, **kwargs), "dev-1")  # type: ignore[arg-type]


def test_msg_ids_are_unique_and_time_ordered():
    ids = [new_msg_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 for i in ids)
    assert ids[0][:12] <= ids[-1][:12]


async def test_enqueue_take_ack_in_order(tmp_path: Path):
    box = await _open(tmp_path / "o.db")
    async with box:
        records = await asyncio.gather(
            *(
                box.enqueue(f"t/{i}", str(i).encode(), user_properties=(("k", str(i)),))
                for i in range(100)
            )
        )
        assert [r.topic for r in records] == [f"t/{i}" for i in range(100)]
        ids = [r.id for r in records]
        assert ids == sorted(ids)
        assert records[5].user_properties == (("msg-id", records[5].msg_id), ("k", "5"))
        taken = [box.take_nowait() for _ in range(100)]
        assert [r.id for r in taken if r] == ids
        assert box.take_nowait() is None
        for r in reversed(records):  # acks may arrive in any order
            assert box.ack(r.id)
        assert not box.ack(ids[0])
        await box.flush()
        stats = box.statistics()
        assert (stats.depth, stats.enqueued, stats.sent, stats.acked) == (0, 100, 100, 100)
    assert _rows(tmp_path / "o.db") == []


async def test_unacked_rows_are_replayed_in_order_after_reopening(tmp_path: Path):
    path = tmp_path / "o.db"
    async with await _open(path) as box:
        recs = [
            await box.enqueue("t/a", bytes([i]), user_properties=(("p", "v"),)) for i in range(10)
        ]
        for _ in range(4):
            rec = box.take_nowait()
            assert rec is not None
            box.ack(rec.id)
        box.take_nowait()  # in flight, never acked: the process "dies"
    assert [r[0] for r in _rows(path)] == [r.id for r in recs[4:]]
    async with await _open(path) as again:
        stats = again.statistics()
        assert (stats.depth, stats.recovered) == (6, 6)
        replay = [again.take_nowait() for _ in range(6)]
        assert [r.payload for r in replay if r] == [bytes([i]) for i in range(4, 10)]
        assert [r.msg_id for r in replay if r] == [r.msg_id for r in recs[4:]]
        assert replay[0] is not None
        assert replay[0].user_properties[1] == ("p", "v")
        assert again.statistics().replayed == 6
        newer = await again.enqueue("t/a", b"new")
        assert newer.id > recs[-1].id  # ids are never reused


async def test_requeue_in_flight_keeps_order_and_counts_replays(tmp_path: Path):
    async with await _open(tmp_path / "o.db") as box:
        recs = [await box.enqueue("t", bytes([i])) for i in range(6)]
        taken = [box.take_nowait() for _ in range(4)]
        assert taken[1] is not None
        box.ack(taken[1].id)
        assert box.requeue_in_flight() == 3
        order = [box.take_nowait() for _ in range(5)]
        assert [r.id for r in order if r] == [recs[i].id for i in (0, 2, 3, 4, 5)]
        assert box.statistics().replayed == 3
        assert box.requeue(recs[3].id)
        assert box.take_nowait() == recs[3]


async def test_reject_policy_raises_and_writes_nothing(tmp_path: Path):
    path = tmp_path / "o.db"
    async with await _open(path, max_messages=3) as box:
        for i in range(3):
            await box.enqueue("t", bytes([i]))
        with pytest.raises(OutboxFullError) as info:
            await box.enqueue("t", b"x")
        assert info.value.depth == 3
        assert box.statistics().enqueued == 3
    assert len(_rows(path)) == 3


async def test_byte_bound(tmp_path: Path):
    async with await _open(tmp_path / "o.db", max_bytes=10) as box:
        await box.enqueue("t", b"12345")
        await box.enqueue("t", b"12345")
        with pytest.raises(OutboxFullError):
            await box.enqueue("t", b"1")
        with pytest.raises(OutboxFullError, match="never fit"):
            await box.enqueue("t", b"x" * 11)
        assert box.statistics().size_bytes == 10


async def test_drop_oldest_policy(tmp_path: Path):
    path = tmp_path / "o.db"
    async with await _open(path, max_messages=3, overflow="drop_oldest") as box:
        recs = [await box.enqueue("t", bytes([i])) for i in range(5)]
        stats = box.statistics()
        assert (stats.depth, stats.dropped) == (3, 2)
        await box.flush()
        assert [r[0] for r in _rows(path)] == [r.id for r in recs[2:]]
        in_flight = box.take_nowait()
        assert in_flight == recs[2]
        await box.enqueue("t", b"x")  # drops the in-flight one: it is the oldest
        assert not box.ack(recs[2].id)
        assert box.statistics().dropped == 3
    async with await _open(path, max_messages=2, overflow="drop_oldest") as smaller:
        assert smaller.statistics().depth == 2  # recovered rows are trimmed to the new bound


async def test_drop_oldest_within_one_batch(tmp_path: Path):
    path = tmp_path / "o.db"
    async with await _open(path, max_messages=2, overflow="drop_oldest") as box:
        await asyncio.gather(*(box.enqueue("t", bytes([i])) for i in range(5)))
        await box.flush()
        assert box.statistics().dropped == 3
        assert len(_rows(path)) == 2


async def test_statistics_ages_with_the_clock(tmp_path: Path):
    clock = FakeClock()
    async with await Outbox.open(OutboxConfig(tmp_path / "o.db"), "d", clock=clock) as box:
        assert box.statistics().oldest_age_s == 0
        await box.enqueue("t", b"a")
        clock.advance(5)
        await box.enqueue("t", b"b")
        clock.advance(2)
        assert box.statistics().oldest_age_s == pytest.approx(7)


async def test_ack_waiters(tmp_path: Path):
    async with await _open(tmp_path / "o.db") as box:
        a = await box.enqueue("t", b"a", track_ack=True)
        b = await box.enqueue("t", b"b", track_ack=True)
        wa, wb = box.wait_acked(a.id), box.wait_acked(b.id)
        box.take_nowait()
        box.take_nowait()
        box.ack(a.id)
        box.fail(b.id, NegativeAckError("no", packet="PUBACK", reason_code=0x87))
        await wa
        with pytest.raises(NegativeAckError):
            await wb
        assert box.statistics().failed == 1
        await box.wait_empty()
        await box.wait_acked(a.id)  # already acknowledged: resolves at once


async def test_close_wakes_takers(tmp_path: Path):
    box = await _open(tmp_path / "o.db")
    taker = asyncio.ensure_future(box.take())
    await asyncio.sleep(0.01)
    await box.aclose()
    with pytest.raises(ClosedError):
        await taker
    with pytest.raises(ClosedError):
        await box.enqueue("t", b"x")


async def test_shared_database_isolates_devices_and_groups_commits(tmp_path: Path):
    path = tmp_path / "fleet.db"
    devices, per_device = 50, 40
    async with await OutboxDatabase.open(path, synchronous="normal") as db:
        boxes = [await db.outbox(f"sim-{i}") for i in range(devices)]
        with pytest.raises(ValueError, match="already open"):
            await db.outbox("sim-0")

        async def produce_and_ack(box: Outbox) -> None:
            for n in range(per_device):
                await box.enqueue(f"t/{box.device_id}", n.to_bytes(2, "big"))
                if n % 2:
                    rec = box.take_nowait()
                    assert rec is not None
                    box.ack(rec.id)

        async with asyncio.TaskGroup() as tg:
            for box in boxes:
                tg.create_task(produce_and_ack(box))
        for box in boxes:
            await box.aclose()
        stats = db.statistics()
        assert stats.rows_inserted == devices * per_device
        # Group commit across devices: the inserts queued by all outboxes in one loop
        # iteration travel in one job, and concurrent jobs share a transaction.
        # (one job per outbox and iteration would be ~devices x per_device = 2,000 jobs)
        assert stats.jobs <= 4 * per_device
        assert stats.rows_inserted >= 10 * stats.transactions
        again = await db.outbox("sim-7")
        left = [again.take_nowait() for _ in range(per_device // 2)]
        assert [int.from_bytes(r.payload, "big") for r in left if r] == list(
            range(per_device // 2, per_device)
        )
        assert again.take_nowait() is None
        await again.aclose()
    assert {r[1] for r in _rows(path)} == {f"sim-{i}" for i in range(devices)}


async def test_enqueue_nowait_commits_in_the_background(tmp_path: Path):
    path = tmp_path / "o.db"
    async with await _open(path) as box:
        records = [box.enqueue_nowait(f"t/{i}", b"x") for i in range(10)]
        assert box.ready == 0  # not sendable before its insert is committed
        assert box.depth == 10
        await box.flush()
        assert box.ready == 10
        assert [r[0] for r in _rows(path)] == [r.id for r in records]
        assert [box.take_nowait() for _ in range(10)] == records


async def test_enqueue_nowait_commit_failure_drops_and_counts(tmp_path: Path):
    path = tmp_path / "o.db"
    async with await _open(path) as box:
        await box.enqueue("t/first", b"1")
        with sqlite3.connect(path) as other:
            other.execute("DROP TABLE outbox")  # every later insert fails
        box.enqueue_nowait("t/lost", b"2")
        await box.flush()
        stats = box.statistics()
        assert (stats.enqueued, stats.failed, stats.depth) == (1, 1, 1)
        assert box.ready == 1  # the committed one is still there, the lost one is not


async def test_in_memory_outbox():
    async with await Outbox.open(OutboxConfig(None), "mem") as box:
        rec = await box.enqueue("t", b"x")
        assert box.take_nowait() == rec


async def test_unwritable_path_is_a_storage_error(tmp_path: Path):
    with pytest.raises(OutboxStorageError):
        await OutboxDatabase.open(tmp_path / "missing-dir" / "o.db")


def test_config_validation():
    with pytest.raises(ValueError, match="positive"):
        OutboxConfig(max_messages=0)
    with pytest.raises(ValueError, match="overflow"):
        OutboxConfig(overflow="drop_newest")  # type: ignore[arg-type]


async def test_take_batch_keeps_order_and_counts_replays(tmp_path: Path):
    async with await _open(tmp_path / "o.db") as box:
        records = [await box.enqueue("t", bytes([i])) for i in range(6)]
        assert box.ready == 6
        first = box.take_batch(4)
        assert [r.id for r in first] == [r.id for r in records[:4]]
        assert box.ready == 2
        assert box.statistics().in_flight == 4
        box.requeue_in_flight()
        again = box.take_batch(10)
        assert [r.id for r in again] == [r.id for r in records]
        assert box.take_batch(3) == []
        stats = box.statistics()
        assert (stats.sent, stats.replayed) == (10, 4)


async def test_wait_available_returns_on_commit_and_raises_on_close(tmp_path: Path):
    box = await _open(tmp_path / "o.db")
    waiter = asyncio.create_task(box.wait_available())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await box.enqueue("t", b"x")
    async with asyncio.timeout(5):
        await waiter
    assert box.take_batch(1)
    blocked = asyncio.create_task(box.wait_available())
    await asyncio.sleep(0.01)
    await box.aclose()
    with pytest.raises(ClosedError):
        await blocked


async def test_listener_runs_when_messages_become_ready(tmp_path: Path):
    calls: list[int] = []
    async with await _open(tmp_path / "o.db") as box:
        box._set_listener(lambda: calls.append(box.ready))
        await box.enqueue("t", b"a")
        assert calls == [1]
        rec = box.take_batch(1)[0]
        box.requeue(rec.id)
        assert calls == [1, 1]
        box.take_batch(1)
        box.requeue_in_flight()
        assert calls == [1, 1, 1]
        box._set_listener(None)
        await box.enqueue("t", b"b")
        assert calls == [1, 1, 1]


async def test_acks_of_many_outboxes_are_committed_lazily_in_one_job(tmp_path: Path):
    path = tmp_path / "fleet.db"
    async with await OutboxDatabase.open(path, synchronous="normal") as db:
        boxes = [await db.outbox(f"sim-{i}") for i in range(20)]
        taken = []
        for box in boxes:
            await box.enqueue("t", b"x")
            taken.append(box.take_batch(1)[0])
        jobs = db.statistics().jobs
        for box, rec in zip(boxes, taken, strict=True):
            assert box.ack(rec.id)
        # Acked rows stay on disk for a moment: a crash now would re-send them (at-least-once).
        assert len(_rows(path)) == 20
        async with asyncio.timeout(5):
            while db.statistics().rows_deleted < 20:
                await asyncio.sleep(0.02)
        assert db.statistics().jobs == jobs + 1  # one job for the deletes of all 20 outboxes
        assert _rows(path) == []
        for box in boxes:
            await box.aclose()


async def test_lazy_ack_never_loses_an_unacked_message(tmp_path: Path):
    path = tmp_path / "o.db"
    box = await _open(path)
    records = [await box.enqueue("t", bytes([i])) for i in range(3)]
    taken = box.take_batch(3)
    box.ack(taken[0].id)
    # A crash before the lazy delete commits: every row is still there, the acked one too.
    assert [r[0] for r in _rows(path)] == [r.id for r in records]
    await box.flush()  # flush() commits the queued deletes at once
    assert [r[0] for r in _rows(path)] == [r.id for r in records[1:]]
    box.ack(taken[1].id)
    await box.aclose()  # so does closing
    again = await _open(path)
    assert [r.id for r in again.take_batch(5)] == [records[2].id]
    await again.aclose()


async def test_commit_delay_groups_jobs_of_different_loop_iterations(tmp_path: Path):
    with pytest.raises(ValueError, match="commit_delay_s"):
        await OutboxDatabase.open(tmp_path / "bad.db", commit_delay_s=5)
    async with await OutboxDatabase.open(tmp_path / "f.db", commit_delay_s=0.1) as db:
        boxes = await asyncio.gather(*(db.outbox(f"sim-{i}") for i in range(10)))
        before = db.statistics()
        tasks = []
        for box in boxes:  # ten jobs, each queued in a later loop iteration
            tasks.append(asyncio.create_task(box.enqueue("t", b"x")))
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        after = db.statistics()
        assert after.jobs - before.jobs == 10
        assert after.transactions - before.transactions <= 2
        await asyncio.gather(*(box.aclose() for box in boxes))
