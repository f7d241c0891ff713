"""The AWS IoT Commands scheme in the agent (``commands.schemes = ["simple", "aws"]``).

Off by default; when listed, commands started with the stub's control plane
(``start-execution``) reach the same allow-listed handlers as the simple ``cmd/`` scheme.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent import parse_config
from tests.commands.conftest import create_command, start, wait_status
from tests.edge_agent.conftest import PYTHON, AgentEnv, running_agent

TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT")


def test_aws_scheme_is_off_by_default(tmp_path: Path) -> None:
    config = parse_config(
        {
            "state_dir": "s",
            "endpoint": {"host": "example-ats.iot.eu-west-1.amazonaws.com"},
            "identity": {"cert_file": "d.pem", "key_file": "d.key"},
        },
        base_dir=tmp_path,
    )
    assert config.commands.schemes == ["simple"]


async def test_aws_commands_reach_the_allow_listed_handlers(agent_env: AgentEnv) -> None:
    cloud, thing = agent_env.cloud, agent_env.thing_name
    body = f"""
[commands]
schemes = ["simple", "aws"]
allow = ["report-status", "run-command"]

[commands.run_command]
allowed_programs = [{json.dumps(PYTHON)}]
timeout_s = 5

[jobs]
enabled = false
"""
    config = agent_env.config(body, system_interval_s=600)
    await create_command(cloud, "report-status", {"name": "report-status"})
    await create_command(
        cloud, "run-command", {"name": "run-command", "args": {"command": ["rm", "-rf", "/x"]}}
    )
    await create_command(cloud, "reboot", {"name": "reboot"})
    async with running_agent(config) as agent:
        status = await wait_status(
            cloud, await start(cloud, "report-status", thing), thing, TERMINAL
        )
        denied = await wait_status(cloud, await start(cloud, "run-command", thing), thing, TERMINAL)
        blocked = await wait_status(cloud, await start(cloud, "reboot", thing), thing, TERMINAL)
        counted = dict(agent.stats.commands)
    assert status["status"] == "SUCCEEDED", status
    assert status["result"]["firmware_version"] == {"S": "fw-1.0"}
    assert denied["status"] == "REJECTED"
    assert denied["statusReason"]["reasonCode"] == "NOT_ALLOWED"
    assert blocked["status"] == "REJECTED"
    assert blocked["statusReason"]["reasonCode"] == "COMMAND_NOT_ALLOWED"
    assert counted.get("SUCCEEDED") == 1
