"""AWS IoT Device Client "steps" job documents: parsing, handler path safety, sequencing, and
jobs on the real stub (runHandler + runCommand, first failure stops, finalStep, refusals)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent import AgentConfig, parse_config
from edge_agent._actions import ActionError, resolve_handler, run_handler
from edge_agent._steps import StepAction, parse_steps, run_steps, select_operation
from tests.edge_agent.conftest import PYTHON, AgentEnv, running_agent

BASE: dict[str, Any] = {
    "state_dir": "state",
    "endpoint": {"host": "example-ats.iot.eu-west-1.amazonaws.com"},
    "identity": {"cert_file": "d.pem", "key_file": "d.key"},
}


def write_handler(directory: Path, name: str, body: str, mode: int = 0o700) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def config_with(tmp_path: Path, **jobs: Any) -> AgentConfig:
    data = {**BASE, "jobs": {"handler_dir": "handlers", **jobs}}
    return parse_config(data, base_dir=tmp_path)


def action(**kwargs: Any) -> dict[str, Any]:
    return {"action": {"name": "a", "type": "runHandler", "input": {"handler": "h"}, **kwargs}}


# -- parsing ----------------------------------------------------------------------------------


def test_select_operation() -> None:
    assert select_operation({"version": "1.0", "steps": []}) == "steps"
    assert select_operation({"operation": "reboot"}) == "reboot"
    assert select_operation({"operation": "x", "steps": []}) == "x"
    assert select_operation({"operation": 3}) is None


def test_parse_a_device_client_document() -> None:
    doc = parse_steps(
        {
            "version": "1.0",
            "includeStdOut": "true",
            "steps": [
                {
                    "action": {
                        "name": "Install-Packages",
                        "type": "runHandler",
                        "input": {"handler": "install.sh", "args": ["wget"], "path": "default"},
                        "runAsUser": "root",
                        "ignoreStepFailure": "true",
                        "allowStdErr": 2,
                    }
                },
                {"action": {"name": "hi", "type": "runCommand", "input": {"command": "echo,hi"}}},
            ],
            "finalStep": action(),
        }
    )
    assert doc.include_stdout
    first, second = doc.steps
    assert first == StepAction(
        name="Install-Packages",
        type="runHandler",
        handler="install.sh",
        args=("wget",),
        path="default",
        run_as_user="root",
        ignore_failure=True,
        allow_stderr=2,
    )
    assert (second.type, second.command) == ("runCommand", "echo,hi")
    assert doc.final is not None
    assert len(doc.actions) == 3


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"version": "2.0", "steps": [action()]}, "version '2.0' is not supported"),
        ({"version": "1.0", "steps": []}, "steps must be a non-empty list"),
        ({"version": "1.0", "steps": [{"x": 1}]}, "steps[0] must be an object with an 'action'"),
        ({"version": "1.0", "steps": [action(type="shell")]}, "type 'shell' is not runHandler"),
        ({"version": "1.0", "steps": [action(input={"args": []})]}, "input.handler"),
        (
            {"version": "1.0", "steps": [action(input={"handler": "h", "args": "x"})]},
            "input.args must be a list of strings",
        ),
        ({"version": "1.0", "steps": [action(allowStdErr=-1)]}, "allowStdErr"),
        ({"version": "1.0", "steps": [action(ignoreStepFailure="yes")]}, "ignoreStepFailure"),
        (
            {"version": "1.0", "steps": [action(type="runCommand", input={})]},
            "input.command must be a command line",
        ),
        ({"version": "1.0", "steps": [action()], "finalStep": {"action": {}}}, "finalStep.action"),
    ],
)
def test_parse_errors_are_refusals(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ActionError) as info:
        parse_steps(document)
    assert info.value.refused
    assert info.value.code == "BAD_ARGUMENTS"
    assert message in str(info.value)


# -- handler resolution (the Device Client's path-safety rules, stricter on `path`) --------------


def test_resolve_handler_accepts_a_700_file_in_the_handler_dir(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    path = write_handler(tmp_path / "handlers", "ok.sh", "exit 0")
    assert resolve_handler(config, "ok.sh") == path
    assert resolve_handler(config, "ok.sh", "default") == path
    assert resolve_handler(config, "ok.sh", str(tmp_path / "handlers")) == path


@pytest.mark.parametrize(
    ("handler", "path", "message"),
    [
        ("../ok.sh", None, "is not a plain file name"),
        (".hidden", None, "is not a plain file name"),
        ("ok.sh", "/usr/bin", "path '/usr/bin' refused"),
        ("missing.sh", None, "no handler 'missing.sh'"),
        ("wide.sh", None, "permissions are 755, not 700"),
        ("link.sh", None, "not a regular file inside the handler directory"),
        ("other.sh", None, "not in jobs.allowed_handlers"),
    ],
)
def test_resolve_handler_refusals(tmp_path: Path, handler: str, path: str | None, message: str):
    config = config_with(tmp_path, allowed_handlers=["ok.sh", "wide.sh", "link.sh", "missing.sh"])
    handlers = tmp_path / "handlers"
    write_handler(handlers, "ok.sh", "exit 0")
    write_handler(handlers, "wide.sh", "exit 0", mode=0o755)
    write_handler(handlers, "other.sh", "exit 0")
    outside = write_handler(tmp_path / "elsewhere", "evil.sh", "exit 0")
    (handlers / "link.sh").symlink_to(outside)
    with pytest.raises(ActionError) as info:
        resolve_handler(config, handler, path)
    assert info.value.refused
    assert message in str(info.value)


def test_resolve_handler_needs_a_handler_dir_that_others_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ActionError, match=r"needs jobs\.handler_dir"):
        resolve_handler(parse_config(BASE, base_dir=tmp_path), "ok.sh")
    config = config_with(tmp_path)
    write_handler(tmp_path / "handlers", "ok.sh", "exit 0")
    (tmp_path / "handlers").chmod(0o777)
    with pytest.raises(ActionError, match="writable by group or others"):
        resolve_handler(config, "ok.sh")


async def test_run_handler_passes_run_as_user_first_like_the_device_client(tmp_path: Path):
    config = config_with(tmp_path)
    write_handler(tmp_path / "handlers", "args.sh", 'echo "user=$1 rest=$2,$3"')
    path = resolve_handler(config, "args.sh")
    result = await run_handler(config, path, ["pi", "a", "b"])
    assert result["stdout"].strip() == "user=pi rest=a,b"
    write_handler(tmp_path / "handlers", "fail.sh", "echo oops >&2; exit 7")
    with pytest.raises(ActionError) as info:
        await run_handler(config, resolve_handler(config, "fail.sh"), [])
    assert info.value.code == "EXIT_STATUS"
    assert info.value.result["exit_code"] == 7


# -- sequencing -----------------------------------------------------------------------------------


def steps_doc(*names: str, final: str | None = None, **extra: Any) -> dict[str, Any]:
    def one(n: str) -> dict[str, Any]:
        return {"action": {"name": n, "type": "runCommand", "input": {"command": n}, **extra}}

    doc: dict[str, Any] = {"version": "1.0", "steps": [one(n) for n in names]}
    if final is not None:
        doc["finalStep"] = one(final)
    return doc


def fake_runner(ran: list[str], failing: set[str]) -> Any:
    async def run(a: StepAction) -> dict[str, Any]:
        ran.append(a.name)
        summary = {"exit_code": 1 if a.name in failing else 0, "stdout": a.name, "stderr": ""}
        if a.name in failing:
            raise ActionError("EXIT_STATUS", f"{a.name} failed", result=summary)
        if a.name.startswith("noisy"):
            summary["stderr"] = "x\ny\n"
        return summary

    return run


@pytest.mark.parametrize(
    ("names", "failing", "final_always", "ran_expected", "final", "ok"),
    [
        (("a", "b"), set(), False, ["a", "b", "fin"], "ok", True),
        (("a", "b", "c"), {"b"}, False, ["a", "b"], "skipped", False),
        (("a", "b", "c"), {"b"}, True, ["a", "b", "fin"], "ok", False),
        (("a", "b"), {"fin"}, False, ["a", "b", "fin"], "failed", False),
    ],
)
async def test_steps_stop_at_the_first_failure(
    names: tuple[str, ...],
    failing: set[str],
    final_always: bool,
    ran_expected: list[str],
    final: str,
    ok: bool,
) -> None:
    ran: list[str] = []
    doc = parse_steps(steps_doc(*names, final="fin"))
    result = await run_steps(doc, fake_runner(ran, failing), final_always=final_always)
    assert ran == ran_expected
    assert result.final == final
    assert result.ok is ok


async def test_ignored_failures_and_allow_stderr() -> None:
    ran: list[str] = []
    doc = parse_steps(steps_doc("a", "b", ignoreStepFailure=True))
    result = await run_steps(doc, fake_runner(ran, {"a"}))
    assert result.ok
    assert result.ignored == ("a",)
    strict = parse_steps(steps_doc("noisy", "after", allowStdErr=1))
    result = await run_steps(strict, fake_runner(ran := [], set()))
    assert not result.ok
    assert result.error is not None
    assert result.error.code == "STDERR"
    assert ran == ["noisy"]


# -- jobs on the real stub ------------------------------------------------------------------------


async def wait_final(env: AgentEnv, job_id: str, timeout: float = 15) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            ex = await env.cloud.jobs_control(
                "describe-execution", job_id=job_id, thing=env.thing_name
            )
            assert isinstance(ex, dict)
            if ex["status"] in ("SUCCEEDED", "FAILED", "REJECTED"):
                return ex
            await asyncio.sleep(0.1)


def details(ex: dict[str, Any]) -> dict[str, str]:
    found = (ex.get("statusDetails") or {}).get("detailsMap", {})
    assert isinstance(found, dict)
    return found


async def test_steps_jobs_on_the_stub(agent_env: AgentEnv, tmp_path: Path) -> None:
    handlers = tmp_path / "handlers"
    marker = tmp_path / "final-ran"
    write_handler(handlers, "greet.sh", 'echo "hello $2 (as ${1:-agent})"')
    write_handler(handlers, "fail.sh", "echo broken >&2; exit 5")
    write_handler(handlers, "final.sh", f"touch {marker}")
    body = f"""
