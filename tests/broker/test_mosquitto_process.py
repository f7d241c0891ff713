"""mosquitto backend: process lifecycle, generated configuration, plugin build."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import pytest

from cloud_stubs._errors import BrokerError
from cloud_stubs._paths import StatePaths
from cloud_stubs.broker import _plugin_build
from cloud_stubs.broker._mosquitto import MosquittoBroker, mosquitto_path
from cloud_stubs.broker._plugin_build import PluginBuildError, ensure_plugin, plugin_source
from tests.broker.conftest_mosquitto import (
    Pki,
    Raw,
    broker_env,
    device_policy,
    requires_mosquitto,
)

pytestmark = requires_mosquitto


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def _state(tmp_path: Path) -> StatePaths:
    paths = StatePaths.at(tmp_path / "state")
    Pki(paths)
    paths.broker_dir.mkdir(parents=True)
    paths.policy_file.write_text(device_policy())
    return paths


async def test_stop_leaves_no_process(tmp_path: Path) -> None:
    broker = MosquittoBroker(_state(tmp_path))
    await broker.start()
    pid = broker.pid
    assert pid is not None
    assert _alive(pid)
    assert broker.port > 0
    await broker.stop()
    assert not _alive(pid)
    assert broker.pid is None
    assert not broker.running
    await broker.stop()  # idempotent


async def test_context_manager_restart_and_double_start(tmp_path: Path) -> None:
    paths = _state(tmp_path)
    broker = MosquittoBroker(paths)
    async with broker:
        with pytest.raises(RuntimeError, match="already running"):
            await broker.start()
        first = broker.pid
    assert first is not None
    assert not _alive(first)
    async with broker:  # reusable after stop
        assert broker.pid != first
        assert broker.running


async def test_generated_config(tmp_path: Path) -> None:
    async with broker_env(tmp_path) as env:
        conf = env.broker.config_path.read_text()
    lines = set(conf.splitlines())
    assert "require_certificate true" in lines
    assert "allow_anonymous false" in lines
    assert "per_listener_settings false" in lines
    assert "max_qos 1" in lines
    assert "max_inflight_messages 100" in lines
    assert "max_keepalive 1200" in lines
    assert f"listener {env.broker.port} 127.0.0.1" in lines
    assert f"cafile {env.paths.ca_cert}" in lines
    assert f"plugin_opt_registry {env.paths.registry_snapshot}" in lines
    assert f"plugin_opt_policies {env.paths.policy_file}" in lines
    assert "use_identity_as_username" not in conf  # it would bypass the plugin
    assert env.broker.log_path.is_file()


async def test_explicit_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with MosquittoBroker(_state(tmp_path), port=port) as broker:
        assert broker.port == port
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


async def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        broker = MosquittoBroker(_state(tmp_path), port=port)
        with pytest.raises(BrokerError, match="exited") as info:
            await broker.start()
        assert "mosquitto.log" in str(info.value)
        assert broker.pid is None


async def test_missing_certificates_are_reported(tmp_path: Path) -> None:
    broker = MosquittoBroker(StatePaths.at(tmp_path / "empty"))
    with pytest.raises(BrokerError, match="not initialised"):
        await broker.start()


async def test_reload_requires_a_running_broker(tmp_path: Path) -> None:
    broker = MosquittoBroker(_state(tmp_path))
    with pytest.raises(BrokerError, match="not running"):
        await broker.reload()


async def test_missing_registry_refuses_everyone(tmp_path: Path) -> None:
    paths = StatePaths.at(tmp_path / "state")
    pki = Pki(paths)
    paths.broker_dir.mkdir(parents=True)
    paths.policy_file.write_text(device_policy())
    ident = pki.issue("robot")
    async with MosquittoBroker(paths, persistence=False) as broker:
        assert not paths.registry_snapshot.exists()
        raw = Raw(v5=True)
        tls = ssl.create_default_context(cafile=str(paths.ca_cert))
        tls.load_cert_chain(str(ident.cert_path), str(ident.key_path))
        await raw.open(broker.host, broker.port, tls)
        assert await raw.connack_code("robot") == 0x87
        await raw.close()
        assert "does not exist" in broker.log_path.read_text()
        assert "persistence false" in broker.config_path.read_text()


def test_plugin_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = ensure_plugin()
    assert first.is_file()
    assert first.parent == tmp_path / "cache" / "iot-toolkit"
    mtime = first.stat().st_mtime_ns
    assert ensure_plugin() == first
    assert first.stat().st_mtime_ns == mtime
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp files left


def test_missing_compiler_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    with pytest.raises(PluginBuildError, match="libssl-dev") as info:
        ensure_plugin()
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, BrokerError)
    assert not _plugin_build.plugin_available()


def test_compile_error_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(_plugin_build, "plugin_source", lambda: bad)
    with pytest.raises(PluginBuildError, match="compiling the mosquitto plugin failed"):
        ensure_plugin()
    assert not any((tmp_path / "cache" / "iot-toolkit").iterdir())


def test_plugin_source_is_shipped() -> None:
    assert plugin_source().is_file()
    assert mosquitto_path() is not None
    assert os.access(str(mosquitto_path()), os.X_OK)
