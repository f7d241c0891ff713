"""The agent as a real process: sd_notify READY=1, status, SIGTERM within 5 s, outbox kept.

Also: a bad configuration fails fast with one line naming key, value and fix, and exit 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.edge_agent.conftest import PYTHON, AgentEnv, Gate, running_agent, subscribed


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


async def notifications(sock: socket.socket, want: str, timeout: float) -> list[str]:
    """Datagrams received on the NOTIFY_SOCKET until one contains ``want``."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while not any(want in s for s in seen):
            seen.append((await loop.sock_recv(sock, 4096)).decode())
    return seen


async def test_sigterm_exits_within_5s_and_keeps_the_outbox(agent_env: AgentEnv, tmp_path: Path):
    gate = Gate(agent_env.cloud.broker.port)
    port = await gate.start()
    endpoint = tmp_path / "endpoint-gate.json"
    endpoint.write_text(
        json.dumps(
            {"host": "127.0.0.1", "port": port, "ca_file": str(agent_env.cloud.paths.ca_cert)}
        )
    )
    config_file = agent_env.write_config(system_interval_s=1, endpoint_file=endpoint)
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.setblocking(False)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "edge_agent",
        "run",
        "--config",
        str(config_file),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        seen = await notifications(sock, "READY=1", timeout=20)
        assert any("STATUS=connected as" in s for s in seen)

        status = await asyncio.to_thread(cli, "status", "--config", str(config_file), "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        doc = json.loads(status.stdout)
        assert doc["running"] is True
        assert doc["pid"] == proc.pid
        assert doc["health"]["state"] == "connected"

        # The network goes away: readings pile up in the outbox.
        gate.open = False
        await gate.close_connections()
        await asyncio.sleep(3)

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 10)
        elapsed = time.monotonic() - started
        seen = await notifications(sock, "STOPPING=1", timeout=1)
        assert rc == 0
        assert elapsed < 5.0, f"took {elapsed:.2f} s to stop"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        stderr = (await proc.stderr.read()).decode()
        sock.close()
    assert "edge agent stopped" in stderr

    stopped = await asyncio.to_thread(cli, "status", "--config", str(config_file))
    assert stopped.returncode == 3
    assert "not running" in stopped.stdout

    # The next start (network back) finds the readings on disk and sends them.
    gate.open = True
    config = agent_env.config(system_interval_s=600, endpoint_file=endpoint)
    topic = f"dt/{agent_env.thing_name}/telemetry/system"
    try:
        async with subscribed(agent_env.cloud, topic) as sub, running_agent(config) as agent:
            assert agent.session is not None
            recovered = agent.session.device.outbox_statistics().recovered
            assert recovered >= 2
            await sub.wait_for(lambda msgs: len(msgs) >= recovered)
    finally:
        await gate.close()


def test_bad_config_fails_fast_with_one_line_and_exit_2(tmp_path: Path):
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[endpoint]
host = "example-ats.iot.eu-west-1.amazonaws.com"
[identity]
cert_file = "device.pem"
key_file = "device.key"
[telemetry.system]
interval_s = 0
"""
    )
    started = time.monotonic()
    result = cli("run", "--config", str(config))
    assert time.monotonic() - started < 10
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert "telemetry.system.interval_s = 0" in line
    assert "fix:" in line
    assert ">= 1" in line


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("state_dir = 1\n", "state_dir = 1: "),
        ('state_dir = "s"\n[transport]\nmode = "ipc"\n', 'transport.mode = "ipc"'),
        ('state_dir = "s"\n[telemetry]\nsytem = {}\n', "telemetry.sytem"),
        ("state_dir = [", "not valid TOML"),
        ('state_dir = "s"\n', "[endpoint] is missing; fix:"),
    ],
)
def test_check_config_messages(tmp_path: Path, body: str, expected: str):
    config = tmp_path / "agent.toml"
    config.write_text(body)
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert result.stderr.startswith(f"edge-agent: {config}: ")


def test_missing_config_file(tmp_path: Path):
    result = cli("check-config", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "cannot read the configuration file" in result.stderr
    assert "fix:" in result.stderr


def test_check_config_ok(agent_env: AgentEnv):
    config = agent_env.write_config()
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "ok (mqtt; telemetry: system every 1s)" in result.stdout
