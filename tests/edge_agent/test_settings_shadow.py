"""A telemetry interval set in the settings shadow takes effect and is reported back."""

from __future__ import annotations

import json
from typing import Any

from tests.edge_agent.conftest import AgentEnv, http_get, metric_value, running_agent, subscribed

SHADOW = "edge-agent-config"


async def test_desired_interval_takes_effect_and_is_reported(agent_env: AgentEnv):
    config = agent_env.config(system_interval_s=600)  # one reading at start, then quiet
    thing = agent_env.thing_name
    prefix = f"$aws/things/{thing}/shadow/name/{SHADOW}"
    telemetry = f"dt/{thing}/telemetry/system"
    async with (
        subscribed(agent_env.cloud, f"{prefix}/update/documents") as docs,
        subscribed(agent_env.cloud, telemetry) as readings,
        running_agent(config) as agent,
    ):
        # The agent reports its facts and settings in force.
        def reported(msgs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
            return [m[1]["current"]["state"].get("reported", {}) for m in msgs]

        await docs.wait_for(lambda msgs: any("agent_version" in r for r in reported(msgs)))
        first = next(r for r in reported(docs.messages) if "agent_version" in r)
        assert first["firmware_version"] == "fw-1.0"
        assert first["telemetry"]["system"] == {"interval_s": 600, "enabled": True}
        await readings.wait_for(lambda msgs: len(msgs) >= 1)

        desired = {"state": {"desired": {"telemetry": {"system": {"interval_s": 1}}}}}
        await docs.publish(f"{prefix}/update", desired)

        def interval_reported(msgs):
            return any(
                r.get("telemetry", {}).get("system", {}).get("interval_s") == 1
                for r in reported(msgs)
            )

        await docs.wait_for(interval_reported, timeout=10)
        await readings.wait_for(lambda msgs: len(msgs) >= 3, timeout=10)
        assert agent.health is not None
        _, text = await http_get(agent.health.port, "/metrics")
        assert metric_value(text, 'edge_agent_telemetry_interval_seconds{source="system"}') == 1
        last = docs.messages[-1][1]["current"]
        assert "delta" not in last["state"] or "telemetry" not in last["state"].get("delta", {})

    # The desired settings were persisted: the next start applies them at once.
    store = json.loads((agent_env.state_dir / f"shadow-{SHADOW}.json").read_text())
    assert "interval_s" in json.dumps(store)
    async with running_agent(config) as again:
        assert again.session is not None
        assert again.session.scheduler.settings.telemetry["system"].interval_s == 1
