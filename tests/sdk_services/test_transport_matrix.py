"""Every device feature on every transport, end to end on the real stub (mosquitto, MQTT 5).

The feature suites (tests/sdk_shadow, tests/sdk_jobs, tests/sdk_provisioning, tests/commands)
run their many cases on one transport and both brokers. This matrix runs one complete
round trip per feature on *each* transport, so a transport-specific difference (user
properties, requester-only responses, reconnect timing, PUBACK handling) cannot hide.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from cloud_stubs import LocalIoTCore
from cloud_stubs._state import issue_claim, load_ca
from cloud_stubs.commands import commands_control
from cloud_stubs.provisioning._store import ProvisioningStore
from device_sdk import (
    ConnectionOptions,
    DeviceClient,
    DeviceIdentity,
    Endpoint,
    ReconnectPolicy,
)
from device_sdk.commands import CommandRequest, Commands
from device_sdk.jobs import JobContext, JobRunner
from device_sdk.provisioning import provision_by_claim
from device_sdk.shadow import ShadowChange, ShadowSync
from device_sdk.transport import TransportKind
from tests.sdk_shadow._support import cloud_state, eventually, set_desired

WAIT = 15.0
TRANSPORTS: list[TransportKind] = ["crt", "paho", "native"]
FAST_RECONNECT = ReconnectPolicy(base_s=0.05, cap_s=0.2, min_interval_s=0.05)

pytestmark = pytest.mark.parametrize("kind", TRANSPORTS)


def _endpoint(core: LocalIoTCore) -> Endpoint:
    return Endpoint(core.endpoint.host, core.endpoint.port, ca_file=core.paths.ca_cert)


def _device(core: LocalIoTCore, name: str, kind: TransportKind) -> DeviceClient:
    ident = core.create_thing(name)
    return DeviceClient(
        DeviceIdentity.from_files(ident.cert_file, ident.key_file, ident.ca_file),
        _endpoint(core),
        transport=kind,
        options=ConnectionOptions(mqtt_version=5),
        reconnect=FAST_RECONNECT,
    )


async def test_telemetry_reaches_the_cloud_in_order(
    cloud_mosquitto: LocalIoTCore, kind: TransportKind
) -> None:
    core = cloud_mosquitto
    thing = f"tm-{kind}"
    async with core.service_client(f"watch-{kind}") as watcher:
        await watcher.subscribe(f"dt/{thing}/#", qos=1)
        async with _device(core, thing, kind) as dev:
            for seq in range(20):
                await dev.publish(f"dt/{thing}/telemetry", {"seq": seq}, msg_id_field="id")
            await asyncio.wait_for(dev.drain(), WAIT)
            assert dev.metrics().counters["acked"] == 20
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT):
            async for msg in watcher.messages:
                assert isinstance(msg.payload, bytes)
                got.append(json.loads(msg.payload))
                if len(got) == 20:
                    break
    assert [m["seq"] for m in got] == list(range(20))
    assert len({m["id"] for m in got}) == 20


async def test_shadow_sync_applies_and_reports_desired(
    cloud_mosquitto: LocalIoTCore, kind: TransportKind, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    thing = f"sh-{kind}"
    seen: list[dict[str, Any]] = []

    async def handler(change: ShadowChange[Any]) -> dict[str, Any]:
        seen.append(change.delta)
        return change.delta

    async with (
        _device(core, thing, kind) as dev,
        ShadowSync(dev, store_path=tmp_path / "shadow.json", handler=handler) as sync,
    ):
        async with asyncio.timeout(WAIT):
            await sync.wait_synced()
        await set_desired(core, thing, {"interval": 5, "mode": "eco"})

        def converged(state: dict[str, Any]) -> bool:
            return state.get("reported") == {"interval": 5, "mode": "eco"} and "delta" not in state

        await eventually(lambda: cloud_state(core, thing), converged)
    assert seen == [{"interval": 5, "mode": "eco"}]


async def test_job_runs_to_succeeded(
    cloud_mosquitto: LocalIoTCore, kind: TransportKind, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    thing = f"job-{kind}"

    async def install(ctx: JobContext) -> dict[str, Any]:
        await ctx.progress({"step": "install"})
        return {"installed": str(ctx.document["version"])}

    await core.jobs_control(
        "create",
        job_id=f"j-{kind}",
        things=[thing],
        document={"operation": "install", "version": 3},
    )
    async with _device(core, thing, kind) as dev:
        runner = JobRunner(dev, {"install": install}, journal_path=tmp_path / "journal.json")
        async with runner.outcomes() as outcomes:
            task = asyncio.create_task(runner.run())
            try:
                async with asyncio.timeout(WAIT):
                    outcome = await anext(outcomes)
            finally:
                task.cancel()
    assert outcome.job_id == f"j-{kind}"
    ex = await core.jobs_control("describe-execution", job_id=f"j-{kind}", thing=thing)
    assert ex["status"] == "SUCCEEDED"
    assert ex["statusDetails"]["detailsMap"]["installed"] == "3"


async def test_provisioning_by_claim_then_telemetry(
    cloud_mosquitto: LocalIoTCore, kind: TransportKind, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    store = ProvisioningStore(core.paths)
    try:
        store.put_template(
            "Fleet",
            {
                "Parameters": {"Serial": {"Type": "String"}},
                "Resources": {
                    "thing": {
                        "Type": "AWS::IoT::Thing",
                        "Properties": {
                            "ThingName": {"Fn::Join": ["", ["bot-", {"Ref": "Serial"}]]}
                        },
                    },
                    "certificate": {
                        "Type": "AWS::IoT::Certificate",
                        "Properties": {
                            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                            "Status": "ACTIVE",
                        },
                    },
                },
            },
        )
    finally:
        store.close()
    claim = issue_claim(core.registry, load_ca(core.paths), "claim")
    prov = await provision_by_claim(
        DeviceIdentity.from_files(claim.cert_file, claim.key_file, claim.ca_file),
        _endpoint(core),
        template_name="Fleet",
        parameters={"Serial": kind},
        out_dir=tmp_path / "identity",
        transport=kind,
        options=ConnectionOptions(mqtt_version=5),
        timeout_s=WAIT,
    )
    assert prov.thing_name == f"bot-{kind}"
    async with core.service_client(f"prov-watch-{kind}") as watcher:
        await watcher.subscribe(f"dt/{prov.thing_name}/#", qos=1)
        dev = DeviceClient(prov.identity(), _endpoint(core), transport=kind)
        async with dev:
            await dev.publish(f"dt/{prov.thing_name}/hello", {"ok": True}, wait_ack=True)
        async with asyncio.timeout(WAIT):
            msg = await anext(aiter(watcher.messages))
    assert isinstance(msg.payload, bytes)
    assert json.loads(msg.payload) == {"ok": True}


async def test_command_is_handled(cloud_mosquitto: LocalIoTCore, kind: TransportKind) -> None:
    core = cloud_mosquitto
    thing = f"cmd-{kind}"
    payload = base64.b64encode(json.dumps({"name": "blink", "args": {"n": 2}}).encode()).decode()
    await commands_control(
        core, "create-command", command_id="blink", payload=payload, content_type="application/json"
    )

    async def blink(request: CommandRequest) -> dict[str, Any]:
        return {"blinked": request.args["n"]}

    async with _device(core, thing, kind) as dev:
        commands = Commands(dev, allow={"blink"})
        commands.register("blink", blink)
        async with commands:
            server = asyncio.create_task(commands.serve())
            try:
                started = await commands_control(
                    core, "start-execution", command_id="blink", thing=thing, timeout_s=10
                )
                execution_id = str(started["executionId"])
                async with asyncio.timeout(WAIT):
                    while True:
                        ex = await commands_control(
                            core,
                            "get-execution",
                            execution_id=execution_id,
                            thing=thing,
                            include_result=True,
                        )
                        if ex["status"] in ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"):
                            break
                        await asyncio.sleep(0.05)
            finally:
                server.cancel()
    assert ex["status"] == "SUCCEEDED"
    assert ex["result"] == {"blinked": {"S": "2"}}
