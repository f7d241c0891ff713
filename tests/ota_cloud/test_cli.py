"""``cloud-stubs firmware`` / ``cloud-stubs deployments``: happy paths and one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from certs import verify_file
from cloud_stubs import StatePaths
from cloud_stubs._cli_ota import deployments_app, firmware_app
from cloud_stubs._registry import Registry
from cloud_stubs.firmware import OtaPaths
from cloud_stubs.firmware._presign import ensure_url_secret

app = typer.Typer()
app.add_typer(firmware_app, name="firmware")
app.add_typer(deployments_app, name="deployments")
runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> object:
    code, out, err = run(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2
    assert err.startswith("cloud-stubs: error: ")
    assert err.strip().count("\n") == 0, err
    assert fragment in err


@pytest.fixture
def sd(tmp_path: Path) -> str:
    return str(tmp_path / "state")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    path.write_bytes(os.urandom(5000))
    return path


def upload(sd: str, image: Path, version: str = "1.0.0") -> dict[str, object]:
    data = run_json(
        "firmware",
        "upload",
        str(image),
        "--version",
        version,
        "--device-type",
        "pi",
        "--state-dir",
        sd,
    )
    assert isinstance(data, dict)
    return data


def test_firmware_upload_list_describe_public_key(sd: str, image: Path, tmp_path: Path) -> None:
    m = upload(sd, image)
    assert m["version"] == "1.0.0"
    assert m["size"] == 5000
    fid = str(m["firmwareId"])
    listed = run_json("firmware", "list", "--state-dir", sd)
    assert listed == [m]
    described = run_json("firmware", "describe", fid, "--state-dir", sd)
    assert isinstance(described, dict)
    assert described["sha256"] == m["sha256"]
    assert described["downloads"]["requests"] == 0
    pem_file = tmp_path / "trust.pem"
    key = run_json("firmware", "public-key", "--out", str(pem_file), "--state-dir", sd)
    assert isinstance(key, dict)
    assert key["key_id"] == m["keyId"]
    assert pem_file.read_text() == key["public_key_pem"]
    import base64  # noqa: PLC0415

    assert verify_file(pem_file.read_bytes(), image, base64.b64decode(str(m["signature"])))
    code, out, _ = run("firmware", "public-key", "--state-dir", sd)
    assert code == 0
    assert out.startswith("-----BEGIN PUBLIC KEY-----")
    code, out, _ = run("firmware", "list", "--state-dir", sd)
    assert code == 0
    assert fid in out


def test_firmware_bad_input(sd: str, image: Path, tmp_path: Path) -> None:
    upload(sd, image)
    args = ("--device-type", "pi", "--state-dir", sd)
    assert_one_line_error(
        *run("firmware", "upload", str(image), "--version", "1.0.0", *args)[::2], "already uploaded"
    )
    assert_one_line_error(
        *run("firmware", "upload", str(image), "--version", "1 0", *args)[::2], "invalid version"
    )
    missing = str(tmp_path / "nope.bin")
    assert_one_line_error(
        *run("firmware", "upload", missing, "--version", "2", *args)[::2], "not a file"
    )
    assert_one_line_error(
        *run("firmware", "describe", "fw-000000000000", "--state-dir", sd)[::2], "does not exist"
    )
    code, _, err = run("firmware", "upload", str(image), "--state-dir", sd)
    assert code == 2  # typer: missing --version
    assert "--version" in err


def test_firmware_url_downloads_and_faults(sd: str, image: Path) -> None:
    fid = str(upload(sd, image)["firmwareId"])
    assert_one_line_error(
        *run("firmware", "url", fid, "--state-dir", sd)[::2], "no firmware server has run"
    )
    ota = OtaPaths.of(StatePaths.at(sd))
    ensure_url_secret(ota)
    ota.server_file.write_text(
        json.dumps({"base_url": "https://127.0.0.1:4443", "url_ttl_s": 60, "running": True})
    )
    url = run_json("firmware", "url", fid, "--thing", "robot-1", "--state-dir", sd)
    assert isinstance(url, dict)
    assert str(url["url"]).startswith(f"https://127.0.0.1:4443/firmware/{fid}?thing=robot-1&")
    assert url["ca_file"] == str(StatePaths.at(sd).ca_cert)
    assert_one_line_error(
        *run("firmware", "url", fid, "--expires-in", "0", "--state-dir", sd)[::2], "--expires-in"
    )
    assert run_json("firmware", "downloads", "--state-dir", sd) == []

    rule = run_json(
        "firmware", "fault", "add", "drop_after:100", "--firmware", fid, "--state-dir", sd
    )
    assert isinstance(rule, dict)
    assert (rule["spec"], rule["remaining"], rule["firmware_id"]) == ("drop_after:100", 1, fid)
    always = run_json("firmware", "fault", "add", "throttle:5000", "--always", "--state-dir", sd)
    assert isinstance(always, dict)
    assert always["remaining"] is None
    listed = run_json("firmware", "fault", "list", "--state-dir", sd)
    assert isinstance(listed, list)
    assert [f["spec"] for f in listed] == ["drop_after:100", "throttle:5000"]
    assert run_json("firmware", "fault", "clear", "--state-dir", sd) == {"cleared": 2}
    assert_one_line_error(
        *run("firmware", "fault", "add", "explode", "--state-dir", sd)[::2], "unknown fault"
    )
    assert_one_line_error(
        *run("firmware", "fault", "add", "expired_403", "--times", "0", "--state-dir", sd)[::2],
        "--times",
    )
    assert_one_line_error(
        *run("firmware", "fault", "add", "expired_403", "--firmware", "fw-x", "--state-dir", sd)[
            ::2
        ],
        "does not exist",
    )


@pytest.fixture
def fleet(sd: str) -> list[str]:
    names = [f"robot-{i}" for i in range(1, 8)]
    reg = Registry(StatePaths.at(sd))
    reg.create_things(names)
    reg.create_group("lab")
    reg.add_to_group("lab", names[:6])
    reg.close()
    return names


def test_deployments_create_describe_list_cancel(sd: str, image: Path, fleet: list[str]) -> None:
    fid = str(upload(sd, image)["firmwareId"])
    dep = run_json(
        "deployments",
        "create",
        "--firmware",
        fid,
        "--group",
        "lab",
        "--thing",
        "robot-7",
        "--batch-size",
        "3",
        "--success-threshold",
        "0.95",
        "--timeout-minutes",
        "30",
        "--policy",
        '{"reboot": "defer"}',
        "--test-faults",
        '["download.at_bytes:100"]',
        "--state-dir",
        sd,
    )
    assert isinstance(dep, dict)
    assert dep["status"] == "QUEUED"
    assert [b["things"] for b in dep["batches"]] == [
        ["robot-7", "robot-1", "robot-2"],
        ["robot-3", "robot-4", "robot-5"],
        ["robot-6"],
    ]
    assert dep["document"]["schema"] == "ota/1"
    assert dep["document"]["policy"]["reboot"] == "defer"
    assert dep["document"]["test"] == {"faults": ["download.at_bytes:100"]}
    dep_id = str(dep["deployment_id"])
    described = run_json("deployments", "describe", dep_id, "--state-dir", sd)
    assert isinstance(described, dict)
    first = described["batches"][0]
    assert first["counts"] | {"failed_by_status": {}} == {
        "total": 3,
        "succeeded": 0,
        "failed": 0,
        "in_progress": 0,
        "pending": 3,
        "queued": 0,
        "not_started": 3,
        "failed_by_status": {},
    }
    assert described["totals"]["total"] == 7
    code, out, _ = run("deployments", "describe", dep_id, "--state-dir", sd)
    assert code == 0
    assert "QUEUED" in out
    assert "pending" in out
    listed = run_json("deployments", "list", "--state-dir", sd)
    assert isinstance(listed, list)
    assert [d["deployment_id"] for d in listed] == [dep_id]
    canceled = run_json("deployments", "cancel", dep_id, "--reason", "not today", "--state-dir", sd)
    assert isinstance(canceled, dict)
    assert (canceled["status"], canceled["reason"]) == ("CANCELED", "not today")
    assert_one_line_error(
        *run("deployments", "cancel", dep_id, "--state-dir", sd)[::2], "already CANCELED"
    )
    code, out, _ = run("deployments", "wait", dep_id, "--state-dir", sd, "--json")
    assert code == 1  # finished, but not COMPLETED
    assert json.loads(out)["status"] == "CANCELED"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ([], "give at least one --thing or --group"),
        (["--thing", "robot-1", "--success-threshold", "1.5"], "--success-threshold"),
        (["--thing", "ghost"], "'ghost' does not exist"),
        (["--group", "nope"], "'nope' does not exist"),
        (["--thing", "robot-1", "--batch-size", "0"], "batch size"),
        (["--thing", "robot-1", "--policy", "{bad"], "--policy: not valid JSON"),
        (["--thing", "robot-1", "--policy", '{"color": 1}'], "unknown policy key"),
        (["--thing", "robot-1", "--test-faults", '"x"'], "--test-faults must be a JSON list"),
        (["--thing", "robot-1", "--timeout-minutes", "0"], "timeout"),
    ],
)
def test_deployments_create_bad_input(
    sd: str, image: Path, fleet: list[str], extra: list[str], fragment: str
) -> None:
    fid = str(upload(sd, image)["firmwareId"])
    args = ["deployments", "create", "--firmware", fid, "--batch-size", "2", *extra]
    assert_one_line_error(*run(*args, "--state-dir", sd)[::2], fragment)


def test_deployments_unknown_ids(sd: str, fleet: list[str]) -> None:
    assert_one_line_error(
        *run(
            "deployments",
            "create",
            "--firmware",
            "fw-000000000000",
            "--thing",
            "robot-1",
            "--batch-size",
            "1",
            "--state-dir",
            sd,
        )[::2],
        "does not exist",
    )
    for command in ("describe", "cancel", "wait"):
        assert_one_line_error(
            *run("deployments", command, "dep-nope", "--state-dir", sd)[::2], "does not exist"
        )
