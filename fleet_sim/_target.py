"""Where devices connect, and with which identities.

A **local stub** target is a ``cloud_stubs`` state directory. If no stub is running there the
simulator can start one in-process (:func:`start_stub`). Identities are provisioned up front
in bulk from the stub's registry (one transaction, one snapshot write); a device that already
has an active certificate on disk keeps it.

An **AWS IoT Core** target is an endpoint plus a certificate directory laid out like the stub's
``things/`` directory: ``<cert_dir>/<thing>/cert.pem`` and ``key.pem``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from device_sdk import ConnectionOptions, DeviceIdentity, Endpoint
from fleet_sim._errors import TargetError
from fleet_sim._scenario import TargetSpec

__all__ = ["Target", "provision_identities", "resolve_target", "running_stub", "start_stub"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A resolved target: endpoint, transport choice and where identities live.

    Attributes:
        kind: ``stub`` or ``iot_core``.
        endpoint: Host, port and CA file.
        broker: ``mosquitto``, ``embedded`` or ``iot_core``.
        transport: ``crt``, ``paho`` or ``native``.
        mqtt_version: 5, or 3 (MQTT 3.1.1, used on the embedded broker).
        identity_dir: Directory with ``<thing>/cert.pem`` and ``<thing>/key.pem``.
        state_dir: The stub's state directory (stub targets).
    """

    kind: Literal["stub", "iot_core"]
    endpoint: Endpoint
    broker: str
    transport: Literal["crt", "paho", "native"]
    mqtt_version: Literal[3, 5]
    identity_dir: Path
    state_dir: Path | None = None

    def identity(self, thing: str) -> DeviceIdentity:
        """The identity of ``thing`` (no file is read here)."""
        d = self.identity_dir / thing
        return DeviceIdentity.from_files(d / "cert.pem", d / "key.pem", thing_name=thing)

    def options(self) -> ConnectionOptions:
        """Connection options for every device."""
        return ConnectionOptions(mqtt_version=self.mqtt_version)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for reports and worker processes)."""
        return {
            "kind": self.kind,
            "host": self.endpoint.host,
            "port": self.endpoint.port,
            "ca_file": str(self.endpoint.ca_file) if self.endpoint.ca_file else None,
            "alpn": self.endpoint.alpn,
            "broker": self.broker,
            "transport": self.transport,
            "mqtt_version": self.mqtt_version,
            "identity_dir": str(self.identity_dir),
            "state_dir": str(self.state_dir) if self.state_dir else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        """Inverse of :meth:`to_dict`."""
        ca = data.get("ca_file")
        return cls(
            data["kind"],
            Endpoint(data["host"], int(data["port"]), Path(ca) if ca else None, data["alpn"]),
            data["broker"],
            data["transport"],
            data["mqtt_version"],
            Path(data["identity_dir"]),
            Path(data["state_dir"]) if data.get("state_dir") else None,
        )


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def running_stub(state_dir: Path) -> dict[str, Any] | None:
    """``endpoint.json`` of a stub running in ``state_dir`` that accepts connections, or None."""
    try:
        data = json.loads((state_dir / "endpoint.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "port" not in data:
        return None
    pid = data.get("pid")
    if isinstance(pid, int) and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return data if _reachable(str(data.get("host", "127.0.0.1")), int(data["port"])) else None


def _choose_transport(
    spec: TargetSpec, broker: str
) -> tuple[Literal["crt", "paho", "native"], Literal[3, 5]]:
    """``auto`` is the native transport: the least memory and CPU per simulated device."""
    version: Literal[3, 5] = 3 if broker == "embedded" else 5
    if spec.transport in ("auto", "native"):
        return "native", version
    if spec.transport == "paho":
        return "paho", version
    return "crt", 5


def stub_target(spec: TargetSpec, info: dict[str, Any]) -> Target:
    """The target of a running stub described by its ``endpoint.json`` content."""
    broker = str(info.get("broker", "mosquitto"))
    transport, version = _choose_transport(spec, broker)
    state = spec.stub_dir
    ca = Path(str(info["ca_file"]))
    return Target(
        "stub",
        Endpoint(str(info.get("host", "127.0.0.1")), int(info["port"]), ca),
        broker,
        transport,
        version,
        state / "things",
        state,
    )


def resolve_target(spec: TargetSpec) -> Target:
    """Resolve a target that needs no stub start (a running stub, or AWS IoT Core).

    Raises:
        TargetError: No stub runs in the state directory, or the certificate directory or
            CA file is missing.
    """
    if spec.is_stub:
        info = running_stub(spec.stub_dir)
        if info is None:
            raise TargetError(
                f"no local IoT Core is running in {spec.stub_dir}: start one with "
                f"'cloud-stubs up --state-dir {spec.stub_dir}' or allow target.start_stub"
            )
        return stub_target(spec, info)
    assert spec.endpoint is not None  # noqa: S101 - validated by TargetSpec
    assert spec.cert_dir is not None  # noqa: S101
    if not spec.cert_dir.is_dir():
        raise TargetError(f"certificate directory {spec.cert_dir} does not exist")
    if spec.ca_file is not None and not spec.ca_file.is_file():
        raise TargetError(f"CA file {spec.ca_file} does not exist")
    transport, version = _choose_transport(spec, "iot_core")
    return Target(
        "iot_core",
        Endpoint(spec.endpoint, spec.port, spec.ca_file, alpn=spec.port == 443),  # noqa: PLR2004
        "iot_core",
        transport,
        version,
        spec.cert_dir,
    )


def check_identities(target: Target, names: Iterable[str]) -> None:
    """Fail early when a device's certificate or key file is missing.

    Raises:
        TargetError: The first missing file.
    """
    for name in names:
        for leaf in ("cert.pem", "key.pem"):
            path = target.identity_dir / name / leaf
            if not path.is_file():
                raise TargetError(
                    f"{path} is missing: provision {name!r} into {target.identity_dir}"
                )


async def provision_identities(state_dir: Path, names: list[str]) -> int:
    """Register ``names`` in the stub's registry with certificates; return how many were new.

    Things that already have an active certificate on disk keep it.
    """
    from cloud_stubs import ensure_things  # noqa: PLC0415 - only stub targets need cloud_stubs

    issued = await asyncio.to_thread(ensure_things, state_dir, names)
    _log.info("provisioned %d new identities (%d reused)", issued, len(names) - issued)
    return issued


@contextlib.asynccontextmanager
async def start_stub(spec: TargetSpec) -> Any:
    """Run a local IoT Core in this process for the duration of the block; yield its info."""
    from cloud_stubs import LocalIoTCore  # noqa: PLC0415

    core = LocalIoTCore(spec.stub_dir, broker=spec.broker, port=0)
    await core.start()
    try:
        yield core
    finally:
        await core.stop()
