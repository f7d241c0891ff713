"""`cloud-stubs shadow|jobs|provisioning` and `up` as a real process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud_stubs.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_shadow_offline(tmp_path: Path) -> None:
    sd = str(tmp_path / "s")
    code, out, _ = run("shadow", "get", "robot-1", "--state-dir", sd, "--json")
    assert code == 1
    assert json.loads(out) == {"code": 404, "message": "No shadow exists with name: 'robot-1'"}
    code, out, _ = run(
        "shadow", "update", "robot-1", "--desired", '{"color": "red"}', "--state-dir", sd, "--json"
    )
    assert code == 0
    assert json.loads(out)["version"] == 1
    code, out, _ = run("shadow", "get", "robot-1", "--state-dir", sd, "--json")
    assert json.loads(out)["state"]["delta"] == {"color": "red"}
    code, out, _ = run(
        "shadow",
        "update",
        "robot-1",
        "--name",
        "cfg",
        "--reported",
        '{"a": 1}',
        "--version",
        "5",
        "--state-dir",
        sd,
        "--json",
    )
    assert code == 0  # a version on the creating update is ignored (documented choice)
    code, out, _ = run(
        "shadow",
        "update",
        "robot-1",
        "--reported",
        '{"a": 1}',
        "--version",
        "7",
        "--state-dir",
        sd,
        "--json",
    )
    assert code == 1
    assert json.loads(out)["code"] == 409
    code, _, err = run("shadow", "update", "robot-1", "--desired", "{nope", "--state-dir", sd)
    assert code == 2
    assert "--desired: not valid JSON" in err


def test_jobs_offline(tmp_path: Path) -> None:
    sd = str(tmp_path / "s")
    run("thing", "create", "robot-1", "--state-dir", sd)
    doc = tmp_path / "job.json"
    doc.write_text('{"operation": "reboot"}')
    code, out, err = run(
        "jobs",
        "create",
        "--job-id",
        "j1",
        "--thing",
        "robot-1",
        "--document",
        str(doc),
        "--state-dir",
        sd,
        "--json",
    )
    assert code == 0, err
    code, out, _ = run("jobs", "list-executions", "--job-id", "j1", "--state-dir", sd, "--json")
    assert [e["thingName"] for e in json.loads(out)] == ["robot-1"]
    code, _, err = run(
        "jobs",
        "create",
        "--job-id",
        "j1",
        "--thing",
        "robot-1",
        "--document",
        str(doc),
        "--state-dir",
        sd,
    )
    assert code == 2
    assert "already exists" in err
    code, out, _ = run("jobs", "cancel", "j1", "--state-dir", sd, "--json")
    assert code == 0
    assert json.loads(out)["status"] == "CANCELED"
    doc.write_text("{bad")
    code, _, err = run(
        "jobs",
        "create",
        "--job-id",
        "j2",
        "--thing",
        "robot-1",
        "--document",
        str(doc),
        "--state-dir",
        sd,
    )
    assert code == 2
    assert "job.json: not valid JSON" in err
    code, _, err = run(
        "jobs", "create", "--job-id", "j3", "--document", str(doc), "--state-dir", sd
    )
    assert code == 2
    assert "--thing or --group" in err


def test_provisioning_template_and_claim(tmp_path: Path) -> None:
    sd = str(tmp_path / "s")
    tpl = tmp_path / "t.json"
    tpl.write_text(
        json.dumps(
            {
                "Parameters": {"Serial": {"Type": "String"}},
                "Resources": {
                    "thing": {
                        "Type": "AWS::IoT::Thing",
                        "Properties": {
                            "ThingName": {"Fn::Join": ["", ["robot-", {"Ref": "Serial"}]]}
                        },
                    }
                },
            }
        )
    )
    code, _, err = run(
        "provisioning", "template", "create", "fleet", "--file", str(tpl), "--state-dir", sd
    )
    assert code == 0, err
    code, out, _ = run(
        "provisioning", "claim", "create", "--template", "fleet", "--state-dir", sd, "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert Path(data["cert_file"]).is_file()
    assert data["template"] == "fleet"
    code, _, err = run("provisioning", "claim", "create", "--template", "nope", "--state-dir", sd)
    assert code == 2
    assert "does not exist" in err
    tpl.write_text('{"Resources": {"x": {"Type": "AWS::S3::Bucket"}}}')
    code, _, err = run(
        "provisioning", "template", "create", "bad", "--file", str(tpl), "--state-dir", sd
    )
    assert code == 2
    assert "Type" in err


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
async def test_up_process_serves_cli_and_stops_cleanly(tmp_path: Path, broker: str) -> None:
    sd = tmp_path / "s"
    exe = [sys.executable, "-c", "from cloud_stubs.cli import main; main()"]
    args = [*exe, "up", "--state-dir", str(sd), "--port", "0", "--broker", broker, "--json"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            await _drive(proc, sd, broker)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 10)
            err = proc.stderr.read() if proc.stderr else ""
    assert rc == 0, err
    assert not (sd / "endpoint.json").exists()
    mosq = subprocess.run(["pgrep", "-f", f"mosquitto -c {sd}"], capture_output=True, check=False)
    assert mosq.stdout == b"", "mosquitto outlived `cloud-stubs up`"
    assert (sd / "shadows.sqlite").exists()


async def _drive(proc: subprocess.Popen[str], sd: Path, broker: str) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
    ep = json.loads(line)
    assert ep["broker"] == broker
    assert json.loads((sd / "endpoint.json").read_text())["port"] == ep["port"]
    # The CLI reaches the running stub over MQTT (so devices would get the delta).
    update = ("shadow", "update", "robot-9", "--desired", '{"speed": 3}', "--json")
    code, out, err = await asyncio.to_thread(run, *update, "--state-dir", str(sd))
    assert code == 0, err
    assert json.loads(out)["version"] == 1
    code, out, _ = await asyncio.to_thread(
        run, "thing", "create", "robot-9", "--state-dir", str(sd), "--json"
    )
    assert code == 0
    assert json.loads(out)["port"] == ep["port"]


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_command_runs_end_to_end(tmp_path: Path, broker: str) -> None:
    """What ./scripts/demo runs: stub up, one device with its own certificate, telemetry."""
    exe = [sys.executable, "-c", "from cloud_stubs.cli import main; main()"]
    done = subprocess.run(
        [*exe, "demo", "--count", "5", "--broker", broker, "--state-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5/5 telemetry messages received by the stub" in done.stdout
    assert "presence event: connected demo-robot-1" in done.stdout
