"""Running a program with a timeout, bounded output capture and an optional unprivileged user.

Shared by the command telemetry source, the ``run-command`` command and the ``run-command``
job step. The program runs in its own session, so a timeout kills the whole process group
(a shell script and its children), not only the first process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["ProcessResult", "run_program"]

_CHUNK = 4096
_KILL_GRACE_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessResult:
    """How a program ended.

    Attributes:
        returncode: Exit status (negative: killed by that signal); ``None`` if it did not start.
        stdout: The first ``max_output_bytes`` of standard output, decoded (errors replaced).
        stderr: The same for standard error.
        truncated: Whether output was cut.
        timed_out: Whether it was killed for exceeding the timeout.
        error: Why it could not start (program missing, permission, unknown user).
        duration_s: Wall time.
    """

    returncode: int | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    error: str | None
    duration_s: float

    @property
    def ok(self) -> bool:
        """Started, finished in time and exited with status 0."""
        return self.error is None and not self.timed_out and self.returncode == 0


def _not_started(reason: str, duration_s: float) -> ProcessResult:
    return ProcessResult(
        returncode=None,
        stdout="",
        stderr="",
        truncated=False,
        timed_out=False,
        error=reason,
        duration_s=duration_s,
    )


class _Capture:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_CHUNK):
            room = self.limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            if len(chunk) > room:
                self.truncated = True  # keep reading so the child never blocks on a full pipe

    def text(self) -> str:
        return self.data.decode(errors="replace")


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def run_program(
    argv: Sequence[str],
    *,
    timeout_s: float,
    max_output_bytes: int = 4096,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> ProcessResult:
    """Run ``argv`` (no shell) and capture its output.

    Args:
        argv: Program and arguments.
        timeout_s: Kill the process group (SIGTERM, then SIGKILL after 1 s) when exceeded.
        max_output_bytes: Per stream; the rest is read and discarded.
        user: Run as this user (needs root or the same user); ``None``: the agent's user.
        env: Environment; ``None`` inherits the agent's.
        cwd: Working directory.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    if not argv:
        return _not_started("empty command", 0.0)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            user=user,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    except (OSError, KeyError, ValueError) as exc:
        # KeyError: unknown user name; OSError: missing program, permission, setuid refused.
        reason = f"cannot start {argv[0]!r}: {exc}"
        return _not_started(reason, loop.time() - started)
    out, err = _Capture(max_output_bytes), _Capture(max_output_bytes)
    assert proc.stdout is not None  # noqa: S101 - PIPE requested above
    assert proc.stderr is not None  # noqa: S101
    timed_out = False
    readers = asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr), proc.wait())
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(readers)
    except TimeoutError:
        timed_out = True
        _kill_group(proc, signal.SIGTERM)
        try:
            async with asyncio.timeout(_KILL_GRACE_S):
                await asyncio.shield(readers)
        except TimeoutError:
            _kill_group(proc, signal.SIGKILL)
            try:
                async with asyncio.timeout(_KILL_GRACE_S):
                    await readers
            except TimeoutError:  # a grandchild left the session and holds the pipes open
                readers.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await readers
    except asyncio.CancelledError:
        _kill_group(proc, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await readers
        raise
    return ProcessResult(
        proc.returncode,
        out.text(),
        err.text(),
        out.truncated or err.truncated,
        timed_out,
        None,
        loop.time() - started,
    )
