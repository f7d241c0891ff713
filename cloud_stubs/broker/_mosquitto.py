"""The mosquitto backend: a real mosquitto process with the stub's C plugin.

``MosquittoBroker`` writes ``DIR/broker/mosquitto.conf``, starts ``mosquitto -c`` as a child
process and stops it again. Identity, authorization, lifecycle events and the services'
requester identity (the ``x-iot-client-id`` user property on device requests, delivery of
responses carrying ``x-iot-deliver-to`` to that one client) come from the plugin
(``plugin/iotcore_plugin.c``, see the comment block at its top for what it does and where it still
differs from AWS IoT Core), which reads ``DIR/broker/registry.tsv`` and ``DIR/broker/policies.tsv``
and re-reads them when they change, so registry changes apply without a restart.

Generated configuration, and why:

* one TLS listener (``cafile`` = the stub CA, ``require_certificate true``) with **no**
  ``use_identity_as_username``: with it mosquitto skips plugin authentication, and the plugin
  must see every CONNECT to refuse unknown or inactive certificates the way IoT Core does;
* ``allow_anonymous false``, ``max_qos 1``, ``max_inflight_messages 100`` (Receive Maximum),
  ``max_keepalive 1200``, ``max_packet_size`` a little above the 128 KB payload limit (the plugin
  enforces the exact payload limit), ``auto_id_prefix $GEN/``, ``check_retain_source false``;
* TLS 1.2 and 1.3 (mosquitto's default; OpenSSL 3 refuses older versions), like IoT Core;
* ``persistence true`` under ``DIR/broker/`` by default: IoT Core keeps retained messages and
  persistent sessions across its own restarts, and so does the stub across ``cloud-stubs up``
  runs (pass ``persistence=False`` for a clean broker every start).

The process runs in its own session (Ctrl-C in a terminal reaches only the Python side, which then
stops it), gets SIGTERM if the Python process dies (Linux ``PR_SET_PDEATHSIG``), and is killed at
interpreter exit if it is still running.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

from cloud_stubs._errors import BrokerError
from cloud_stubs._paths import StatePaths
from cloud_stubs.broker._plugin_build import ensure_plugin, find_mosquitto

__all__ = ["MosquittoBroker", "mosquitto_path"]

_log = logging.getLogger(__name__)

_READY_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
_RELOAD_TIMEOUT = 5.0
_LOG_ROTATE_BYTES = 16 * 1024 * 1024
#: 128 KB payload plus room for the topic, properties and headers; larger packets are refused
#: by mosquitto itself (disconnect), payloads between are refused by the plugin (disconnect).
_MAX_PACKET_SIZE = 131072 + 8192
_RUNNING_MARK = b" running"
_RELOAD_MARK = b"iotcore: reloading registry and policies"

_live_pids: set[int] = set()


def mosquitto_path() -> str | None:
    """Return the mosquitto executable, or None when it is not installed."""
    return find_mosquitto()


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - runs at interpreter exit
    for pid in list(_live_pids):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    for pid in list(_live_pids):
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    _live_pids.clear()


def _pdeathsig_preexec() -> object:
    """A preexec_fn asking Linux to SIGTERM the child when this process dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return preexec


def _exited(proc: asyncio.subprocess.Process) -> bool:
    return proc.returncode is not None


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_value(path: Path) -> str:
    text = str(path)
    if "\n" in text or "\r" in text:
        raise BrokerError(f"path {text!r} cannot be used in mosquitto.conf")
    return text


