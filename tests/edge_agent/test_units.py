"""Unit tests of the agent's pure parts: config errors, /proc parsing, settings, sd_notify, ..."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from device_sdk import LatencyHistogram
from edge_agent import ConfigError, load_config, parse_config
from edge_agent._actions import ActionError, parse_command_line
from edge_agent._errors import AlreadyRunningError
from edge_agent._health import MetricsWriter
from edge_agent._lock import InstanceLock, lock_is_held, read_lock_owner
from edge_agent._process import run_program
from edge_agent._settings import RuntimeSettings, SourceSettings
from edge_agent._sources import SourceError, parse_output
from edge_agent._sysinfo import CpuSampler, cpu_temperature_c, system_snapshot
from edge_agent._systemd import SystemdNotifier

BASE: dict[str, Any] = {
    "state_dir": "state",
    "endpoint": {"host": "example-ats.iot.eu-west-1.amazonaws.com"},
    "identity": {"cert_file": "d.pem", "key_file": "d.key"},
}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("/etc/edge-agent"))
    return info.value.problems


def test_config_defaults_and_relative_paths():
    config = parse_config(BASE, base_dir=Path("/etc/edge-agent"))
    assert config.state_dir == Path("/etc/edge-agent/state")
    assert config.identity is not None
    assert config.identity.cert_file == Path("/etc/edge-agent/d.pem")
    assert config.health.host == "127.0.0.1"
    assert config.telemetry.system.interval_s == 60
    assert config.commands.allow == ["report-status"]
    assert config.outbox_file == Path("/etc/edge-agent/state/outbox.db")


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"telemetry": {"system": {"interval_s": 0.5}}}, "telemetry.system.interval_s = 0.5"),
        ({"transport": {"kind": "mqtt5"}}, "use one of 'auto', 'crt', 'paho' or 'native'"),
        ({"health": {"port": 70000}}, "health.port = 70000"),
        ({"commands": {"allow": ["rm-rf"]}}, 'commands.allow[0] = "rm-rf"'),
        ({"logging": {"lvl": "debug"}}, "logging.lvl"),
        ({"telemetry": {"command": [{"name": "system", "argv": ["x"]}]}}, "'system'"),
        ({"telemetry": {"command": [{"name": "a b", "argv": ["x"]}]}}, "telemetry.command[0].name"),
        (
            {
                "telemetry": {
                    "command": [{"name": "a", "argv": ["x"]}, {"name": "a", "argv": ["y"]}]
                }
            },
            "used twice",
        ),
        ({"transport": {"reconnect_base_s": 10, "reconnect_cap_s": 5}}, "reconnect_cap_s"),
    ],
)
def test_config_problems_name_key_value_and_fix(patch: dict[str, Any], expected: str):
    found = problems({**BASE, **patch})
    assert len(found) == 1, found
    assert expected in found[0], found[0]
    assert "fix:" in found[0], found[0]
    assert "\n" not in found[0]


def test_config_missing_sections():
    assert "[endpoint] is missing; fix:" in problems({"state_dir": "s"})[0]
    found = problems({**BASE, "endpoint": {}})
    assert "exactly one of endpoint.file" in found[0]
    assert problems({"endpoint": BASE["endpoint"], "identity": BASE["identity"]}) == [
        "state_dir is missing; fix: add state_dir = ..."
    ]


def test_greengrass_mode_needs_no_endpoint_or_identity():
    config = parse_config(
        {"state_dir": "s", "transport": {"mode": "greengrass"}}, base_dir=Path("/x")
    )
    assert config.transport.mode == "greengrass"


def test_settings_apply_desired_and_report():
    defaults = {"system": SourceSettings(60, True), "wifi": SourceSettings(300, True)}
    settings = RuntimeSettings.from_defaults(defaults)
    new, errs = settings.apply_desired(
        {
            "telemetry": {
                "system": {"interval_s": 5},
                "wifi": {"enabled": False},
                "nope": {"interval_s": 3},
            }
        }
    )
    assert errs == ["desired.telemetry.nope: no such source"]
    assert new.telemetry["system"] == SourceSettings(5, True)
    assert new.telemetry["wifi"] == SourceSettings(300, False)
    assert new.reported() == {
        "system": {"interval_s": 5, "enabled": True},
        "wifi": {"interval_s": 300, "enabled": False},
    }
    bad, errs = new.apply_desired({"telemetry": {"system": {"interval_s": 0}}})
    assert bad.telemetry["system"] == SourceSettings(60, True)  # back to the file's value
    assert errs[0].startswith("desired.telemetry.system.interval_s:")
    same, errs = new.apply_desired({"telemetry": "fast"})
    assert same is new
    assert errs


def test_parse_output_formats():
    assert parse_output('{"a": 1}', "json") == {"a": 1}
    assert parse_output("a=1\nb = 2.5\n# c\nname=x\n", "kv") == {"a": 1, "b": 2.5, "name": "x"}
    with pytest.raises(SourceError):
        parse_output("[1]", "json")
    with pytest.raises(SourceError):
        parse_output("garbage", "kv")


def test_parse_command_line():
    assert parse_command_line("echo,hello\\, world") == ["echo", "hello, world"]
    assert parse_command_line(["ls", "-l"]) == ["ls", "-l"]
    with pytest.raises(ActionError):
        parse_command_line("")
    with pytest.raises(ActionError):
        parse_command_line({"cmd": "ls"})


def test_sysinfo_from_fake_proc(tmp_path: Path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    (proc / "meminfo").write_text(
        "MemTotal:        1000 kB\nMemAvailable:     250 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n"
    )
    (proc / "uptime").write_text("123.45 100.00\n")
    (proc / "loadavg").write_text("0.10 0.20 0.30 1/100 42\n")
    thermal = tmp_path / "thermal"
    for i, (kind, milli) in enumerate([("gpu-thermal", 40000), ("cpu-thermal", 51234)]):
        zone = thermal / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{milli}\n")
    sampler = CpuSampler(proc)
    (proc / "stat").write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")
    data = system_snapshot(sampler, [str(tmp_path)], proc=proc, thermal=thermal)
    assert data["cpu_percent"] == 50.0
    assert data["mem_total_bytes"] == 1000 * 1024
    assert data["mem_used_percent"] == 75.0
    assert data["uptime_s"] == 123.45
    assert data["load_1m"] == 0.1
    assert data["cpu_temp_c"] == 51.234
    assert data["disks"][str(tmp_path)]["total_bytes"] > 0
    assert cpu_temperature_c(tmp_path / "none") is None


def test_metrics_writer_groups_families_and_histogram():
    w = MetricsWriter()
    w.gauge("g", 1, "a gauge", {"source": "a"})
    w.counter("c_total", 2, "a counter")
    w.gauge("g", 2.5, "a gauge", {"source": 'b"q'})
    hist = LatencyHistogram()
    hist.record(0.01)
    hist.record(0.5)
    w.histogram("lat_seconds", hist, "latency")
    text = w.text()
    lines = text.splitlines()
    assert lines[:4] == [
        "# HELP g a gauge",
        "# TYPE g gauge",
        'g{source="a"} 1',
        'g{source="b\\"q"} 2.5',
    ]
    assert 'lat_seconds_bucket{le="+Inf"} 2' in lines
    assert "lat_seconds_count 2" in lines
    buckets = [
        int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("lat_seconds_bucket")
    ]
    assert buckets == sorted(buckets)


def test_sd_notify_datagrams(tmp_path: Path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = SystemdNotifier(str(path), watchdog_usec="")
        assert notifier.ready("connected")
        assert sock.recv(1024) == b"READY=1\nSTATUS=connected"
        assert notifier.reloading()
        assert sock.recv(1024).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    abstract = f"@edge-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + abstract[1:])
        assert SystemdNotifier(abstract).stopping()
        assert sock.recv(1024) == b"STOPPING=1\nSTATUS=stopping"
    off = SystemdNotifier("")
    assert not off.enabled
    assert not off.ready("x")
    assert SystemdNotifier("", watchdog_usec="2000000").watchdog_s == 2.0


def test_single_instance_lock(tmp_path: Path):
    path = tmp_path / "agent.lock"
    with InstanceLock(path):
        assert lock_is_held(path)
        assert read_lock_owner(path) == os.getpid()
        with pytest.raises(AlreadyRunningError, match=f"pid {os.getpid()}"):
            InstanceLock(path).acquire()
    assert not lock_is_held(path)
    InstanceLock(path).acquire()  # free again (and released when the process ends)


async def test_run_program_timeout_truncation_and_errors():
    out = await run_program(
        [sys.executable, "-c", "print('x' * 10000)"], timeout_s=10, max_output_bytes=10
    )
    assert out.ok
    assert out.truncated
    assert out.stdout == "x" * 10
    slow = await run_program([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.3)
    assert slow.timed_out
    assert not slow.ok
    assert slow.duration_s < 5
    missing = await run_program(["/nonexistent/program"], timeout_s=1)
    assert missing.error is not None
    assert "cannot start" in missing.error
    bad_user = await run_program(["true"], timeout_s=1, user="no-such-user-edge-agent")
    assert bad_user.error is not None
    await asyncio.sleep(0)


def test_example_configuration_is_valid():
    example = Path(__file__).resolve().parents[2] / "examples" / "agent.toml"
    config = load_config(example)
    assert config.settings_shadow.name == "edge-agent-config"
    assert config.telemetry.command[0].name == "wifi"


def test_examples_systemd_unit_and_greengrass_recipe():
    root = Path(__file__).resolve().parents[2] / "examples"
    unit = (root / "systemd" / "edge-agent.service").read_text()
    assert "Type=notify" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "RestartPreventExitStatus=2" in unit
    recipe = yaml.safe_load((root / "greengrass" / "com.example.EdgeAgent.yaml").read_text())
    assert recipe["ComponentName"] == "com.example.EdgeAgent"
    policies = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
    operations = {op for svc in policies.values() for p in svc.values() for op in p["operations"]}
    assert {
        "aws.greengrass#PublishToIoTCore",
        "aws.greengrass#SubscribeToIoTCore",
        "aws.greengrass#GetThingShadow",
        "aws.greengrass#UpdateThingShadow",
        "aws.greengrass#SubscribeToTopic",
    } <= operations
    assert 'mode = "greengrass"' in recipe["Manifests"][0]["Lifecycle"]["Install"]["Script"]
