"""Commands on cmd/<thing>/request/<name>: allow-list, run-command with timeout and truncation."""

from __future__ import annotations

import uuid
from typing import Any

from tests.edge_agent.conftest import PYTHON, AgentEnv, Subscriber, running_agent, subscribed

CONFIG = f"""
[commands]
schemes = ["simple"]
allow = ["run-command", "report-status"]

[commands.run_command]
allowed_programs = ["echo", {PYTHON!r}]
timeout_s = 3
max_output_bytes = 100
""".replace("'", '"')


async def call(sub: Subscriber, thing: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    cid = uuid.uuid4().hex
    await sub.publish(f"cmd/{thing}/request/{name}", {"correlationId": cid, "args": args})

    def answered(msgs: list[tuple[str, dict[str, Any]]]) -> bool:
        return any(body.get("correlationId") == cid for _, body in msgs)

    await sub.wait_for(answered, timeout=15)
    return next(body for _, body in sub.messages if body.get("correlationId") == cid)


async def test_allow_list_and_run_command(agent_env: AgentEnv):
    config = agent_env.config(CONFIG, system_interval_s=600)
    thing = agent_env.thing_name
    async with (
        subscribed(agent_env.cloud, f"cmd/{thing}/response/+") as sub,
        running_agent(config) as agent,
    ):
        ok = await call(sub, thing, "run-command", {"command": "echo,hello\\, world"})
        assert ok["status"] == "SUCCEEDED", ok
        assert ok["result"]["stdout"] == "hello, world\n"
        assert ok["result"]["exit_code"] == 0

        refused = await call(sub, thing, "reboot", {})
        assert refused["status"] == "REJECTED"
        assert refused["reason"]["code"] == "COMMAND_NOT_ALLOWED"

        not_listed = await call(sub, thing, "run-command", {"command": ["rm", "-rf", "/tmp/x"]})
        assert not_listed["status"] == "REJECTED"
        assert not_listed["reason"]["code"] == "NOT_ALLOWED"

        long_output = await call(
            sub, thing, "run-command", {"command": [PYTHON, "-c", "print('x' * 5000)"]}
        )
        assert long_output["status"] == "SUCCEEDED"
        assert long_output["result"]["truncated"] is True
        assert len(long_output["result"]["stdout"]) == 100

        slow = await call(
            sub,
            thing,
            "run-command",
            {"command": [PYTHON, "-c", "import time; time.sleep(30)"], "timeout_s": 0.5},
        )
        assert slow["status"] == "FAILED"
        assert slow["reason"]["code"] == "TIMEOUT"

        failing = await call(sub, thing, "run-command", {"command": [PYTHON, "-c", "exit(3)"]})
        assert failing["status"] == "FAILED"
        assert failing["reason"]["code"] == "EXIT_STATUS"

        status = await call(sub, thing, "report-status", {})
        assert status["status"] == "SUCCEEDED"
        assert status["result"]["firmware_version"] == "fw-1.0"
        assert agent.stats.commands["SUCCEEDED"] >= 3
        assert agent.stats.commands["REJECTED"] == 2
