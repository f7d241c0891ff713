"""DeviceClient against a real mosquitto: publish/subscribe, limits, states, reconnection."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from device_sdk import (
    AuthorizationError,
    ClientState,
    ClosedError,
    ConnectError,
    ConnectionLostError,
    ConnectionOptions,
    DeviceClient,
    DeviceIdentity,
    Endpoint,
    LimitExceededError,
    Limits,
    Message,
    NegativeAckError,
    OutboxConfig,
    OutboxDatabase,
    ReconnectPolicy,
    Subscription,
    Will,
)
from device_sdk.transport import TransportKind
from device_sdk.transport._base import PipelinedTransport
from device_sdk.transport._factory import create_transport
from tests.sdk._pki import LocalPki
from tests.sdk._proxy import FreezableProxy
from tests.sdk.conftest import MosquittoBroker

OPTS = ConnectionOptions(keepalive_s=30, ping_timeout_s=5, connect_timeout_s=5, ack_timeout_s=5)
FAST = ReconnectPolicy(base_s=0.05, cap_s=0.5, min_interval_s=0.05)


def _topic(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


async def _next(sub: Subscription, timeout: float = 5) -> Message:
    async with asyncio.timeout(timeout):
        return await anext(sub)


def _client(
    broker: MosquittoBroker, name: str, kind: TransportKind, **kwargs: object
) -> DeviceClient:
    return DeviceClient(
        broker.make_identity(name),
        broker.endpoint,
        transport=kind,
        options=OPTS,
        reconnect=FAST,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_publish_qos1_persisted_acked_and_received(
    broker: MosquittoBroker, transport_kind: TransportKind, tmp_path: Path
):
    topic = _topic()
    device = _client(
        broker, f"dev-{transport_kind}", transport_kind, outbox=OutboxConfig(tmp_path / "o.db")
    )
    assert device.state == "created"
    async with device:
        assert device.state == "connected"
        async with device.subscribe(topic) as sub:
            msg_id = await device.publish(topic, {"n": 1}, wait_ack=True, msg_id_field="id")
            m = await _next(sub)
            assert m.msg_id == msg_id
            assert json.loads(m.payload) == {"n": 1, "id": msg_id}
            await device.publish(topic, "text")
            assert (await _next(sub)).payload == b"text"
            await device.publish(topic, b"\x00\x01", 0)
            assert (await _next(sub)).payload == b"\x00\x01"
            await device.drain()
        stats = device.outbox_statistics()
        assert (stats.depth, stats.enqueued, stats.acked) == (0, 2, 2)
        metrics = device.metrics()
        assert metrics.counters["acked"] == 2
        assert metrics.counters["published_qos0"] == 1
        assert metrics.puback_latency.count == 2
    assert device.state is ClientState.CLOSED
    with pytest.raises(ClosedError):
        await device.publish(topic, b"late")


async def test_limits_are_checked_before_the_outbox(broker: MosquittoBroker, tmp_path: Path):
    async with _client(broker, "dev-limits", "paho", outbox=OutboxConfig(tmp_path / "o.db")) as d:
        with pytest.raises(LimitExceededError, match="wildcard"):
            await d.publish("t/+/x", b"x")
        with pytest.raises(LimitExceededError) as info:
            await d.publish("t/x", b"x" * (128 * 1024 + 1))
        assert info.value.limit == "payload_bytes"
        with pytest.raises(LimitExceededError) as info:
            await d.publish("/".join("abcdefghi"), b"x")
        assert info.value.limit == "topic_levels"
        with pytest.raises(LimitExceededError):
            await d.publish("t/" + "x" * 255, b"x")
        with pytest.raises(LimitExceededError):
            async with d.subscribe("t/#/x"):
                pass
        stats = d.outbox_statistics()
        assert (stats.enqueued, stats.depth) == (0, 0)
        rows = await d.outbox.database.run(
            lambda c: c.execute("SELECT count(*) FROM outbox").fetchone()[0]
        )
        assert rows == 0


async def test_subscription_limit(broker: MosquittoBroker):
    limits = Limits(max_subscriptions=2)
    d = _client(broker, "dev-sublimit", "paho", limits=limits)
    async with d, d.subscribe("t/a"), d.subscribe("t/b"), d.subscribe("t/a"):
        with pytest.raises(LimitExceededError, match="subscriptions"):
            await d.subscribe("t/c").__aenter__()


async def test_nacked_message_is_removed_and_reported(
    broker: MosquittoBroker, transport_kind: TransportKind
):
    async with _client(broker, "dev-denied", transport_kind) as d:
        with pytest.raises(NegativeAckError):
            await d.publish("denied/x", b"x", wait_ack=True)
        assert d.outbox_statistics().failed == 1
        assert d.outbox_statistics().depth == 0
        assert d.metrics().counters["nacked"] == 1


async def test_not_reentrant_and_reusable(broker: MosquittoBroker):
    d = _client(broker, "dev-reuse", "paho")
    async with d:
        with pytest.raises(RuntimeError, match="not reentrant"):
            async with d:
                pass
    async with d:
        await d.publish("t/reuse", b"x", wait_ack=True)
    assert d.metrics().counters["connects"] == 2


async def test_initial_connection_failure_raises(
    broker: MosquittoBroker, transport_kind: TransportKind
):
    broker.stop()
    d = _client(broker, "dev-offline", transport_kind)
    with pytest.raises(ConnectError):
        async with d:
            pass
    assert d.state is ClientState.CLOSED


async def test_start_offline_then_connect_and_resubscribe(
    broker: MosquittoBroker, transport_kind: TransportKind, tmp_path: Path
):
    topic = _topic()
    await asyncio.to_thread(broker.stop)
    d = _client(
        broker,
        f"dev-late-{transport_kind}",
        transport_kind,
        outbox=OutboxConfig(tmp_path / "o.db"),
        require_initial_connection=False,
    )
    async with d:
        assert d.state in (ClientState.CONNECTING, ClientState.RECONNECTING)
        async with d.subscribe(topic) as sub:
            for i in range(5):
                await d.publish(topic, str(i))
            assert d.outbox_statistics().depth == 5
            await asyncio.to_thread(broker.start)
            async with asyncio.timeout(10):
                await d.wait_connected()
            got = [(await _next(sub)).payload for _ in range(5)]
            assert got == [str(i).encode() for i in range(5)]
        await d.drain()
    assert d.metrics().counters["connect_failures"] >= 1


async def test_shared_outbox_database(broker: MosquittoBroker, tmp_path: Path):
    topic = _topic()
    db = await OutboxDatabase.open(tmp_path / "fleet.db", synchronous="normal")
    try:
        boxes = [await db.outbox(f"sim-{i}") for i in range(3)]
        clients = [_client(broker, f"sim-{i}", "crt", outbox=box) for i, box in enumerate(boxes)]
        async with (
            clients[0] as a,
            clients[1] as b,
            clients[2] as c,
            a.subscribe(f"{topic}/#") as sub,
        ):
            for n, dev in enumerate((a, b, c)):
                await dev.publish(f"{topic}/{n}", b"x", wait_ack=True)
            got = sorted([(await _next(sub)).topic for _ in range(3)])
            assert got == [f"{topic}/{n}" for n in range(3)]
        for box in boxes:
            assert not box.closed  # not owned by the clients
            await box.aclose()
        assert db.statistics().rows_inserted == 3
    finally:
        await db.aclose()


async def test_resubscribes_after_broker_restart(
    broker: MosquittoBroker, transport_kind: TransportKind
):
    topic = _topic()
    d = _client(broker, f"dev-resub-{transport_kind}", transport_kind)
    async with d, d.subscribe(topic) as sub, d.subscribe(topic, qos=0) as sub0:
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)  # clean session: subscriptions are gone
        async with asyncio.timeout(10):
            while d.metrics().counters["connects"] < 2:
                await asyncio.sleep(0.02)
            await d.wait_connected()
        await d.publish(topic, b"after-restart", wait_ack=True)
        assert (await _next(sub)).payload == b"after-restart"
        assert (await _next(sub0)).payload == b"after-restart"


async def test_half_open_link_is_detected_by_keepalive(
    broker: MosquittoBroker, transport_kind: TransportKind
):
    topic = _topic()
    opts = ConnectionOptions(keepalive_s=3, ping_timeout_s=1, connect_timeout_s=3, ack_timeout_s=30)
    async with FreezableProxy(broker.port) as proxy:
        d = DeviceClient(
            broker.make_identity(f"dev-half-open-{transport_kind}"),
            Endpoint("127.0.0.1", proxy.port, broker.ca_file),
            transport=transport_kind,
            options=opts,
            reconnect=FAST,
        )
        async with d, d.subscribe(topic) as sub:
            proxy.freeze()
            started = time.monotonic()
            await d.publish(topic, b"sent-into-the-void")  # no PUBACK: replayed later
            async with asyncio.timeout(15):
                while d.metrics().counters["disconnects"] < 1:
                    await asyncio.sleep(0.05)
            detected_after = time.monotonic() - started
            assert detected_after < 2 * opts.keepalive_s + 2
            async with asyncio.timeout(10):
                await d.wait_connected()
                assert (await _next(sub, timeout=10)).payload == b"sent-into-the-void"
            await d.drain()


async def test_authorization_failure_stops_reconnecting(broker: MosquittoBroker, tmp_path: Path):
    other = LocalPki().device("intruder")
    cert, key = tmp_path / "i.pem", tmp_path / "i.key"
    cert.write_bytes(other.cert_pem)
    key.write_bytes(other.key_pem)
    d = DeviceClient(
        DeviceIdentity.from_files(cert, key),
        broker.endpoint,
        transport="paho",
        options=OPTS,
        reconnect=FAST,
        require_initial_connection=False,
    )
    async with d:
        with pytest.raises(AuthorizationError):
            async with asyncio.timeout(10):
                await d.wait_connected()
        assert d.state is ClientState.FAILED
        assert isinstance(d.failure, AuthorizationError)
        assert d.metrics().counters["connect_failures"] == 1
        with pytest.raises(AuthorizationError):
            await d.publish("t/x", b"x")


async def test_leaving_with_an_error_publishes_the_will(
    broker: MosquittoBroker, transport_kind: TransportKind
):
    will_topic = _topic("will")
    opts = ConnectionOptions(
        keepalive_s=30, ping_timeout_s=5, connect_timeout_s=5, will=Will(will_topic, b"gone")
    )
    watcher = _client(broker, f"watch-{transport_kind}", transport_kind)
    async with watcher, watcher.subscribe(will_topic) as wills:
        d = DeviceClient(
            broker.make_identity(f"dev-w-{transport_kind}"),
            broker.endpoint,
            transport=transport_kind,
            options=opts,
            reconnect=FAST,
        )
        async with d:
            pass
        with pytest.raises(RuntimeError, match="crash"):
            async with d:
                raise RuntimeError("crash")
        m = await _next(wills)
        assert (m.topic, m.payload) == (will_topic, b"gone")
        assert wills.statistics().received == 1


@pytest.mark.parametrize("kind", ["crt", "paho"])
async def test_start_publish_contract(broker: MosquittoBroker, kind: TransportKind):
    identity = broker.make_identity(f"dev-start-publish-{kind}")
    transport = create_transport(identity, broker.endpoint, kind, OPTS)
    assert isinstance(transport, PipelinedTransport)
    with pytest.raises(ConnectionLostError):
        transport.start_publish("t/x", b"x", 1)
    async with transport:
        futures = [transport.start_publish(f"t/sp/{i}", b"x", 1) for i in range(20)]
        denied = transport.start_publish("denied/x", b"x", 1)
        qos0 = transport.start_publish("t/sp/qos0", b"x", 0)
        async with asyncio.timeout(10):
            await asyncio.gather(*futures, qos0)
            with pytest.raises(NegativeAckError) as info:
                await denied
        assert info.value.reason_code == 0x87
        cancelled = transport.start_publish("t/sp/cancelled", b"x", 1)
        cancelled.cancel()  # its PUBACK is ignored
        stats = transport.statistics()
        assert (stats.published, stats.acked, stats.nacked) == (23, 20, 1)
        broker.stop()  # the connection ends with a publish still pending
        pending = transport.start_publish("t/sp/lost", b"x", 1)
        async with asyncio.timeout(15):
            with pytest.raises(ConnectionLostError):
                await pending
            await transport.disconnected()
        assert transport.statistics().in_flight == 0
        with pytest.raises(ConnectionLostError):
            transport.start_publish("t/x", b"x", 1)


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "awaited"])
async def test_both_send_paths_deliver_in_order(
    broker: MosquittoBroker, transport_kind: TransportKind, pipelined: bool
):
    topic = _topic()
    device = _client(broker, f"dev-paths-{transport_kind}", transport_kind, inflight_window=5)
    device._pipelined = pipelined  # the private switch the benchmark uses
    async with device, device.subscribe(topic) as sub:
        uses_pipeline = isinstance(device.transport, PipelinedTransport) and pipelined
        assert uses_pipeline == pipelined  # every built-in transport has start_publish
        for i in range(60):
            await device.publish(topic, str(i))
        received = [int((await _next(sub)).payload) for _ in range(60)]
        await device.drain()
        metrics = device.metrics()
        assert metrics.counters["acked"] == 60
        assert metrics.puback_latency.count == 60
    assert received == list(range(60))