class MosquittoBroker:
    """A mosquitto process configured as the stub's IoT Core broker.

    Usage::

        async with MosquittoBroker(StatePaths.at("state")) as broker:
            print(broker.host, broker.port)

    Args:
        paths: The state directory layout (CA, server certificate, broker directory).
        host: Address to listen on.
        port: TCP port; 0 picks a free one at start.
        persistence: Keep retained messages and persistent sessions in
            ``DIR/broker/mosquitto.db`` across restarts.
        mqtt311_connect_refusal: How a refused MQTT 3.1.1 CONNECT looks: ``"hangup"`` closes
            the connection without a CONNACK, as AWS IoT Core does; ``"connack"`` sends CONNACK
            return code 5 (not authorized) first. MQTT 5 always gets CONNACK 0x87.
    """

    name = "mosquitto"

    def __init__(
        self,
        paths: StatePaths,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        persistence: bool = True,
        mqtt311_connect_refusal: Literal["hangup", "connack"] = "hangup",
    ) -> None:
        if mqtt311_connect_refusal not in ("hangup", "connack"):
            raise ValueError("mqtt311_connect_refusal must be 'hangup' or 'connack'")
        self._paths = paths
        self._v311_refusal = mqtt311_connect_refusal
        self._host = host
        self._requested_port = port
        self._port = port
        self._persistence = persistence
        self._proc: asyncio.subprocess.Process | None = None
        self._out: IO[bytes] | None = None
        self._lock = asyncio.Lock()

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """Address the listener is bound to."""
        return self._host

    @property
    def port(self) -> int:
        """Port of the TLS listener (the chosen one once started, when 0 was asked)."""
        return self._port

    @property
    def pid(self) -> int | None:
        """Process id of the running mosquitto, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the mosquitto process is alive."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def config_path(self) -> Path:
        """The generated ``mosquitto.conf``."""
        return self._paths.broker_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """The mosquitto log file (also read by the plugin to learn disconnect reasons)."""
        return self._paths.broker_dir / "mosquitto.log"

    @property
    def _out_path(self) -> Path:
        return self._paths.broker_dir / "mosquitto.out"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the plugin if needed, write the config, start mosquitto, wait until ready.

        Raises:
            BrokerError: mosquitto is missing, the state directory lacks certificates, the plugin
                cannot be built (:class:`~cloud_stubs.broker._plugin_build.PluginBuildError`), or
                mosquitto exited or did not become ready (the message has its log tail).
            RuntimeError: Already started.
        """
        async with self._lock:
            if self._proc is not None:
                raise RuntimeError("MosquittoBroker is already running")
            binary = mosquitto_path()
            if binary is None:
                raise BrokerError(
                    "mosquitto is not installed: 'apt-get install mosquitto mosquitto-dev "
                    "libmosquitto-dev libssl-dev gcc', or use the embedded broker"
                )
            for needed in (self._paths.ca_cert, self._paths.server_cert, self._paths.server_key):
                if not needed.is_file():
                    raise BrokerError(f"missing {needed}: the state directory is not initialised")
            plugin = await asyncio.to_thread(ensure_plugin)
            self._paths.broker_dir.mkdir(parents=True, exist_ok=True)
            self._rotate_log()
            attempts = 1 if self._requested_port else 3
            for attempt in range(attempts):
                self._port = self._requested_port or _free_port(self._host)
                self._write_config(plugin)
                try:
                    await self._launch(binary)
                except BrokerError as exc:
                    if attempt + 1 < attempts and "Address already in use" in str(exc):
                        _log.debug("port %d was taken, retrying", self._port)
                        continue
                    raise
                break
            _log.info("mosquitto (pid %s) listening on %s:%d", self.pid, self._host, self._port)

    async def stop(self) -> None:
        """Stop mosquitto: SIGTERM, wait up to 5 s, then SIGKILL. Idempotent."""
        async with self._lock:
            await self._terminate()

    async def reload(self) -> None:
        """Make the plugin re-read the registry snapshot and policies now (SIGHUP).

        Returns once the plugin has logged the reload (the plugin also notices file changes by
        itself within ~250 ms; this makes it immediate).

        Raises:
            BrokerError: mosquitto is not running or did not confirm the reload.
        """
        async with self._lock:
            proc = self._proc
            if proc is None or proc.returncode is not None:
                raise BrokerError("mosquitto is not running")
            offset = self._log_size()
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + _RELOAD_TIMEOUT
            while time.monotonic() < deadline:
                if _RELOAD_MARK in self._read_log(offset):
                    return
                if _exited(proc):
                    break
                await asyncio.sleep(0.01)
            raise BrokerError(f"mosquitto did not confirm the reload\n{self._log_tail()}")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- internals --------------------------------------------------------------------------

    def _write_config(self, plugin: Path) -> None:
        p = self._paths
        bdir = p.broker_dir
        lines = [
            "# Generated by cloud_stubs at every start; edits are overwritten.",
            "per_listener_settings false",
            "allow_anonymous false",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # mosquitto started as root otherwise switches to user "mosquitto", which cannot
            # read the state directory.
            lines.append("user root")
        if self._persistence:
            lines += [
                "persistence true",
                f"persistence_location {_conf_value(bdir)}/",
                "persistence_file mosquitto.db",
                "autosave_interval 60",
                "persistent_client_expiration 1h",
            ]
        else:
            lines.append("persistence false")
        lines += [
            f"log_dest file {_conf_value(self.log_path)}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp true",
            "connection_messages true",
            "max_inflight_messages 100",
            "max_queued_messages 20000",
            "max_keepalive 1200",
            f"max_packet_size {_MAX_PACKET_SIZE}",
            "check_retain_source false",
            "auto_id_prefix $GEN/",
            "sys_interval 0",
            "set_tcp_nodelay true",
            f"plugin {_conf_value(plugin)}",
            f"plugin_opt_registry {_conf_value(p.registry_snapshot)}",
            f"plugin_opt_policies {_conf_value(p.policy_file)}",
            f"plugin_opt_log {_conf_value(self.log_path)}",
            "plugin_opt_presence true",
            f"plugin_opt_v311_connect_deny {self._v311_refusal}",
            "",
            f"listener {self._port} {self._host}",
            "protocol mqtt",
            f"cafile {_conf_value(p.ca_cert)}",
            f"certfile {_conf_value(p.server_cert)}",
            f"keyfile {_conf_value(p.server_key)}",
            "require_certificate true",
            "max_qos 1",
            "",
        ]
        tmp = self.config_path.with_suffix(".conf.tmp")
        tmp.write_text("\n".join(lines), encoding="utf-8")
        tmp.replace(self.config_path)

    def _rotate_log(self) -> None:
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_suffix(".log.1"))

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _read_log(self, offset: int) -> bytes:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read()
        except OSError:
            return b""

    def _log_tail(self, lines: int = 25) -> str:
        parts: list[str] = []
        for path in (self.log_path, self._out_path):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            tail = text.strip().splitlines()[-lines:]
            if tail:
                parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts) or "(no log output)"

    async def _launch(self, binary: str) -> None:
        offset = self._log_size()
        self._out = self._out_path.open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                binary,
                "-c",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._out,
                stderr=self._out,
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec(),  # type: ignore[arg-type]
            )
        except OSError as exc:
            self._close_out()
            raise BrokerError(f"cannot start {binary}: {exc}") from exc
        self._proc = proc
        _live_pids.add(proc.pid)
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            if proc.returncode is not None:
                break
            # mosquitto opens its listeners before it logs "mosquitto version X running"
            if _RUNNING_MARK in self._read_log(offset):
                return
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        why = (
            f"mosquitto exited with status {proc.returncode}"
            if proc.returncode is not None
            else f"mosquitto did not become ready within {_READY_TIMEOUT:.0f} s"
        )
        await self._terminate()
        raise BrokerError(f"{why} (config {self.config_path})\n{self._log_tail()}")

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), timeout=_STOP_TIMEOUT)
                    except TimeoutError:
                        _log.warning("mosquitto (pid %d) ignored SIGTERM; killing it", proc.pid)
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                        await proc.wait()
            finally:
                _live_pids.discard(proc.pid)
        self._close_out()

    def _close_out(self) -> None:
        out, self._out = self._out, None
        if out is not None:
            out.close()
