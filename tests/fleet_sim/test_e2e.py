"""End to end: small fleets against a real local IoT Core (both brokers), real TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cloud_stubs import LocalIoTCore
from fleet_sim import SimConfig, parse_scenario, run
from fleet_sim._live import LiveState

ROOT = Path(__file__).parents[2]


def scenario_text(state_dir: Path, *, duration: float = 5.0) -> str:
    return f"""\
name: e2e
seed: 5
duration: {duration}
time_scale: 20
ramp_up: 50
target: {{state_dir: "{state_dir}"}}
groups:
  - name: robots
    model: robot_vacuum
    count: 6
    name_pattern: "e2e-robot-{{index}}"
    telemetry: {{interval: 10}}
    shadow: {{interval: 20, desired_per_minute: 120}}
    commands: {{send_per_minute: 600}}
    params: {{stuck_per_hour: 5}}
  - name: sensors
    model: environment_sensor
    count: 4
    name_pattern: "e2e-env-{{index}}"
    telemetry: {{interval: 10}}
    payload: {{template: {{t: "${{temperature}}", co2: "${{co2}}"}}}}
    commands: {{send_per_minute: 60}}
    params: {{dropout_per_day: 0}}
"""


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.progress: list[LiveState] = []

    def on_event(self, text: str) -> None:
        self.events.append(text)

    def on_progress(self, state: LiveState) -> None:
        self.progress.append(state)


async def test_small_fleet_zero_loss(cloud: LocalIoTCore, tmp_path: Path) -> None:
    scenario = parse_scenario(scenario_text(cloud.paths.root))
    recorder = Recorder()
    report = await run(
        SimConfig(scenario, report_path=tmp_path / "r.json", html_path=tmp_path / "r.html"),
        observer=recorder,
    )
    s = report["summary"]
    assert s["connects"]["ok"] == 10, s["connects"]
    assert s["connects"]["failed"] == 0
    sent = s["messages"]["sent"]
    assert sent >= 40, s
    assert s["messages"]["acked"] == sent, s
    assert s["sink"] == s["sink"] | {
        "received": sent,
        "unique": sent,
        "lost": 0,
        "duplicates": 0,
        "reordered": 0,
    }, s
    assert s["errors"]["total"] == 0, s["errors"]
    assert s["shadow"]["updates"] >= 10, s
    # Nothing rejected; at most one update per device may still be in flight when the run
    # stops (its response arrives after the counters are read).
    assert s["shadow"]["rejected"] == 0, s["shadow"]
    assert s["shadow"]["updates"] - 10 <= s["shadow"]["accepted"] <= s["shadow"]["updates"]
    assert s["shadow"]["round_trip"]["count"] >= 10, s
    op = s["operator"]
    assert op["commands_sent"] > 0
    outcomes = op["command_outcomes"]
    assert sum(v for k, v in outcomes.items() if not k.endswith(":timeout")) > 0, outcomes
    assert s["commands"]["handled"], s
    assert s["puback_latency"]["p99_s"] is not None
    assert recorder.progress
    assert recorder.progress[-1].connected == 10
    assert any("provisioning 10" in e for e in recorder.events)
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["run_id"] == report["run_id"]
    assert (tmp_path / "r.html").read_text().count("<svg") == 5


async def test_workers_merge_live(cloud_mosquitto: LocalIoTCore, tmp_path: Path) -> None:
    scenario = parse_scenario(scenario_text(cloud_mosquitto.paths.root, duration=4.0))
    report = await run(SimConfig(scenario, workers=2, operator=False))
    s = report["summary"]
    assert s["processes"] == 2
    assert [x["devices"] for x in report["shards"]] == [5, 5]
    assert s["connects"]["ok"] == 10
    assert s["sink"]["lost"] == 0
    assert s["sink"]["unique"] == s["messages"]["sent"] > 0
    assert s["messages"]["acked"] == s["messages"]["sent"]


def test_demo_without_a_tty(tmp_path: Path) -> None:
    env = {**os.environ, "CI": "true", "COLUMNS": "120"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet_sim",
            "demo",
            "--duration",
            "5",
            "--devices",
            "5",
            "--state-dir",
            str(tmp_path / "state"),
            "--report",
            str(tmp_path / "demo.json"),
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "started a local IoT Core" in out
    assert "connected=5/5" in out  # plain periodic progress lines, no live panel
    assert "\x1b[" not in out
    assert "lost 0, duplicates 0" in out
    summary = json.loads((tmp_path / "demo.json").read_text())["summary"]
    assert summary["devices"] == 5
    assert not (tmp_path / "state" / "endpoint.json").exists()  # the stub was stopped
