"""Jobs: the device API client, notification streams and a journaled job runner.

:class:`JobsClient` is the thin request layer (``get_pending``, ``start_next``, ``describe``,
``update`` and the ``notify_next()``/``notify()`` streams); :class:`JobRunner` runs the
thing's executions with handlers chosen by the job document's operation, journals each one on
disk before its handler runs and reports truthful outcomes across reconnects, restarts and
reboots::

    async def install(ctx: JobContext) -> dict[str, str]:
        await ctx.progress({"step": "download"})
        ...
        return {"installed": ctx.document["version"]}

    async with DeviceClient(identity, endpoint) as device:
        runner = JobRunner(device, {"install": install}, journal_path="jobs.journal")
        outcome = await runner.run()  # returns only when a job asks for a reboot
"""

from device_sdk.jobs._client import JobErrorCode, JobsClient
from device_sdk.jobs._handler import (
    Handler,
    HandlerResult,
    JobContext,
    JobFailed,
    JobHandler,
    JobRejected,
    RebootRequested,
    status_details,
)
from device_sdk.jobs._journal import JobJournal, JobPhase, JournalEntry
from device_sdk.jobs._model import (
    JobExecution,
    JobExecutionState,
    JobExecutionSummary,
    JobsChangedEvent,
    JobStatus,
    JobUpdateResult,
    NextJobEvent,
    PendingJobs,
)
from device_sdk.jobs._runner import JobOutcome, JobRunner
from device_sdk.jobs._topics import NEXT_JOB, JobsTopics, jobs_topics

__all__ = [
    "NEXT_JOB",
    "Handler",
    "HandlerResult",
    "JobContext",
    "JobErrorCode",
    "JobExecution",
    "JobExecutionState",
    "JobExecutionSummary",
    "JobFailed",
    "JobHandler",
    "JobJournal",
    "JobOutcome",
    "JobPhase",
    "JobRejected",
    "JobRunner",
    "JobStatus",
    "JobUpdateResult",
    "JobsChangedEvent",
    "JobsClient",
    "JobsTopics",
    "JournalEntry",
    "NextJobEvent",
    "PendingJobs",
    "RebootRequested",
    "jobs_topics",
    "status_details",
]
