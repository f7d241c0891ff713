"""Sweep mode: crash at every fault point in turn and check ota.md §11.6's invariants.

``python -m device_sdk.ota.sweep [--mode inprocess|subprocess] [--point P ...] [--action A]
[--unhealthy] [--fails] [--json]``
(or :func:`sweep`). Each case runs one update of a fresh A/B device against a local plain-HTTP
file server from ``cloud_stubs`` (a development dependency; imported only here), crashing once
at the case's fault point, then restarting (a restart is a boot: the fake bootloader runs)
until the update ends. ``subprocess`` mode runs every boot in a child process whose crash is a
real ``os._exit``. After each case:

1. the device boots a committed image, the old or the new one (no trial flag left);
2. the terminal status matches the running version (succeeded <=> new version), and so does
   the terminal report's ``running_version``;
3. an unverified slot is never active (``VERIFIED`` precedes ``INSTALLING`` in the journal,
   and a new active image hashes to the signed SHA-256);
4. re-delivering the same job is idempotent (same outcome, no new download);
5. the journal converges within ``max_restarts`` restarts.

Besides the crashes, :data:`EFFECT_CASES` carry out the reporting, connection and environment
faults (``report.duplicate``, ``report.version_mismatch`` once, ``mqtt.disconnect``,
``clock.skew``, ``disk.enospc``) and check the same invariants.

Exit status 0 when every case holds all invariants.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from device_sdk.ota._agent import OtaAgent, OtaConfig, OtaResult
from device_sdk.ota._document import key_id_of
from device_sdk.ota._faults import CRASH_EXIT_CODE, FaultPlan, SimulatedCrash
from device_sdk.ota._health import HealthCheck
from device_sdk.ota._installer import ABSlotInstaller

__all__ = [
    "EFFECT_CASES",
    "HAPPY_POINTS",
    "ROLLBACK_POINTS",
    "SweepCase",
    "SweepResult",
    "main",
    "sweep",
]

OLD, NEW = "1.0.0", "2.0.0"
IMAGE_SIZE = 64 * 1024

#: Fault points crossed by a successful update (crash at each, one per case).
HAPPY_POINTS: tuple[str, ...] = (
    "state.RECEIVED",
    "state.VALIDATED",
    "state.DOWNLOADING",
    "download.before_request",
    f"download.at_bytes:{IMAGE_SIZE // 2}",
    "state.DOWNLOADED",
    "verify.before",
    "state.VERIFIED",
    "state.INSTALLING",
    "install.before_write",
    "install.before_fsync",
    "state.INSTALLED",
    "bootflag.before_set",
    "bootflag.after_set",
    "state.REBOOTING",
    "reboot.before",
    "state.TRIAL_BOOT",
    "state.HEALTH_CHECK",
    "trial.before_health",
    "state.COMMITTING",
    "commit.before_flag",
    "commit.after_flag_before_report",
    "clock.skew:60",
    "mqtt.disconnect",
    "report.duplicate",
    "disk.enospc",
)
#: Fault points crossed by an update whose health check fails (rollback path).
ROLLBACK_POINTS: tuple[str, ...] = (
    "health.fail:app",
    "state.ROLLING_BACK",
    "rollback.before",
    "state.ROLLED_BACK",
)


@dataclasses.dataclass(frozen=True, slots=True)
class SweepCase:
    """One run: ``action`` (crash) at ``point``; ``healthy`` is what the app check answers.

    ``succeeds`` is whether the update should end on the new version (default: ``healthy``).
    """

    point: str
    healthy: bool = True
    action: str = "crash"
    succeeds: bool | None = None

    @property
    def expected_outcome(self) -> str:
        """``succeeded`` or ``failed``."""
        ok = self.healthy if self.succeeds is None else self.succeeds
        return "succeeded" if ok else "failed"


#: Reporting, connection and environment faults carried out (``inject``), one per case.
EFFECT_CASES: tuple[SweepCase, ...] = (
    SweepCase("report.duplicate", action="inject"),
    SweepCase("report.version_mismatch", action="inject"),
    SweepCase("mqtt.disconnect", action="inject"),
    SweepCase("clock.skew:3600", action="inject"),
    SweepCase("disk.enospc", action="inject", succeeds=False),
)


@dataclasses.dataclass(slots=True)
class SweepResult:
    """What one case did and which invariants it broke."""

    case: SweepCase
    outcome: str = ""
    restarts: int = 0
    running_version: str | None = None
    fired: list[str] = dataclasses.field(default_factory=list)
    violations: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """All invariants hold."""
        return not self.violations


class _LocalReporter:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.reports: list[dict[str, str]] = []
        self.disconnects = 0
        self._offline = False

    async def report(self, details: Mapping[str, str], *, must_succeed: bool = False) -> bool:  # noqa: ARG002
        if self._offline:  # the report sent while the link was down is lost; reconnected
            self._offline = False
            return False
        self.reports.append(dict(details))
        return True

    async def disconnect(self) -> None:
        self.disconnects += 1
        self._offline = True

    async def fresh_document(self) -> Any:
        return self.document


def _crash() -> NoReturn:
    raise SimulatedCrash


def _agent(
    dev: Path,
    keys: Mapping[str, bytes],
    plan: FaultPlan,
    *,
    healthy: bool,
    reporter: _LocalReporter | None = None,
) -> OtaAgent:
    async def app() -> bool:
        return healthy

    config = OtaConfig(
        device_type="sweep",
        trusted_keys=keys,
        state_dir=dev / "ota",
        health_checks=[HealthCheck("app", app, timeout_s=5)],
        fault_plan=plan,
        builtin_report_check=False,
        retry_delay_s=0.01,
        request_timeout_s=10,
    )
    installer = ABSlotInstaller(dev / "slots", initial_version=OLD)
    hook = reporter.disconnect if reporter is not None else None
    return OtaAgent(installer, config, crash=_crash, disconnect=hook)


async def boot_once(
    dev: Path,
    keys: Mapping[str, bytes],
    document: Mapping[str, Any],
    plan: FaultPlan,
    *,
    healthy: bool,
) -> OtaResult:
    """One boot of the device: bootloader, then the agent runs the job (may crash)."""
    ABSlotInstaller(dev / "slots", initial_version=OLD).boot()
    reporter = _LocalReporter(document)
    agent = _agent(dev, keys, plan, healthy=healthy, reporter=reporter)
    return await agent.run("sweep-job", 1, document, reporter)


def _child(argv: Sequence[str]) -> int:
    """``sweep _child <json>``: one boot in this process; a crash is a real ``os._exit``."""
    spec = json.loads(argv[0])
    dev = Path(spec["dev"])
    keys = {k: v.encode() for k, v in spec["keys"].items()}
    plan = FaultPlan.model_validate(spec["plan"])

    async def run() -> OtaResult:
        ABSlotInstaller(dev / "slots", initial_version=OLD).boot()
        reporter = _LocalReporter(spec["document"])
        agent = _agent(dev, keys, plan, healthy=spec["healthy"], reporter=reporter)
        agent.faults._crash = _exit  # noqa: SLF001 - the real crash in the child
        return await agent.run("sweep-job", 1, spec["document"], reporter)

    result = asyncio.run(run())
    sys.stdout.write(json.dumps({"outcome": result.outcome, "details": result.details}) + "\n")
    return 0


def _exit() -> NoReturn:
    os._exit(CRASH_EXIT_CODE)


async def _boot_subprocess(
    dev: Path,
    keys: Mapping[str, bytes],
    document: Mapping[str, Any],
    plan: FaultPlan,
    *,
    healthy: bool,
) -> tuple[str, dict[str, str]] | None:
    spec = {
        "dev": str(dev),
        "keys": {k: v.decode() for k, v in keys.items()},
        "plan": plan.model_dump(),
        "document": document,
        "healthy": healthy,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "device_sdk.ota.sweep",
        "_child",
        json.dumps(spec),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    if proc.returncode == CRASH_EXIT_CODE:
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"sweep child exited with {proc.returncode}")
    last = json.loads(out.decode().splitlines()[-1])
    return str(last["outcome"]), dict(last["details"])


async def run_case(
    case: SweepCase,
    dev: Path,
    keys: Mapping[str, bytes],
    document: Mapping[str, Any],
    *,
    sha256: str,
    mode: str = "inprocess",
    max_restarts: int = 8,
    plan: FaultPlan | None = None,
) -> SweepResult:
    """Run one case to its end and check the invariants."""
    plan = plan or FaultPlan.single(case.point, case.action)
    result = SweepResult(case)
    outcome: str | None = None
    final: dict[str, str] = {}
    for _ in range(max_restarts + 1):
        if mode == "subprocess":
            ended = await _boot_subprocess(dev, keys, document, plan, healthy=case.healthy)
            outcome, final = ended if ended is not None else (None, {})
        else:
            try:
                boot = await boot_once(dev, keys, document, plan, healthy=case.healthy)
            except SimulatedCrash:
                outcome = None
            else:
                outcome, final = boot.outcome, boot.details
        if outcome is not None and outcome != "reboot":
            break
        result.restarts += 1
    result.outcome = outcome or "crashed"
    inst = ABSlotInstaller(dev / "slots", initial_version=OLD)
    result.running_version = inst.current_version()
    history = [h for h in _history(dev) if h.get("event") in ("state", "fault")]
    result.fired = [h["fault"] for h in history if h.get("event") == "fault"]
    v = result.violations
    if outcome in (None, "reboot"):
        v.append(f"5: not converged after {max_restarts} restarts")
    if inst.on_trial:
        v.append("1: a trial slot is still active")
    if result.running_version not in (OLD, NEW):
        v.append(f"1: running unknown version {result.running_version}")
    expected = NEW if case.expected_outcome == "succeeded" else OLD
    if outcome == "succeeded" and result.running_version != NEW:
        v.append(f"2: SUCCEEDED but running {result.running_version}")
    if outcome in ("failed", "rejected") and result.running_version != OLD:
        v.append(f"2: {outcome} but running {result.running_version}")
    if outcome is not None and result.running_version != expected:
        v.append(f"2: expected {expected}, running {result.running_version}")
    reported = final.get("running_version")
    if outcome not in (None, "reboot") and reported not in (None, result.running_version):
        v.append(f"2: the terminal report says {reported}, running {result.running_version}")
    states = [h["state"] for h in history if h.get("event") == "state"]
    if "INSTALLING" in states and (
        "VERIFIED" not in states or states.index("VERIFIED") > states.index("INSTALLING")
    ):
        v.append("3: installed before VERIFIED")
    if result.running_version == NEW:
        image = dev / "slots" / "active" / "image.bin"
        if hashlib.sha256(image.read_bytes()).hexdigest() != sha256:
            v.append("3: the active image does not match the signed SHA-256")
    if case.point not in " ".join(result.fired):
        v.append(f"fault {case.point} never fired")
    if outcome not in (None, "reboot"):
        again = await boot_once(dev, keys, document, plan, healthy=case.healthy)
        if again.outcome != outcome or inst.current_version() != result.running_version:
            v.append(f"4: re-delivery gave {again.outcome}, not {outcome}")
    return result


def _history(dev: Path) -> list[dict[str, Any]]:
    try:
        lines = (dev / "ota" / "ota-journal.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


async def sweep(
    workdir: Path | None = None,
    *,
    cases: Sequence[SweepCase] | None = None,
    mode: str = "inprocess",
    plan: FaultPlan | None = None,
) -> list[SweepResult]:
    """Run every case (default: HAPPY_POINTS, ROLLBACK_POINTS, then EFFECT_CASES).

    ``plan`` replaces the one-crash plan of every case (custom scenarios).
    """
    from cloud_stubs._paths import StatePaths  # noqa: PLC0415 - development dependency
    from cloud_stubs.firmware import (  # noqa: PLC0415
        FirmwareServer,
        FirmwareStore,
        build_ota_document,
        public_key_pem,
    )
    from cloud_stubs.firmware._paths import OtaPaths  # noqa: PLC0415

    if cases is None:
        cases = [
            *(SweepCase(p) for p in HAPPY_POINTS),
            *(SweepCase(p, healthy=False) for p in ROLLBACK_POINTS),
            *EFFECT_CASES,
        ]
    with tempfile.TemporaryDirectory(prefix="ota-sweep-") as tmp:
        root = Path(workdir or tmp)
        paths = StatePaths.at(root / "cloud")
        paths.root.mkdir(parents=True, exist_ok=True)
        image = root / "image.bin"
        image.write_bytes(os.urandom(IMAGE_SIZE))
        with FirmwareStore(paths) as store:
            fw = store.upload(image, version=NEW, device_type="sweep")
        pem = public_key_pem(OtaPaths.of(paths))
        keys = {key_id_of(pem): pem}
        results = []
        async with FirmwareServer(paths, tls=False, url_ttl_s=3600) as server:
            document = build_ota_document(fw)
            document["artifact"]["url"] = server.url(fw.firmware_id, thing="sweep")
            document["policy"]["healthChecks"] = ["app"]
            for n, case in enumerate(cases):
                dev = root / f"case-{n:02d}"
                results.append(
                    await run_case(
                        case, dev, keys, document, sha256=fw.sha256, mode=mode, plan=plan
                    )
                )
        return results


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["_child"]:
        return _child(args_list[1:])
    parser = argparse.ArgumentParser(prog="python -m device_sdk.ota.sweep")
    parser.add_argument("--mode", choices=("inprocess", "subprocess"), default="inprocess")
    parser.add_argument("--point", action="append", help="only these points (repeatable)")
    parser.add_argument("--unhealthy", action="store_true", help="with --point: failing app")
    parser.add_argument("--action", default="crash", help="with --point: crash, inject, ...")
    parser.add_argument(
        "--fails", action="store_true", help="with --point: the update must end FAILED"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(args_list)
    logging.basicConfig(level=logging.ERROR)
    cases = None
    if args.point:
        succeeds = False if args.fails else None
        cases = [
            SweepCase(p, healthy=not args.unhealthy, action=args.action, succeeds=succeeds)
            for p in args.point
        ]
    results = asyncio.run(sweep(cases=cases, mode=args.mode))
    for r in results:
        if args.json:
            row = {**dataclasses.asdict(r), "ok": r.ok}
            sys.stdout.write(json.dumps(row) + "\n")
        else:
            mark = "ok  " if r.ok else "FAIL"
            sys.stdout.write(
                f"{mark} {r.case.point:40} {r.outcome:10} restarts={r.restarts} "
                f"running={r.running_version} {'; '.join(r.violations)}\n"
            )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
