"""Jobs on the wire: response routing (§7.13), exact error bodies and timestamps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloud_stubs import LocalIoTCore
from cloud_stubs._policy import (
    Action,
    Effect,
    Role,
    Statement,
    default_statements,
    render_statements,
)
from tests.conformance._jobs import create_job
from tests.conformance._sdk import (
    assert_epoch_seconds,
    collect,
    device_creds,
    next_json,
    raw_client,
    request_json,
    suback_codes,
    xfail_on,
)

DOC = {"operation": "install"}


NOT_WITHOUT_SUBSCRIPTION = (
    "stub bug: iotcore_plugin.c routes x-iot-deliver-to responses only by denying the receive "
    "check of other clients (target_excludes); it cannot deliver to a requester that has no "
    "matching subscription, which IoT Core does (spec §3.1, §7.13)"
)
EMBEDDED_NO_ROUTING = (
    "documented deviation (services/_runtime.py, broker/_embedded.py): amqtt has no user "
    "properties, so responses are ordinary publishes to every subscriber and only to them"
)


async def test_p13_response_reaches_a_requester_without_subscription(
    cloud: LocalIoTCore, request: pytest.FixtureRequest
) -> None:
    xfail_on(request, cloud, "mosquitto", NOT_WITHOUT_SUBSCRIPTION)
    xfail_on(request, cloud, "embedded", EMBEDDED_NO_ROUTING)
    ident = cloud.create_thing("solo")
    await create_job(cloud, "job-r", ["solo"], DOC)
    base = "$aws/things/solo/jobs"
    async with raw_client(cloud, device_creds(ident)) as dev:
        # the device has NO subscription at all, yet gets its answer
        payload = json.dumps({"status": "IN_PROGRESS", "clientToken": "me"})
        await dev.publish(f"{base}/job-r/update", payload, qos=1)
        topic, body = await next_json(dev, 3)
    assert topic == f"{base}/job-r/update/accepted"
    assert body["clientToken"] == "me"


async def _let_devices_watch(cloud: LocalIoTCore, thing: str) -> None:
    """A broader policy (like a fleet monitor's): any device may watch ``thing``'s jobs."""
    extra = [
        Statement(Effect.ALLOW, Role.DEVICE, action, f"$aws/things/{thing}/jobs/*")
        for action in (Action.SUBSCRIBE, Action.RECEIVE)
    ]
    cloud.paths.policy_file.write_text(render_statements([*default_statements(), *extra]))
    await cloud.reload()


async def test_p13_update_responses_are_not_fanned_out(
    cloud: LocalIoTCore, request: pytest.FixtureRequest
) -> None:
    xfail_on(request, cloud, "embedded", EMBEDDED_NO_ROUTING)
    ident = cloud.create_thing("solo")
    watcher = cloud.create_thing("watcher")
    await _let_devices_watch(cloud, "solo")
    await create_job(cloud, "job-r", ["solo"], DOC)
    base = "$aws/things/solo/jobs"
    async with (
        raw_client(cloud, device_creds(watcher)) as other,
        raw_client(cloud, device_creds(ident)) as dev,
    ):
        assert suback_codes(await other.subscribe(f"{base}/#", qos=1)) == [1]
        await dev.subscribe(f"{base}/job-r/update/+", qos=1)
        for status in ("IN_PROGRESS", "SUCCEEDED"):
            await dev.publish(f"{base}/job-r/update", json.dumps({"status": status}), qos=1)
            topic, _ = await next_json(dev)
            assert topic == f"{base}/job-r/update/accepted"
        seen = [t for t, _ in await collect(other, 1.0)]
    # another authorized subscriber sees the requests and the notifications, not the responses
    assert f"{base}/notify" in seen
    assert f"{base}/notify-next" in seen
    assert f"{base}/job-r/update/accepted" not in seen, seen


async def test_p13_requester_gets_exactly_one_response(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("solo")
    await create_job(cloud, "job-r", ["solo"], DOC)
    base = "$aws/things/solo/jobs"
    async with raw_client(cloud, device_creds(ident)) as dev:
        # overlapping subscriptions of its own: still ONE response per request
        await dev.subscribe(f"{base}/job-r/update/+", qos=1)
        await dev.subscribe(f"{base}/+/update/accepted", qos=1)
        await dev.subscribe(f"{base}/#", qos=1)
        await dev.publish(f"{base}/job-r/update", json.dumps({"status": "IN_PROGRESS"}), qos=1)
        mine = [t for t, _ in await collect(dev, 1.0)]
    assert mine.count(f"{base}/job-r/update/accepted") == 1, mine


async def test_p1_p3_p4_jobs_wire_bodies(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("wired")
    base = "$aws/things/wired/jobs"
    async with raw_client(cloud, device_creds(ident)) as dev:
        await dev.subscribe(f"{base}/#", qos=1)
        _, body = await request_json(dev, f"{base}/get", b"", f"{base}/get/")
        assert body == {"inProgressJobs": [], "queuedJobs": [], "timestamp": body["timestamp"]}
        _, body = await request_json(
            dev, f"{base}/start-next", {"clientToken": "s"}, f"{base}/start-next/"
        )
        assert body == {"timestamp": body["timestamp"], "clientToken": "s"}

        await create_job(cloud, "job-w", ["wired"], DOC)
        seen: dict[str, Any] = {}
        while len(seen) < 2:
            topic, body = await next_json(dev)
            seen[topic.removeprefix(base + "/")] = body
        assert set(seen) == {"notify", "notify-next"}
        nxt = seen["notify-next"]["execution"]
        assert nxt["jobDocument"] == DOC  # a JSON object, not a string (§7.12)
        stamps = [seen["notify"]["timestamp"], seen["notify-next"]["timestamp"]]
        stamps += [nxt["queuedAt"], nxt["lastUpdatedAt"]]
        stamps += [seen["notify"]["jobs"]["QUEUED"][0]["queuedAt"]]

        _, started = await request_json(
            dev, f"{base}/start-next", {"clientToken": "s2"}, f"{base}/start-next/"
        )
        stamps += [started["timestamp"], started["execution"]["startedAt"]]
        assert started["clientToken"] == "s2"

        # rejections: string codes, token echoed when there was one
        cases: list[tuple[str, bytes | dict[str, Any], str, str | None]] = [
            (f"{base}/job-w/update", b"not json", "InvalidJson", None),
            (
                f"{base}/job-w/update",
                {"status": "BOGUS", "clientToken": "b"},
                "InvalidRequest",
                "b",
            ),
            (
                f"{base}/job-w/update",
                {"status": "IN_PROGRESS", "expectedVersion": 9, "clientToken": "v"},
                "VersionMismatch",
                "v",
            ),
            (f"{base}/nope/get", {"clientToken": "n"}, "ResourceNotFound", "n"),
            (f"{base}/nope/update", {"status": "SUCCEEDED"}, "ResourceNotFound", None),
        ]
        for topic, payload, code, token in cases:
            got_topic, body = await request_json(dev, topic, payload, topic + "/")
            assert got_topic == f"{topic}/rejected", (topic, body)
            assert body["code"] == code
            assert isinstance(body["message"], str)
            stamps.append(body["timestamp"])
            if token is None:
                assert "clientToken" not in body
            else:
                assert body["clientToken"] == token
            if code == "VersionMismatch":
                state = body["executionState"]
                assert (state["status"], state["versionNumber"]) == ("IN_PROGRESS", 2)
    for stamp in stamps:
        assert_epoch_seconds(stamp)
