"""Device Shadow on the wire: exact payloads the SDK models cannot show or cannot send.

A plain MQTT client (aiomqtt) connects with the device's own certificate (or, for things that
are not in the registry, with the stub's privileged service identity) and checks the JSON
documents byte for byte where the spec fixes their shape.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiomqtt

from cloud_stubs import LocalIoTCore
from tests.conformance._sdk import (
    TIMEOUT,
    assert_epoch_seconds,
    collect,
    device_creds,
    next_json,
    request_json,
)
from tests.conformance._sdk import raw_client as device_client
from tests.conformance._shadow import shadow_prefix


async def _subscribe_all(client: aiomqtt.Client, prefix: str) -> None:
    for suffix in ("get/+", "delete/+", "update/accepted", "update/rejected"):
        await client.subscribe(f"{prefix}/{suffix}", qos=1)
    await client.subscribe(f"{prefix}/update/delta", qos=1)
    await client.subscribe(f"{prefix}/update/documents", qos=1)


async def _update(
    client: aiomqtt.Client, prefix: str, payload: bytes | dict[str, Any]
) -> dict[str, Any]:
    """Publish an update; return {suffix: body} of everything it caused (until documents)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await client.publish(f"{prefix}/update", data, qos=1)
    out: dict[str, Any] = {}
    while True:
        topic, body = await next_json(client)
        suffix = topic.removeprefix(prefix + "/")
        assert suffix not in out, f"{suffix} published twice"
        out[suffix] = body
        if suffix in {"update/documents", "update/rejected"}:
            return out


def _stamps(node: Any) -> list[Any]:
    """Every ``timestamp`` value inside a metadata tree."""
    if isinstance(node, dict):
        if set(node) == {"timestamp"}:
            return [node["timestamp"]]
        return [s for value in node.values() for s in _stamps(value)]
    if isinstance(node, list):
        return [s for value in node for s in _stamps(value)]
    return []


async def test_p1_client_token_echoed_everywhere_and_omitted_when_absent(
    cloud: LocalIoTCore,
) -> None:
    ident = cloud.create_thing("tok")
    prefix = shadow_prefix("tok")
    async with device_client(cloud, device_creds(ident)) as dev:
        await _subscribe_all(dev, prefix)
        # 404 without a token: exact body, no clientToken, no timestamp (§7.5)
        _, body = await request_json(dev, f"{prefix}/get", b"", f"{prefix}/get/")
        assert body == {"code": 404, "message": "No shadow exists with name: 'tok'"}
        _, body = await request_json(dev, f"{prefix}/get", {"clientToken": "g-1"}, f"{prefix}/get/")
        assert body == {
            "code": 404,
            "message": "No shadow exists with name: 'tok'",
            "clientToken": "g-1",
        }
        _, body = await request_json(
            dev, f"{prefix}/delete", {"clientToken": "d-0"}, f"{prefix}/delete/"
        )
        assert body == {
            "code": 404,
            "message": "No shadow exists with name: 'tok'",
            "clientToken": "d-0",
        }

        # accepted + delta + documents all carry the update's token
        out = await _update(dev, prefix, {"state": {"desired": {"x": 1}}, "clientToken": "u-1"})
        assert set(out) == {"update/accepted", "update/delta", "update/documents"}
        for suffix, msg in out.items():
            assert msg["clientToken"] == "u-1", suffix

        # without a token: no clientToken key anywhere
        out = await _update(dev, prefix, {"state": {"desired": {"x": 2}}})
        assert set(out) == {"update/accepted", "update/delta", "update/documents"}
        for suffix, msg in out.items():
            assert "clientToken" not in msg, suffix

        # rejected updates echo it too
        out = await _update(
            dev, prefix, {"state": {"desired": {"x": 3}}, "version": 99, "clientToken": "r-1"}
        )
        assert out == {
            "update/rejected": {"code": 409, "message": "Version conflict", "clientToken": "r-1"}
        }

        topic, body = await request_json(
            dev, f"{prefix}/get", {"clientToken": "g-2"}, f"{prefix}/get/"
        )
        assert topic == f"{prefix}/get/accepted"
        assert body["clientToken"] == "g-2"
        _, body = await request_json(dev, f"{prefix}/get", b"", f"{prefix}/get/")
        assert "clientToken" not in body

        topic, body = await request_json(
            dev, f"{prefix}/delete", {"clientToken": "d-1"}, f"{prefix}/delete/"
        )
        assert topic == f"{prefix}/delete/accepted"
        assert body == {"version": 2, "timestamp": body["timestamp"], "clientToken": "d-1"}
        assert_epoch_seconds(body["timestamp"])


