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

Documents of the Device Client's job document schema ``1.0`` (``version`` + ``steps`` with
``runHandler`` / ``runCommand`` actions, ``finalStep``) are selected by their ``steps`` key and
run by the ``steps`` handler (:mod:`edge_agent._steps`). With ``jobs.handler_dir`` set, a classic
document whose ``operation`` is none of the above names a handler file there (the Device
Client's old schema), run by the ``handler`` handler. With ``[ota]`` configured, ``ota/1``
documents (operation ``ota``) run through :mod:`edge_agent._ota`.
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
    JobsClient,
    RebootRequested,
)
from edge_agent._actions import (
    ActionError,
    check_command,
    download_file,
    reboot,
    resolve_handler,
    run_command,
    run_handler,
)
from edge_agent._steps import STEPS_OPERATION, StepAction, parse_steps, run_steps, select_operation
from edge_agent._tasks import IGNORED, TaskStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Mapping

    from edge_agent._agent import Session

__all__ = ["JobsSubsystem", "jobs_subsystem"]

_log = logging.getLogger(__name__)
JOURNAL_FILE = "jobs.journal"
OTA_OPERATION = "ota"
HANDLER_OPERATION = "handler"
BUILT_IN_OPERATIONS = frozenset({"download-file", "run-command", "reboot", STEPS_OPERATION})
_DETAIL_MAX = 1024
_STDERR_MAX = 512


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
        return self._classic_details(doc, result, allow_stderr)

    async def _steps(self, ctx: JobContext) -> Mapping[str, Any]:
        config = self._session.config
        try:
            document = parse_steps(ctx.document)
            handlers = {}
            for action in document.actions:  # everything is checked before anything runs
                if action.type == "runHandler":
                    handlers[action.name] = resolve_handler(config, action.handler, action.path)
                else:
                    check_command(config, action.command)
        except ActionError as exc:
            raise _fail(exc) from exc

        async def run(action: StepAction) -> dict[str, Any]:
            if action.type == "runHandler":
                # As the Device Client: the handler gets runAsUser as its first argument.
                args = [action.run_as_user or "", *action.args]
                return await run_handler(config, handlers[action.name], args)
            return await run_command(config, action.command, user=action.run_as_user)

        total = len(document.steps)

        async def progress(index: int, action: StepAction) -> None:
            step = "final" if index >= total else f"{index + 1}/{total}"
            await ctx.progress({"step": step, "name": action.name})

        result = await run_steps(
            document, run, final_always=config.jobs.final_step == "always", progress=progress
        )
        details: dict[str, Any] = {"steps": f"{result.ran}/{total}"}
        if result.final is not None:
            details["final_step"] = result.final
        if result.ignored:
            details["ignored"] = ",".join(result.ignored)[:_DETAIL_MAX]
        exit_code = result.last.get("exit_code")
        if exit_code is not None:
            details["exit_code"] = exit_code
        stdout = result.last.get("stdout")
        if document.include_stdout and stdout:
            details["stdout"] = stdout[-_DETAIL_MAX:]
        if result.ok:
            return details
        assert result.failed is not None  # noqa: S101 - not ok means a failed step
        assert result.error is not None  # noqa: S101
        stderr = result.last.get("stderr")
        if stderr:
            details["stderr"] = stderr[-_STDERR_MAX:]
        details["failed_step"] = result.failed.name[:_DETAIL_MAX]
        details["code"] = result.error.code
        raise JobFailed(f"step {result.failed.name!r} failed: {result.error}", details)

    async def _handler(self, ctx: JobContext) -> Mapping[str, Any]:
        """A classic document whose ``operation`` names a handler in ``jobs.handler_dir``."""
        config = self._session.config
        doc = ctx.document
        args = doc.get("args", [])
        allow_stderr = doc.get("allowStdErr")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise JobRejected("args must be a list of strings")
        try:
            path = resolve_handler(config, doc.get("operation"), doc.get("path"))
            result = await run_handler(config, path, args)
        except ActionError as exc:
            raise _fail(exc) from exc
        return self._classic_details(doc, result, allow_stderr)

    def _classic_details(
        self, doc: Mapping[str, Any], result: Mapping[str, Any], allow_stderr: Any
    ) -> dict[str, Any]:
        stderr_lines = len(result["stderr"].splitlines())
        if isinstance(allow_stderr, int) and stderr_lines > allow_stderr:
            raise JobFailed(
                f"{stderr_lines} lines on stderr, allowStdErr is {allow_stderr}",
                {"stderr": result["stderr"][-_STDERR_MAX:]},
            )
        details: dict[str, Any] = {"exit_code": result["exit_code"]}
        if doc.get("includeStdOut"):
            details["stdout"] = result["stdout"][-_DETAIL_MAX:]
        if result["truncated"]:
            details["truncated"] = True
        return details

    def _select(self, document: Mapping[str, Any]) -> str | None:
        """The handler of a document: steps, a built-in operation, or a handler file."""
        op = select_operation(document)
        jobs = self._session.config.jobs
        if (
            op is None
            or op in BUILT_IN_OPERATIONS
            or op == OTA_OPERATION
            or HANDLER_OPERATION not in jobs.handlers
            or jobs.handler_dir is None
        ):
            return op
        return HANDLER_OPERATION

    async def _reboot(self, ctx: JobContext) -> RebootRequested:
        del ctx
        return RebootRequested({"reboot": "requested"})

    def _handlers(self, jobs: JobsClient) -> dict[str, JobHandler]:
        available: dict[str, Handler] = {
            "download-file": self._download_file,
            "run-command": self._run_command,
            "reboot": self._reboot,
            STEPS_OPERATION: self._steps,
            HANDLER_OPERATION: self._handler,
        }
        timeout = self._session.config.jobs.step_timeout_s
        handlers: dict[str, JobHandler] = {
            name: JobHandler(available[name], timeout_s=timeout)
            for name in self._session.config.jobs.handlers
        }
        ota = self._session.agent.ota
        if ota is not None:
            handlers[OTA_OPERATION] = ota.handler(jobs)
        return handlers

    async def _count(self, outcomes: AsyncIterable[JobOutcome]) -> None:
        ota = self._session.agent.ota
        async for outcome in outcomes:
            if outcome.status is not None and not outcome.reboot_requested:
                self._session.stats.jobs[str(outcome.status)] += 1
            if ota is not None and not outcome.reported and not outcome.reboot_requested:
                await ota.settle_orphan(outcome.job_id)

    async def run(self, *, task_status: TaskStatus = IGNORED) -> None:
        """Run jobs until cancelled; on a reboot request, reboot and stop the agent."""
        session = self._session
        async with JobsClient(session.device) as jobs:
            runner = JobRunner(
                session.device,
                self._handlers(jobs),
                journal_path=session.config.state_dir / JOURNAL_FILE,
                jobs=jobs,
                operation_selector=self._select,
                handler_timeout_s=session.config.jobs.step_timeout_s,
                logger=_log,
            )
            async with runner.outcomes() as outcomes, asyncio.TaskGroup() as tg:
                counter = tg.create_task(self._count(outcomes), name="edge_agent.jobs.outcomes")
                task_status.started()
                outcome = await runner.run()
                counter.cancel()
        ota = session.agent.ota
        if ota is not None and ota.restart_for == outcome.job_id:
            ota.restart_for = None
            if session.config.ota.reboot == "restart-agent":
                # The update is installed and activated on trial: a restart of the agent is
                # the "reboot" (systemd's Restart=always starts it again).
                session.agent.request_stop(reason=f"restart for OTA job {outcome.job_id}")
                return
        _log.warning("job %s asked for a reboot", outcome.job_id)
        try:
            await reboot(session.config)
        except ActionError as exc:
            _log.error("job %s: the reboot command failed: %s", outcome.job_id, exc)
        session.agent.request_stop(reason=f"reboot for job {outcome.job_id}")


def jobs_subsystem(session: Session) -> JobsSubsystem | None:
    """The jobs subsystem, unless ``jobs.enabled`` is false or no handler is enabled."""
    config = session.config
    if not config.jobs.enabled or not (config.jobs.handlers or config.ota.enabled):
        return None
    return JobsSubsystem(session)
