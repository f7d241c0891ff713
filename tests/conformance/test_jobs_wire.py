"""Jobs on the wire: response routing (§7.13), exact error bodies and timestamps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloud_stubs import LocalIoTCore
from tests.conformance._jobs import create_job
from tests.conformance._sdk import (
    assert_epoch_seconds,
    collect,
    device_creds,
    next_json,
    raw_client,
    request_json,
    xfail_on,
)

DOC = {"operation": "install"}


async def test_p13_update_responses_go_only_to_the_requester(
    cloud: LocalIoTCore, request: pytest.FixtureRequest
) -> None:
    xfail_on(
        request,
        cloud,
        "embedded",
        "documented deviation (services/_runtime.py): the embedded broker has no user "
        "properties, so responses go to every subscriber and only to subscribers",
    )
    ident = cloud.create_thing("solo")
    await create_job(cloud, "job-r", ["solo"], DOC)
    base = "$aws/things/solo/jobs"
    async with (
        cloud.service_client("conformance") as svc,
        raw_client(cloud, device_creds(ident)) as dev,
    ):
        await svc.subscribe(f"{base}/#", qos=1)
        # the device has NO subscription at all, yet gets its answer
        await dev.publish(
            f"{base}/job-r/update",
            json.dumps({"status": "IN_PROGRESS", "clientToken": "me"}),
            qos=1,
        )
        topic, body = await next_json(dev)
        assert topic == f"{base}/job-r/update/accepted"
        assert body["clientToken"] == "me"
        await dev.publish(
            f"{base}/job-r/update", json.dumps({"status": "SUCCEEDED", "clientToken": "me2"}), qos=1
        )
        topic, body = await next_json(dev)
        assert topic == f"{base}/job-r/update/accepted"
        assert body["clientToken"] == "me2"
        # with overlapping subscriptions of its own, the requester still gets ONE response
        await dev.subscribe(f"{base}/job-r/update/+", qos=1)
        await dev.subscribe(f"{base}/#", qos=1)
        await dev.publish(
            f"{base}/job-r/update",
            json.dumps({"status": "IN_PROGRESS", "clientToken": "me3"}),
            qos=1,
        )
        mine = [t for t, _ in await collect(dev, 1.0)]
        assert mine.count(f"{base}/job-r/update/rejected") == 1, mine
        seen = [t for t, _ in await collect(svc, 0.2)]
    # another subscriber sees the requests and the notifications, never the responses
    assert f"{base}/job-r/update/accepted" not in seen, seen
    assert f"{base}/notify" in seen
    assert f"{base}/notify-next" in seen


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
