"""ShadowSync against the real local IoT Core (both brokers): convergence, outages, restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from cloud_stubs import LocalIoTCore
from device_sdk.shadow import ShadowChange, ShadowSync
from tests.sdk_shadow._support import (
    CuttableLink,
    cloud_state,
    eventually,
    make_device,
    service_publish,
    set_desired,
)

WAIT = 10.0


class Recorder:
    """A handler that reports the delta as applied and remembers what it saw."""

    def __init__(self) -> None:
        self.changes: list[ShadowChange[Any]] = []

    async def __call__(self, change: ShadowChange[Any]) -> dict[str, Any]:
        self.changes.append(change)
        return change.delta


def reported_is(expected: dict[str, Any]) -> Any:
    def check(state: dict[str, Any]) -> bool:
        return state.get("reported") == expected and "delta" not in state

    return check


async def synced(sync: ShadowSync[Any]) -> None:
    async with asyncio.timeout(WAIT):
        await sync.wait_synced()


async def test_desired_changes_reach_the_handler_and_are_reported(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    handler = Recorder()
    store = tmp_path / "shadow.json"
    async with (
        make_device(cloud, "sync-1") as dev,
        ShadowSync(dev, store_path=store, handler=handler) as sync,
    ):
        await synced(sync)
        assert sync.version == 0  # no shadow yet: nothing delivered, nothing created
        assert handler.changes == []

        version = await set_desired(cloud, "sync-1", {"color": "red", "level": {"a": 1}})
        await eventually(
            lambda: cloud_state(cloud, "sync-1"), reported_is({"color": "red", "level": {"a": 1}})
        )
        await set_desired(cloud, "sync-1", {"level": {"b": 2}})
        expected = {"color": "red", "level": {"a": 1, "b": 2}}
        await eventually(lambda: cloud_state(cloud, "sync-1"), reported_is(expected))
        await synced(sync)

        assert [c.delta for c in handler.changes] == [
            {"color": "red", "level": {"a": 1}},
            {"level": {"b": 2}},
        ]
        assert handler.changes[0].version == version
        assert handler.changes[1].desired == expected
        assert sync.desired == expected
        assert sync.reported == expected
        assert sync.pending == []
        assert sync.version == version + 3  # desired, reported, desired, reported
        stats = sync.statistics()
        assert (stats.reports, stats.handler_errors, stats.conflicts) == (2, 0, 0)
        # the first delta (v1 after "no shadow") is taken through a get, the next one directly
        assert stats.deltas == 1
        assert stats.resyncs == 2
    saved = json.loads(store.read_text())
    assert saved["reported"] == expected
    assert saved["version"] == version + 3


async def test_offline_desired_changes_are_delivered_after_reconnect(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    handler = Recorder()
    async with CuttableLink(cloud.endpoint.port) as link:
        dev = make_device(cloud, "sync-2", port=link.port)
        async with dev, ShadowSync(dev, store_path=tmp_path / "s.json", handler=handler) as sync:
            await set_desired(cloud, "sync-2", {"fan": 1})
            await eventually(lambda: cloud_state(cloud, "sync-2"), reported_is({"fan": 1}))
            generation = dev.connection_generation

            await link.go_offline()
            await set_desired(cloud, "sync-2", {"fan": 2})
            await set_desired(cloud, "sync-2", {"light": "on"})
            await sync.report({"uptime": 7})  # reported while offline: kept and sent later
            assert sync.reported == {"fan": 1, "uptime": 7}
            assert sync.pending == [{"uptime": 7}]
            link.go_online()

            expected = {"fan": 2, "light": "on", "uptime": 7}
            await eventually(lambda: cloud_state(cloud, "sync-2"), reported_is(expected))
            await synced(sync)
            assert dev.connection_generation > generation
            # the two offline changes arrive as one reconciled delta
            assert handler.changes[-1].delta == {"fan": 2, "light": "on"}
            assert sync.statistics().resyncs >= 2


async def test_offline_changes_are_delivered_after_restart_and_copy_survives(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    store = tmp_path / "s.json"
    async with make_device(cloud, "sync-3") as dev, ShadowSync(dev, store_path=store) as sync:
        await sync.report({"fw": "1.0", "mode": "eco"})
        await synced(sync)
    first_version = json.loads(store.read_text())["version"]

    await set_desired(cloud, "sync-3", {"mode": "boost"})  # while the device is off

    async with CuttableLink(cloud.endpoint.port) as link:
        link.down = True  # boot without network: the local copy is there already
        dev = make_device(cloud, "sync-3", port=link.port, must_connect=False)
        handler = Recorder()
        async with dev, ShadowSync(dev, store_path=store, handler=handler) as sync:
            assert sync.reported == {"fw": "1.0", "mode": "eco"}
            assert sync.version == first_version
            link.go_online()
            await eventually(
                lambda: cloud_state(cloud, "sync-3"), reported_is({"fw": "1.0", "mode": "boost"})
            )
            assert [c.delta for c in handler.changes] == [{"mode": "boost"}]


async def test_malformed_deltas_are_ignored(cloud: LocalIoTCore, tmp_path: Path) -> None:
    handler = Recorder()
    async with (
        make_device(cloud, "sync-4") as dev,
        ShadowSync(dev, store_path=tmp_path / "s.json", handler=handler) as sync,
    ):
        await synced(sync)
        topic = "$aws/things/sync-4/shadow/update/delta"
        await service_publish(cloud, topic, b"{{{ garbage")
        await service_publish(cloud, topic, {"state": [1, 2], "version": 5})
        await service_publish(cloud, topic, {"version": "x"})
        await set_desired(cloud, "sync-4", {"on": True})
        await eventually(lambda: cloud_state(cloud, "sync-4"), reported_is({"on": True}))
        await eventually(
            lambda: asyncio.sleep(0, sync.statistics().malformed_deltas), lambda n: n == 3
        )
        assert [c.delta for c in handler.changes] == [{"on": True}]


class Settings(pydantic.BaseModel):
    target: int = pydantic.Field(default=20, ge=5, le=30)
    mode: str = "auto"


async def test_model_validation_and_handler_errors_are_reported(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    seen: list[Settings] = []

    async def apply(change: ShadowChange[Settings]) -> Settings:
        assert change.model is not None
        if change.model.mode == "explode":
            raise RuntimeError("boom")
        seen.append(change.model)
        return change.model

    async with (
        make_device(cloud, "sync-5") as dev,
        ShadowSync(dev, store_path=tmp_path / "s.json", model=Settings, handler=apply) as sync,
    ):
        await synced(sync)
        version = await set_desired(cloud, "sync-5", {"target": 99})

        def has_error(reason: str) -> Any:
            def check(state: dict[str, Any]) -> bool:
                error = state.get("reported", {}).get("error")
                return isinstance(error, dict) and error["reason"] == reason

            return check

        state = await eventually(
            lambda: cloud_state(cloud, "sync-5"), has_error("invalid desired state")
        )
        assert state["reported"]["error"]["version"] == version
        assert "target" in state["reported"]["error"]["detail"]
        assert seen == []

        await set_desired(cloud, "sync-5", {"target": 21, "mode": "explode"})
        await eventually(lambda: cloud_state(cloud, "sync-5"), has_error("handler failed"))

        await set_desired(cloud, "sync-5", {"mode": "heat"})
        await eventually(
            lambda: cloud_state(cloud, "sync-5"), reported_is({"target": 21, "mode": "heat"})
        )
        assert seen == [Settings(target=21, mode="heat")]
        stats = sync.statistics()
        assert (stats.invalid_desired, stats.handler_errors) == (1, 1)


async def test_desired_changed_during_the_handler_is_re_applied(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    calls: list[dict[str, Any]] = []

    async def slow(change: ShadowChange[Any]) -> dict[str, Any]:
        calls.append(change.delta)
        if len(calls) == 1:
            # the cloud changes desired again while the device is still applying
            await set_desired(cloud, "sync-6", {"b": 2})
        return change.delta

    async with (
        make_device(cloud, "sync-6") as dev,
        ShadowSync(dev, store_path=tmp_path / "s.json", handler=slow) as sync,
    ):
        await synced(sync)
        await set_desired(cloud, "sync-6", {"a": 1})
        await eventually(lambda: cloud_state(cloud, "sync-6"), reported_is({"a": 1, "b": 2}))
        await synced(sync)
        # whether the new delta or a 409 on the report came first, the handler sees it
        assert calls == [{"a": 1}, {"a": 1, "b": 2}]


async def test_version_conflict_re_gets_and_retries(cloud: LocalIoTCore, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    async def racing(change: ShadowChange[Any]) -> dict[str, Any]:
        calls.append(change.delta)
        if len(calls) == 1:
            # removing a desired key publishes no delta: only the 409 can tell the device
            await set_desired(cloud, "sync-9", {"a": None})
        return change.delta

    async with (
        make_device(cloud, "sync-9") as dev,
        ShadowSync(dev, store_path=tmp_path / "s.json", handler=racing) as sync,
    ):
        await synced(sync)
        await set_desired(cloud, "sync-9", {"a": 1})
        state = await eventually(
            lambda: cloud_state(cloud, "sync-9"), lambda s: s.get("reported") == {"a": 1}
        )
        await synced(sync)
        assert "desired" not in state
        assert calls == [{"a": 1}]
        assert sync.desired == {}
        assert sync.statistics().conflicts == 1
        assert sync.version == 3  # desired (1), desired removal (2), reported after re-get (3)


async def test_changes_iterator_without_handler(cloud: LocalIoTCore, tmp_path: Path) -> None:
    async with (
        make_device(cloud, "sync-7") as dev,
        ShadowSync(dev, store_path=tmp_path / "s.json", name="cfg") as sync,
        sync.changes() as changes,
    ):
        await synced(sync)
        await set_desired(cloud, "sync-7", {"rate": 5}, name="cfg")
        async with asyncio.timeout(WAIT):
            change = await anext(changes)
        assert change.delta == {"rate": 5}
        assert change.model is None
        await sync.report(change.delta)
        await synced(sync)
        state = await cloud_state(cloud, "sync-7", name="cfg")
        assert state["reported"] == {"rate": 5}
    with pytest.raises(StopAsyncIteration):
        await anext(changes)


async def test_unusable_local_copy_is_replaced(cloud: LocalIoTCore, tmp_path: Path) -> None:
    store = tmp_path / "s.json"
    store.write_text("{not json")
    await set_desired(cloud, "sync-8", {"x": 1})
    async with (
        make_device(cloud, "sync-8") as dev,
        ShadowSync(dev, store_path=store, handler=Recorder()) as sync,
    ):
        await eventually(lambda: cloud_state(cloud, "sync-8"), reported_is({"x": 1}))
        await synced(sync)
    assert json.loads(store.read_text())["reported"] == {"x": 1}
