"""OTA firmware updates in the agent, on :mod:`device_sdk.ota`.

Built once per agent process (not per session: a new process is a new boot for the OTA state
machine) when ``ota.installer`` is not ``none``:

* the installer: ``ab-slots`` (:class:`~device_sdk.ota.ABSlotInstaller` under
  ``ota.slot_root``, images downloaded to ``<state_dir>/ota/downloads``) or ``simulated``
  (:class:`~device_sdk.ota.SimulatedInstaller`, versions in memory);
* the fake bootloader (``ABSlotInstaller.boot``) runs once at agent start: a trial slot that
  was started more than ``ota.max_trial_boots`` times without commit falls back;
* an :class:`~device_sdk.ota.OtaAgent` with the pinned keys of ``ota.trusted_keys``, the
  built-in "reconnect and report" health check and the ``[[ota.health_check]]`` programs;
* the job handler for operation ``ota`` (documents ``ota/1``), run by the agent's
  :class:`~device_sdk.jobs.JobRunner`. It is resumable: when the agent restarts after the
  update asked for a "reboot", the runner's journal resumes the execution, which verifies the
  trial (health checks, then commit or rollback) and reports the terminal status.

``ota.bandwidth_bps`` caps the download rate (the document's ``policy.bandwidthBps`` applies
when lower). The signature covers the image digest, not the policy, so capping it is safe.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_sdk.jobs import JobContext, JobHandler
from device_sdk.ota import (
    ABSlotInstaller,
    HealthCheck,
    Installer,
    JobContextReporter,
    OtaAgent,
    OtaJournal,
    OtaResult,
    SimulatedInstaller,
)
from device_sdk.ota import OtaConfig as SdkOtaConfig
from device_sdk.ota._handler import result_to_job
from edge_agent._process import run_program

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from device_sdk.jobs import JobsClient
    from edge_agent._config import AgentConfig, OtaHealthCheckConfig

__all__ = ["OTA_OPERATION", "OtaRuntime", "build_installer"]

_log = logging.getLogger(__name__)
OTA_OPERATION = "ota"
_HANDLER_MARGIN_S = 900.0
_CHECK_OUTPUT_BYTES = 1024


class _AgentSlots(ABSlotInstaller):
    """:class:`ABSlotInstaller` whose downloads go under the agent's state directory."""

    def __init__(self, root: Path, *, download_dir: Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self._download_dir = download_dir

    def download_path(self, firmware_id: str) -> Path:
        """``<state_dir>/ota/downloads/<firmware id>.part``."""
        return self._download_dir / f"{firmware_id}.part"


def build_installer(config: AgentConfig) -> Installer:
    """The installer ``[ota]`` asks for (``installer`` must not be ``none``)."""
    ota = config.ota
    downloads = config.ota_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True, mode=0o750)
    if ota.installer == "ab-slots":
        assert ota.slot_root is not None  # noqa: S101 - checked by the configuration
        return _AgentSlots(
            ota.slot_root,
            download_dir=downloads,
            initial_version=ota.initial_version,
            max_trial_boots=ota.max_trial_boots,
        )
    version = config.read_firmware_version()
    return SimulatedInstaller(
        ota.initial_version if version == "unknown" else version, download_dir=downloads
    )


@dataclasses.dataclass(frozen=True, slots=True)
class OtaFacts:
    """The last update's end, as reported in the settings shadow."""

    job_id: str
    state: str
    reason_code: str | None


