"""``JobRunner``: run the thing's jobs one at a time, truthfully, across reconnects and restarts.

``await JobRunner(device, handlers, journal_path=...).run()`` owns one task group with named
tasks:

* ``…jobs_runner.connections`` — on every new connection generation (after resubscribing) wakes
  the main loop, which does a ``start-next``, and checks that the running execution was not
  cancelled while the device was offline;
* ``…jobs_runner.notify_next`` — wakes the main loop when a job becomes the head of the
  pending list, and notices when the running execution ended in the cloud (its handler is
  then cancelled);
* ``…jobs_runner.job[<jobId>]`` — the handler of the running execution.

The main loop (the caller's task) first recovers from the journal, then repeats
``start-next`` → validate the document → journal ``running`` → handler → journal the outcome
→ report it (re-describing on ``VersionMismatch``) → clear the journal. Network failures back
off with jitter and start again with recovery, so an outcome that was journaled but not
reported is re-sent, never recomputed by running the handler twice.

Recovery after a restart (journal present, execution still pending in the cloud):

=====================  ===========================  ======================================
journal phase          handler not resumable        handler resumable
=====================  ===========================  ======================================
``running``            FAILED "interrupted by       run again (``ctx.resumed``)
                       restart"
``reboot-requested``   SUCCEEDED with the request's  run again (``ctx.after_reboot``) to
                       details                       verify
``reporting``          report the journaled outcome  same
=====================  ===========================  ======================================
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_sdk._aio import LazyEvent
from device_sdk._backoff import ReconnectPolicy
from device_sdk._client import ClientState
from device_sdk._exceptions import (
    ClosedError,
    DeviceSdkError,
    RejectedError,
    VersionConflictError,
)
from device_sdk.jobs._client import JobErrorCode, JobsClient
from device_sdk.jobs._handler import (
    Handler,
    JobContext,
    JobFailed,
    JobHandler,
    RebootRequested,
    status_details,
)
from device_sdk.jobs._journal import JobJournal, JobPhase, JournalEntry
from device_sdk.jobs._model import JobExecution, JobStatus
from device_sdk.shadow._stream import BufferedStream, Fanout

if TYPE_CHECKING:
    from device_sdk._client import DeviceClient
    from device_sdk.jobs._model import NextJobEvent
    from device_sdk.shadow._stream import EventStream

__all__ = ["JobOutcome", "JobRunner", "OperationSelector"]

OperationSelector = Callable[[Mapping[str, Any]], str | None]
"""Picks a job document's operation (the handler name), or ``None`` if it has none."""

_RETRY = ReconnectPolicy(base_s=0.5, cap_s=60.0, min_interval_s=0.1)
_STOPPED = (ClientState.CLOSING, ClientState.CLOSED, ClientState.FAILED)
_GONE = (JobErrorCode.RESOURCE_NOT_FOUND, JobErrorCode.TERMINAL_STATE_REACHED)
_MAX_VERSION_RETRIES = 5
INTERRUPTED = "interrupted by restart"


