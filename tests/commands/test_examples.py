"""The examples run as documented against a running stub (both brokers)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from cloud_stubs import LocalIoTCore
from cloud_stubs._state import issue_claim, load_ca
from cloud_stubs.provisioning._store import ProvisioningStore
from tests.commands.conftest import create_command, start, wait_status

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TEMPLATE: dict[str, Any] = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["", ["robot-", {"Ref": "SerialNumber"}]]}},
        },
    },
}


async def _run(script: str, *args: str, timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode()
    assert proc.returncode == 0, text
    return text


async def test_telemetry_example(cloud: LocalIoTCore) -> None:
    cloud.create_thing("ex-robot")
    sd = str(cloud.paths.root)
    args = ("--state-dir", sd, "--thing", "ex-robot", "--count", "3", "--interval", "0")
    out = await _run("telemetry.py", *args)
    assert out.count("-> dt/ex-robot/telemetry") == 3
    assert "all acknowledged (outbox depth 0)" in out
    assert (cloud.paths.root / "outbox-ex-robot.db").exists()


async def test_provisioning_example(cloud: LocalIoTCore) -> None:
    store = ProvisioningStore(cloud.paths)
    store.put_template("FleetTemplate", TEMPLATE)
    store.close()
    issue_claim(cloud.registry, load_ca(cloud.paths), "claim")
    sd = str(cloud.paths.root)
    out = await _run("provisioning_by_claim.py", "--state-dir", sd, "--serial", "9")
    assert "provisioned thing robot-9" in out
    assert "connected as robot-9" in out
    again = await _run("provisioning_by_claim.py", "--state-dir", sd, "--serial", "9")
    assert "already provisioned" in again
    assert cloud.registry.has_thing("robot-9")


async def test_commands_example(cloud: LocalIoTCore) -> None:
    cloud.create_thing("ex-cmd")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "commands.py"),
        "--state-dir",
        str(cloud.paths.root),
        "--thing",
        "ex-cmd",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            while b"waiting for commands" not in await proc.stdout.readline():
                pass
        await create_command(cloud, "set-led", {"name": "set-led", "args": {"color": "red"}})
        await create_command(cloud, "boom", {"name": "boom"})
        done = ("SUCCEEDED", "FAILED", "REJECTED")
        ok = await wait_status(cloud, await start(cloud, "set-led", "ex-cmd"), "ex-cmd", done)
        no = await wait_status(cloud, await start(cloud, "boom", "ex-cmd"), "ex-cmd", done)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert (ok["status"], ok["result"]) == ("SUCCEEDED", {"color": {"S": "red"}})
    assert no["statusReason"]["reasonCode"] == "UNKNOWN_COMMAND"
    assert proc.returncode == 0, rest.decode()
    assert b"Traceback" not in rest
