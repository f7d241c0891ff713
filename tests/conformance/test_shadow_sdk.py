"""Device Shadow through AWS's own ``IotShadowClientV2`` (classic and named), on both brokers.

Every call below completes only if the stub echoes the SDK's ``clientToken`` and publishes on
the exact topics the SDK subscribed (``…/get/+``, ``…/delete/+``, ``…/update/accepted`` and
``…/update/rejected``): a wrong stub makes these tests time out rather than fail on a value.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from awsiot import iotshadow

from cloud_stubs import LocalIoTCore
from tests.conformance._sdk import (
    assert_epoch_seconds,
    await_sdk,
    device_creds,
    expect_rejected,
    sdk_connection,
)
from tests.conformance._shadow import SdkShadow

KINDS = pytest.mark.parametrize("shadow_name", [None, "config"], ids=["classic", "named"])


def _recent(when: Any) -> None:
    """The SDK parsed the timestamp with ``datetime.fromtimestamp`` (so it was seconds)."""
    assert isinstance(when, dt.datetime)
    assert abs(when.timestamp() - time.time()) < 120


@KINDS
async def test_p5_get_on_fresh_shadow_is_404(cloud: LocalIoTCore, shadow_name: str | None) -> None:
    ident = cloud.create_thing("fresh-thing")
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        shadow = SdkShadow.over(conn, "fresh-thing", shadow_name)
        req_future = shadow.get()
        err = await expect_rejected(req_future)
    assert err.code == 404
    assert err.message == f"No shadow exists with name: '{shadow.missing_name}'"
    assert err.timestamp is None  # §7.5: no timestamp on 404
    assert isinstance(err.client_token, str)  # §7.1: echoed, or the SDK would have timed out


@KINDS
async def test_p7_worked_sequence_with_streams(
    cloud: LocalIoTCore, shadow_name: str | None
) -> None:
    """Spec §2.12 step by step, watching ``update/delta`` and ``update/documents``."""
    ident = cloud.create_thing("T")
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        shadow = SdkShadow.over(conn, "T", shadow_name)
        delta = await shadow.delta_stream()
        docs = await shadow.documents_stream()

        # 1. get on a fresh thing -> 404
        err = await expect_rejected(shadow.get())
        assert (err.code, err.message) == (
            404,
            f"No shadow exists with name: '{shadow.missing_name}'",
        )

        # 2. reported foo=1 -> v1, documents with previous null, no delta
        acc = await await_sdk(shadow.update(reported={"foo": 1}))
        assert acc.version == 1
        assert acc.state.reported == {"foo": 1}
        assert acc.state.desired is None
        assert_epoch_seconds(acc.metadata.reported["foo"]["timestamp"])
        _recent(acc.timestamp)
        ev = await docs.next()
        assert ev.previous is None
        assert ev.current.version == 1
        assert ev.current.state.reported == {"foo": 1}
        assert ev.current.state.desired is None
        _recent(ev.timestamp)
        await delta.assert_quiet()

        # 3. desired foo=2 -> v2 + delta {"foo": 2}
        acc = await await_sdk(shadow.update(desired={"foo": 2}))
        assert acc.version == 2
        assert acc.state.desired == {"foo": 2}
        assert acc.state.reported is None
        d = await delta.next()
        assert d.version == 2
        assert d.state == {"foo": 2}
        assert set(d.metadata) == {"foo"}
        assert_epoch_seconds(d.metadata["foo"]["timestamp"])
        _recent(d.timestamp)
        ev = await docs.next()
        assert ev.previous.version == 1
        assert ev.previous.state.reported == {"foo": 1}
        assert ev.current.version == 2
        assert ev.current.state.desired == {"foo": 2}
        assert ev.current.state.reported == {"foo": 1}

        # 4. reported foo=2 -> v3, delta gone: no delta message
        acc = await await_sdk(shadow.update(reported={"foo": 2}))
        assert acc.version == 3
        ev = await docs.next()
        assert ev.current.version == 3
        assert ev.current.state.reported == {"foo": 2}
        await delta.assert_quiet()

        # 5. desired foo=null -> v4, current state has only `reported`, no delta
        acc = await await_sdk(shadow.update(desired={"foo": None}))
        assert acc.version == 4
        assert acc.state.desired == {"foo": None}  # echoed as sent (§7.7)
        ev = await docs.next()
        assert ev.current.version == 4
        assert ev.current.state.desired is None
        assert ev.current.state.reported == {"foo": 2}
        assert ev.current.metadata.desired is None
        await delta.assert_quiet()
        got = await await_sdk(shadow.get())
        assert got.version == 4
        assert got.state.desired is None
        assert got.state.delta is None
        assert got.state.reported == {"foo": 2}

        # 6. delete -> version 4 (the deleted one), then get -> 404 again
        deleted = await await_sdk(shadow.delete())
        assert deleted.version == 4
        _recent(deleted.timestamp)
        err = await expect_rejected(shadow.get())
        assert err.code == 404

        # §2.7: the delete consumed a version: the re-created shadow is N+2, previous null
        acc = await await_sdk(shadow.update(reported={"foo": 3}))
        assert acc.version == 6
        ev = await docs.next()
        assert ev.previous is None
        assert ev.current.version == 6
        assert ev.current.state.reported == {"foo": 3}
        await delta.assert_quiet(0)


async def test_p6_versions_conflict_noop_and_delete(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("versioned")
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        shadow = SdkShadow.over(conn, "versioned", "v")
        assert (await await_sdk(shadow.update(reported={"a": 1}))).version == 1

        # the request version must EQUAL the current one (not current+1)
        req = shadow.update_request(iotshadow.ShadowState(reported={"a": 2}), version=2)
        err = await expect_rejected(shadow.send(req))
        assert err.code == 409
        assert err.message == "Version conflict"
        assert err.client_token == req.client_token  # the SDK stored its token in the request
        req = shadow.update_request(iotshadow.ShadowState(reported={"a": 2}), version=0)
        assert (await expect_rejected(shadow.send(req))).code == 409

        acc = await await_sdk(shadow.update(reported={"a": 2}, version=1))
        assert acc.version == 2

        # a no-op update (empty state) is still accepted and still bumps the version
        acc = await await_sdk(shadow.send(shadow.update_request(iotshadow.ShadowState())))
        assert acc.version == 3
        got = await await_sdk(shadow.get())
        assert (got.version, got.state.reported) == (3, {"a": 2})
        assert (await await_sdk(shadow.update(reported={"a": 2}, version=3))).version == 4

        # a get never changes the version
        assert (await await_sdk(shadow.get())).version == 4

        assert (await await_sdk(shadow.delete())).version == 4
        assert (await expect_rejected(shadow.delete())).code == 404  # nothing left to delete
        assert (await await_sdk(shadow.update(reported={"a": 3}))).version == 6


async def test_p4_bad_updates_the_sdk_can_send(cloud: LocalIoTCore) -> None:
    """The SDK's models do not type-check ``desired``/``reported``: the service must."""
    ident = cloud.create_thing("sloppy")
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        shadow = SdkShadow.over(conn, "sloppy")
        deep: dict[str, Any] = {"g": 1}
        for key in "fedcba":
            deep = {key: deep}  # desired.a.b.c.d.e.f.g = 1: one object level too many
        cases: list[tuple[Any, int | None, int, str | None]] = [
            (None, None, 400, "Missing required node: state"),
            (iotshadow.ShadowState(desired="on"), None, 400, "Desired node must be an object"),
            (iotshadow.ShadowState(reported=[1, 2]), None, 400, "Reported node must be an object"),
            (iotshadow.ShadowState(reported={"a": 1}), -1, 400, "Invalid version"),
            (
                iotshadow.ShadowState(desired=deep),
                None,
                400,
                "JSON contains too many levels of nesting; maximum is 6",
            ),
            (iotshadow.ShadowState(reported={"list": [1, None]}), None, 400, None),
            (
                iotshadow.ShadowState(reported={"big": "x" * 8200}),
                None,
                413,
                "The payload exceeds the maximum size allowed",
            ),
        ]
        for state, version, code, message in cases:
            req = shadow.update_request(state, version)
            err = await expect_rejected(shadow.send(req))
            assert err.code == code, (state, err.message)
            assert type(err.code) is int  # §7.4: a JSON number
            if message is not None:
                assert err.message == message
            assert err.client_token == req.client_token
            if err.timestamp is not None:
                _recent(err.timestamp)
        # none of them created the shadow
        assert (await expect_rejected(shadow.get())).code == 404
        # exactly at the nesting limit is fine
        ok: dict[str, Any] = {"f": 1}
        for key in "edcba":
            ok = {key: ok}
        assert (await await_sdk(shadow.update(desired=ok))).version == 1
        # the 8 KB limit applies to the merged document, not to the request (§2.9)
        assert (await await_sdk(shadow.update(reported={"a": "x" * 5000}))).version == 2
        req = shadow.update_request(iotshadow.ShadowState(reported={"b": "y" * 5000}))
        err = await expect_rejected(shadow.send(req))
        assert (err.code, err.client_token) == (413, req.client_token)
        assert (await await_sdk(shadow.get())).version == 2


