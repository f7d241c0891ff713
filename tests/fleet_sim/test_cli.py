"""The fleet-sim CLI (in-process with CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fleet_sim._report import write_report
from fleet_sim.cli import app
from tests.fleet_sim.test_metrics import fake_shard, report_for

runner = CliRunner()
EXAMPLES = Path(__file__).parents[2] / "examples" / "scenarios"


def test_validate_ok() -> None:
    result = runner.invoke(app, ["validate", str(EXAMPLES / "home_robots.yaml")])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    assert "500 devices" in result.output


def test_validate_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ngroups:\n  - name: r\n    model: robot_vacuum\n    count: lots\n")
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"fleet-sim: error: {bad}: line 5: groups[0].count:")
    assert "fix: use a whole number" in lines[0]


def test_validate_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ngroups: []\nextra: 1\n")
    result = runner.invoke(app, ["validate", str(bad), "--json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert data["ok"] is False
    assert {i["location"] for i in data["issues"]} == {"groups", "extra"}


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2
    assert "cannot read" in result.output


def test_run_rejects_bad_options(tmp_path: Path) -> None:
    scenario = str(EXAMPLES / "home_robots.yaml")
    result = runner.invoke(app, ["run", scenario, "--shard", "4/4"])
    assert result.exit_code == 2
    assert "INDEX/COUNT" in result.output
    result = runner.invoke(app, ["run", scenario, "--shard", "0/2", "--workers", "2"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["run", scenario, "--target", "mqtts://example.com"])
    assert result.exit_code == 2
    assert "--cert-dir" in result.output
    result = runner.invoke(app, ["run", scenario, "--cert-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--target" in result.output


def test_models_lists_builtins() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "robot_vacuum" in result.output
    assert "environment_sensor" in result.output


def test_report_merge(tmp_path: Path) -> None:
    for i in range(2):
        write_report(report_for(i, 2, fake_shard(i, 1000.0, [0.001] * 5)), tmp_path / f"{i}.json")
    out = tmp_path / "merged.json"
    html = tmp_path / "merged.html"
    result = runner.invoke(
        app,
        [
            "report",
            "merge",
            str(tmp_path / "0.json"),
            str(tmp_path / "1.json"),
            "-o",
            str(out),
            "--html",
            str(html),
        ],
    )
    assert result.exit_code == 0, result.output
    merged = json.loads(out.read_text())
    assert merged["summary"]["messages"]["acked"] == 10
    assert html.read_text().startswith("<!doctype html>")
    result = runner.invoke(
        app, ["report", "merge", str(tmp_path / "0.json"), str(tmp_path / "0.json"), "-o", str(out)]
    )
    assert result.exit_code == 2
    assert "appears twice" in result.output
