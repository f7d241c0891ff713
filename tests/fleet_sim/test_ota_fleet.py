"""Issue 6 acceptance: OTA deployments to 50 fleet_sim devices on the real stub (mosquitto).

fleet_sim's engine runs in process; the stub's deployments engine rolls a signed firmware
out in batches; every device runs device_sdk's JobRunner + OtaAgent with the simulated
installer (real HTTPS Range download, verify, install, simulated reboot, trial health check,
commit or rollback) and reports the running version in its shadow.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cloud_stubs import LocalIoTCore
from cloud_stubs.deployments import BatchStatus, DeploymentStatus, create_deployment
from cloud_stubs.firmware import FirmwareManifest, FirmwareStore
from fleet_sim import SimConfig, parse_scenario, run
from fleet_sim._display import print_summary
from fleet_sim._live import LiveState
from fleet_sim._ota import failing_devices
from fleet_sim._plan import iter_devices
from fleet_sim._scenario import Scenario
from tests.sdk_shadow._support import cloud_state

pytestmark = pytest.mark.slow

OLD, NEW = "2.3.1", "3.0.0"  # the robot model's default firmware_version, the update
COUNT = 50


def scenario(state_dir: Path, *, health_check: float = 0.0) -> Scenario:
    return parse_scenario(f"""\
name: ota-fleet
seed: 1
duration: 300
time_scale: 10
ramp_up: 250
target: {{state_dir: "{state_dir}"}}
groups:
  - name: robots
    model: robot_vacuum
    count: {COUNT}
    name_pattern: "ota-robot-{{index:02d}}"
    telemetry: {{interval: 60, events: false}}
    shadow: {{interval: 600}}
    commands: {{enabled: false}}
    ota:
      failures: {{health_check: {health_check}}}
      reboot_s: 2
""")


def upload(core: LocalIoTCore, tmp: Path) -> FirmwareManifest:
    image = tmp / "robot-3.0.0.img"
    image.write_bytes(os.urandom(16 * 1024))
    with FirmwareStore(core.paths) as store:
        return store.upload(image, version=NEW, device_type="robot-vacuum")


class Progress:
    def __init__(self) -> None:
        self.connected = 0

    def on_event(self, text: str) -> None:
        pass

    def on_progress(self, state: LiveState) -> None:
        self.connected = state.connected


@contextlib.asynccontextmanager
async def fleet(sc: Scenario) -> AsyncIterator[dict[str, Any]]:
    """Run the fleet until the block ends; yields a dict that receives the report."""
    progress = Progress()
    stop = asyncio.Event()
    out: dict[str, Any] = {}
    task = asyncio.create_task(
        run(SimConfig(sc, sink=False, operator=False), observer=progress, stop=stop)
    )
    try:
        async with asyncio.timeout(30):
            while progress.connected < COUNT:
                assert not task.done(), task.result()
                await asyncio.sleep(0.1)
        yield out
    finally:
        stop.set()
        out["report"] = await task


async def shadow_versions(core: LocalIoTCore, names: list[str]) -> dict[str, Any]:
    out = {}
    for name in names:
        out[name] = (await cloud_state(core, name)).get("reported", {}).get("firmware_version")
    return out


async def wait_versions(
    core: LocalIoTCore, expected: dict[str, str], *, timeout: float = 10.0
) -> None:
    got: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while (got := await shadow_versions(core, list(expected))) != expected:
                await asyncio.sleep(0.2)
    assert got == expected


async def statuses(core: LocalIoTCore, job_id: str, names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        ex = await core.jobs_control("describe-execution", job_id=job_id, thing=name)
        assert isinstance(ex, dict)
        out[name] = ex["status"]
    return out


async def test_deployment_to_50_devices_succeeds_and_shadows_report_it(
    cloud_mosquitto: LocalIoTCore, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    assert core.ota is not None
    core.ota.engine.poll_interval_s = 0.1
    fw = upload(core, tmp_path)
    sc = scenario(core.paths.root)
    names = [d.name for d in iter_devices(sc)]
    async with fleet(sc) as result:
        await wait_versions(core, dict.fromkeys(names, OLD))  # before: the model's version
        dep = create_deployment(
            core.paths,
            firmware_id=fw.firmware_id,
            things=names,
            batch_size=COUNT,
            success_threshold=1.0,
        )
        async with asyncio.timeout(30):
            done = await core.ota.engine.wait(dep.deployment_id, settled=True)
        assert done.status is DeploymentStatus.COMPLETED, done.reason
        (batch,) = done.batches
        assert batch.job_id is not None
        got = await statuses(core, batch.job_id, batch.things)
        assert got == dict.fromkeys(names, "SUCCEEDED")
        await wait_versions(core, dict.fromkeys(names, NEW))
    summary = result["report"]["summary"]
    assert summary["errors"]["total"] == 0, (
        summary["errors"],
        summary["connects"],
        summary["messages"],
    )
    counters = result["report"]["metrics"]["counters"]
    assert (counters["ota_succeeded"], counters["ota_reboots"]) == (COUNT, COUNT)
    assert "ota_failed" not in counters
    served = core.ota.server.totals(fw.firmware_id)
    assert served.bytes_served == COUNT * fw.size  # one full download each, nothing twice


async def test_health_check_failures_halt_the_deployment_after_the_first_failing_batch(
    cloud_mosquitto: LocalIoTCore, tmp_path: Path
) -> None:
    core = cloud_mosquitto
    assert core.ota is not None
    core.ota.engine.poll_interval_s = 0.1
    fw = upload(core, tmp_path)
    sc = scenario(core.paths.root, health_check=0.10)
    names = [d.name for d in iter_devices(sc)]
    failing = failing_devices(sc, 0, "health_check")
    assert len(failing) == 5  # exactly 10 % of 50
    batches = [names[i : i + 10] for i in range(0, COUNT, 10)]
    first_bad = next(i for i, b in enumerate(batches) if failing & set(b))
    assert first_bad == 1  # seed 1: batch 1 passes, batch 2 fails, batches 3-5 never start
    async with fleet(sc) as result:
        dep = create_deployment(
            core.paths,
            firmware_id=fw.firmware_id,
            things=names,
            batch_size=10,
            success_threshold=0.95,
        )
        async with asyncio.timeout(30):
            done = await core.ota.engine.wait(dep.deployment_id, settled=True)
        assert done.status is DeploymentStatus.FAILED
        assert done.reason is not None
        assert f"batch {first_bad + 1}/5" in done.reason
        assert "HEALTH_CHECK_FAILED" in done.reason
        expected: dict[str, str] = {}
        for i, batch in enumerate(done.batches):
            assert list(batch.things) == batches[i]
            if i < first_bad:
                assert batch.status is BatchStatus.SUCCEEDED
            elif i == first_bad:
                assert batch.status is BatchStatus.FAILED
            else:  # never started: no job, no execution for its devices
                assert batch.status is BatchStatus.SKIPPED
                assert batch.job_id is None
                for name in batch.things:
                    assert await core.jobs_control("list-executions", thing=name) == []
            if batch.job_id is not None:
                got = await statuses(core, batch.job_id, batch.things)
                want = {n: "FAILED" if n in failing else "SUCCEEDED" for n in batch.things}
                assert got == want
            for name in batch.things:
                got_job = i <= first_bad
                expected[name] = NEW if got_job and name not in failing else OLD
        await wait_versions(core, expected)
    summary = result["report"]["summary"]
    assert summary["errors"]["total"] == 0, summary["errors"]
    started = 10 * (first_bad + 1)
    bad = len(failing & set(names[:started]))
    counters = result["report"]["metrics"]["counters"]
    assert counters["ota_failed"] == bad >= 1
    assert counters["ota_succeeded"] == started - bad
    assert counters["ota_reboots"] == started  # the failed ones rebooted into a trial too
    assert counters["ota_sessions"] == started  # OTA objects only on devices that got a job


async def test_the_scenario_itself_deploys_one_command(
    cloud_mosquitto: LocalIoTCore, tmp_path: Path
) -> None:
    """``deployments:`` in the scenario: the operator uploads and deploys; no test code.

    Two shard processes, each running its devices' OTA sessions; exactly the two devices
    chosen from the whole scenario fail their health check (the choice does not depend on
    the shard that runs them).
    """
    core = cloud_mosquitto
    assert core.ota is not None
    core.ota.engine.poll_interval_s = 0.1
    sc = parse_scenario(f"""\