class OtaRuntime:
    """The OTA side of one agent process.

    Args:
        config: The configuration (``ota.installer`` not ``none``).
        logger: Logger.
    """

    def __init__(self, config: AgentConfig, *, logger: logging.Logger | None = None) -> None:
        self.settings = config.ota
        self._log = logger or _log
        self.installer = build_installer(config)
        ota = config.ota
        checks = [
            HealthCheck(c.name, _program_check(c), required=c.required, timeout_s=c.timeout_s + 1)
            for c in ota.health_check
        ]
        assert ota.device_type is not None  # noqa: S101 - checked by the configuration
        self.agent = OtaAgent(
            self.installer,
            SdkOtaConfig(
                device_type=ota.device_type,
                trusted_keys={k: p.read_bytes() for k, p in ota.trusted_keys.items()},
                state_dir=config.ota_dir,
                ca_file=ota.ca_file,
                health_checks=checks,
                builtin_report_check=ota.builtin_report_check,
                request_timeout_s=ota.request_timeout_s,
                download_timeout_s=ota.download_timeout_s,
            ),
            logger=self._log,
        )
        record = self.agent.journal.load()  # the last update, across restarts
        self.last: OtaFacts | None = (
            OtaFacts(record.job_id, record.state.value, record.reason_code)
            if record is not None and record.terminal
            else None
        )
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.restart_for: str | None = None
        self.changed = asyncio.Event()

    # -- facts ----------------------------------------------------------------------------

    @property
    def firmware_version(self) -> str:
        """The running (active slot's) version."""
        return self.installer.current_version() or "unknown"

    @property
    def on_trial(self) -> bool:
        """Whether the running version is on trial (not committed yet)."""
        return bool(getattr(self.installer, "on_trial", False)) or bool(
            getattr(self.installer, "trial", None)
        )

    def facts(self) -> dict[str, Any]:
        """``reported.ota`` of the settings shadow."""
        last = self.last
        return {
            "installer": self.settings.installer,
            "on_trial": self.on_trial,
            "last_job": last.job_id if last else None,
            "last_state": last.state if last else None,
            "last_reason_code": last.reason_code if last else None,
        }

    # -- boot -----------------------------------------------------------------------------

    def boot(self) -> None:
        """Agent start = boot: run the fake bootloader of the A/B slots once."""
        if isinstance(self.installer, ABSlotInstaller):
            slot = self.installer.boot()
            self._log.info(
                "ota: booted slot %s, version %s%s",
                slot,
                self.firmware_version,
                " (on trial)" if self.on_trial else "",
            )

    async def settle_orphan(self, job_id: str) -> None:
        """The execution ``job_id`` ended in the cloud while its update was not finished.

        The runner will not resume it, so an activated but uncommitted slot is rolled back
        here (the next ``ota`` job would do it too).
        """
        record = OtaJournal(self.agent.config.state_dir).load()
        if record is None or record.job_id != job_id or record.terminal:
            return
        if self.on_trial:
            self._log.warning("ota: job %s ended in the cloud on trial: rolling back", job_id)
            await self.installer.rollback()
            self.changed.set()

    def _remove_image(self, job_id: str) -> None:
        """The update ended: its downloaded image (copied into a slot, or useless) goes."""
        record = self.agent.journal.load()
        if record is None or record.job_id != job_id or not record.download_path:
            return
        try:
            Path(record.download_path).unlink(missing_ok=True)
        except OSError as exc:
            self._log.warning("ota: cannot remove %s: %s", record.download_path, exc)

    # -- the job handler ------------------------------------------------------------------

    def _capped(self, document: Mapping[str, Any]) -> dict[str, Any]:
        cap = self.settings.bandwidth_bps
        doc = dict(document)
        policy = doc.get("policy")
        if cap is None or not isinstance(policy, dict):
            return doc
        current = policy.get("bandwidthBps")
        if not isinstance(current, int) or current > cap:
            doc["policy"] = {**policy, "bandwidthBps": cap}
        return doc

    def handler(self, jobs: JobsClient) -> JobHandler:
        """The resumable handler of operation ``ota`` (pass the runner's ``jobs``)."""

        async def run(ctx: JobContext) -> Any:
            document = self._capped(ctx.document)
            result = await self.agent.run(
                ctx.job_id,
                ctx.execution_number,
                document,
                JobContextReporter(ctx, jobs),
                cancelled=lambda: ctx.cancelled,
            )
            trial = (document.get("policy") or {}).get("trialTimeoutS", 300)
            minutes = max(1, math.ceil(float(trial) / 60) + 5)
            self._ended(ctx.job_id, result)
            return result_to_job(result, reboot_timeout_minutes=minutes)

        timeout = self.settings.download_timeout_s + _HANDLER_MARGIN_S
        return JobHandler(run, resumable=True, timeout_s=timeout)

    def _ended(self, job_id: str, result: OtaResult) -> None:
        if result.outcome == "reboot":
            self.restart_for = job_id
            return
        self.outcomes[result.outcome] += 1
        self.last = OtaFacts(job_id, result.state.value, result.reason_code)
        self._remove_image(job_id)
        self._log.info(
            "ota %s: %s (%s); running %s",
            job_id,
            result.outcome,
            result.reason_code or result.state.value,
            self.firmware_version,
        )
        self.changed.set()


def _program_check(spec: OtaHealthCheckConfig) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        result = await run_program(
            spec.argv, timeout_s=spec.timeout_s, max_output_bytes=_CHECK_OUTPUT_BYTES
        )
        if result.ok:
            return True
        why = result.error or (
            "timed out" if result.timed_out else f"exit status {result.returncode}"
        )
        tail = result.stderr.strip()[-200:]
        raise RuntimeError(f"{spec.argv[0]}: {why}{': ' + tail if tail else ''}")

    return check