async def test_p4_rejected_update_bodies(cloud: LocalIoTCore) -> None:
    """§2.3's validation table, in order, with numeric codes and echoed tokens."""
    ident = cloud.create_thing("picky")
    prefix = shadow_prefix("picky", "cfg")
    deep: Any = 1
    for key in "gfedcba":
        deep = {key: deep}
    cases: list[tuple[bytes | dict[str, Any], int, str | None, str | None]] = [
        (b"not json", 400, "Invalid JSON", None),
        (b"[1, 2]", 400, "Invalid JSON", None),
        (b"\xff\xfe\x00{", 415, None, None),  # §1.1: non-UTF-8 payloads
        ({"clientToken": 7, "state": {}}, 400, "Invalid clientToken", None),
        ({"clientToken": "k" * 65, "state": {}}, 400, "Invalid clientToken", None),
        ({"clientToken": 7, "state": 5}, 400, "Invalid clientToken", None),  # order
        ({"clientToken": "t1"}, 400, "Missing required node: state", "t1"),
        ({"clientToken": "t2", "state": 5}, 400, "State node must be an object", "t2"),
        ({"clientToken": "t3", "state": [1]}, 400, "State node must be an object", "t3"),
        (
            {"clientToken": "t4", "state": {"delta": {"a": 1}}},
            400,
            "State contains an invalid node: 'delta'",
            "t4",
        ),
        (
            {"clientToken": "t5", "state": {"desired": 1}},
            400,
            "Desired node must be an object",
            "t5",
        ),
        (
            {"clientToken": "t6", "state": {"reported": "x"}},
            400,
            "Reported node must be an object",
            "t6",
        ),
        (
            {"clientToken": "t7", "state": {"desired": deep}},
            400,
            "JSON contains too many levels of nesting; maximum is 6",
            "t7",
        ),
        ({"clientToken": "t8", "state": {}, "version": "1"}, 400, "Invalid version", "t8"),
        ({"clientToken": "t9", "state": {}, "version": -1}, 400, "Invalid version", "t9"),
        ({"clientToken": "t10", "state": {}, "version": 1.5}, 400, "Invalid version", "t10"),
        ({"clientToken": "t11", "state": {"reported": {"a": [1, None]}}}, 400, None, "t11"),
        (
            {"clientToken": "t12", "state": {"reported": {"big": "x" * 8200}}},
            413,
            "The payload exceeds the maximum size allowed",
            "t12",
        ),
    ]
    async with device_client(cloud, device_creds(ident)) as dev:
        await _subscribe_all(dev, prefix)
        for payload, code, message, token in cases:
            out = await _update(dev, prefix, payload)
            assert set(out) == {"update/rejected"}, (payload, out)
            body = out["update/rejected"]
            assert body["code"] == code, (payload, body)
            assert type(body["code"]) is int
            assert isinstance(body["message"], str)
            if message is not None:
                assert body["message"] == message, payload
            if token is not None:
                assert body["clientToken"] == token
            elif isinstance(payload, bytes) or not isinstance(payload.get("clientToken"), str):
                assert "clientToken" not in body
            if "timestamp" in body:
                assert_epoch_seconds(body["timestamp"])
            assert set(body) <= {"code", "message", "timestamp", "clientToken"}
        # nothing was created by all that
        _, body = await request_json(dev, f"{prefix}/get", b"{}", f"{prefix}/get/")
        assert body == {"code": 404, "message": "No shadow exists with name: 'cfg'"}


