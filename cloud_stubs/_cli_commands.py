"""``cloud-stubs commands``: AWS IoT Commands from the command line.

Mounted by :mod:`cloud_stubs.cli` as ``app.add_typer(commands_app, name="commands")``. Like
the other subcommands: ``--state-dir DIR``, ``--json``, errors are one line on stderr with
exit code 2. ``send`` needs ``cloud-stubs up`` running; the others also work on the stored
state when it is not.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cloud_stubs._cli_common import (
    DEFAULT_STATE,
    JsonOpt,
    StateDir,
    err_console,
    fail,
    out_console,
)
from cloud_stubs._paths import StatePaths
from cloud_stubs._state import ensure_state
from cloud_stubs.commands._control import commands_request
from cloud_stubs.commands._model import MAX_PAYLOAD_BYTES, MAX_TIMEOUT_S, ExecutionStatus

__all__ = ["commands_app"]

commands_app = typer.Typer(
    help="AWS IoT Commands: create commands, send them to things, follow executions.",
    no_args_is_help=True,
)

_err = err_console
_out = out_console
_POLL_S = 0.25
_WAIT_GRACE_S = 5.0
_OPEN = (ExecutionStatus.CREATED, ExecutionStatus.IN_PROGRESS)


_fail = fail


def _paths(state_dir: Path) -> StatePaths:
    paths = StatePaths.at(state_dir)
    if not paths.ca_cert.exists():
        try:
            ensure_state(paths).close()
        except OSError as exc:
            _fail(f"{state_dir}: {exc.strerror or exc}")
    return paths


def _request(paths: StatePaths, op: str, args: dict[str, Any]) -> Any:
    try:
        ok, result = asyncio.run(commands_request(paths, op, args))
    except TimeoutError:
        _fail("the running stub did not answer within 10 s")
    if not ok:
        _fail(f"commands {op}: {result.get('message') or result.get('error')}")
    return result


def _emit(as_json: bool, data: Any) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        _out.print_json(json.dumps(data))


@commands_app.command("create")
def create(
    command_id: Annotated[str, typer.Argument(help="1-64 characters a-z A-Z 0-9 _ -")],
    payload: Annotated[
        Path, typer.Option("--payload", help="File whose bytes the device receives (32 KiB).")
    ],
    content_type: Annotated[
        str | None,
        typer.Option(
            "--content-type",
            help="application/json → …/request/json, application/cbor → …/request/cbor, "
            "anything else → …/request (default application/octet-stream).",
        ),
    ] = None,
    display_name: Annotated[str | None, typer.Option("--display-name")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Create a command with a static payload."""
    try:
        data = payload.read_bytes()
    except OSError as exc:
        _fail(f"{payload}: {exc.strerror or exc}")
    if len(data) > MAX_PAYLOAD_BYTES:
        _fail(f"{payload}: {len(data)} bytes; a command payload is at most {MAX_PAYLOAD_BYTES}")
    args = {
        "command_id": command_id,
        "payload": base64.b64encode(data).decode(),
        "content_type": content_type,
        "display_name": display_name,
        "description": description,
    }
    _emit(as_json, _request(_paths(state_dir), "create-command", args))


async def _send(paths: StatePaths, args: dict[str, Any], *, wait: bool) -> tuple[bool, Any]:
    ok, started = await commands_request(paths, "start-execution", args)
    if not ok or not wait:
        return ok, started
    get_args = {
        "execution_id": started["executionId"],
        "thing": args["thing"],
        "include_result": True,
    }
    async with asyncio.timeout(args["timeout_s"] + _WAIT_GRACE_S):
        while True:
            ok, execution = await commands_request(paths, "get-execution", get_args)
            if not ok or execution["status"] not in _OPEN:
                return ok, execution
            await asyncio.sleep(_POLL_S)


@commands_app.command("send")
def send(
    thing: Annotated[str, typer.Argument(help="Target thing.")],
    command: Annotated[str, typer.Option("--command", help="Command id.")],
    timeout: Annotated[
        int,
        typer.Option("--timeout", help="Execution timeout in seconds.", min=1, max=MAX_TIMEOUT_S),
    ] = 10,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until the execution leaves CREATED/IN_PROGRESS and print it; "
            "exit 1 unless it SUCCEEDED.",
        ),
    ] = False,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Start an execution of a command on a thing (needs `cloud-stubs up`)."""
    paths = _paths(state_dir)
    args = {"command_id": command, "thing": thing, "timeout_s": timeout}
    try:
        ok, result = asyncio.run(_send(paths, args, wait=wait))
    except TimeoutError:
        _fail("no answer from the running stub in time")
    if not ok:
        _fail(f"commands send: {result.get('message') or result.get('error')}")
    _emit(as_json, result)
    if wait and result.get("status") != ExecutionStatus.SUCCEEDED:
        raise typer.Exit(1)


@commands_app.command("get")
def get(
    execution_id: Annotated[str, typer.Argument(help="Execution id (from `send`).")],
    thing: Annotated[str, typer.Option("--thing", help="The execution's target thing.")],
    result: Annotated[
        bool, typer.Option("--result/--no-result", help="Include the device's result.")
    ] = True,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """Show an execution (GetCommandExecution)."""
    args = {"execution_id": execution_id, "thing": thing, "include_result": result}
    _emit(as_json, _request(_paths(state_dir), "get-execution", args))


@commands_app.command("list")
def list_executions(
    thing: Annotated[str | None, typer.Option("--thing", help="Only this target.")] = None,
    command: Annotated[str | None, typer.Option("--command", help="Only this command.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    state_dir: StateDir = DEFAULT_STATE,
    as_json: JsonOpt = False,
) -> None:
    """List executions, newest first (ListCommandExecutions)."""
    if status is not None and status not in ExecutionStatus.__members__:
        _fail(f"--status {status!r}: choose one of {', '.join(ExecutionStatus)}")
    args = {"thing": thing, "command_id": command, "status": status}
    _emit(as_json, _request(_paths(state_dir), "list-executions", args))
