"""OTA end to end on the real stub (mosquitto): deployments, rejection, resume, rollback."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from certs import CodeSigningKey
from cloud_stubs import LocalIoTCore
from cloud_stubs.deployments import DeploymentStatus, OtaRuntime, create_deployment
from cloud_stubs.firmware import build_ota_document
from device_sdk.ota import (
    ABSlotInstaller,
    FaultPlan,
    FaultRule,
    HealthCheck,
    OtaJournal,
    OtaState,
    SimulatedInstaller,
)
from tests.ota_device._support import (
    OtaDevice,
    ab_device,
    details,
    execution,
    image_bytes,
    running,
    upload,
    wait_for,
    wait_terminal,
)
from tests.sdk_shadow._support import CuttableLink, cloud_state

pytestmark = pytest.mark.slow


async def test_deployment_to_three_ab_devices_succeeds(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0")
    devices = [ab_device(core, f"robot-{i}", tmp_path) for i in range(1, 4)]
    core.registry.create_group("fleet")
    core.registry.add_to_group("fleet", [d.thing for d in devices])
    async with running(devices):
        dep = create_deployment(
            core.paths,
            firmware_id=fw.firmware_id,
            groups=["fleet"],
            batch_size=3,
            success_threshold=1.0,
        )
        async with asyncio.timeout(60):
            done = await ota.engine.wait(dep.deployment_id, settled=True)
    assert done.status is DeploymentStatus.COMPLETED, done.reason
    job_id = f"{dep.deployment_id}-b1"
    for d in devices:
        ex = await execution(core, job_id, d.thing)
        assert ex["status"] == "SUCCEEDED"
        got = details(ex)
        assert got["state"] == "COMMITTED"
        assert got["progress"] == f"{fw.size}/{fw.size}"
        assert all(isinstance(v, str) for v in got.values())
        inst = d.installer
        assert isinstance(inst, ABSlotInstaller)
        assert inst.current_version() == "2.0.0"
        assert not inst.on_trial
        assert inst.committed_version() == "2.0.0"
        assert d.boots == 2  # the A/B installer asked for one reboot
        states = [h["state"] for h in OtaJournal(d.root / "ota").history() if h["event"] == "state"]
        assert states[-1] == "COMMITTED"
        assert states.index("VERIFIED") < states.index("INSTALLED") < states.index("TRIAL_BOOT")
        reported = (await cloud_state(core, d.thing)).get("reported", {})
        assert reported["firmware"]["version"] == "2.0.0"
        assert reported["firmware"]["state"] == "COMMITTED"


async def create_job(core: LocalIoTCore, job_id: str, thing: str, document: dict[str, Any]) -> None:
    await core.jobs_control("create", job_id=job_id, things=[thing], document=document)


def assert_untouched(installer: Any) -> None:
    """Nothing was activated: the old version runs, committed, the other slot is empty."""
    assert isinstance(installer, ABSlotInstaller)
    assert installer.current_version() == "1.0.0"
    assert installer.active_slot() == "a"
    assert not installer.on_trial
    assert installer.slot_version("b") is None


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("signature", "SIGNATURE_INVALID"),
        ("other_key_same_id", "SIGNATURE_INVALID"),
        ("unknown_key", "UNKNOWN_KEY_ID"),
        ("device_type", "DEVICE_TYPE_MISMATCH"),
        ("downgrade", "DOWNGRADE_NOT_ALLOWED"),
        ("schema", "DOCUMENT_INVALID"),
    ],
)
async def test_bad_documents_are_rejected_and_nothing_is_activated(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path, tamper: str, reason: str
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "0.9.0" if tamper == "downgrade" else "2.0.0")
    doc = build_ota_document(fw)
    other = CodeSigningKey.generate()
    if tamper == "signature":
        sig = bytearray(base64.b64decode(doc["artifact"]["signature"]))
        sig[-1] ^= 0x01
        doc["artifact"]["signature"] = base64.b64encode(bytes(sig)).decode()
    elif tamper == "other_key_same_id":
        doc["artifact"]["signature"] = base64.b64encode(
            other.sign_digest(bytes.fromhex(fw.sha256))
        ).decode()
    elif tamper == "unknown_key":
        doc["artifact"]["signature"] = base64.b64encode(
            other.sign_digest(bytes.fromhex(fw.sha256))
        ).decode()
        doc["artifact"]["keyId"] = other.key_id
    elif tamper == "device_type":
        doc["deviceType"] = "toaster"
    elif tamper == "schema":
        doc["schema"] = "ota/2"
    device = ab_device(core, "robot-1", tmp_path)
    async with running([device]):
        await create_job(core, "bad-1", device.thing, doc)
        ex = await wait_terminal(core, "bad-1", device.thing)
    assert ex["status"] == "REJECTED"
    got = details(ex)
    assert got["reason_code"] == reason
    assert got["state"] == "REJECTED"
    assert_untouched(device.installer)
    counters = ota.server.counters(fw.firmware_id, device.thing)
    assert sum(c.requests for c in counters) == 0  # rejected before downloading


async def test_tampered_image_is_rejected_after_one_fresh_download(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0")
    device = ab_device(core, "robot-1", tmp_path)
    ota.server.add_fault("corrupt:1000", thing=device.thing, times=None)  # every download
    async with running([device]):
        await create_job(core, "tampered", device.thing, build_ota_document(fw))
        ex = await wait_terminal(core, "tampered", device.thing)
    assert ex["status"] == "REJECTED"
    assert details(ex)["reason_code"] == "IMAGE_HASH_MISMATCH"
    assert_untouched(device.installer)
    (c,) = ota.server.counters(fw.firmware_id, device.thing)
    assert c.status_200 == 2  # downloaded again once from 0, still wrong: rejected
    assert not Path(device.root / "slots" / "downloads" / f"{fw.firmware_id}.part").exists()


async def test_corrupted_once_is_downloaded_again_and_succeeds(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0")
    device = ab_device(core, "robot-1", tmp_path)
    ota.server.add_fault("corrupt:5", thing=device.thing, times=1)
    async with running([device]):
        await create_job(core, "once", device.thing, build_ota_document(fw))
        ex = await wait_terminal(core, "once", device.thing)
    assert ex["status"] == "SUCCEEDED", details(ex)
    assert device.installer.current_version() == "2.0.0"
    slot = device.root / "slots" / "slots" / "b" / "image.bin"
    assert slot.read_bytes() == image_bytes(core, fw.firmware_id)


async def test_interrupted_download_resumes_from_the_saved_offset_after_a_restart(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0", size=200_000)
    cut = 70_000
    # the server cuts the first download after 70 kB; the device then "hangs" where it
    # would resume, and the test kills it there (a process restart)
    device = ab_device(
        core,
        "robot-1",
        tmp_path,
        fault_plan=FaultPlan.single("download.interrupted", "hang:60"),
    )
    journal = OtaJournal(device.root / "ota")
    ota.server.add_fault(f"drop_after:{cut}", thing=device.thing)
    async with running([device]):
        await create_job(core, "resume", device.thing, build_ota_document(fw))
        await wait_for(lambda: any(h["event"] == "fault" for h in journal.history()))
    record = journal.load()
    assert record is not None
    assert record.state is OtaState.DOWNLOADING
    saved = record.offset
    assert 0 < saved <= cut
    assert record.faults_fired == ["download.interrupted=hang:60"]
    part = device.root / "slots" / "downloads" / f"{fw.firmware_id}.part"
    assert part.stat().st_size == saved

    restarted = ab_device(core, "robot-1", tmp_path, fault_plan=device.fault_plan)
    async with running([restarted]):
        ex = await wait_terminal(core, "resume", device.thing)
    assert ex["status"] == "SUCCEEDED", details(ex)
    (c,) = ota.server.counters(fw.firmware_id, device.thing)
    assert (c.status_200, c.status_206, c.dropped) == (1, 1, 1)
    assert c.bytes_served == cut + (fw.size - saved)  # the rest only, from the offset
    assert restarted.installer.current_version() == "2.0.0"
    requests = [h for h in journal.history() if h["event"] == "request"]
    assert [r["offset"] for r in requests] == [0, saved]


async def test_health_check_failure_rolls_back_and_fails(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0")

    async def app_alive() -> bool:
        return False

    device = ab_device(
        core, "robot-1", tmp_path, health_checks=[HealthCheck("app", app_alive, timeout_s=5)]
    )
    async with running([device]):
        dep = create_deployment(
            core.paths,
            firmware_id=fw.firmware_id,
            things=[device.thing],
            batch_size=1,
            success_threshold=1.0,
        )
        async with asyncio.timeout(60):
            done = await ota.engine.wait(dep.deployment_id, settled=True)
    assert done.status is DeploymentStatus.FAILED
    assert "HEALTH_CHECK_FAILED" in (done.reason or "")
    ex = await execution(core, f"{dep.deployment_id}-b1", device.thing)
    assert ex["status"] == "FAILED"
    got = details(ex)
    assert (got["reason_code"], got["error_type"], got["state"]) == (
        "HEALTH_CHECK_FAILED",
        "HEALTH",
        "FAILED",
    )
    assert "app" in got["error_detail"]
    inst = device.installer
    assert isinstance(inst, ABSlotInstaller)
    assert (inst.current_version(), inst.active_slot(), inst.on_trial) == ("1.0.0", "a", False)
    states = [
        h["state"] for h in OtaJournal(device.root / "ota").history() if h["event"] == "state"
    ]
    assert states[-4:] == ["HEALTH_CHECK", "ROLLING_BACK", "ROLLED_BACK", "FAILED"]
    assert "COMMITTED" not in states
    reported = (await cloud_state(core, device.thing)).get("reported", {})
    assert reported["firmware"] == {
        "version": "1.0.0",
        "state": "FAILED",
        "reason_code": "HEALTH_CHECK_FAILED",
        "transaction_id": got["transaction_id"],
    }


async def test_expired_url_is_refreshed_and_ignored_range_restarts_from_zero(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0", size=150_000)
    device = ab_device(core, "robot-1", tmp_path)
    ota.server.add_fault("expired_403", thing=device.thing)
    ota.server.add_fault("drop_after:50000", thing=device.thing)
    ota.server.add_fault("ignore_range", thing=device.thing)
    async with running([device]):
        await create_job(core, "urls", device.thing, build_ota_document(fw))
        ex = await wait_terminal(core, "urls", device.thing)
    assert ex["status"] == "SUCCEEDED", details(ex)
    (c,) = ota.server.counters(fw.firmware_id, device.thing)
    assert (c.status_403, c.status_200, c.status_206) == (1, 2, 0)
    record = OtaJournal(device.root / "ota").load()
    assert record is not None
    assert (record.url_refreshes, record.range_restarts) == (1, 1)
    assert device.installer.current_version() == "2.0.0"


async def test_simulated_installer_fleet_and_bandwidth_cap(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0", size=60_000)
    devices = []
    for i in (1, 2):
        core.create_thing(f"sim-{i}")
        inst = SimulatedInstaller("1.0.0", download_dir=tmp_path / f"sim-{i}" / "dl")
        devices.append(OtaDevice(core, f"sim-{i}", tmp_path / f"sim-{i}", inst))
    async with running(devices):
        dep = create_deployment(
            core.paths,
            firmware_id=fw.firmware_id,
            things=[d.thing for d in devices],
            batch_size=2,
            success_threshold=1.0,
            policy={"bandwidthBps": 100_000, "reboot": "none"},
        )
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(60):
            done = await ota.engine.wait(dep.deployment_id, settled=True)
        elapsed = asyncio.get_running_loop().time() - started
    assert done.status is DeploymentStatus.COMPLETED, done.reason
    assert elapsed >= 0.5  # 60 kB at 100 kB/s
    for d in devices:
        sim = d.installer
        assert isinstance(sim, SimulatedInstaller)
        assert (sim.committed, sim.trial) == ("2.0.0", None)
        assert sim.calls == ["install", "activate", "verify_reboot", "commit"]
        assert d.boots == 1


async def test_cancel_during_download_cleans_up_and_activates_nothing(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0", size=200_000)
    device = ab_device(core, "robot-1", tmp_path)
    journal = OtaJournal(device.root / "ota")
    ota.server.add_fault("throttle:20000", thing=device.thing, times=None)  # ~10 s
    async with running([device]):
        await create_job(core, "cancel-me", device.thing, build_ota_document(fw))
        await wait_for(lambda: any(h["event"] == "request" for h in journal.history()))
        await asyncio.sleep(0.5)
        await core.jobs_control("cancel", job_id="cancel-me", force=True)
        await wait_for(lambda: (r := journal.load()) is not None and r.terminal)
    record = journal.load()
    assert record is not None
    assert (record.state, record.reason_code) == (OtaState.CANCELED, "CANCELED")
    assert_untouched(device.installer)
    assert not (device.root / "slots" / "downloads" / f"{fw.firmware_id}.part").exists()
    ex = await execution(core, "cancel-me", device.thing)
    assert ex["status"] == "CANCELED"


async def test_fired_faults_are_visible_in_status_details(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0")
    plan = FaultPlan.single("state.VERIFIED", "delay:0.01")
    device = ab_device(core, "robot-1", tmp_path, fault_plan=plan)
    async with running([device]):
        await create_job(core, "faulty", device.thing, build_ota_document(fw))
        ex = await wait_terminal(core, "faulty", device.thing)
    assert ex["status"] == "SUCCEEDED"
    assert details(ex)["fault_fired"] == "state.VERIFIED=delay:0.01"
    faults = [h for h in OtaJournal(device.root / "ota").history() if h["event"] == "fault"]
    assert [f["fault"] for f in faults] == ["state.VERIFIED=delay:0.01"]


async def test_a_failing_trial_boot_rolls_back(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    """The trial boot fails before its health checks: rollback, FAILED, old image runs."""
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0")
    rule = FaultRule(point="trial.before_health", action="raise:BOOT_FAILED", once=False)
    device = ab_device(core, "robot-1", tmp_path, fault_plan=FaultPlan(faults=[rule]))
    doc = build_ota_document(fw)
    async with running([device]):
        await create_job(core, "bootloop", device.thing, doc)
        ex = await wait_terminal(core, "bootloop", device.thing)
    assert ex["status"] == "FAILED"
    assert details(ex)["reason_code"] == "BOOT_FAILED"
    inst = device.installer
    assert isinstance(inst, ABSlotInstaller)
    assert (inst.current_version(), inst.on_trial) == ("1.0.0", False)


async def test_duplicated_reports_keep_the_cloud_consistent(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0")
    rule = FaultRule(point="report.duplicate", action="inject", once=False)
    device = ab_device(core, "robot-1", tmp_path, fault_plan=FaultPlan(faults=[rule]))
    async with running([device]):
        await create_job(core, "dup", device.thing, build_ota_document(fw))
        ex = await wait_terminal(core, "dup", device.thing)
    assert ex["status"] == "SUCCEEDED", details(ex)
    got = details(ex)
    assert (got["state"], got["fault_fired"]) == ("COMMITTED", "report.duplicate=inject")
    assert got["running_version"] == device.installer.current_version() == "2.0.0"
    fired = [h for h in OtaJournal(device.root / "ota").history() if h["event"] == "fault"]
    assert len(fired) >= 8  # every IN_PROGRESS report, over both boots


async def test_mqtt_disconnect_at_a_state_boundary_reconnects_and_completes(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0")
    # the 4th boundary is DOWNLOADED (RECEIVED, VALIDATED, DOWNLOADING, DOWNLOADED)
    rule = FaultRule(point="mqtt.disconnect", action="inject", nth=4)
    async with CuttableLink(core.endpoint.port) as link:
        cuts = []

        async def cut() -> None:
            cuts.append(1)
            link.cut()

        device = ab_device(
            core,
            "robot-1",
            tmp_path,
            fault_plan=FaultPlan(faults=[rule]),
            port=link.port,
            disconnect=cut,
        )
        async with running([device]):
            await create_job(core, "cut", device.thing, build_ota_document(fw))
            ex = await wait_terminal(core, "cut", device.thing)
    assert ex["status"] == "SUCCEEDED", details(ex)
    assert cuts == [1]
    assert details(ex)["fault_fired"] == "mqtt.disconnect=inject"
    faults = [h for h in OtaJournal(device.root / "ota").history() if h["event"] == "fault"]
    assert [(f["fault"], f["state"]) for f in faults] == [("mqtt.disconnect=inject", "DOWNLOADED")]


async def test_disk_full_during_download_fails_and_activates_nothing(
    cloud_mosquitto: LocalIoTCore, ota: OtaRuntime, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    fw = upload(core, tmp_path, "2.0.0")
    device = ab_device(
        core, "robot-1", tmp_path, fault_plan=FaultPlan.single("disk.enospc", "inject")
    )
    async with running([device]):
        await create_job(core, "full", device.thing, build_ota_document(fw))
        ex = await wait_terminal(core, "full", device.thing)
    assert ex["status"] == "FAILED"
    got = details(ex)
    assert (got["reason_code"], got["error_type"]) == ("DISK_ERROR", "DEVICE")
    assert "No space left on device" in got["error_detail"]
    assert_untouched(device.installer)
    assert not (device.root / "slots" / "downloads" / f"{fw.firmware_id}.part").exists()
