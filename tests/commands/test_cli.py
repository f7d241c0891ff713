"""`cloud-stubs commands ...` (the typer app the main CLI mounts), offline and against a stub."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from cloud_stubs import LocalIoTCore
from cloud_stubs._cli_commands import commands_app
from device_sdk.commands import CommandRequest, Commands
from tests.commands.conftest import device

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(commands_app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_offline_create_list_and_errors(tmp_path: Path) -> None:
    sd = str(tmp_path / "s")
    payload = tmp_path / "reboot.json"
    payload.write_text('{"name": "reboot"}')
    code, out, err = run(
        "create", "reboot", "--payload", str(payload), "--content-type", "application/json",
        "--state-dir", sd, "--json",
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert created["commandId"] == "reboot"
    assert created["payload"]["contentType"] == "application/json"
    code, _, err = run("create", "reboot", "--payload", str(payload), "--state-dir", sd)
    assert code == 2
    assert err.count("\n") == 1
    assert "already exists" in err
    code, _, err = run("send", "robot-1", "--command", "reboot", "--state-dir", sd)
    assert code == 2
    assert "not running" in err
    code, out, _ = run("list", "--state-dir", sd, "--json")
    assert code == 0
    assert json.loads(out) == {"commandExecutions": []}
    code, _, err = run("get", "nope", "--thing", "robot-1", "--state-dir", sd)
    assert code == 2
    assert "no execution" in err
    code, _, err = run("list", "--status", "DONE", "--state-dir", sd)
    assert code == 2
    code, _, err = run("create", "x", "--payload", str(tmp_path / "missing"), "--state-dir", sd)
    assert code == 2
    assert "missing" in err


async def _cli(*args: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(run, *args)


async def test_send_wait_get_list_against_a_running_stub(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    sd = str(cloud.paths.root)
    payload = tmp_path / "p.json"
    payload.write_text('{"name": "ping", "args": {"n": 2}}')
    code, _, err = await _cli(
        "create", "ping", "--payload", str(payload), "--content-type", "application/json",
        "--state-dir", sd,
    )  # fmt: skip
    assert code == 0, err

    async def ping(request: CommandRequest) -> dict[str, object]:
        return {"pong": request.args["n"]}

    async with device(cloud, "cli-robot") as dev:
        commands = Commands(dev)
        commands.register("ping", ping)
        async with commands:
            server = asyncio.create_task(commands.serve())
            code, out, err = await _cli(
                "send", "cli-robot", "--command", "ping", "--wait", "--state-dir", sd, "--json"
            )
            server.cancel()
    assert code == 0, err
    done = json.loads(out)
    assert done["status"] == "SUCCEEDED"
    assert done["result"] == {"pong": {"S": "2"}}
    ex = done["executionId"]
    code, out, _ = await _cli("get", ex, "--thing", "cli-robot", "--state-dir", sd, "--json")
    assert code == 0
    assert json.loads(out)["result"] == {"pong": {"S": "2"}}
    code, out, _ = await _cli("get", ex, "--thing", "cli-robot", "--no-result", "--state-dir", sd)
    assert code == 0
    assert "pong" not in out
    # Nobody listens: the cloud times the execution out; --wait exits 1.
    code, out, _ = await _cli(
        "send", "cli-robot", "--command", "ping", "--timeout", "1", "--wait",
        "--state-dir", sd, "--json",
    )  # fmt: skip
    assert code == 1
    assert json.loads(out)["statusReason"] == {"reasonCode": "$NO_RESPONSE_FROM_DEVICE"}
    code, out, _ = await _cli("list", "--thing", "cli-robot", "--state-dir", sd, "--json")
    listed = json.loads(out)["commandExecutions"]
    assert [e["status"] for e in listed] == ["TIMED_OUT", "SUCCEEDED"]  # newest first
    code, _, err = await _cli("send", "nobody", "--command", "ping", "--state-dir", sd)
    assert code == 2
    assert "does not exist" in err