async def test_p7_section_null_and_state_null(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("nulls")
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        shadow = SdkShadow.over(conn, "nulls")
        await await_sdk(shadow.update(desired={"a": 1}, reported={"b": 2}))
        # "desired": null deletes the whole section; the SDK keeps the JSON null
        acc = await await_sdk(shadow.update(desired_null=True))
        assert acc.state.desired is None
        assert acc.state.desired_is_nullable is True
        got = await await_sdk(shadow.get())
        assert got.state.desired is None
        assert got.state.delta is None
        assert got.state.reported == {"b": 2}
        assert got.metadata.desired is None
        # the SDK omits `state` when it is None: the service must say so
        req = shadow.update_request(None)
        err = await expect_rejected(shadow.send(req))
        assert (err.code, err.message) == (400, "Missing required node: state")
        assert err.client_token == req.client_token


async def test_p8_delta_rules(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("lamp")
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        shadow = SdkShadow.over(conn, "lamp")
        delta = await shadow.delta_stream()
        reported = {
            "lights": {"color": {"r": 1, "g": 0, "b": 3}},
            "arr": [1, 2],
            "same": {"x": 1, "y": 2},
            "typ": 5,
            "extra": 1,
        }
        await await_sdk(shadow.update(reported=reported))
        await delta.assert_quiet()  # no desired: no delta

        desired = {
            "lights": {"color": {"r": 1, "g": 2, "b": 3}},
            "arr": [1, 2],
            "same": {"x": 1},
            "typ": {"a": 1},
            "mode": "eco",
        }
        acc = await await_sdk(shadow.update(desired=desired))
        ev = await delta.next()
        # recursive for objects, only the path to the differing leaf, no empty objects,
        # a type mismatch gives the whole desired value, reported-only keys never appear
        expected = {"lights": {"color": {"g": 2}}, "typ": {"a": 1}, "mode": "eco"}
        assert ev.state == expected
        assert ev.version == acc.version
        stamp = acc.metadata.desired["mode"]["timestamp"]
        assert ev.metadata == {
            "lights": {"color": {"g": {"timestamp": stamp}}},
            "typ": {"a": {"timestamp": stamp}},
            "mode": {"timestamp": stamp},
        }
        got = await await_sdk(shadow.get())
        assert got.state.delta == expected

        # arrays are atomic values; a reported-only update that creates a difference
        # publishes the complete current delta, not just the touched key
        await await_sdk(shadow.update(reported={"arr": [2, 1]}))
        ev = await delta.next()
        assert ev.state == {**expected, "arr": [1, 2]}

        # reporting everything desired empties the delta: no delta message, none in get
        await await_sdk(
            shadow.update(
                reported={
                    "lights": {"color": {"g": 2}},
                    "arr": [1, 2],
                    "typ": {"a": 1},
                    "mode": "eco",
                }
            )
        )
        await delta.assert_quiet()
        got = await await_sdk(shadow.get())
        assert got.state.delta is None
        assert got.state.reported["same"] == {"x": 1, "y": 2}

        # removing a desired key with null does not produce a delta either
        await await_sdk(shadow.update(desired={"mode": None}))
        await delta.assert_quiet()


async def test_p9_per_leaf_metadata_survives_unrelated_updates(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("meta")
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        shadow = SdkShadow.over(conn, "meta")
        first = await await_sdk(
            shadow.update(
                desired={"d": 1},
                reported={"x": {"p": 1, "q": 2}, "s": "a", "arr": [1, {"k": 2}]},
            )
        )
        t0 = first.metadata.reported["x"]["p"]["timestamp"]
        assert_epoch_seconds(t0)
        assert first.metadata.reported["arr"] == [{"timestamp": t0}, {"k": {"timestamp": t0}}]
        while int(time.time()) <= t0:  # the next update must land in a later second
            await asyncio.sleep(0.05)
        second = await await_sdk(shadow.update(reported={"x": {"q": 3}}))
        t1 = second.metadata.reported["x"]["q"]["timestamp"]
        assert t1 > t0
        # update/accepted carries metadata only for the leaves of the request
        assert second.metadata.reported == {"x": {"q": {"timestamp": t1}}}
        assert second.metadata.desired is None

        got = await await_sdk(shadow.get())
        assert got.metadata.reported == {
            "x": {"p": {"timestamp": t0}, "q": {"timestamp": t1}},
            "s": {"timestamp": t0},
            "arr": [{"timestamp": t0}, {"k": {"timestamp": t0}}],
        }
        assert got.metadata.desired == {"d": {"timestamp": t0}}
        assert got.state.reported == {"x": {"p": 1, "q": 3}, "s": "a", "arr": [1, {"k": 2}]}
