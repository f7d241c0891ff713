"""What a job handler sees (:class:`JobContext`) and how it answers.

Options come with :class:`JobHandler`; the outcome signals are :class:`JobFailed`,
:class:`JobRejected` and :class:`RebootRequested`.

A handler is ``async def handler(ctx: JobContext) -> Mapping | RebootRequested | None``:

* return details (or ``None``)        -> ``SUCCEEDED`` with those ``statusDetails``;
* raise :class:`JobFailed` (reason)   -> ``FAILED`` (retryable causes);
* raise :class:`JobRejected` (reason) -> ``REJECTED`` (the job can never work here);
* return or raise :class:`RebootRequested` -> the runner journals it, reports ``IN_PROGRESS``
  and returns from :meth:`JobRunner.run <device_sdk.jobs.JobRunner.run>` so the application
  can reboot; after the restart the execution completes ``SUCCEEDED`` (or, for a resumable
  handler, the handler runs again with ``ctx.after_reboot`` set to verify the result);
* any other exception                 -> ``FAILED`` with the exception as the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from device_sdk._exceptions import DeviceSdkError, RejectedError, VersionConflictError
from device_sdk.jobs._client import JobErrorCode
from device_sdk.jobs._model import JobExecution, JobStatus

if TYPE_CHECKING:
    from device_sdk.jobs._client import JobsClient

__all__ = [
    "Handler",
    "HandlerResult",
    "JobContext",
    "JobFailed",
    "JobHandler",
    "JobRejected",
    "RebootRequested",
    "status_details",
]

_KEY_CHARS = re.compile(r"[^a-zA-Z0-9:_-]")
_MAX_KEY = 128
_MAX_VALUE = 1024
_DEL = "\x7f"
_GONE = (JobErrorCode.RESOURCE_NOT_FOUND, JobErrorCode.TERMINAL_STATE_REACHED)


def status_details(data: Mapping[str, Any] | None) -> dict[str, str]:
    """``data`` as a valid Jobs ``statusDetails`` map (string keys and values, IoT limits).

    Keys are cut to 128 characters of ``[a-zA-Z0-9:_-]`` (others become ``_``); non-string
    values are JSON-encoded; control characters are dropped; values are cut to 1024
    characters; ``None`` and empty values are left out.
    """
    out: dict[str, str] = {}
    for raw_key, value in (data or {}).items():
        key = _KEY_CHARS.sub("_", str(raw_key))[:_MAX_KEY]
        if not key or value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        text = "".join(ch for ch in text if ch >= " " and ch != _DEL)[:_MAX_VALUE]
        if text:
            out[key] = text
    return out


class JobFailed(Exception):  # noqa: N818 - an outcome signal, like StopIteration
    """Raise from a handler to finish the execution ``FAILED`` (a retryable failure).

    Attributes:
        reason: Short reason, reported as ``statusDetails["reason"]``.
        details: More details to report.
    """

    status = JobStatus.FAILED

    def __init__(self, reason: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = dict(details or {})

    def status_details(self) -> dict[str, str]:
        """The details to report (``reason`` included)."""
        return status_details({**self.details, "reason": self.reason})


class JobRejected(JobFailed):
    """Raise from a handler to finish the execution ``REJECTED`` (it can never work here)."""

    status = JobStatus.REJECTED


class RebootRequested(Exception):  # noqa: N818 - an outcome signal, returned or raised
    """Return (or raise) from a handler when the job needs a reboot to complete.

    Args:
        status_details: Reported with ``IN_PROGRESS`` now and with ``SUCCEEDED`` after the
            restart (unless a resumable handler decides otherwise).
        step_timeout_minutes: Step timer set with the ``IN_PROGRESS`` report: if the device
            does not come back in time the execution becomes ``TIMED_OUT`` in the cloud.
    """

    def __init__(
        self,
        status_details: Mapping[str, Any] | None = None,
        *,
        step_timeout_minutes: int | None = None,
    ) -> None:
        super().__init__("reboot requested")
        self.status_details = dict(status_details or {})
        self.step_timeout_minutes = step_timeout_minutes


HandlerResult = Mapping[str, Any] | RebootRequested | None
"""What a handler returns: ``statusDetails`` for ``SUCCEEDED``, a reboot request, or None."""

Handler = Callable[["JobContext"], Awaitable[HandlerResult]]
"""``async def handler(ctx: JobContext) -> HandlerResult``."""


@dataclasses.dataclass(frozen=True, slots=True)
class JobHandler:
    """A handler with options.

    Attributes:
        run: The handler.
        resumable: Run it again after a restart that interrupted it (or that it asked for)
            instead of reporting ``FAILED`` ("interrupted by restart") or ``SUCCEEDED``.
            ``ctx.resumed`` / ``ctx.after_reboot`` tell the second run apart.
        timeout_s: Time limit of one run (default: the runner's ``handler_timeout_s``, else
            the execution's step timer).
    """

    run: Handler
    resumable: bool = False
    timeout_s: float | None = None


class JobContext:
    """One execution as its handler sees it.

    Attributes:
        job_id: The job.
        execution_number: The execution number (``None`` if the service sent none).
        document: The job document.
        operation: The document's operation (what selected the handler).
        status_details: The execution's ``statusDetails`` when the handler started.
        resumed: This run continues an execution a restart interrupted (resumable handlers).
        after_reboot: This run follows a :class:`RebootRequested` (resumable handlers).
    """

    def __init__(
        self,
        jobs: JobsClient,
        execution: JobExecution,
        document: Mapping[str, Any],
        operation: str,
        *,
        resumed: bool = False,
        after_reboot: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        self.job_id = execution.job_id
        self.execution_number = execution.execution_number
        self.document = document
        self.operation = operation
        self.status_details = dict(execution.status_details)
        self.resumed = resumed
        self.after_reboot = after_reboot
        self._jobs = jobs
        self._version = execution.version_number
        self._cancelled = False
        self._cloud_status: JobStatus | None = None
        self._task: asyncio.Task[Any] | None = None
        self._lock = asyncio.Lock()
        self._log = logger or logging.getLogger(__name__)

    @property
    def version_number(self) -> int:
        """The execution's version as last seen (the runner's ``expected_version``)."""
        return self._version

    @property
    def cancelled(self) -> bool:
        """Whether the execution ended in the cloud (canceled, removed, timed out)."""
        return self._cancelled

    @property
    def cloud_status(self) -> JobStatus | None:
        """When :attr:`cancelled`: the cloud's terminal status (``None``: no longer described)."""
        return self._cloud_status

    async def progress(
        self, details: Mapping[str, Any], *, step_timeout_minutes: int | None = None
    ) -> None:
        """Report ``IN_PROGRESS`` with ``details`` (replacing the previous details).

        Best effort: a lost connection or timeout is logged, not raised. A stale version is
        handled by re-describing. If the execution ended in the cloud, the handler is
        cancelled (it sees :class:`asyncio.CancelledError`; :attr:`cancelled` is true).

        Args:
            details: Progress details (made valid with :func:`status_details`).
            step_timeout_minutes: New step timer (``-1`` cancels it).
        """
        body = status_details(details)
        async with self._lock:
            try:
                await self._progress(body, step_timeout_minutes)
            except RejectedError as exc:
                self._log.warning("job %s: progress rejected: %s", self.job_id, exc)
            except DeviceSdkError as exc:
                self._log.warning("job %s: progress not reported: %s", self.job_id, exc)

    async def _progress(self, body: dict[str, str], step_timeout_minutes: int | None) -> None:
        for _ in range(3):
            try:
                result = await self._jobs.update(
                    self.job_id,
                    JobStatus.IN_PROGRESS,
                    status_details=body,
                    expected_version=self._version,
                    execution_number=self.execution_number,
                    step_timeout_minutes=step_timeout_minutes,
                    include_job_execution_state=True,
                )
            except VersionConflictError:
                if not await self.refresh():
                    return
                continue
            except RejectedError as exc:
                if exc.code not in _GONE and exc.code != JobErrorCode.INVALID_STATE_TRANSITION:
                    raise
                await self.refresh()
                return
            state = result.execution_state
            self._version = state.version_number if state is not None else self._version + 1
            self.status_details = body
            return

    async def refresh(self) -> bool:
        """Re-describe the execution; cancel the handler if it ended. False if it ended.

        Raises:
            DeviceSdkError: The execution could not be described (network, service).
        """
        try:
            current = await self._jobs.describe(
                self.job_id, include_job_document=False, execution_number=self.execution_number
            )
        except RejectedError as exc:
            if exc.code not in _GONE:
                raise
            current = None
        if current is None:
            self._cancel(None)
            return False
        self._version = current.version_number
        if current.status.is_terminal:
            self._cancel(current.status)
            return False
        return True

    def _cancel(self, status: JobStatus | None) -> None:
        if not self._cancelled:
            self._log.info(
                "job %s ended in the cloud (%s): cancelling its handler",
                self.job_id,
                status or "no longer described",
            )
            self._cancelled, self._cloud_status = True, status
        if self._task is not None and not self._task.done():
            self._task.cancel()
