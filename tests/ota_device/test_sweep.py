"""The crash sweep (ota.md §11.6): in process at every point, and with real os._exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_sdk.ota import FaultPlan, FaultRule, OtaJournal, OtaState
from device_sdk.ota.sweep import (
    EFFECT_CASES,
    HAPPY_POINTS,
    ROLLBACK_POINTS,
    SweepCase,
    main,
    sweep,
)

pytestmark = pytest.mark.slow


async def test_crash_at_every_fault_point_keeps_the_invariants(tmp_path: Path) -> None:
    results = await sweep(tmp_path)
    assert len(results) == len(HAPPY_POINTS) + len(ROLLBACK_POINTS) + len(EFFECT_CASES)
    bad = {f"{r.case.point}={r.case.action}": r.violations for r in results if not r.ok}
    assert bad == {}
    for r in results:
        assert r.fired[:1] == [f"{r.case.point}={r.case.action}"]
        assert r.outcome == r.case.expected_outcome


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
    assert main(["--point", "disk.enospc", "--action", "inject", "--fails", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (row["ok"], row["outcome"], row["running_version"]) == (True, "failed", "1.0.0")
    assert main(["--point", "disk.enospc", "--action", "inject"]) == 1  # it cannot succeed


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


async def test_effect_faults_do_what_they_say(tmp_path: Path) -> None:
    """disk.enospc fails the update before anything is activated; clock.skew shifts the
    journal's wall clock; mqtt.disconnect reaches the agent's hook; report.duplicate sends
    every report twice."""
    cases = [SweepCase(c.point, action=c.action, succeeds=c.succeeds) for c in EFFECT_CASES]
    results = {r.case.point: r for r in await sweep(tmp_path, cases=cases)}
    assert all(r.ok for r in results.values()), {p: r.violations for p, r in results.items()}
    n = {c.point: i for i, c in enumerate(cases)}

    def journal(point: str) -> OtaJournal:
        return OtaJournal(tmp_path / f"case-{n[point]:02d}" / "ota")

    record = journal("disk.enospc").load()
    assert record is not None
    assert (record.state, record.reason_code) == (OtaState.FAILED, "DISK_ERROR")
    assert "ENOSPC" in (record.detail or "") or "No space" in (record.detail or "")
    states = [h["state"] for h in journal("disk.enospc").history() if h["event"] == "state"]
    assert "INSTALLING" not in states
    assert results["disk.enospc"].running_version == "1.0.0"
    skewed = journal("clock.skew:3600").history()
    fired_at = next(i for i, h in enumerate(skewed) if h["event"] == "fault")
    before, after = skewed[fired_at], skewed[fired_at + 1]  # the same boot, next transition
    assert after["ts_wall"] - before["ts_wall"] > 3000
    assert results["clock.skew:3600"].outcome == "succeeded"


async def test_disk_full_during_install_fails_without_activation(tmp_path: Path) -> None:
    # the 64 KiB image is written in one chunk: the 2nd pass of disk.enospc is the install
    plan = FaultPlan(faults=[FaultRule(point="disk.enospc", action="inject", nth=2)])
    case = SweepCase("disk.enospc", action="inject", succeeds=False)
    (result,) = await sweep(tmp_path, cases=[case], plan=plan)
    assert result.ok, result.violations
    history = OtaJournal(tmp_path / "case-00" / "ota").history()
    states = [h["state"] for h in history if h["event"] == "state"]
    assert states[-2:] == ["INSTALLING", "FAILED"]
    assert "INSTALLED" not in states
    assert not (tmp_path / "case-00" / "slots" / "slots" / "b" / "version").exists()


async def test_a_version_mismatch_in_the_terminal_report_is_caught(tmp_path: Path) -> None:
    once = SweepCase("report.version_mismatch", action="inject")
    (tolerated,) = await sweep(tmp_path / "once", cases=[once])
    assert tolerated.ok, tolerated.violations  # an intermediate report only
    always = FaultPlan(
        faults=[FaultRule(point="report.version_mismatch", action="inject", once=False)]
    )
    (caught,) = await sweep(tmp_path / "always", cases=[once], plan=always)
    assert caught.outcome == "succeeded"
    assert caught.violations == ["2: the terminal report says 1.0.0, running 2.0.0"]