async def test_p7_exact_accepted_get_and_documents_shapes(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("shape")
    prefix = shadow_prefix("shape")
    async with device_client(cloud, device_creds(ident)) as dev:
        await _subscribe_all(dev, prefix)
        out = await _update(
            dev,
            prefix,
            {
                "state": {
                    "desired": {"color": "RED", "old": 1, "keep": 1},
                    "reported": {"color": "GREEN"},
                }
            },
        )
        created = out["update/documents"]
        assert created["previous"] is None  # §2.8.4 on creation
        t = created["timestamp"]
        assert_epoch_seconds(t)

        request = {"state": {"desired": {"color": "BLUE", "old": None}}, "ignored": True}
        out = await _update(dev, prefix, request)
        acc = out["update/accepted"]
        t = acc["timestamp"]
        # echo of the request state, nulls included; metadata only for the request's leaves
        assert acc == {
            "state": {"desired": {"color": "BLUE", "old": None}},
            "metadata": {"desired": {"color": {"timestamp": t}, "old": {"timestamp": t}}},
            "version": 2,
            "timestamp": t,
        }
        # the delta message: the delta itself (no desired wrapper), whole current delta
        assert out["update/delta"] == {
            "version": 2,
            "timestamp": t,
            "state": {"color": "BLUE", "keep": 1},
            "metadata": {"color": {"timestamp": t}, "keep": {"timestamp": created["timestamp"]}},
        }
        docs = out["update/documents"]
        assert set(docs) == {"previous", "current", "timestamp"}
        assert docs["previous"]["version"] == 1
        assert docs["previous"]["state"]["desired"] == {"color": "RED", "old": 1, "keep": 1}
        for snap in (docs["previous"], docs["current"]):
            assert set(snap) == {"state", "metadata", "version"}  # no delta, no timestamp
            assert set(snap["state"]) <= {"desired", "reported"}
            assert set(snap["metadata"]) <= {"desired", "reported"}
        assert docs["current"]["state"] == {
            "desired": {"color": "BLUE", "keep": 1},
            "reported": {"color": "GREEN"},
        }

        _, got = await request_json(dev, f"{prefix}/get", b"", f"{prefix}/get/")
        t0 = created["timestamp"]
        assert got == {
            "state": {
                "desired": {"color": "BLUE", "keep": 1},
                "reported": {"color": "GREEN"},
                "delta": {"color": "BLUE", "keep": 1},
            },
            "metadata": {  # full metadata, but never metadata.delta
                "desired": {"color": {"timestamp": t}, "keep": {"timestamp": t0}},
                "reported": {"color": {"timestamp": t0}},
            },
            "version": 2,
            "timestamp": got["timestamp"],
        }

        # a section set to null: echoed, with a single timestamp for the section
        out = await _update(dev, prefix, {"state": {"desired": None}})
        t = out["update/accepted"]["timestamp"]
        assert out["update/accepted"]["state"] == {"desired": None}
        assert out["update/accepted"]["metadata"] == {"desired": {"timestamp": t}}
        assert "update/delta" not in out
        # "state": null clears both sections; the shadow still exists (not a delete)
        out = await _update(dev, prefix, {"state": None, "clientToken": "sn"})
        assert out["update/accepted"]["state"] is None
        assert out["update/accepted"]["version"] == 4
        assert out["update/documents"]["current"]["state"] == {}
        _, got = await request_json(dev, f"{prefix}/get", b"", f"{prefix}/get/")
        assert got["state"] == {}
        assert got["version"] == 4
        # "state": {} is a no-op that is still accepted and still bumps the version
        out = await _update(dev, prefix, {"state": {}})
        assert out["update/accepted"]["state"] == {}
        assert out["update/accepted"]["metadata"] == {}
        assert out["update/accepted"]["version"] == 5


async def test_p3_shadow_timestamps_are_epoch_seconds(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("clock")
    prefix = shadow_prefix("clock", "n")
    async with device_client(cloud, device_creds(ident)) as dev:
        await _subscribe_all(dev, prefix)
        out = await _update(
            dev, prefix, {"state": {"desired": {"a": {"b": [1, {"c": 2}]}}, "reported": {"z": 0}}}
        )
        out.update(await _update(dev, prefix, {"state": {"reported": {"z": 1}}}))
        _, got = await request_json(dev, f"{prefix}/get", b"", f"{prefix}/get/")
        _, deleted = await request_json(dev, f"{prefix}/delete", b"", f"{prefix}/delete/")
    stamps: list[Any] = [got["timestamp"], deleted["timestamp"], *_stamps(got["metadata"])]
    for body in out.values():
        stamps.append(body["timestamp"])
        stamps += _stamps(body.get("metadata"))
        for snap in ("previous", "current"):
            if isinstance(body.get(snap), dict):
                stamps += _stamps(body[snap]["metadata"])
    assert len(stamps) > 10
    for stamp in stamps:
        assert_epoch_seconds(stamp)


async def _overlapping_filters_deliver_once(cloud: LocalIoTCore, *, v5: bool) -> None:
    ident = cloud.create_thing("overlap")
    prefix = shadow_prefix("overlap")
    async with device_client(cloud, device_creds(ident), v5=v5) as dev:
        await dev.subscribe(f"{prefix}/get/+", qos=1)
        await dev.subscribe(f"{prefix}/get/accepted", qos=1)
        await dev.subscribe(f"{prefix}/#", qos=1)
        await dev.publish(f"{prefix}/update", b'{"state":{"reported":{"a":1}}}', qos=1)
        await dev.publish(f"{prefix}/get", b'{"clientToken":"once"}', qos=1)
        seen = await collect(dev, 1.5)
    topics = [topic for topic, _ in seen]
    # the device's own requests come back through `#`, every response exactly once
    assert topics.count(f"{prefix}/get/accepted") == 1, topics
    assert topics.count(f"{prefix}/update/accepted") == 1, topics
    assert topics.count(f"{prefix}/update/documents") == 1, topics


async def test_p2_plus_filters_and_one_copy_per_connection_v311(cloud: LocalIoTCore) -> None:
    """Overlapping filters (incl. the SDK's ``…/get/+``) still deliver a response once."""
    await _overlapping_filters_deliver_once(cloud, v5=False)


async def test_p2_plus_filters_and_one_copy_per_connection_mqtt5(
    cloud_mosquitto: LocalIoTCore,
) -> None:
    await _overlapping_filters_deliver_once(cloud_mosquitto, v5=True)


async def test_p10_shadows_of_things_not_in_the_registry(cloud: LocalIoTCore) -> None:
    """Only a privileged client may touch another thing's topics: use the service identity."""
    ghost = "ghost-0f3c"
    assert not cloud.registry.has_thing(ghost)
    async with cloud.service_client("conformance") as svc:
        for shadow in (None, "named-1"):
            prefix = shadow_prefix(ghost, shadow)
            await _subscribe_all(svc, prefix)
            out = await _update(
                svc, prefix, {"state": {"reported": {"on": True}}, "clientToken": "c"}
            )
            assert out["update/accepted"]["version"] == 1
            assert out["update/accepted"]["clientToken"] == "c"
            assert out["update/documents"]["previous"] is None
            _, got = await request_json(
                svc, f"{prefix}/get", {"clientToken": "g"}, f"{prefix}/get/"
            )
            assert got["state"] == {"reported": {"on": True}}
            assert got["clientToken"] == "g"
            topic, deleted = await request_json(svc, f"{prefix}/delete", b"", f"{prefix}/delete/")
            assert topic == f"{prefix}/delete/accepted"
            assert deleted["version"] == 1
    assert not cloud.registry.has_thing(ghost)


async def test_p3_lifecycle_events_use_milliseconds(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("presence")
    async with cloud.service_client("conformance") as svc:
        await svc.subscribe("$aws/events/presence/+/presence", qos=1)
        async with device_client(cloud, device_creds(ident)):
            topic, event = await next_json(svc, TIMEOUT)
        assert topic == "$aws/events/presence/connected/presence"
        topic, gone = await next_json(svc, TIMEOUT)
    assert topic == "$aws/events/presence/disconnected/presence"
    for body in (event, gone):
        stamp = body["timestamp"]
        assert type(stamp) is int
        assert abs(stamp - time.time() * 1000) < 120_000, stamp  # milliseconds, not seconds
    assert gone["clientInitiatedDisconnect"] is True
    assert gone["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    assert event["clientId"] == gone["clientId"] == "presence"
    assert event["principalIdentifier"] == ident.certificate_id
