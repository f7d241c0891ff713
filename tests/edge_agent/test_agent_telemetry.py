"""The agent connects, publishes system metrics through the outbox, and /metrics shows them."""

from __future__ import annotations

import asyncio
import json

from tests.edge_agent.conftest import (
    AgentEnv,
    http_get,
    metric_value,
    running_agent,
    subscribed,
)


async def test_connects_publishes_system_metrics_and_serves_metrics(agent_env: AgentEnv):
    config = agent_env.config(system_interval_s=1)
    topic = f"dt/{agent_env.thing_name}/telemetry/system"
    async with subscribed(agent_env.cloud, topic) as sub, running_agent(config) as agent:
        await sub.wait_for(lambda msgs: len(msgs) >= 2)
        first = sub.messages[0][1]
        assert first["source"] == "system"
        assert [m[1]["seq"] for m in sub.messages[:2]] == [0, 1]
        data = first["data"]
        assert {"mem_total_bytes", "mem_available_bytes", "uptime_s", "disks"} <= data.keys()
        assert agent.health is not None
        status, text = await http_get(agent.health.port, "/metrics")
        assert status == 200
        assert metric_value(text, "edge_agent_connected") == 1
        readings = metric_value(text, 'edge_agent_telemetry_readings_total{source="system"}')
        assert readings is not None
        assert readings >= 2
        assert (
            metric_value(
                text, 'edge_agent_telemetry_value{source="system",field="mem_total_bytes"}'
            )
            == data["mem_total_bytes"]
        )
        assert "edge_agent_publish_latency_seconds_count" in text
        assert metric_value(text, "edge_agent_outbox_depth") is not None
        status, body = await http_get(agent.health.port, "/healthz")
        assert status == 200
        health = json.loads(body)
        assert health["state"] == "connected"
        assert health["thing_name"] == agent_env.thing_name
        status, _ = await http_get(agent.health.port, "/nope")
        assert status == 404


async def test_reload_applies_a_new_configuration_and_keeps_a_bad_one_out(agent_env: AgentEnv):
    config = agent_env.config(system_interval_s=600)
    async with running_agent(config) as agent:
        assert agent.session is not None
        first = agent.session
        agent_env.write_config(system_interval_s=7)
        agent.request_reload()
        async with asyncio.timeout(15):
            while agent.session is None or agent.session is first:
                await asyncio.sleep(0.05)
            await agent.session.device.wait_connected()
        assert agent.config.telemetry.system.interval_s == 7
        second = agent.session
        agent_env.config_file.write_text("state_dir = [")  # broken: refused, agent keeps going
        agent.request_reload()
        async with asyncio.timeout(15):
            while agent.session is None or agent.session is second:
                await asyncio.sleep(0.05)
        assert agent.config.telemetry.system.interval_s == 7
