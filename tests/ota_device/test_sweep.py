"""The crash sweep (ota.md §11.6): in process at every point, and with real os._exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_sdk.ota import FaultPlan, FaultRule, OtaJournal, OtaState
from device_sdk.ota.sweep import HAPPY_POINTS, ROLLBACK_POINTS, SweepCase, main, sweep

pytestmark = pytest.mark.slow


async def test_crash_at_every_fault_point_keeps_the_invariants(tmp_path: Path) -> None:
    results = await sweep(tmp_path)
    assert len(results) == len(HAPPY_POINTS) + len(ROLLBACK_POINTS)
    bad = {r.case.point: r.violations for r in results if not r.ok}
    assert bad == {}
    for r in results:
        assert r.fired[:1] == [f"{r.case.point}=crash"]
        assert r.outcome == ("succeeded" if r.case.healthy else "failed")


async def test_os_exit_mid_download_resumes_from_the_fsynced_offset(tmp_path: Path) -> None:
    point = "download.at_bytes:32768"
    (result,) = await sweep(tmp_path, cases=[SweepCase(point)], mode="subprocess")
    assert result.ok, result.violations
    assert result.outcome == "succeeded"
    history = OtaJournal(tmp_path / "case-00" / "ota").history()
    requests = [h["offset"] for h in history if h["event"] == "request"]
    assert requests == [0, 32768]  # the restarted process asked only for the rest
    fault = next(h for h in history if h["event"] == "fault")
    assert (fault["fault"], fault["offset"]) == (f"{point}=crash", 32768)


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--point", "state.VERIFIED", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (row["ok"], row["outcome"], row["case"]["point"]) == (
        True,
        "succeeded",
        "state.VERIFIED",
    )


async def test_a_device_that_crashes_in_every_trial_boot_rolls_back(tmp_path: Path) -> None:
    """Power cut during every trial (health check): after maxBootAttempts trial boots the
    update rolls back and ends FAILED(MAX_BOOT_ATTEMPTS) on the old image (loop guard)."""
    rule = FaultRule(point="trial.before_health", action="crash", once=False)
    case = SweepCase("trial.before_health")
    results = await sweep(tmp_path, cases=[case], plan=FaultPlan(faults=[rule]))
    (result,) = results
    assert result.outcome == "failed"
    assert result.running_version == "1.0.0"
    record = OtaJournal(tmp_path / "case-00" / "ota").load()
    assert record is not None
    assert (record.state, record.reason_code) == (OtaState.FAILED, "MAX_BOOT_ATTEMPTS")
    assert record.boot_attempts == 4  # maxBootAttempts = 3
