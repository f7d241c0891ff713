"""ShadowClient against the real local IoT Core (both brokers)."""

from __future__ import annotations

import asyncio

import pytest

from cloud_stubs import LocalIoTCore
from device_sdk import (
    ClosedError,
    RejectedError,
    RequestChannel,
    RequestTimeoutError,
    VersionConflictError,
)
from device_sdk.shadow import ShadowClient, ShadowDelta, shadow_topics
from tests.sdk_shadow._support import make_device, service_publish, set_desired


async def test_get_update_delete_round_trip(cloud: LocalIoTCore) -> None:
    async with make_device(cloud, "sh-1") as dev, ShadowClient(dev) as shadow:
        assert await shadow.get_or_none() is None
        with pytest.raises(RejectedError) as missing:
            await shadow.get()
        assert missing.value.code == 404
        assert not isinstance(missing.value, VersionConflictError)

        created = await shadow.update(reported={"temp": 20, "mode": "eco"})
        assert created.version == 1
        assert created.state.reported == {"temp": 20, "mode": "eco"}
        assert created.timestamp is not None
        assert created.timestamp.tzinfo is not None

        await shadow.update(desired={"mode": "boost"}, version=1)
        doc = await shadow.get()
        assert doc.version == 2
        assert doc.desired == {"mode": "boost"}
        assert doc.reported == {"temp": 20, "mode": "eco"}
        assert doc.delta == {"mode": "boost"}
        assert set(doc.metadata.reported or {}) == {"temp", "mode"}

        # None deletes a key; a None section deletes the section
        await shadow.update(reported={"temp": None})
        await shadow.update(desired=None)
        doc = await shadow.get()
        assert doc.state.desired is None
        assert doc.reported == {"mode": "eco"}

        deleted = await shadow.delete()
        assert deleted.version == doc.version
        assert await shadow.get_or_none() is None
        with pytest.raises(RejectedError) as again:
            await shadow.delete()
        assert again.value.code == 404


async def test_named_shadows_are_separate(cloud: LocalIoTCore) -> None:
    dev = make_device(cloud, "sh-2")
    async with dev, RequestChannel(dev) as channel:
        classic = ShadowClient(dev, channel=channel)
        named = ShadowClient(dev, name="config", channel=channel)
        async with classic, named:
            assert named.name == "config"
            await named.update(desired={"rate": 5})
            assert await classic.get_or_none() is None
            doc = await named.get()
            assert doc.desired == {"rate": 5}
            assert doc.version == 1


async def test_version_conflict_and_bad_request(cloud: LocalIoTCore) -> None:
    async with make_device(cloud, "sh-3") as dev, ShadowClient(dev) as shadow:
        await shadow.update(reported={"a": 1})
        await shadow.update(reported={"a": 2}, version=1)
        with pytest.raises(VersionConflictError) as conflict:
            await shadow.update(reported={"a": 3}, version=1)
        assert conflict.value.code == 409
        assert conflict.value.client_token
        with pytest.raises(RejectedError) as bad:
            await shadow.update(reported={"a": [1, None]})
        assert bad.value.code == 400
        assert (await shadow.get()).reported == {"a": 2}
        with pytest.raises(ValueError, match="desired= and/or reported="):
            await shadow.update()


async def test_requests_time_out(cloud: LocalIoTCore) -> None:
    async with make_device(cloud, "sh-4") as dev, ShadowClient(dev, timeout_s=0.3) as shadow:
        await cloud._stop_services()  # the broker stays up; nobody answers
        with pytest.raises(RequestTimeoutError):
            await shadow.get()


async def test_delta_stream_skips_garbage(cloud: LocalIoTCore) -> None:
    async with make_device(cloud, "sh-5") as dev, ShadowClient(dev) as shadow:
        topic = shadow.topics.update_delta
        async with shadow.deltas() as deltas, shadow.documents() as documents:
            await service_publish(cloud, topic, b"\xff not json")
            await service_publish(cloud, topic, {"state": "not an object", "version": 1})
            await service_publish(cloud, topic, {"state": {"x": 1}})  # no version
            version = await set_desired(cloud, "sh-5", {"color": "red"})
            async with asyncio.timeout(5):
                delta = await anext(deltas)
                snapshot = await anext(documents)
            assert isinstance(delta, ShadowDelta)
            assert delta.state == {"color": "red"}
            assert delta.version == version
            assert snapshot.previous is None
            assert snapshot.current.state.desired == {"color": "red"}
            stats = deltas.statistics()
            assert stats.malformed == 3
            assert stats.received == 4


async def test_client_must_be_entered(cloud: LocalIoTCore) -> None:
    async with make_device(cloud, "sh-6") as dev:
        shadow = ShadowClient(dev)
        with pytest.raises(ClosedError, match="async with ShadowClient"):
            await shadow.get()
        async with shadow:
            with pytest.raises(RuntimeError, match="already entered"):
                await shadow.__aenter__()


def test_topics_are_validated() -> None:
    topics = shadow_topics("robot-1", "cfg")
    assert topics.update_delta == "$aws/things/robot-1/shadow/name/cfg/update/delta"
    assert shadow_topics("robot-1").get == "$aws/things/robot-1/shadow/get"
    with pytest.raises(ValueError, match="thing name"):
        shadow_topics("bad/name")
    with pytest.raises(ValueError, match="shadow name"):
        shadow_topics("ok", "$reserved")
