"""Commands from an allow-list, on ``cmd/<thing>/request/<name>`` and AWS IoT Commands.

Built on :class:`device_sdk.commands.Commands`; anything not in ``commands.allow`` is
REJECTED (``COMMAND_NOT_ALLOWED``) by it before a handler runs. Built-in commands:

``run-command``
    ``{"command": ["prog", "arg"] | "prog,arg", "timeout_s": 10, "user": "pi"}``: runs the
    program (no shell) with the configured timeout (a request may only shorten it), output
    capture truncated to ``max_output_bytes`` per stream, optionally as another (unprivileged)
    user, and only programs in ``allowed_programs`` when that list is not empty. SUCCEEDED
    carries ``exit_code``, ``stdout``, ``stderr``, ``truncated``; a non-zero exit is FAILED
    (``EXIT_STATUS``), a timeout FAILED (``TIMEOUT``), a refused program REJECTED.
``reboot``
    Answers SUCCEEDED, then runs ``jobs.reboot_command`` two seconds later.
``report-status``
    Version, uptime, connection state and outbox depth.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from device_sdk.commands import (
    CommandExecution,
    CommandFailedError,
    CommandRejectedError,
    CommandRequest,
    Commands,
)
from edge_agent._actions import ActionError, reboot, run_command
from edge_agent._tasks import IGNORED, TaskStatus
from edge_agent._version import __version__

if TYPE_CHECKING:
    from collections.abc import Mapping

    from edge_agent._agent import Session

__all__ = ["CommandsSubsystem", "commands_subsystem"]

_log = logging.getLogger(__name__)
_REBOOT_DELAY_S = 2.0
_MAX_CONCURRENT = 4


def _raise(exc: ActionError) -> None:
    detail = str(exc)
    if exc.result:
        out = (exc.result.get("stdout") or "")[-300:]
        err = (exc.result.get("stderr") or "")[-300:]
        detail = f"{detail} | exit={exc.result.get('exit_code')} stdout={out!r} stderr={err!r}"
    if exc.refused:
        raise CommandRejectedError(exc.code, detail) from exc
    raise CommandFailedError(exc.code, detail) from exc


class CommandsSubsystem:
    """Serves the allowed commands while the session runs."""

    name = "commands"

    def __init__(self, session: Session) -> None:
        self._session = session
        self._tg: asyncio.TaskGroup | None = None

    async def _run_command(self, request: CommandRequest) -> Mapping[str, Any]:
        args = request.args
        command = args.get("command", args.get("argv"))
        timeout = args.get("timeout_s")
        user = args.get("user")
        if timeout is not None and not isinstance(timeout, int | float):
            raise CommandRejectedError("BAD_ARGUMENTS", "timeout_s must be a number")
        if user is not None and not isinstance(user, str):
            raise CommandRejectedError("BAD_ARGUMENTS", "user must be a string")
        try:
            return await run_command(self._session.config, command, timeout_s=timeout, user=user)
        except ActionError as exc:
            _raise(exc)
            raise  # pragma: no cover - _raise always raises

    async def _reboot(self, request: CommandRequest) -> Mapping[str, Any]:
        del request

        async def later() -> None:
            await asyncio.sleep(_REBOOT_DELAY_S)
            try:
                await reboot(self._session.config)
            except ActionError as exc:
                _log.error("reboot command failed: %s", exc)

        if self._tg is None:
            raise CommandFailedError("NOT_READY", "the agent is stopping")
        self._tg.create_task(later(), name="edge_agent.commands.reboot")
        return {"rebooting_in_s": _REBOOT_DELAY_S}

    async def _report_status(self, request: CommandRequest) -> Mapping[str, Any]:
        del request
        device = self._session.device
        return {
            "version": __version__,
            "firmware_version": self._session.agent.firmware_version(),
            "uptime_s": round(self._session.agent.uptime_s, 1),
            "state": str(device.state),
            "outbox_depth": device.outbox_statistics().depth,
            "pid": os.getpid(),
        }

    async def run(self, *, task_status: TaskStatus = IGNORED) -> None:
        """Subscribe, then dispatch commands until cancelled."""
        config = self._session.config.commands
        commands = Commands(
            self._session.device,
            aws="aws" in config.schemes,
            simple="simple" in config.schemes,
            allow=set(config.allow),
            handler_timeout_s=config.run_command.timeout_s + 5,
            logger=_log,
        )
        commands.register("run-command", self._run_command)
        commands.register("reboot", self._reboot)
        commands.register("report-status", self._report_status)
        stats = self._session.stats.commands
        slots = asyncio.Semaphore(_MAX_CONCURRENT)

        async def one(execution: CommandExecution) -> None:
            try:
                status = await commands.dispatch(execution)
                stats[str(status)] += 1
            finally:
                slots.release()

        async with commands, asyncio.TaskGroup() as tg:
            self._tg = tg
            task_status.started()
            async for execution in commands.executions():
                await slots.acquire()
                tg.create_task(
                    one(execution), name=f"edge_agent.commands[{execution.execution_id}]"
                )


def commands_subsystem(session: Session) -> CommandsSubsystem | None:
    """The commands subsystem, unless ``commands.enabled`` is false."""
    if not session.config.commands.enabled:
        return None
    return CommandsSubsystem(session)
