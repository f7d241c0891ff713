"""OTA through the agent on the real stub (mosquitto + OTA file server), the agent as a process.

A deployment of firmware 2.0.0 reaches the agent as an ``ota/1`` job: download, verify,
install into the inactive A/B slot, activate on trial, "reboot" (the agent exits; the test
starts it again, as systemd's ``Restart=always`` would), health checks, commit, SUCCEEDED,
and the settings shadow reports the new version. A failing health check rolls back (FAILED,
old slot active); a bad signature is REJECTED before anything is downloaded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud_stubs import LocalIoTCore
from cloud_stubs.deployments import DeploymentStatus, OtaRuntime, create_deployment
from cloud_stubs.firmware import (
    FirmwareManifest,
    FirmwareStore,
    build_ota_document,
    public_key_pem,
)
from cloud_stubs.firmware._paths import OtaPaths
from device_sdk.ota import ABSlotInstaller, OtaJournal, key_id_of
from tests.edge_agent.conftest import PYTHON, AgentEnv, http_get, metric_value, running_agent
from tests.sdk_shadow._support import cloud_state

DEVICE_TYPE = "robot-pi"
SHADOW = "edge-agent-config"


@pytest.fixture
def ota(cloud_mosquitto: LocalIoTCore) -> OtaRuntime:
    runtime = cloud_mosquitto.ota
    assert runtime is not None, "LocalIoTCore did not start OTA"
    runtime.engine.poll_interval_s = 0.1
    return runtime


@pytest.fixture
def env(cloud_mosquitto: LocalIoTCore, tmp_path: Path, request: pytest.FixtureRequest) -> AgentEnv:
    name = "edge-ota-" + request.node.name.removeprefix("test_")[:30].replace("_", "-")
    thing = cloud_mosquitto.create_thing(name)
    return AgentEnv(cloud_mosquitto, tmp_path, thing.thing_name, thing.cert_file, thing.key_file, 5)


def upload(core: LocalIoTCore, tmp: Path, version: str) -> FirmwareManifest:
    image = tmp / f"image-{version}.bin"
    image.write_bytes(os.urandom(64 * 1024))
    with FirmwareStore(core.paths) as store:
        return store.upload(image, version=version, device_type=DEVICE_TYPE)


def ota_config(env: AgentEnv, *, health_exit: int | None = None) -> str:
    pem = public_key_pem(OtaPaths.of(env.cloud.paths))
    key_file = env.root / "ota-signing.pub.pem"
    key_file.write_bytes(pem)
    body = f"""
[commands]
enabled = false

[jobs]
handlers = []

[ota]
installer = "ab-slots"
device_type = "{DEVICE_TYPE}"
slot_root = "slots"
ca_file = {json.dumps(str(env.cloud.paths.ca_cert))}

[ota.trusted_keys]
"{key_id_of(pem)}" = "ota-signing.pub.pem"
"""
    if health_exit is not None:
        body += f"""