[commands]
enabled = false

[commands.run_command]
allowed_programs = ["echo", {json.dumps(PYTHON)}]
timeout_s = 5

[jobs]
handler_dir = "handlers"
allowed_handlers = ["greet.sh", "fail.sh", "final.sh"]
"""
    config = agent_env.config(body, system_interval_s=600)
    cmd = {"type": "runCommand", "input": {"command": "echo,step\\, two"}}
    docs = {
        "steps-ok": {
            "version": "1.0",
            "includeStdOut": True,
            "steps": [
                {
                    "action": {
                        "name": "greet",
                        "type": "runHandler",
                        "runAsUser": "pi",
                        "input": {"handler": "greet.sh", "args": ["you"], "path": "default"},
                    }
                },
                {"action": {"name": "two", **cmd}},
            ],
        },
        "steps-fail": {
            "version": "1.0",
            "steps": [
                {
                    "action": {
                        "name": "breaks",
                        "type": "runHandler",
                        "input": {"handler": "fail.sh"},
                    }
                },
                {"action": {"name": "never", **cmd}},
            ],
            "finalStep": {
                "action": {
                    "name": "cleanup",
                    "type": "runHandler",
                    "input": {"handler": "final.sh"},
                }
            },
        },
        "steps-outside": {
            "version": "1.0",
            "steps": [
                {"action": {"name": "first", **cmd}},
                {
                    "action": {
                        "name": "escape",
                        "type": "runHandler",
                        "input": {"handler": "sh", "path": "/bin"},
                    }
                },
            ],
        },
        "classic-handler": {
            "operation": "greet.sh",
            "args": ["classic", "there"],
            "includeStdOut": True,
        },
        "classic-missing": {"operation": "format-disk.sh"},
        "steps-denied": {
            "version": "1.0",
            "steps": [
                {"action": {"name": "rm", "type": "runCommand", "input": {"command": "rm,-rf,/"}}}
            ],
        },
    }
    async with running_agent(config):
        for job_id, doc in docs.items():
            await agent_env.cloud.jobs_control(
                "create", job_id=job_id, things=[agent_env.thing_name], document=doc
            )
        results = {job_id: await wait_final(agent_env, job_id) for job_id in docs}

    ok = results["steps-ok"]
    assert ok["status"] == "SUCCEEDED", ok
    assert details(ok)["steps"] == "2/2"
    assert details(ok)["stdout"] == "step, two"

    failed = results["steps-fail"]
    assert failed["status"] == "FAILED"
    got = details(failed)
    assert got["failed_step"] == "breaks"
    assert got["code"] == "EXIT_STATUS"
    assert got["exit_code"] == "5"
    assert got["stderr"] == "broken"
    assert got["steps"] == "1/2"
    assert got["final_step"] == "skipped"  # as the Device Client: finalStep only after success
    assert not marker.exists()

    outside = results["steps-outside"]
    assert outside["status"] == "REJECTED"
    assert "handlers only run from jobs.handler_dir" in details(outside)["reason"]

    classic = results["classic-handler"]
    assert classic["status"] == "SUCCEEDED", classic
    assert details(classic)["stdout"] == "hello there (as classic)"
    missing = results["classic-missing"]
    assert missing["status"] == "REJECTED"
    assert details(missing)["code"] == "NOT_ALLOWED"  # allowed_handlers is checked first

    denied = results["steps-denied"]
    assert denied["status"] == "REJECTED"
    assert details(denied)["code"] == "NOT_ALLOWED"