@dataclasses.dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one execution ended (or paused for a reboot).

    Attributes:
        job_id: The job.
        status: The execution's status in the cloud: what the runner reported, or what the
            cloud had already set (canceled, timed out...); ``IN_PROGRESS`` with
            ``reboot_requested``; ``None`` if the service no longer describes it.
        status_details: The details the runner reported.
        reported: Whether the runner's own report set ``status``.
        reboot_requested: The handler asked for a reboot; ``run()`` returned this outcome.
        resumed: Finished from the journal (after a restart, or after its report failed).
    """

    job_id: str
    status: JobStatus | None
    status_details: dict[str, str]
    reported: bool = True
    reboot_requested: bool = False
    resumed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class _Result:
    status: JobStatus | None
    details: dict[str, str]
    reboot: RebootRequested | None = None


class JobRunner:
    """Runs the thing's job executions with handlers chosen by the document's operation.

    Args:
        device: The device client (entered before :meth:`run`).
        handlers: Operation name -> handler (an async callable taking a
            :class:`~device_sdk.jobs.JobContext`) or :class:`~device_sdk.jobs.JobHandler`.
        journal_path: The journal file (one per device; keep it on persistent storage).
        operation_field: Key of the operation in the job document.
        operation_selector: ``(document) -> operation or None``, used instead of
            ``operation_field`` to pick the handler, for documents of other schemas (for
            example the AWS IoT Device Client's ``steps`` documents). ``None`` (or a name
            without handler) rejects the execution.
        jobs: A shared, entered :class:`~device_sdk.jobs.JobsClient` (default: own one).
        step_timeout_minutes: Step timer requested with ``start-next`` (the cloud marks the
            execution TIMED_OUT if the device goes silent for that long).
        handler_timeout_s: Default time limit of a handler run; by default the execution's
            remaining step/in-progress time. A handler that exceeds it is cancelled and the
            execution FAILED.
        logger: Logger (defaults to this module's).
    """

    def __init__(
        self,
        device: DeviceClient,
        handlers: Mapping[str, Handler | JobHandler],
        *,
        journal_path: str | os.PathLike[str],
        operation_field: str = "operation",
        operation_selector: OperationSelector | None = None,
        jobs: JobsClient | None = None,
        step_timeout_minutes: int | None = None,
        handler_timeout_s: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._device = device
        self._handlers = {
            op: h if isinstance(h, JobHandler) else JobHandler(h) for op, h in handlers.items()
        }
        self.journal = JobJournal(Path(journal_path))
        self._field = operation_field
        self._select = operation_selector
        self._shared_jobs = jobs
        self._step_timeout = step_timeout_minutes
        self._handler_timeout = handler_timeout_s
        self._log = logger or logging.getLogger(__name__)
        self._name = f"device_sdk[{device.thing_name}].jobs_runner"
        self._outcomes: Fanout[JobOutcome] = Fanout()
        self._wake = LazyEvent()
        self._current: JobContext | None = None
        self._running = False

    def outcomes(self, *, max_buffer: int = 100) -> BufferedStream[JobOutcome]:
        """Every outcome, as ``async with runner.outcomes() as o: async for outcome in o``."""
        return self._outcomes.stream(max_buffer)

    # -- run ------------------------------------------------------------------------------

    async def run(self) -> JobOutcome:
        """Run jobs until a handler asks for a reboot; return that outcome.

        Runs until cancelled otherwise. Nothing the cloud sends (bad documents, unknown
        operations) stops it; network failures are retried with backoff.

        Raises:
            ClosedError: The device client closed.
            DeviceSdkError: The device client failed for good (e.g. not authorized).
        """
        if self._running:
            raise RuntimeError("JobRunner.run() is already running")
        self._running = True
        self._outcomes.reopen()
        self._wake.clear()
        try:
            async with contextlib.AsyncExitStack() as stack:
                jobs = self._shared_jobs
                if jobs is None:
                    jobs = await stack.enter_async_context(JobsClient(self._device))
                notify = await stack.enter_async_context(jobs.notify_next())
                async with asyncio.TaskGroup() as tg:
                    background = [
                        tg.create_task(self._watch_connections(), name=f"{self._name}.connections"),
                        tg.create_task(self._read_notify(notify), name=f"{self._name}.notify_next"),
                    ]
                    try:
                        outcome = await self._main(jobs, tg)
                    finally:
                        for task in background:
                            task.cancel()
        finally:
            self._running = False
            self._outcomes.close()
        if outcome is None:
            failure = self._device.failure
            raise failure if failure is not None else ClosedError(f"{self._name}: device closed")
        return outcome

    async def _main(self, jobs: JobsClient, tg: asyncio.TaskGroup) -> JobOutcome | None:
        failures = 0
        recovered = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if not recovered:
                    outcome = await self._recover(jobs, tg)
                    recovered = True
                    if outcome is not None and outcome.reboot_requested:
                        return outcome
                while (execution := await self._start_next(jobs)) is not None:
                    outcome = await self._execute(jobs, tg, execution)
                    if outcome.reboot_requested:
                        return outcome
            except DeviceSdkError as exc:
                if self._device.state in _STOPPED:
                    return None
                self._log.warning("%s: %s; retrying", self._name, exc)
            except Exception:  # noqa: BLE001 - a bug must not stop the device's jobs; logged
                self._log.exception("%s: unexpected error; retrying", self._name)
            else:
                failures = 0
                continue
            failures += 1
            recovered = False  # the journal tells what is left to report
            if not await self._pause(_RETRY.delay(failures - 1)):
                return None
            self._wake.set()

    async def _start_next(self, jobs: JobsClient) -> JobExecution | None:
        return await jobs.start_next(step_timeout_minutes=self._step_timeout)

    async def _pause(self, seconds: float) -> bool:
        """Back off until ``seconds`` pass or a new connection is up; False if stopping."""
        generation = self._device.connection_generation
        try:
            async with asyncio.timeout(seconds):
                await self._device.wait_resubscribed(after=generation)
        except TimeoutError:
            pass
        except DeviceSdkError:
            return False
        return True

    # -- background tasks -----------------------------------------------------------------

    async def _watch_connections(self) -> None:
        generation = 0
        while True:
            try:
                generation = await self._device.wait_resubscribed(after=generation)
            except DeviceSdkError:
                self._wake.set()  # let the main loop notice and stop
                return
            self._wake.set()
            await self._check_running()

    async def _read_notify(self, stream: EventStream[NextJobEvent]) -> None:
        try:
            async for event in stream:
                head = event.execution
                if head is not None:
                    self._wake.set()
                ctx = self._current
                if ctx is not None and (head is None or head.job_id != ctx.job_id):
                    await self._check_running()
        except DeviceSdkError as exc:
            self._log.warning("%s: notify-next stream ended: %s", self._name, exc)

    async def _check_running(self) -> None:
        """Cancel the running handler if its execution ended in the cloud."""
        ctx = self._current
        if ctx is None:
            return
        try:
            await ctx.refresh()
        except Exception as exc:  # noqa: BLE001 - a failed check must not stop the runner
            self._log.warning("%s: could not check job %s: %s", self._name, ctx.job_id, exc)

    # -- one execution --------------------------------------------------------------------

    def _operation(self, execution: JobExecution) -> tuple[str | None, str]:
        """(operation, "") for a runnable document, else (None, reason to reject)."""
        doc = execution.job_document
        if not isinstance(doc, dict):
            return None, "job document is not a JSON object"
        if self._select is not None:
            try:
                op = self._select(doc)
            except Exception as exc:  # noqa: BLE001 - a selector bug rejects, never stops
                self._log.exception("%s: operation selector failed", self._name)
                return None, f"operation selector failed: {type(exc).__name__}"
            if not isinstance(op, str) or not op:
                return None, "job document has no operation this device understands"
        else:
            op = doc.get(self._field)
            if not isinstance(op, str) or not op:
                return None, f"job document has no {self._field!r} string"
        if op not in self._handlers:
            return None, f"unknown operation {op!r}"
        return op, ""

    async def _execute(
        self,
        jobs: JobsClient,
        tg: asyncio.TaskGroup,
        execution: JobExecution,
        *,
        resumed: bool = False,
        after_reboot: bool = False,
    ) -> JobOutcome:
        job_id = execution.job_id
        op, reason = self._operation(execution)
        if op is None:
            self._log.warning("%s: rejecting job %s: %s", self._name, job_id, reason)
            details = status_details({"reason": reason})
            return await self._report(jobs, execution, JobStatus.REJECTED, details, resumed=resumed)
        spec = self._handlers[op]
        entry = JournalEntry(
            job_id=job_id,
            execution_number=execution.execution_number,
            operation=op,
            phase=JobPhase.RUNNING,
            resumable=spec.resumable,
        )
        await self.journal.save(entry)  # before the handler runs: a restart can tell
        document: dict[str, Any] = execution.job_document
        ctx = JobContext(
            jobs,
            execution,
            document,
            op,
            resumed=resumed,
            after_reboot=after_reboot,
            logger=self._log,
        )
        self._log.info("%s: running job %s (%s)", self._name, job_id, op)
        result = await self._invoke(tg, spec, ctx, execution)
        resumed = resumed or after_reboot
        if ctx.cancelled:
            await self.journal.clear()
            outcome = JobOutcome(job_id, ctx.cloud_status, {}, reported=False, resumed=resumed)
            self._outcomes.publish(outcome)
            return outcome
        if result.reboot is not None:
            await self.journal.save(
                entry.model_copy(
                    update={"phase": JobPhase.REBOOT_REQUESTED, "status_details": result.details}
                )
            )
            await ctx.progress(
                result.details, step_timeout_minutes=result.reboot.step_timeout_minutes
            )
            self._log.info("%s: job %s asked for a reboot", self._name, job_id)
            outcome = JobOutcome(
                job_id,
                JobStatus.IN_PROGRESS,
                result.details,
                reboot_requested=True,
                resumed=resumed,
            )
            self._outcomes.publish(outcome)
            return outcome
        status = result.status or JobStatus.FAILED
        await self.journal.save(
            entry.model_copy(
                update={
                    "phase": JobPhase.REPORTING,
                    "status": status,
                    "status_details": result.details,
                }
            )
        )
        current = execution.model_copy(update={"version_number": ctx.version_number})
        return await self._report(jobs, current, status, result.details, resumed=resumed)

    async def _invoke(
        self,
        tg: asyncio.TaskGroup,
        spec: JobHandler,
        ctx: JobContext,
        execution: JobExecution,
    ) -> _Result:
        timeout = spec.timeout_s or self._handler_timeout
        if timeout is None:
            if execution.approximate_seconds_before_timed_out is not None:
                timeout = float(execution.approximate_seconds_before_timed_out)
            elif self._step_timeout is not None:
                timeout = self._step_timeout * 60.0
        task = tg.create_task(
            self._call(spec, ctx, timeout), name=f"{self._name}.job[{ctx.job_id}]"
        )
        ctx._task = task  # noqa: SLF001 - companion class
        self._current = ctx
        try:
            await asyncio.wait({task})
        finally:
            self._current = None
        if task.cancelled():
            return _Result(None, {})
        return task.result()

    async def _call(self, spec: JobHandler, ctx: JobContext, limit_s: float | None) -> _Result:
        limit = asyncio.timeout(limit_s)
        try:
            async with limit:
                value = await spec.run(ctx)
        except RebootRequested as request:
            return _Result(None, status_details(request.status_details), request)
        except JobFailed as exc:  # and JobRejected
            self._log.info("%s: job %s %s: %s", self._name, ctx.job_id, exc.status, exc.reason)
            return _Result(exc.status, exc.status_details())
        except TimeoutError as exc:
            if limit.expired():
                reason = f"handler timed out after {limit_s:g} s"
                self._log.warning("%s: job %s: %s", self._name, ctx.job_id, reason)
                return _Result(JobStatus.FAILED, status_details({"reason": reason}))
            return self._crashed(ctx, exc)
        except Exception as exc:  # noqa: BLE001 - any handler error is reported FAILED
            return self._crashed(ctx, exc)
        if isinstance(value, RebootRequested):
            return _Result(None, status_details(value.status_details), value)
        return _Result(JobStatus.SUCCEEDED, status_details(value))

    def _crashed(self, ctx: JobContext, exc: BaseException) -> _Result:
        self._log.error("%s: job %s handler raised %r", self._name, ctx.job_id, exc, exc_info=exc)
        reason = f"handler raised {type(exc).__name__}: {exc}"
        return _Result(JobStatus.FAILED, status_details({"reason": reason}))

    async def _report(
        self,
        jobs: JobsClient,
        execution: JobExecution,
        status: JobStatus,
        details: dict[str, str],
        *,
        resumed: bool,
    ) -> JobOutcome:
        """Report a terminal ``status``; re-describe on VersionMismatch; clear the journal."""
        job_id = execution.job_id
        expected = execution.version_number
        for _ in range(_MAX_VERSION_RETRIES):
            try:
                await jobs.update(
                    job_id,
                    status,
                    status_details=details,
                    expected_version=expected,
                    execution_number=execution.execution_number,
                )
            except VersionConflictError:
                current = await self._describe(jobs, job_id, execution.execution_number)
                if current is None or current.status.is_terminal:
                    return await self._ended(job_id, current, resumed=resumed)
                self._log.info(
                    "%s: job %s moved to v%d: retrying", self._name, job_id, current.version_number
                )
                expected = current.version_number
                continue
            except RejectedError as exc:
                if exc.code == JobErrorCode.INVALID_STATE_TRANSITION or exc.code in _GONE:
                    current = await self._describe(jobs, job_id, execution.execution_number)
                    return await self._ended(job_id, current, resumed=resumed)
                raise
            self._log.info("%s: job %s %s", self._name, job_id, status)
            await self.journal.clear()
            outcome = JobOutcome(job_id, status, details, resumed=resumed)
            self._outcomes.publish(outcome)
            return outcome
        raise VersionConflictError(
            JobErrorCode.VERSION_MISMATCH, f"job {job_id}: version keeps changing", None
        )

    async def _ended(
        self, job_id: str, current: JobExecution | None, *, resumed: bool
    ) -> JobOutcome:
        status = current.status if current is not None else None
        self._log.warning(
            "%s: job %s had already ended in the cloud (%s)",
            self._name,
            job_id,
            status or "no longer described",
        )
        await self.journal.clear()
        outcome = JobOutcome(job_id, status, {}, reported=False, resumed=resumed)
        self._outcomes.publish(outcome)
        return outcome

    async def _describe(
        self,
        jobs: JobsClient,
        job_id: str,
        execution_number: int | None,
        *,
        include_job_document: bool = False,
    ) -> JobExecution | None:
        """The execution, or ``None`` if the service no longer describes it."""
        try:
            return await jobs.describe(
                job_id,
                include_job_document=include_job_document,
                execution_number=execution_number,
            )
        except RejectedError as exc:
            if exc.code in _GONE:
                return None
            raise

    # -- recovery -------------------------------------------------------------------------

    async def _recover(self, jobs: JobsClient, tg: asyncio.TaskGroup) -> JobOutcome | None:
        entry = await self.journal.load()
        if entry is None:
            return None
        self._log.info("%s: journal has job %s in phase %s", self._name, entry.job_id, entry.phase)
        current = await self._describe(
            jobs, entry.job_id, entry.execution_number, include_job_document=True
        )
        if current is None or current.status.is_terminal:
            return await self._ended(entry.job_id, current, resumed=True)
        if current.status is JobStatus.QUEUED:  # not ours any more (e.g. a new execution)
            await self.journal.clear()
            return None
        if entry.phase is JobPhase.REPORTING:
            status = entry.status or JobStatus.FAILED
            return await self._report(jobs, current, status, entry.status_details, resumed=True)
        spec = self._handlers.get(entry.operation)
        if spec is not None and spec.resumable:
            after_reboot = entry.phase is JobPhase.REBOOT_REQUESTED
            return await self._execute(
                jobs, tg, current, resumed=not after_reboot, after_reboot=after_reboot
            )
        if entry.phase is JobPhase.REBOOT_REQUESTED:
            status, details = JobStatus.SUCCEEDED, entry.status_details
        else:
            status, details = JobStatus.FAILED, status_details({"reason": INTERRUPTED})
        await self.journal.save(
            entry.model_copy(
                update={"phase": JobPhase.REPORTING, "status": status, "status_details": details}
            )
        )
        return await self._report(jobs, current, status, details, resumed=True)
