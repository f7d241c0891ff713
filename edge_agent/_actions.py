r"""The actions behind commands and job steps: run a program, download a file, reboot.

Shared by :mod:`edge_agent._commands` and :mod:`edge_agent._jobs` so a ``run-command``
behaves the same whether it arrives as a command or as a job step.

Command lines follow the AWS IoT Device Client's ``runCommand`` convention: either a JSON
list (``["echo", "hello"]``) or one string whose arguments are separated by commas, a
literal comma written ``\,`` (``"echo,hello\, world"``). No shell is involved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edge_agent._process import ProcessResult, run_program

if TYPE_CHECKING:
    from edge_agent._config import AgentConfig

__all__ = [
    "ActionError",
    "check_command",
    "download_file",
    "parse_command_line",
    "reboot",
    "resolve_handler",
    "run_command",
    "run_handler",
]

_log = logging.getLogger(__name__)
_CHUNK = 64 * 1024
_DOWNLOAD_TIMEOUT_S = 60.0


class ActionError(Exception):
    """An action was refused or failed.

    Attributes:
        code: ``[A-Z0-9_]`` reason code (``NOT_ALLOWED``, ``BAD_ARGUMENTS``, ``EXIT_STATUS``,
            ``TIMEOUT``, ``START_FAILED``, ``DOWNLOAD_FAILED``, ``CHECKSUM_MISMATCH``).
        refused: True if the device refused to run it (commands: REJECTED, not FAILED).
        result: What is known about the run (exit code, output), if it ran.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        refused: bool = False,
        result: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.refused = refused
        self.result = result or {}


def parse_command_line(value: Any) -> list[str]:
    r"""``["prog", "arg"]`` as is, or ``"prog,arg\,with comma"`` split on unescaped commas.

    Raises:
        ActionError: ``BAD_ARGUMENTS`` for anything else or an empty command.
    """
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = list(value)
    elif isinstance(value, str):
        argv, current, escaped = [], "", False
        for ch in value:
            if escaped:
                current += ch
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == ",":
                argv.append(current)
                current = ""
            else:
                current += ch
        argv.append(current + ("\\" if escaped else ""))
        argv = [a.strip() if i == 0 else a for i, a in enumerate(argv)]
    else:
        raise ActionError("BAD_ARGUMENTS", "command must be a list of strings or a string")
    if not argv or not argv[0]:
        raise ActionError("BAD_ARGUMENTS", "the command is empty")
    return argv


def _check_allowed(argv: list[str], allowed: list[str]) -> None:
    if allowed and argv[0] not in allowed:
        raise ActionError(
            "NOT_ALLOWED",
            f"program {argv[0]!r} is not in commands.run_command.allowed_programs",
            refused=True,
        )


def check_command(config: AgentConfig, command: Any) -> list[str]:
    """The argv of ``command`` if ``[commands.run_command]`` allows it.

    Raises:
        ActionError: ``BAD_ARGUMENTS`` or ``NOT_ALLOWED`` (refused).
    """
    try:
        argv = parse_command_line(command)
    except ActionError as exc:
        exc.refused = True
        raise
    _check_allowed(argv, config.commands.run_command.allowed_programs)
    return argv


def _summary(result: ProcessResult) -> dict[str, Any]:
    return {
        "exit_code": result.returncode,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "truncated": result.truncated,
        "duration_s": round(result.duration_s, 3),
    }