[[ota.health_check]]
name = "app"
argv = [{json.dumps(PYTHON)}, "-c", "raise SystemExit({health_exit})"]
timeout_s = 10
"""
    return body


class AgentProcess:
    """``python -m edge_agent run`` with a NOTIFY_SOCKET to know when it is ready."""

    def __init__(self, env: AgentEnv) -> None:
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self._stderr: list[bytes] = []
        self._reader: asyncio.Task[None] | None = None

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        # Read all the time: debug logs must never fill the pipe and block the agent.
        while chunk := await stream.read(65536):
            self._stderr.append(chunk)

    async def start(self) -> None:
        notify = self.env.root / "notify.sock"
        notify.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify))
        sock.setblocking(False)
        self.sock = sock
        self.proc = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "edge_agent",
            "run",
            "--config",
            str(self.env.config_file),
            env={**os.environ, "NOTIFY_SOCKET": str(notify)},
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        self._reader = asyncio.create_task(self._drain(self.proc.stderr))
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(20):
            while b"READY=1" not in await loop.sock_recv(sock, 4096):
                pass

    async def exited(self, timeout: float) -> tuple[int, str]:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        return rc, await self.stderr()

    async def stderr(self) -> str:
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)
        return b"".join(self._stderr).decode(errors="replace")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        if self.sock is not None:
            self.sock.close()


@contextlib.asynccontextmanager
async def agent_process(env: AgentEnv) -> AsyncIterator[AgentProcess]:
    agent = AgentProcess(env)
    try:
        await agent.start()
        yield agent
    finally:
        await agent.stop()


async def wait_execution(
    core: LocalIoTCore, job_id: str, thing: str, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(Exception):
                ex = await core.jobs_control("describe-execution", job_id=job_id, thing=thing)
                assert isinstance(ex, dict)
                if ex["status"] in statuses:
                    return ex
            await asyncio.sleep(0.1)


def details(ex: dict[str, Any]) -> dict[str, str]:
    found = (ex.get("statusDetails") or {}).get("detailsMap", {})
    assert isinstance(found, dict)
    return found


async def reported(core: LocalIoTCore, thing: str) -> dict[str, Any]:
    state = await cloud_state(core, thing, name=SHADOW)
    found = state.get("reported", {})
    assert isinstance(found, dict)
    return found


async def wait_reported(
    core: LocalIoTCore, thing: str, key: str, value: Any, timeout: float = 10
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while (got := await reported(core, thing)).get(key) != value:
            await asyncio.sleep(0.1)
    return got


async def wait_ota_state(core: LocalIoTCore, thing: str, state: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while ((got := await reported(core, thing)).get("ota") or {}).get("last_state") != state:
            await asyncio.sleep(0.1)
    return got


async def deploy(core: LocalIoTCore, fw: FirmwareManifest, thing: str) -> str:
    dep = create_deployment(
        core.paths, firmware_id=fw.firmware_id, things=[thing], batch_size=1, success_threshold=1.0
    )
    return dep.deployment_id


async def test_deployment_installs_restarts_commits_and_reports_the_version(
    env: AgentEnv, ota: OtaRuntime
) -> None:
    core, thing = env.cloud, env.thing_name
    fw = upload(core, env.root, "2.0.0")
    env.write_config(ota_config(env), system_interval_s=600)

    async with agent_process(env) as agent:
        await wait_reported(core, thing, "firmware_version", "1.0.0")
        deployment = await deploy(core, fw, thing)
        job_id = f"{deployment}-b1"
        # Download, verify, install, activate on trial; then the agent exits to "reboot".
        rc, stderr = await agent.exited(timeout=30)
    assert rc == 0, stderr
    assert f"restart for OTA job {job_id}" in stderr
    slots = ABSlotInstaller(env.root / "slots")  # inspects what the agent created
    ex = await wait_execution(core, job_id, thing, {"IN_PROGRESS"})
    assert details(ex)["state"] == "REBOOTING"
    assert slots.active_slot() == "b"
    assert slots.on_trial
    assert slots.committed_version() == "1.0.0"

    async with agent_process(env):  # "after the reboot": health checks, commit
        ex = await wait_execution(core, job_id, thing, {"SUCCEEDED", "FAILED", "REJECTED"})
        assert ex["status"] == "SUCCEEDED", ex
        assert details(ex)["state"] == "COMMITTED"
        shadow = await wait_ota_state(core, thing, "COMMITTED")
        assert shadow["firmware_version"] == "2.0.0"
        assert shadow["ota"]["on_trial"] is False
        health_url = json.loads((env.state_dir / "status.json").read_text())["health_url"]
        port = int(health_url.rsplit(":", 1)[1])
        _, metrics = await http_get(port, "/metrics")
        assert metric_value(metrics, 'edge_agent_firmware_info{version="2.0.0"}') == 1
        assert metric_value(metrics, "edge_agent_ota_on_trial") == 0
        assert metric_value(metrics, 'edge_agent_ota_updates_total{outcome="succeeded"}') == 1
    slots = ABSlotInstaller(env.root / "slots")
    assert slots.current_version() == "2.0.0"
    assert slots.committed_version() == "2.0.0"
    assert not slots.on_trial
    states = [
        h["state"] for h in OtaJournal(env.state_dir / "ota").history() if h["event"] == "state"
    ]
    assert states.index("VERIFIED") < states.index("INSTALLED") < states.index("TRIAL_BOOT")
    assert states[-1] == "COMMITTED"
    assert list((env.state_dir / "ota" / "downloads").iterdir()) == []  # image removed
    async with asyncio.timeout(30):
        done = await ota.engine.wait(deployment, settled=True)
    assert done.status is DeploymentStatus.COMPLETED, done.reason


async def test_failing_health_check_rolls_back(env: AgentEnv, ota: OtaRuntime) -> None:
    core, thing = env.cloud, env.thing_name
    fw = upload(core, env.root, "2.0.0")
    env.write_config(ota_config(env, health_exit=3), system_interval_s=600)
    async with agent_process(env) as agent:
        deployment = await deploy(core, fw, thing)
        job_id = f"{deployment}-b1"
        rc, stderr = await agent.exited(timeout=30)
    assert rc == 0, stderr
    slots = ABSlotInstaller(env.root / "slots")
    assert slots.on_trial
    async with agent_process(env):
        ex = await wait_execution(core, job_id, thing, {"SUCCEEDED", "FAILED", "REJECTED"})
        shadow = await wait_ota_state(core, thing, "FAILED")
    assert shadow["firmware_version"] == "1.0.0"
    assert ex["status"] == "FAILED"
    got = details(ex)
    assert got["reason_code"] == "HEALTH_CHECK_FAILED"
    assert "app" in got["error_detail"]
    assert "exit status 3" in got["error_detail"]
    assert shadow["ota"]["last_state"] == "FAILED"
    assert shadow["ota"]["last_reason_code"] == "HEALTH_CHECK_FAILED"
    assert slots.active_slot() == "a"
    assert slots.current_version() == "1.0.0"
    assert not slots.on_trial


async def test_bad_signature_is_rejected_and_nothing_changes(
    env: AgentEnv, ota: OtaRuntime
) -> None:
    core, thing = env.cloud, env.thing_name
    fw = upload(core, env.root, "2.0.0")
    doc = build_ota_document(fw)
    sig = bytearray(base64.b64decode(doc["artifact"]["signature"]))
    sig[-1] ^= 0x01
    doc["artifact"]["signature"] = base64.b64encode(bytes(sig)).decode()
    config = env.config(ota_config(env), system_interval_s=600)
    async with running_agent(config) as agent:  # in process: no restart is involved
        await core.jobs_control("create", job_id="ota-bad-sig", things=[thing], document=doc)
        ex = await wait_execution(core, "ota-bad-sig", thing, {"SUCCEEDED", "FAILED", "REJECTED"})
        assert agent.ota is not None
        await asyncio.wait_for(_until(lambda: agent.ota is not None and agent.ota.last), 5)
    assert ex["status"] == "REJECTED"
    assert details(ex)["reason_code"] == "SIGNATURE_INVALID"
    slots = ABSlotInstaller(env.root / "slots")
    assert slots.active_slot() == "a"
    assert slots.current_version() == "1.0.0"
    assert slots.slot_version("b") is None
    assert sum(c.requests for c in ota.server.counters(fw.firmware_id, thing)) == 0


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.05)


async def test_simulated_installer_updates_without_restart(env: AgentEnv, ota: OtaRuntime) -> None:
    core, thing = env.cloud, env.thing_name
    fw = upload(core, env.root, "2.0.0")
    body = ota_config(env).replace('installer = "ab-slots"', 'installer = "simulated"')
    body = body.replace('slot_root = "slots"\n', "")
    config = env.config(body, system_interval_s=600)
    async with running_agent(config) as agent:
        await wait_reported(core, thing, "firmware_version", "fw-1.0")
        job_id = f"{await deploy(core, fw, thing)}-b1"
        ex = await wait_execution(core, job_id, thing, {"SUCCEEDED", "FAILED", "REJECTED"})
        shadow = await wait_ota_state(core, thing, "COMMITTED")
        assert shadow["firmware_version"] == "2.0.0"
        assert agent.exit_reason is None  # no restart needed
    assert ex["status"] == "SUCCEEDED", ex
    assert shadow["ota"]["installer"] == "simulated"
    assert shadow["ota"]["last_job"] == job_id
