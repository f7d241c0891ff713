"""Deployments against the real stub (both brokers) with fake devices on raw MQTT."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from certs import verify_digest
from cloud_stubs import LocalIoTCore
from cloud_stubs.deployments import (
    BatchStatus,
    DeploymentStatus,
    OtaRuntime,
    create_deployment,
    start_ota,
)
from cloud_stubs.firmware import FirmwareManifest, FirmwareStore, OtaJobDocument, public_key_pem
from cloud_stubs.firmware._paths import OtaPaths
from tests.ota_cloud._devices import Decide, always_succeed, fleet
from tests.ota_cloud._http import fetch

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture
async def ota(cloud: LocalIoTCore) -> AsyncIterator[OtaRuntime]:
    async with start_ota(cloud, poll_interval_s=0.1) as runtime:
        yield runtime


@pytest.fixture
def firmware(cloud: LocalIoTCore, tmp_path: Path) -> FirmwareManifest:
    image = tmp_path / "robot-2.0.0.bin"
    image.write_bytes(os.urandom(64 * 1024))
    with FirmwareStore(cloud.paths) as store:
        return store.upload(image, version="2.0.0", device_type="robot-pi")


def make_fleet(cloud: LocalIoTCore, n: int) -> list[Any]:
    identities = cloud.create_things("robot-", n)
    cloud.registry.create_group("fleet")
    cloud.registry.add_to_group("fleet", [i.thing_name for i in identities])
    return identities


async def jobs_of(cloud: LocalIoTCore, deployment_id: str) -> list[str]:
    jobs = await cloud.jobs_control("list")
    return sorted(j["jobId"] for j in jobs if j["jobId"].startswith(deployment_id))


async def test_twenty_devices_in_batches_of_five_all_succeed(
    cloud: LocalIoTCore, ota: OtaRuntime, firmware: FirmwareManifest
) -> None:
    identities = make_fleet(cloud, 20)
    async with fleet(cloud, identities, lambda _: always_succeed) as logs:
        dep = create_deployment(
            cloud.paths,
            firmware_id=firmware.firmware_id,
            groups=["fleet"],
            batch_size=5,
            success_threshold=0.95,
            timeout_minutes=10,
        )
        async with asyncio.timeout(60):
            done = await ota.engine.wait(dep.deployment_id, settled=True)
    assert done.status is DeploymentStatus.COMPLETED, done.reason
    assert [b.status for b in done.batches] == [BatchStatus.SUCCEEDED] * 4
    assert [b.current_counts.succeeded for b in done.batches] == [5, 5, 5, 5]
    assert done.totals().succeeded == 20
    assert await jobs_of(cloud, dep.deployment_id) == [
        f"{dep.deployment_id}-b{i}" for i in (1, 2, 3, 4)
    ]
    # batch k's job went to batch k's things, each device got exactly one ota/1 document
    for batch in done.batches:
        for thing in batch.things:
            assert logs[thing].jobs == [batch.job_id]
    for log in logs.values():
        (doc,) = log.documents
        model = OtaJobDocument.model_validate_json(json.dumps(doc))
        assert model.firmware_id == firmware.firmware_id
        assert model.artifact.sha256 == firmware.sha256
    job = await cloud.jobs_control("describe", job_id=f"{dep.deployment_id}-b1")
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 10}
    assert job["abortConfig"]["criteriaList"][0]["thresholdPercentage"] == 5.01


async def test_one_failure_in_batch_one_halts_the_deployment(
    cloud: LocalIoTCore, ota: OtaRuntime, firmware: FirmwareManifest
) -> None:
    identities = make_fleet(cloud, 20)
    victim = cloud.registry.group_members("fleet")[2]  # sorted by name: in batch 1

    async def fail(
        thing: str, doc: dict[str, Any], job_id: str, client: aiomqtt.Client
    ) -> tuple[str, dict[str, str]]:
        return "FAILED", {"reason_code": "HEALTH_CHECK_FAILED", "error_type": "HEALTH"}

    def behaviour(thing: str) -> Decide:
        return fail if thing == victim else always_succeed

    async with fleet(cloud, identities, behaviour) as logs:
        dep = create_deployment(
            cloud.paths,
            firmware_id=firmware.firmware_id,
            groups=["fleet"],
            batch_size=5,
            success_threshold=0.95,
        )
        async with asyncio.timeout(60):
            done = await ota.engine.wait(dep.deployment_id, settled=True)
        await asyncio.sleep(0.5)  # several more engine polls: nothing else may start
    assert done.status is DeploymentStatus.FAILED
    assert done.reason is not None
    assert "batch 1/4" in done.reason
    assert f"{victim} FAILED (reason_code=HEALTH_CHECK_FAILED, error_type=HEALTH)" in done.reason
    assert victim in done.batches[0].things
    assert done.batches[0].status is BatchStatus.FAILED
    assert [b.status for b in done.batches[1:]] == [BatchStatus.SKIPPED] * 3
    assert await jobs_of(cloud, dep.deployment_id) == [f"{dep.deployment_id}-b1"]
    counts = done.batches[0].current_counts
    assert counts.total == 5
    assert counts.failed >= 1
    assert counts.succeeded + counts.failed == 5
    later = [t for b in done.batches[1:] for t in b.things]
    assert all(logs[t].jobs == [] for t in later)


async def test_device_downloads_with_a_fresh_url_after_403(
    cloud: LocalIoTCore, ota: OtaRuntime, firmware: FirmwareManifest
) -> None:
    """The job document is rendered with a presigned HTTPS URL per delivery; after an
    expired URL (403) the device re-describes its execution and gets a working one."""
    (ident,) = cloud.create_things("robot-", 1)
    image = OtaPaths.of(cloud.paths).image_file(firmware.firmware_id).read_bytes()
    pub = public_key_pem(OtaPaths.of(cloud.paths))
    ota.server.url_ttl_s = 2  # expires = int(now) + 2: valid for 1-2 s
    statuses: list[int] = []
    urls: list[str] = []

    async def download(
        thing: str, doc: dict[str, Any], job_id: str, client: aiomqtt.Client
    ) -> tuple[str, dict[str, str]]:
        url = doc["artifact"]["url"]
        if url.startswith("${aws:iot:s3-presigned-url:"):
            return "REJECTED", {"reason_code": "PLACEHOLDER_NOT_RENDERED"}
        urls.append(url)
        await asyncio.sleep(3.1)  # the URL expires
        for _ in range(3):
            r = await fetch(url, ca_file=ident.ca_file)
            statuses.append(r.status)
            if r.status == 200:
                break
            # 403: ask for the execution again; its document carries a fresh URL
            base = f"$aws/things/{thing}/jobs/{job_id}/get"
            await client.subscribe(f"{base}/accepted", qos=1)
            await client.publish(base, json.dumps({"clientToken": "again"}), qos=1)
            async for message in client.messages:
                if str(message.topic) == f"{base}/accepted":
                    assert isinstance(message.payload, bytes)
                    url = json.loads(message.payload)["execution"]["jobDocument"]["artifact"]["url"]
                    urls.append(url)
                    break
        digest = hashlib.sha256(r.body).digest()
        signature = base64.b64decode(doc["artifact"]["signature"])
        ok = digest.hex() == doc["artifact"]["sha256"] and verify_digest(pub, digest, signature)
        return ("SUCCEEDED", {"state": "COMMITTED"}) if ok else ("FAILED", {"reason": "bad"})

    async with fleet(cloud, [ident], lambda _: download) as logs:
        dep = create_deployment(
            cloud.paths,
            firmware_id=firmware.firmware_id,
            things=[ident.thing_name],
            batch_size=1,
            success_threshold=1.0,
        )
        async with asyncio.timeout(60):
            done = await ota.engine.wait(dep.deployment_id, settled=True)
    # The jobs service renders presigned-URL placeholders (cloud_stubs/jobs/_service.py), so
    # the device must never see an unrendered document and reject it.
    assert logs[ident.thing_name].reports != [(f"{dep.deployment_id}-b1", "REJECTED")]
    assert done.status is DeploymentStatus.COMPLETED, done.reason
    assert statuses == [403, 200]
    assert len(set(urls)) == 2
    assert all(u.startswith(f"https://127.0.0.1:{ota.server.port}/firmware/") for u in urls)
    assert all(f"thing={ident.thing_name}" in u for u in urls)
    (c,) = ota.server.counters(firmware.firmware_id, ident.thing_name)
    assert (c.status_403, c.status_200, c.bytes_served) == (1, 1, len(image))