async def run_command(
    config: AgentConfig,
    command: Any,
    *,
    timeout_s: float | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """Run a command line under ``[commands.run_command]``'s rules; return exit code and output.

    ``timeout_s`` may only shorten the configured timeout. ``user`` overrides the configured
    unprivileged user (the agent must be able to switch to it, i.e. run as root).

    Raises:
        ActionError: Refused (``NOT_ALLOWED``, ``BAD_ARGUMENTS``) or failed (``TIMEOUT``,
            ``EXIT_STATUS``, ``START_FAILED``).
    """
    rc = config.commands.run_command
    argv = parse_command_line(command)
    _check_allowed(argv, rc.allowed_programs)
    limit = rc.timeout_s if timeout_s is None else min(float(timeout_s), rc.timeout_s)
    if limit <= 0:
        raise ActionError("BAD_ARGUMENTS", "timeout must be positive", refused=True)
    result = await run_program(
        argv, timeout_s=limit, max_output_bytes=rc.max_output_bytes, user=user or rc.user
    )
    summary = _summary(result)
    if result.error is not None:
        raise ActionError("START_FAILED", result.error, result=summary)
    if result.timed_out:
        raise ActionError("TIMEOUT", f"{argv[0]} timed out after {limit:g} s", result=summary)
    if result.returncode != 0:
        tail = result.stderr.strip()[-200:]
        raise ActionError(
            "EXIT_STATUS", f"{argv[0]} exited with {result.returncode}: {tail}", result=summary
        )
    return summary


_HANDLER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")
_HANDLER_MODE = 0o700


def resolve_handler(config: AgentConfig, handler: Any, path: Any = None) -> Path:
    """The handler file ``handler`` in ``jobs.handler_dir``, checked like the Device Client does.

    Rules: a handler directory must be configured and not writable by group or others; the
    name is a plain file name (no ``/``, no leading ``.``); ``path`` may only be absent,
    ``"default"`` or the handler directory itself (no handler from elsewhere); the file is a
    regular file in that directory (a symlink must not lead out of it), owned by the agent's
    user or root, with permissions exactly ``700``; and, when ``jobs.allowed_handlers`` is
    not empty, the name is listed there.

    Raises:
        ActionError: ``NOT_ALLOWED``, ``BAD_ARGUMENTS`` or ``HANDLER_NOT_FOUND`` (all refused).
    """
    jobs = config.jobs
    if jobs.handler_dir is None:
        raise ActionError(
            "NOT_ALLOWED", "runHandler needs jobs.handler_dir in the configuration", refused=True
        )
    if not isinstance(handler, str) or not _HANDLER_NAME.match(handler):
        raise ActionError(
            "BAD_ARGUMENTS", f"handler {handler!r} is not a plain file name", refused=True
        )
    directory = jobs.handler_dir.resolve()
    if path not in (None, "", "default") and (
        not isinstance(path, str) or Path(path).resolve() != directory
    ):
        raise ActionError(
            "NOT_ALLOWED",
            f"path {path!r} refused: handlers only run from jobs.handler_dir",
            refused=True,
        )
    if jobs.allowed_handlers and handler not in jobs.allowed_handlers:
        raise ActionError(
            "NOT_ALLOWED", f"handler {handler!r} is not in jobs.allowed_handlers", refused=True
        )
    try:
        dir_mode = directory.stat().st_mode
        target = (directory / handler).resolve(strict=True)
        info = target.stat()
    except OSError:
        raise ActionError(
            "HANDLER_NOT_FOUND", f"no handler {handler!r} in {directory}", refused=True
        ) from None
    problems = []
    if dir_mode & 0o022:
        problems.append(f"{directory} is writable by group or others")
    if target.parent != directory or not stat.S_ISREG(info.st_mode):
        problems.append("it is not a regular file inside the handler directory")
    if info.st_uid not in (0, os.geteuid()):
        problems.append("it is not owned by the agent's user or root")
    if stat.S_IMODE(info.st_mode) != _HANDLER_MODE:
        problems.append(f"its permissions are {stat.S_IMODE(info.st_mode):o}, not 700")
    if problems:
        raise ActionError(
            "NOT_ALLOWED", f"handler {handler!r} refused: {'; '.join(problems)}", refused=True
        )
    return target


async def run_handler(
    config: AgentConfig,
    handler: Path,
    args: list[str],
    *,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run a resolved handler (see :func:`resolve_handler`) as the agent's user.

    Steps documents pass ``[runAsUser or "", *args]`` as ``args``, as the Device Client does
    (its handler scripts switch user themselves); classic documents pass their ``args``.

    Raises:
        ActionError: ``TIMEOUT``, ``EXIT_STATUS``, ``START_FAILED``.
    """
    limit = config.jobs.step_timeout_s if timeout_s is None else timeout_s
    argv = [str(handler), *args]
    result = await run_program(
        argv, timeout_s=limit, max_output_bytes=config.commands.run_command.max_output_bytes
    )
    summary = _summary(result)
    if result.error is not None:
        raise ActionError("START_FAILED", result.error, result=summary)
    if result.timed_out:
        raise ActionError("TIMEOUT", f"{handler.name} timed out after {limit:g} s", result=summary)
    if result.returncode != 0:
        tail = result.stderr.strip()[-200:]
        raise ActionError(
            "EXIT_STATUS", f"{handler.name} exited with {result.returncode}: {tail}", result=summary
        )
    return summary


async def reboot(config: AgentConfig) -> dict[str, Any]:
    """Run the configured reboot command (``jobs.reboot_command``).

    Raises:
        ActionError: It could not start or exited non-zero.
    """
    argv = config.jobs.reboot_command
    _log.warning("rebooting: running %s", argv)
    result = await run_program(argv, timeout_s=60.0, max_output_bytes=1024)
    if not result.ok:
        reason = result.error or f"exit status {result.returncode}: {result.stderr.strip()}"
        raise ActionError("REBOOT_FAILED", f"{argv[0]}: {reason}", result=_summary(result))
    return _summary(result)


@dataclasses.dataclass(frozen=True, slots=True)
class Downloaded:
    """Where a download went and what it was."""

    path: Path
    size: int
    sha256: str


def _download_blocking(url: str, target: Path, max_bytes: int) -> Downloaded:
    from urllib.request import urlopen  # noqa: PLC0415 - downloads only (small idle daemon)

    scheme = urlsplit(url).scheme
    if scheme not in ("https", "http", "file"):
        raise ActionError("BAD_ARGUMENTS", f"unsupported URL scheme {scheme!r}", refused=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with (
            urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp,  # noqa: S310 - scheme checked
            tmp.open("wb") as out,
        ):
            while chunk := resp.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ActionError("DOWNLOAD_FAILED", f"larger than {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
    except OSError as exc:
        raise ActionError("DOWNLOAD_FAILED", f"{url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return Downloaded(target, size, digest.hexdigest())


async def download_file(
    config: AgentConfig, url: str, destination: str, *, sha256: str | None = None
) -> Downloaded:
    """Download ``url`` to ``destination`` (relative paths land in the downloads directory).

    The file is written next to its destination and renamed into place once complete.

    Raises:
        ActionError: ``BAD_ARGUMENTS``, ``DOWNLOAD_FAILED`` or ``CHECKSUM_MISMATCH``.
    """
    if not isinstance(url, str) or not isinstance(destination, str) or not destination:
        raise ActionError("BAD_ARGUMENTS", "download-file needs a URL and a destination path")
    target = Path(destination)
    if not target.is_absolute():
        target = config.downloads_dir / target
    result = await asyncio.to_thread(
        _download_blocking, url, target, config.jobs.max_download_bytes
    )
    if sha256 is not None and result.sha256 != sha256.lower():
        target.unlink(missing_ok=True)
        raise ActionError("CHECKSUM_MISMATCH", f"sha256 {result.sha256} != expected {sha256}")
    return result
