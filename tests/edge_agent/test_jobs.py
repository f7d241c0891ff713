"""Jobs in the Device Client's document style: run-command, download-file, and a reboot job that
completes after the agent restarts (the reboot command is a no-op; the restart is a new agent).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from cloud_stubs import LocalIoTCore
from edge_agent import Agent
from edge_agent._tasks import start
from tests.edge_agent.conftest import PYTHON, AgentEnv, running_agent

CONFIG = f"""
[commands]
enabled = false

[commands.run_command]
allowed_programs = ["echo", {json.dumps(PYTHON)}]
timeout_s = 5

[jobs]
reboot_command = ["true"]
"""


async def execution(cloud: LocalIoTCore, job_id: str, thing: str) -> dict[str, Any]:
    result = await cloud.jobs_control("describe-execution", job_id=job_id, thing=thing)
    assert isinstance(result, dict)
    return result


async def wait_status(
    cloud: LocalIoTCore, job_id: str, thing: str, statuses: set[str], timeout: float = 15
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            ex = await execution(cloud, job_id, thing)
            if ex["status"] in statuses:
                return ex
            await asyncio.sleep(0.1)


def details(ex: dict[str, Any]) -> dict[str, str]:
    found = ex.get("statusDetails", {}).get("detailsMap", {})
    assert isinstance(found, dict)
    return found


async def test_run_command_and_download_jobs(agent_env: AgentEnv, tmp_path: Path):
    cloud, thing = agent_env.cloud, agent_env.thing_name
    config = agent_env.config(CONFIG, system_interval_s=600)
    source = tmp_path / "payload.bin"
    source.write_bytes(b"firmware" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    async with running_agent(config) as agent:
        docs = {
            "echo": {"operation": "run-command", "command": "echo,hi", "includeStdOut": True},
            "fails": {"operation": "run-command", "args": [PYTHON, "-c", "exit(4)"]},
            "denied": {"operation": "run-command", "args": ["rm", "-rf", "/"]},
            "stderr": {
                "operation": "run-command",
                "args": [PYTHON, "-c", "import sys; sys.stderr.write('a\\nb\\n')"],
                "allowStdErr": 1,
            },
            "fetch": {
                "operation": "download-file",
                "args": [source.as_uri(), "fw/payload.bin"],
                "sha256": digest,
            },
            "unknown": {"operation": "format-disk"},
        }
        for job_id, doc in docs.items():
            await cloud.jobs_control("create", job_id=job_id, things=[thing], document=doc)
        final = {"SUCCEEDED", "FAILED", "REJECTED"}
        results = {j: await wait_status(cloud, j, thing, final) for j in docs}
        assert results["echo"]["status"] == "SUCCEEDED"
        assert details(results["echo"])["stdout"] == "hi"  # control characters are dropped
        assert results["fails"]["status"] == "FAILED"
        assert details(results["fails"])["code"] == "EXIT_STATUS"
        assert results["denied"]["status"] == "REJECTED"
        assert results["stderr"]["status"] == "FAILED"
        assert results["fetch"]["status"] == "SUCCEEDED"
        downloaded = agent_env.state_dir / "downloads" / "fw" / "payload.bin"
        assert downloaded.read_bytes() == source.read_bytes()
        assert details(results["fetch"])["sha256"] == digest
        assert results["unknown"]["status"] == "REJECTED"
        await asyncio.sleep(0.2)
        assert agent.stats.jobs["SUCCEEDED"] == 2


async def test_reboot_job_reports_after_restart(agent_env: AgentEnv):
    cloud, thing = agent_env.cloud, agent_env.thing_name
    config = agent_env.config(CONFIG, system_interval_s=600)
    agent = Agent(config)
    async with asyncio.TaskGroup() as tg:
        task = await asyncio.wait_for(start(tg, agent.run, name="agent"), 20)
        await cloud.jobs_control(
            "create", job_id="reboot-1", things=[thing], document={"operation": "reboot"}
        )
        # The agent journals the request, reports IN_PROGRESS, runs the (no-op) reboot
        # command and stops by itself, as a rebooting device would.
        await asyncio.wait_for(task, 20)
    assert agent.exit_reason == "reboot for job reboot-1"
    ex = await execution(cloud, "reboot-1", thing)
    assert ex["status"] == "IN_PROGRESS"
    journal = json.loads((agent_env.state_dir / "jobs.journal").read_text())
    assert journal["phase"] == "reboot-requested"

    async with running_agent(config):  # "after the reboot"
        ex = await wait_status(cloud, "reboot-1", thing, {"SUCCEEDED", "FAILED"})
    assert ex["status"] == "SUCCEEDED"
    assert not (agent_env.state_dir / "jobs.journal").exists()
