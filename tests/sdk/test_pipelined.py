"""DeviceClient's pipelined send path (``start_publish``), as pure logic on an in-memory transport.

The real-broker guarantees (no loss across restarts, order, PUBACK 0x87) are covered by
test_client.py and test_no_loss.py, where the CRT transport takes this path. Here the
transport is a test double so each edge case can be provoked exactly: ack timeouts, nacks,
a link drop with records in flight, close with records in flight, the in-flight window.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from device_sdk import (
    ClientMetrics,
    ClosedError,
    ConnectionOptions,
    DeviceClient,
    DeviceIdentity,
    Endpoint,
    LatencyHistogram,
    LimitExceededError,
    Limits,
    NegativeAckError,
    OutboxConfig,
    ReconnectPolicy,
)
from device_sdk._identity import FileCredentials
from device_sdk._outbox import new_msg_id
from device_sdk.transport._base import PipelinedTransport
from tests.sdk._fakes import FakePipelinedTransport

FAST = ReconnectPolicy(base_s=0.01, cap_s=0.05, min_interval_s=0.01)
IDENTITY = DeviceIdentity(FileCredentials(Path("c.pem"), Path("k.pem"), None), "fake", "fake")
ENDPOINT = Endpoint("127.0.0.1", 8883)


def _client(
    transport: FakePipelinedTransport, *, ack_timeout_s: float = 5.0, **kwargs: object
) -> DeviceClient:
    return DeviceClient(
        IDENTITY,
        ENDPOINT,
        transport=transport,
        options=ConnectionOptions(ack_timeout_s=ack_timeout_s),
        reconnect=FAST,
        **kwargs,  # type: ignore[arg-type]
    )


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def _numbers(transport: FakePipelinedTransport) -> list[int]:
    return [int(payload) for _, payload, _ in transport.sent]


def test_fake_is_a_pipelined_transport():
    assert isinstance(FakePipelinedTransport(), PipelinedTransport)


async def test_acks_delete_in_order_with_metrics():
    transport = FakePipelinedTransport()
    async with _client(transport) as device:
        ids = [await device.publish("t/a", str(i)) for i in range(50)]
        await device.drain()
        metrics = device.metrics()
        assert metrics.counters["acked"] == 50
        assert metrics.puback_latency.count == 50
        assert metrics.end_to_end_latency.count == 50
        assert device.outbox_statistics().depth == 0
    assert _numbers(transport) == list(range(50))
    assert [msg_id for *_, msg_id in transport.sent] == ids


async def test_publish_nowait_delivers_in_order():
    transport = FakePipelinedTransport()
    async with _client(transport) as device:
        ids = [device.publish_nowait("t/a", str(i)) for i in range(50)]
        with pytest.raises(LimitExceededError):
            device.publish_nowait("t/+", "wildcard")
        assert device.outbox.depth == 50  # the refused one was not stored
        await device.drain()
        assert device.metrics().counters["acked"] == 50
    assert _numbers(transport) == list(range(50))
    assert [msg_id for *_, msg_id in transport.sent] == ids
    with pytest.raises(ClosedError):
        device.publish_nowait("t/a", "after close")


async def test_clients_can_share_one_metrics_object():
    shared = ClientMetrics({}, LatencyHistogram(), LatencyHistogram())
    one, two = FakePipelinedTransport(), FakePipelinedTransport()
    async with _client(one, metrics=shared) as a, _client(two, metrics=shared) as b:
        for i in range(10):
            a.publish_nowait("t/a", str(i))
            await b.publish("t/b", str(i))
        await a.drain()
        await b.drain()
        assert shared.counters["acked"] == 20
        assert shared.counters["published"] == 20
        assert shared.puback_latency.count == 20
        assert shared.end_to_end_latency.count == 20
        copy = a.metrics()
        assert copy.counters["acked"] == 20
        assert copy.puback_latency is not shared.puback_latency
    assert _client(FakePipelinedTransport()).metrics().counters["acked"] == 0


async def test_window_bounds_unacknowledged_publishes():
    transport = FakePipelinedTransport(auto_ack=False)
    async with _client(transport, inflight_window=4) as device:
        for i in range(20):
            await device.publish("t/w", str(i))
        await _until(lambda: len(transport.sent) == 4)
        await asyncio.sleep(0.05)
        assert len(transport.sent) == 4  # the window is full: nothing more is sent
        while len(transport.sent) < 20:
            transport.ack_all()
            await asyncio.sleep(0.01)
        transport.ack_all()
        await device.drain()
    assert transport.peak_pending == 4
    assert _numbers(transport) == list(range(20))


async def test_ack_timeout_requeues_in_order_and_resends():
    transport = FakePipelinedTransport(auto_ack=False)
    async with _client(transport, ack_timeout_s=0.2, inflight_window=10) as device:
        for i in range(5):
            await device.publish("t/slow", str(i))
        await _until(lambda: len(transport.sent) == 5)
        first = list(transport.pending)
        # Nobody acks: after 0.2 s all five time out, are requeued and sent again in order.
        await _until(lambda: len(transport.sent) == 10)
        assert all(f.cancelled() for f in first)
        assert device.metrics().counters["ack_timeouts"] == 5
        transport.auto_ack = True
        transport.ack_all()
        await device.drain()
        stats = device.outbox_statistics()
        assert (stats.acked, stats.replayed) == (5, 5)
    assert _numbers(transport) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    # A late PUBACK of a timed-out (cancelled) future is ignored.
    assert device.metrics().counters["acked"] == 5


async def test_ack_timeout_timer_follows_the_oldest_record():
    transport = FakePipelinedTransport(auto_ack=False)
    async with _client(transport, ack_timeout_s=0.3) as device:
        await device.publish("t/x", "0")
        await _until(lambda: len(transport.sent) == 1)
        await asyncio.sleep(0.2)
        await device.publish("t/x", "1")
        await _until(lambda: len(transport.sent) == 2)
        transport.ack(next(iter(transport.pending)))  # the oldest is acked in time
        await asyncio.sleep(0.15)  # past the first deadline, before the second one
        assert device.metrics().counters["ack_timeouts"] == 0
        transport.auto_ack = True  # the re-send is acknowledged
        await _until(lambda: device.metrics().counters["ack_timeouts"] == 1)
        await device.drain()
    assert _numbers(transport) == [0, 1, 1]


async def test_nack_fails_and_removes_the_message():
    transport = FakePipelinedTransport()
    transport.nack_topics["denied/x"] = 0x87
    async with _client(transport) as device:
        with pytest.raises(NegativeAckError) as info:
            await device.publish("denied/x", "no", wait_ack=True)
        assert info.value.reason_code == 0x87
        await device.publish("t/ok", "yes", wait_ack=True)
        stats = device.outbox_statistics()
        assert (stats.depth, stats.failed, stats.acked) == (0, 1, 1)
        assert device.metrics().counters["nacked"] == 1


async def test_link_drop_replays_in_flight_records_in_order(tmp_path: Path):
    transport = FakePipelinedTransport(auto_ack=False)
    outbox = OutboxConfig(tmp_path / "o.db")
    device = _client(transport, outbox=outbox, inflight_window=5, ack_timeout_s=0.3)
    async with device:
        for i in range(8):
            await device.publish("t/drop", str(i))
        await _until(lambda: len(transport.sent) == 5)
        transport.ack(next(iter(transport.pending)))  # 0 is delivered
        await _until(lambda: len(transport.sent) == 6)
        transport.drop_link()  # 1..5 in flight: they fail with ConnectionLostError
        transport.auto_ack = True  # the next connection acknowledges everything
        await _until(lambda: transport.connections == 2)
        await device.drain()
        # The first connection's sender is gone: its ack timer must not fire afterwards.
        await asyncio.sleep(0.4)
        assert device.metrics().counters["ack_timeouts"] == 0
        stats = device.outbox_statistics()
        assert stats.acked == 8
        # 1..5 were re-sent; 6 and 7 count too if they were taken before the drop was seen.
        assert 5 <= stats.replayed <= 7
    assert _numbers(transport) == [0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 6, 7]


async def test_close_cancels_in_flight_and_keeps_them_durable(tmp_path: Path):
    transport = FakePipelinedTransport(auto_ack=False)
    outbox = OutboxConfig(tmp_path / "o.db")
    async with _client(transport, outbox=outbox) as device:
        for i in range(3):
            await device.publish("t/close", str(i))
        await _until(lambda: len(transport.sent) == 3)
        futures = list(transport.pending)
    assert all(f.cancelled() for f in futures)
    again = FakePipelinedTransport()
    async with _client(again, outbox=outbox) as device:
        await device.drain()
        assert device.outbox_statistics().recovered == 3
    assert _numbers(again) == [0, 1, 2]


async def test_rate_limit_applies_to_the_pipelined_path():
    transport = FakePipelinedTransport()
    limits = Limits(publishes_per_second=50)
    async with _client(transport, limits=limits) as device:
        for i in range(60):
            await device.publish("t/rate", str(i))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await device.drain()
        # The bucket starts with 50 tokens; 10 more need about 0.2 s.
        assert loop.time() - t0 >= 0.15


async def test_awaited_fallback_switch_keeps_the_same_results():
    transport = FakePipelinedTransport()
    device = _client(transport)
    device._pipelined = False
    async with device:
        for i in range(10):
            await device.publish("t/aw", str(i))
        await device.drain()
        assert device.metrics().counters["acked"] == 10
    assert _numbers(transport) == list(range(10))


def test_msg_ids_are_unique_within_a_process():
    ids = [new_msg_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 for i in ids[:100])
    int(ids[0], 16)


def test_msg_ids_differ_across_processes():
    code = (
        "import json; from device_sdk._outbox import new_msg_id; "
        "print(json.dumps([new_msg_id() for _ in range(1000)]))"
    )

    def run() -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        ids: list[str] = json.loads(out.stdout)
        return ids

    a, b = run(), run()
    assert not set(a) & set(b)
    assert {i[12:24] for i in a} != {i[12:24] for i in b}  # per-process random prefixes
