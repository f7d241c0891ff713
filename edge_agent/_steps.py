r"""AWS IoT Device Client "steps" job documents (job document schema version ``1.0``).

::

    {"version": "1.0", "includeStdOut": true,
     "steps": [
       {"action": {"name": "install", "type": "runHandler", "runAsUser": "root",
                   "input": {"handler": "install-packages.sh", "args": ["wget"],
                             "path": "default"},
                   "allowStdErr": 2, "ignoreStepFailure": "false"}},
       {"action": {"name": "hello", "type": "runCommand",
                   "input": {"command": "echo,hello\, world"}}}],
     "finalStep": {"action": {"name": "cleanup", "type": "runHandler",
                              "input": {"handler": "cleanup.sh"}}}}

Steps run in order and stop at the first failure whose ``ignoreStepFailure`` is not true.
As in the Device Client, ``finalStep`` runs when every step succeeded (``jobs.final_step =
"always"`` also runs it after a failure, for cleanups). ``runHandler`` runs a handler from
``jobs.handler_dir`` (see :func:`edge_agent._actions.resolve_handler` for the path-safety
rules) with ``runAsUser`` as its first argument; ``runCommand`` runs a command line under
``[commands.run_command]``'s rules (allow-list, timeout, output cap, ``runAsUser`` as the
unprivileged user). Every step is validated before the first one runs, so a document with a
refused step is ``REJECTED`` without side effects.

This module parses documents and sequences steps; running one step is the caller's
(:mod:`edge_agent._jobs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from edge_agent._actions import ActionError

__all__ = [
    "STEPS_OPERATION",
    "StepAction",
    "StepsDocument",
    "StepsResult",
    "parse_steps",
    "run_steps",
    "select_operation",
]

STEPS_OPERATION = "steps"
SCHEMA_VERSION = "1.0"
_TYPES = ("runHandler", "runCommand")
_MAX_STEPS = 64


@dataclasses.dataclass(frozen=True, slots=True)
class StepAction:
    """One ``action`` of a steps document."""

    name: str
    type: Literal["runHandler", "runCommand"]
    handler: str | None = None
    args: tuple[str, ...] = ()
    path: str | None = None
    command: Any = None
    run_as_user: str | None = None
    ignore_failure: bool = False
    allow_stderr: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StepsDocument:
    """A parsed steps document."""

    steps: tuple[StepAction, ...]
    final: StepAction | None
    include_stdout: bool

    @property
    def actions(self) -> tuple[StepAction, ...]:
        """The steps, then the final step."""
        return (*self.steps, self.final) if self.final is not None else self.steps


@dataclasses.dataclass(frozen=True, slots=True)
class StepsResult:
    """How the steps ended.

    Attributes:
        ok: Every step succeeded (ignored failures count as success).
        ran: Steps that ran (final step not counted).
        failed: The step that failed the job, if any.
        error: Its error.
        last: The last result that ran (exit code, output).
        final: ``ok``, ``failed`` or ``skipped`` for a final step; ``None`` without one.
        ignored: Names of failed steps with ``ignoreStepFailure``.
    """

    ok: bool
    ran: int
    failed: StepAction | None = None
    error: ActionError | None = None
    last: dict[str, Any] = dataclasses.field(default_factory=dict)
    final: str | None = None
    ignored: tuple[str, ...] = ()


def select_operation(document: Mapping[str, Any]) -> str | None:
    """``"steps"`` for a steps document, else its ``operation`` (classic documents)."""
    if "steps" in document and "operation" not in document:
        return STEPS_OPERATION
    op = document.get("operation")
    return op if isinstance(op, str) else None


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _bad(f'{where} must be true, false, "true" or "false"')


def _bad(message: str) -> ActionError:
    return ActionError("BAD_ARGUMENTS", message, refused=True)


def _action(raw: Any, where: str) -> StepAction:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("action"), Mapping):
        raise _bad(f"{where} must be an object with an 'action' object")
    action: Mapping[str, Any] = raw["action"]
    name = action.get("name")
    kind = action.get("type")
    if not isinstance(name, str) or not name:
        raise _bad(f"{where}.action.name must be a non-empty string")
    where = f"{where} ({name})"
    if kind not in _TYPES:
        raise _bad(f"{where}: type {kind!r} is not runHandler or runCommand")
    inp = action.get("input")
    if not isinstance(inp, Mapping):
        raise _bad(f"{where}: input must be an object")
    user = action.get("runAsUser")
    if user is not None and not isinstance(user, str):
        raise _bad(f"{where}: runAsUser must be a string")
    allow = action.get("allowStdErr")
    if allow is not None and (isinstance(allow, bool) or not isinstance(allow, int) or allow < 0):
        raise _bad(f"{where}: allowStdErr must be a whole number >= 0")
    common: dict[str, Any] = {
        "name": name,
        "run_as_user": user or None,
        "ignore_failure": _bool(action.get("ignoreStepFailure", False), "ignoreStepFailure"),
        "allow_stderr": allow,
    }
    if kind == "runCommand":
        command = inp.get("command")
        if not isinstance(command, str | list) or not command:
            raise _bad(f"{where}: input.command must be a command line")
        return StepAction(type="runCommand", command=command, **common)
    handler = inp.get("handler")
    args = inp.get("args", [])
    path = inp.get("path")
    if not isinstance(handler, str) or not handler:
        raise _bad(f"{where}: input.handler must be a file name")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise _bad(f"{where}: input.args must be a list of strings")
    if path is not None and not isinstance(path, str):
        raise _bad(f"{where}: input.path must be a string")
    return StepAction(type="runHandler", handler=handler, args=tuple(args), path=path, **common)


def parse_steps(document: Mapping[str, Any]) -> StepsDocument:
    """Validate a steps document.

    Raises:
        ActionError: ``BAD_ARGUMENTS`` (refused) naming what is wrong.
    """
    version = document.get("version")
    if version != SCHEMA_VERSION:
        raise _bad(f"job document version {version!r} is not supported (only {SCHEMA_VERSION!r})")
    steps = document.get("steps")
    if not isinstance(steps, list) or not steps:
        raise _bad("steps must be a non-empty list")
    if len(steps) > _MAX_STEPS:
        raise _bad(f"at most {_MAX_STEPS} steps")
    parsed = tuple(_action(raw, f"steps[{i}]") for i, raw in enumerate(steps))
    final_raw = document.get("finalStep")
    final = None if final_raw is None else _action(final_raw, "finalStep")
    include = _bool(document.get("includeStdOut", False), "includeStdOut")
    return StepsDocument(parsed, final, include)


StepRunner = Callable[[StepAction], Awaitable[dict[str, Any]]]
"""Runs one action; returns its summary (``exit_code``, ``stdout``, ``stderr``) or raises
:class:`ActionError`."""


def _stderr_check(action: StepAction, summary: dict[str, Any]) -> None:
    lines = len(str(summary.get("stderr") or "").splitlines())
    if action.allow_stderr is not None and lines > action.allow_stderr:
        raise ActionError(
            "STDERR",
            f"{lines} lines on stderr, allowStdErr is {action.allow_stderr}",
            result=summary,
        )


async def _one(action: StepAction, run: StepRunner) -> tuple[dict[str, Any], ActionError | None]:
    try:
        summary = await run(action)
        _stderr_check(action, summary)
    except ActionError as exc:
        return exc.result, exc
    return summary, None


async def run_steps(
    document: StepsDocument,
    run: StepRunner,
    *,
    final_always: bool = False,
    progress: Callable[[int, StepAction], Awaitable[None]] | None = None,
) -> StepsResult:
    """Run the steps in order, stop at the first failure, then the final step if due."""
    last: dict[str, Any] = {}
    ignored: list[str] = []
    failed: StepAction | None = None
    error: ActionError | None = None
    ran = 0
    for index, action in enumerate(document.steps):
        if progress is not None:
            await progress(index, action)
        last, err = await _one(action, run)
        ran += 1
        if err is not None and action.ignore_failure:
            ignored.append(action.name)
        elif err is not None:
            failed, error = action, err
            break
    final: str | None = None
    if document.final is not None:
        if failed is None or final_always:
            if progress is not None:
                await progress(len(document.steps), document.final)
            summary, err = await _one(document.final, run)
            final = "ok" if err is None or document.final.ignore_failure else "failed"
            if failed is None:
                last = summary
                if final == "failed":
                    failed, error = document.final, err
        else:
            final = "skipped"
    return StepsResult(failed is None, ran, failed, error, last, final, tuple(ignored))
