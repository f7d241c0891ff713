"""`cloud-stubs` CLI: happy paths and bad input (one-line error, exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cloud_stubs.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_thing_lifecycle_json(tmp_path: Path) -> None:
    sd = str(tmp_path / "s")
    code, out, _ = run("thing", "create", "robot-7", "--state-dir", sd, "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["thing_name"] == "robot-7"
    for key in ("cert_file", "key_file", "ca_file"):
        assert Path(data[key]).is_file()
    assert {"host", "port"} <= data.keys()
    code, out, _ = run("thing", "list", "--state-dir", sd, "--json")
    assert code == 0
    things = json.loads(out)
    assert [t["thing_name"] for t in things] == ["robot-7"]
    assert things[0]["certificates"][0]["status"] == "ACTIVE"
    cert_id = things[0]["certificates"][0]["certificate_id"]
    code, out, _ = run("cert", "deactivate", cert_id[:12], "--state-dir", sd, "--json")
    assert code == 0
    assert json.loads(out)["status"] == "INACTIVE"
    code, out, _ = run("cert", "activate", cert_id[:12], "--state-dir", sd, "--json")
    assert json.loads(out)["status"] == "ACTIVE"
    code, out, _ = run("cert", "revoke", cert_id, "--state-dir", sd, "--json")
    assert json.loads(out)["status"] == "REVOKED"
    code, _, err = run("cert", "activate", cert_id, "--state-dir", sd)
    assert code == 2
    assert "REVOKED" in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = run("thing", "delete", "robot-7", "--state-dir", sd, "--json")
    assert code == 0
    assert json.loads(run("thing", "list", "--state-dir", sd, "--json")[1]) == []


def test_create_many_and_groups(tmp_path: Path) -> None:
    sd = str(tmp_path / "s")
    code, out, _ = run(
        "thing", "create-many", "--prefix", "robot-", "--count", "25", "--state-dir", sd, "--json"
    )
    assert code == 0, out
    data = json.loads(out)
    assert (data["count"], data["first"], data["last"]) == (25, "robot-1", "robot-25")
    assert len(list((tmp_path / "s" / "things").iterdir())) == 25
    assert run("thing-group", "create", "lab", "--state-dir", sd)[0] == 0
    code, out, _ = run(
        "thing-group", "add", "lab", "robot-1", "robot-2", "--state-dir", sd, "--json"
    )
    assert json.loads(out)["members"] == ["robot-1", "robot-2"]


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    sd = str(tmp_path / "s")
    cases = [
        (("thing", "create", "bad name", "--state-dir", sd), "invalid thing name"),
        (("thing", "delete", "ghost", "--state-dir", sd), "does not exist"),
        (("cert", "revoke", "deadbeefdeadbeef", "--state-dir", sd), "does not exist"),
        (("thing-group", "add", "nogroup", "x", "--state-dir", sd), "does not exist"),
        (("up", "--broker", "nonsense", "--state-dir", sd), "--broker"),
    ]
    for args, needle in cases:
        code, _, err = run(*args)
        assert code == 2, args
        assert needle in err, (args, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


def test_corrupt_ca_names_the_file(tmp_path: Path) -> None:
    sd = tmp_path / "s"
    assert run("init", "--state-dir", str(sd))[0] == 0
    (sd / "ca" / "ca.pem").write_text("not a certificate")
    code, _, err = run("thing", "create", "robot-1", "--state-dir", str(sd))
    assert code == 2
    assert "ca.pem" in err
    assert "Traceback" not in err


def test_usage_error_exit_code(tmp_path: Path) -> None:
    code, _, _ = run(
        "thing", "create-many", "--prefix", "x", "--count", "0", "--state-dir", str(tmp_path)
    )
    assert code == 2
