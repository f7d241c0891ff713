"""Every transport (crt, paho, native) against a real mosquitto with mutual TLS."""

from __future__ import annotations

import asyncio
import gc
import uuid
from pathlib import Path

import pytest

from device_sdk import (
    AuthorizationError,
    ClosedError,
    ConnectError,
    ConnectionLostError,
    ConnectionOptions,
    DeviceIdentity,
    Endpoint,
    NegativeAckError,
    Will,
    create_transport,
)
from device_sdk.transport import Message, Transport, TransportKind
from tests.sdk._pki import LocalPki
from tests.sdk.conftest import MosquittoBroker

OPTS = ConnectionOptions(keepalive_s=30, ping_timeout_s=5, connect_timeout_s=5, ack_timeout_s=5)


def _topic(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


async def _next(t: Transport, timeout: float = 5) -> Message:
    async with asyncio.timeout(timeout):
        async for m in t.messages():
            return m
    raise AssertionError("no message")


async def test_connect_publish_qos1_and_receive(
    broker: MosquittoBroker, transport_kind: TransportKind
):
    identity = broker.make_identity(f"dev-{transport_kind}")
    t = create_transport(identity, broker.endpoint, transport_kind, OPTS)
    topic = _topic()
    async with t:
        assert t.connected.is_set()
        assert t.client_id == identity.client_id
        assert await t.subscribe([(topic, 1)]) == [1]
        await t.publish(topic, b"hello", 1, user_properties=(("msg-id", "m1"), ("k", "v")))
        m = await _next(t)
        assert (m.topic, m.payload, m.qos) == (topic, b"hello", 1)
        assert m.msg_id == "m1"
        assert m.user_property("k") == "v"
        await t.publish(topic, b"zero", 0)
        assert (await _next(t)).payload == b"zero"
        await t.unsubscribe([topic])
        stats = t.statistics()
        assert stats.connects == 1
        assert stats.acked == 1
        assert stats.received == 2
    assert not t.connected.is_set()
    assert await t.disconnected() is None
    with pytest.raises(ClosedError):
        await t.publish(topic, b"x", 1)


async def test_negative_puback_raises_with_reason_code(
    broker: MosquittoBroker, transport_kind: TransportKind
):
    t = create_transport(broker.make_identity("dev-nack"), broker.endpoint, transport_kind, OPTS)
    async with t:
        with pytest.raises(NegativeAckError) as info:
            await t.publish("denied/x", b"no", 1)
        assert info.value.reason_code == 0x87
        assert info.value.packet == "PUBACK"
        assert t.statistics().nacked == 1


async def test_unknown_ca_certificate_is_refused(
    broker: MosquittoBroker, transport_kind: TransportKind, tmp_path: Path
):
    other = LocalPki().device("intruder")
    cert, key = tmp_path / "i.pem", tmp_path / "i.key"
    cert.write_bytes(other.cert_pem)
    key.write_bytes(other.key_pem)
    identity = DeviceIdentity.from_files(cert, key)
    t = create_transport(identity, broker.endpoint, transport_kind, OPTS)
    with pytest.raises(ConnectError) as info:
        async with t:
            pass
    if transport_kind in ("paho", "native"):
        # TLS 1.2 reports the refusal inside the handshake: not retryable.
        assert isinstance(info.value, AuthorizationError)
    # paho 2.2 leaks the socket of a failed handshake; the transport must have closed it.
    del info
    gc.collect()


async def test_connection_refused_is_connect_error(
    broker: MosquittoBroker, transport_kind: TransportKind
):
    endpoint = Endpoint("127.0.0.1", broker.port, broker.ca_file)
    broker.stop()
    t = create_transport(broker.make_identity("dev-x"), endpoint, transport_kind, OPTS)
    with pytest.raises(ConnectError) as info:
        async with t:
            pass
    assert not isinstance(info.value, AuthorizationError)


async def test_broker_stop_is_reported_and_transport_reconnects(
    broker: MosquittoBroker, transport_kind: TransportKind
):
    t = create_transport(broker.make_identity("dev-restart"), broker.endpoint, transport_kind, OPTS)
    async with t:
        await asyncio.to_thread(broker.stop)
        async with asyncio.timeout(10):
            cause = await t.disconnected()
        assert isinstance(cause, ConnectionLostError)
        assert not t.connected.is_set()
        with pytest.raises((ConnectionLostError, ClosedError)):
            await t.publish("t/x", b"x", 1)
    await asyncio.to_thread(broker.start)
    async with t:  # reusable
        await t.publish("t/x", b"again", 1)
    assert t.statistics().connects == 2


async def test_not_reentrant(broker: MosquittoBroker, transport_kind: TransportKind):
    t = create_transport(broker.make_identity("dev-re"), broker.endpoint, transport_kind, OPTS)
    async with t:
        with pytest.raises(RuntimeError, match="not reentrant"):
            await t.__aenter__()


async def test_leaving_with_an_error_sends_the_will(
    broker: MosquittoBroker, transport_kind: TransportKind
):
    will_topic = _topic("will")
    opts = ConnectionOptions(
        keepalive_s=30, ping_timeout_s=5, connect_timeout_s=5, will=Will(will_topic, b"offline")
    )
    watcher = create_transport(
        broker.make_identity("watcher"), broker.endpoint, transport_kind, OPTS
    )
    dev = create_transport(broker.make_identity("dev-will"), broker.endpoint, transport_kind, opts)
    async with watcher:
        await watcher.subscribe([(will_topic, 1)])
        async with dev:
            pass  # clean exit: no will
        with pytest.raises(ZeroDivisionError):
            async with dev:
                _ = 1 / 0
        m = await _next(watcher)
        assert (m.topic, m.payload) == (will_topic, b"offline")
        await asyncio.sleep(0.2)
        assert watcher.statistics().received == 1


async def test_pkcs11_identity_needs_crt(tmp_path: Path, broker: MosquittoBroker):
    cert = broker.make_identity("dev-hsm").credentials
    identity = DeviceIdentity.from_pkcs11(
        "/nonexistent/libsofthsm2.so",
        0,
        "1234",
        "token",
        "key",
        cert.cert_file,  # type: ignore[union-attr]
    )
    with pytest.raises(TypeError, match="crt"):
        create_transport(identity, broker.endpoint, "paho")
    t = create_transport(identity, broker.endpoint, "crt", OPTS)
    with pytest.raises(AuthorizationError):
        async with t:
            pass