name: ota-one-command
seed: 1
duration: 9
time_scale: 10
ramp_up: 100
target: {{state_dir: "{core.paths.root}"}}
groups:
  - name: robots
    model: robot_vacuum
    count: 10
    name_pattern: "one-{{index:02d}}"
    telemetry: {{interval: 60}}
    commands: {{enabled: false}}
    ota: {{reboot_s: 1, failures: {{health_check: 0.2}}}}
deployments:
  - {{at: 0.5, version: 4.0.0, groups: [robots], batch_size: 10, success_threshold: 0.8,
     image_size: 20000}}
""")
    failing = failing_devices(sc, 0, "health_check")
    assert len(failing) == 2
    report = await run(SimConfig(sc, sink=False, workers=2))
    assert [s["devices"] for s in report["shards"]] == [5, 5]
    (dep,) = report["operator"]["deployments"]
    assert dep["status"] == "COMPLETED", dep  # 8/10 >= 0.8
    with FirmwareStore(core.paths) as store:
        manifest = store.get(dep["firmware_id"])
    assert (manifest.version, manifest.device_type, manifest.size) == (
        "4.0.0",
        "robot-vacuum",
        20000,
    )
    counters = report["metrics"]["counters"]
    assert (counters["ota_succeeded"], counters["ota_failed"], counters["ota_reboots"]) == (
        8,
        2,
        10,
    )
    assert report["summary"]["errors"]["total"] == 0, report["summary"]["errors"]
    summary = report["summary"]
    assert (summary["ota"]["succeeded"], summary["ota"]["failed"]) == (8, 2)
    assert summary["operator"]["deployments"][0]["status"] == "COMPLETED"
    console = Console(record=True, width=200)
    print_summary(console, report)
    text = console.export_text()
    assert "failed: 2" in text
    assert f"{dep['deployment_id']} -> 4.0.0" in text
    assert "COMPLETED" in text
    names = [f"one-{i:02d}" for i in range(1, 11)]
    versions = await shadow_versions(core, names)
    assert versions == {n: OLD if n in failing else "4.0.0" for n in names}
