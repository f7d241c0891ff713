r"""AWS IoT Jobs with documents in the AWS IoT Device Client's classic style.

Runs on :class:`device_sdk.jobs.JobRunner`, which journals each execution in
``<state_dir>/jobs.journal`` before its handler runs, so an execution interrupted by a restart
(or a reboot it asked for) is reported truthfully afterwards. Documents::

    {"operation": "download-file", "args": ["https://host/file.bin", "/opt/app/file.bin"],
     "sha256": "<optional hex digest>"}
    {"operation": "run-command", "args": ["systemctl", "restart", "app"],
     "allowStdErr": 0, "includeStdOut": true, "runAsUser": "pi", "timeout_s": 60}
    {"operation": "run-command", "command": "echo,hello\, world"}
    {"operation": "reboot"}

``run-command`` follows ``[commands.run_command]``'s limits (allowed programs, timeout, output
cap, user). With ``allowStdErr`` set, more lines than that on standard error fail the step, as
in the Device Client. ``reboot`` journals the request, reports ``IN_PROGRESS``, runs
``jobs.reboot_command`` and stops the agent; after the restart the execution is reported
``SUCCEEDED``. Only handlers listed in ``jobs.handlers`` run; other operations are
``REJECTED``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from device_sdk.jobs import (
    Handler,
    JobContext,
    JobFailed,
    JobHandler,
    JobOutcome,
    JobRejected,
    JobRunner,
    RebootRequested,
)
from edge_agent._actions import ActionError, download_file, reboot, run_command
from edge_agent._tasks import IGNORED, TaskStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Mapping

    from edge_agent._agent import Session

__all__ = ["JobsSubsystem", "jobs_subsystem"]

_log = logging.getLogger(__name__)
JOURNAL_FILE = "jobs.journal"


def _fail(exc: ActionError) -> JobFailed:
    details: dict[str, Any] = {"code": exc.code}
    for key in ("exit_code", "stdout", "stderr"):
        value = exc.result.get(key)
        if value not in (None, ""):
            details[key] = value[-512:] if isinstance(value, str) else value
    if exc.refused:
        return JobRejected(str(exc), details)
    return JobFailed(str(exc), details)


class JobsSubsystem:
    """Runs the thing's jobs while the session runs."""

    name = "jobs"

    def __init__(self, session: Session) -> None:
        self._session = session

    async def _download_file(self, ctx: JobContext) -> Mapping[str, Any]:
        doc = ctx.document
        args = doc.get("args")
        if not isinstance(args, list) or len(args) < 2:  # noqa: PLR2004
            raise JobRejected("download-file needs args: [url, destination]")
        sha256 = doc.get("sha256")
        if sha256 is not None and not isinstance(sha256, str):
            raise JobRejected("sha256 must be a hex string")
        await ctx.progress({"step": "downloading"})
        try:
            result = await download_file(
                self._session.config, str(args[0]), str(args[1]), sha256=sha256
            )
        except ActionError as exc:
            raise _fail(exc) from exc
        return {"path": str(result.path), "size": result.size, "sha256": result.sha256}

    async def _run_command(self, ctx: JobContext) -> Mapping[str, Any]:
        doc = ctx.document
        command = doc.get("command", doc.get("args"))
        user = doc.get("runAsUser")
        timeout = doc.get("timeout_s")
        allow_stderr = doc.get("allowStdErr")
        if user is not None and not isinstance(user, str):
            raise JobRejected("runAsUser must be a string")
        if timeout is not None and not isinstance(timeout, int | float):
            raise JobRejected("timeout_s must be a number")
        try:
            result = await run_command(self._session.config, command, timeout_s=timeout, user=user)
        except ActionError as exc:
            raise _fail(exc) from exc
        stderr_lines = len(result["stderr"].splitlines())
        if isinstance(allow_stderr, int) and stderr_lines > allow_stderr:
            raise JobFailed(
                f"{stderr_lines} lines on stderr, allowStdErr is {allow_stderr}",
                {"stderr": result["stderr"][-512:]},
            )
        details: dict[str, Any] = {"exit_code": result["exit_code"]}
        if doc.get("includeStdOut"):
            details["stdout"] = result["stdout"][-1024:]
        if result["truncated"]:
            details["truncated"] = True
        return details

    async def _reboot(self, ctx: JobContext) -> RebootRequested:
        del ctx
        return RebootRequested({"reboot": "requested"})

    def _handlers(self) -> dict[str, JobHandler]:
        available: dict[str, Handler] = {
            "download-file": self._download_file,
            "run-command": self._run_command,
            "reboot": self._reboot,
        }
        timeout = self._session.config.jobs.step_timeout_s
        return {
            name: JobHandler(available[name], timeout_s=timeout)
            for name in self._session.config.jobs.handlers
        }

    async def _count(self, outcomes: AsyncIterable[JobOutcome]) -> None:
        async for outcome in outcomes:
            if outcome.status is not None and not outcome.reboot_requested:
                self._session.stats.jobs[str(outcome.status)] += 1

    async def run(self, *, task_status: TaskStatus = IGNORED) -> None:
        """Run jobs until cancelled; on a reboot request, reboot and stop the agent."""
        session = self._session
        runner = JobRunner(
            session.device,
            self._handlers(),
            journal_path=session.config.state_dir / JOURNAL_FILE,
            handler_timeout_s=session.config.jobs.step_timeout_s,
            logger=_log,
        )
        async with runner.outcomes() as outcomes, asyncio.TaskGroup() as tg:
            counter = tg.create_task(self._count(outcomes), name="edge_agent.jobs.outcomes")
            task_status.started()
            outcome = await runner.run()
            counter.cancel()
        _log.warning("job %s asked for a reboot", outcome.job_id)
        try:
            await reboot(session.config)
        except ActionError as exc:
            _log.error("job %s: the reboot command failed: %s", outcome.job_id, exc)
        session.agent.request_stop(reason=f"reboot for job {outcome.job_id}")


def jobs_subsystem(session: Session) -> JobsSubsystem | None:
    """The jobs subsystem, unless ``jobs.enabled`` is false or no handler is enabled."""
    if not session.config.jobs.enabled or not session.config.jobs.handlers:
        return None
    return JobsSubsystem(session)
