"""The OTA agent as a :class:`~device_sdk.jobs.JobRunner` handler for operation ``"ota"``.

::

    agent = OtaAgent(ABSlotInstaller("/data/slots"), OtaConfig(...))
    async with DeviceClient(identity, endpoint) as device, JobsClient(device) as jobs:
        runner = JobRunner(device, {"ota": ota_job_handler(agent, jobs)},
                           journal_path="/data/jobs.journal", jobs=jobs)
        outcome = await runner.run()      # returns when the update needs a reboot
        if outcome.reboot_requested:
            reboot()                      # after the restart, run the runner again

Outcomes: ``COMMITTED`` -> ``SUCCEEDED``; rejected -> ``REJECTED`` (:class:`JobRejected`);
failed -> ``FAILED`` (:class:`JobFailed`); a reboot -> :class:`RebootRequested` with a step
timer (the cloud-side dead-man switch: a device that never comes back is ``TIMED_OUT``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from device_sdk._exceptions import DeviceSdkError
from device_sdk.jobs import (
    JobContext,
    JobFailed,
    JobHandler,
    JobRejected,
    JobsClient,
    JobStatus,
    RebootRequested,
)
from device_sdk.ota._agent import OtaAgent, OtaResult

if TYPE_CHECKING:
    from device_sdk.shadow import ShadowClient

__all__ = ["JobContextReporter", "VersionHook", "ota_job_handler", "shadow_version_hook"]

VersionHook = Callable[[str | None, OtaResult], Awaitable[None]]
"""``async (running_version, result)``: called when an update ends (not on reboot)."""


def shadow_version_hook(shadow: ShadowClient, *, key: str = "firmware") -> VersionHook:
    """Report ``{key: {"version", "state", "reason_code", "job_id"}}`` in the shadow."""

    async def hook(version: str | None, result: OtaResult) -> None:
        try:
            await shadow.update(
                reported={
                    key: {
                        "version": version,
                        "state": result.state.value,
                        "reason_code": result.reason_code,
                        "transaction_id": result.details.get("transaction_id"),
                    }
                }
            )
        except DeviceSdkError as exc:
            _log.warning("ota: could not report the version in the shadow: %s", exc)

    return hook


_log = logging.getLogger(__name__)


class JobContextReporter:
    """:class:`~device_sdk.ota.StatusReporter` over a job handler's context."""

    def __init__(self, ctx: JobContext, jobs: JobsClient) -> None:
        """Report for ``ctx``'s execution; ``jobs`` is the runner's (shared) client."""
        self._ctx = ctx
        self._jobs = jobs

    async def report(self, details: Mapping[str, str], *, must_succeed: bool = False) -> bool:
        """``IN_PROGRESS`` with ``details`` (best effort unless ``must_succeed``)."""
        if not must_succeed:
            await self._ctx.progress(details)
            return True
        try:
            await self._jobs.update(
                self._ctx.job_id,
                JobStatus.IN_PROGRESS,
                status_details=dict(details),
                execution_number=self._ctx.execution_number,
            )
        except DeviceSdkError as exc:
            _log.warning("ota %s: report check failed: %s", self._ctx.job_id, exc)
            return False
        return True

    async def fresh_document(self) -> Any:
        """Describe the execution again (its document carries a newly presigned URL)."""
        execution = await self._jobs.describe(
            self._ctx.job_id,
            include_job_document=True,
            execution_number=self._ctx.execution_number,
        )
        return None if execution is None else execution.job_document


def result_to_job(result: OtaResult, *, reboot_timeout_minutes: int | None) -> Any:
    """Map an :class:`OtaResult` to what a JobRunner handler returns or raises."""
    if result.outcome == "succeeded":
        return result.details
    if result.outcome == "reboot":
        return RebootRequested(result.details, step_timeout_minutes=reboot_timeout_minutes)
    reason = result.reason_code or "FAILED"
    if result.outcome == "rejected":
        raise JobRejected(reason, result.details)
    raise JobFailed(reason, result.details)


def ota_job_handler(
    agent: OtaAgent,
    jobs: JobsClient,
    *,
    timeout_s: float | None = None,
    reboot_timeout_minutes: int | None = None,
    on_version: VersionHook | None = None,
) -> JobHandler:
    """A resumable JobRunner handler running ``agent`` (pass the same ``jobs`` to the runner).

    Args:
        agent: The OTA agent.
        jobs: The runner's shared, entered :class:`~device_sdk.jobs.JobsClient`.
        timeout_s: Limit of one handler run (default: the runner's).
        reboot_timeout_minutes: Step timer set when asking for a reboot (default: from the
            document's ``trialTimeoutS``, at least 1 minute).
        on_version: Called with the running version when an update ends (for example
            :func:`shadow_version_hook`); before the terminal status is reported.
    """

    async def run(ctx: JobContext) -> Any:
        reporter = JobContextReporter(ctx, jobs)
        result = await agent.run(
            ctx.job_id,
            ctx.execution_number,
            ctx.document,
            reporter,
            cancelled=lambda: ctx.cancelled,
        )
        minutes = reboot_timeout_minutes
        if minutes is None:
            trial = (ctx.document.get("policy") or {}).get("trialTimeoutS", 300)
            minutes = max(1, math.ceil(float(trial) / 60) + 5)
        if on_version is not None and result.outcome != "reboot":
            await on_version(agent.installer.current_version(), result)
        return result_to_job(result, reboot_timeout_minutes=minutes)

    return JobHandler(run, resumable=True, timeout_s=timeout_s)
