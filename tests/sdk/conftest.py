"""Fixtures for device_sdk tests: a real mosquitto with mutual TLS on a free loopback port.

The ``broker`` fixture yields an object with ``.endpoint``, ``.make_identity(thing_name)``,
``.stop()`` and ``.start()`` (same port, persistent sessions survive the restart). It is meant
to be swapped for the project's local IoT Core stub fixture later.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from device_sdk import DeviceIdentity, Endpoint
from device_sdk.transport import TransportKind
from tests.sdk._pki import LocalPki

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

# Everything is allowed except one prefix, so tests can provoke PUBACK 0x87.
_ACL = """\
pattern deny denied/#
pattern readwrite #
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoBroker:
    """A mosquitto process with ``require_certificate`` and ``use_identity_as_username``."""

    def __init__(self, root: Path, ca: LocalPki) -> None:
        self.root = root
        self.ca = ca
        self.port = _free_port()
        self.ca_file = root / "ca.pem"
        self.ca_file.write_bytes(ca.cert_pem)
        server = ca.server()
        (root / "server.pem").write_bytes(server.cert_pem)
        (root / "server.key").write_bytes(server.key_pem)
        (root / "acl").write_text(_ACL)
        (root / "data").mkdir()
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            f"""\
per_listener_settings false
user {getpass.getuser()}
listener {self.port} 127.0.0.1
cafile {self.ca_file}
certfile {root / "server.pem"}
keyfile {root / "server.key"}
require_certificate true
use_identity_as_username true
acl_file {root / "acl"}
persistence true
persistence_location {root / "data"}/
max_queued_messages 10000
log_dest file {root / "mosquitto.log"}
log_type error
log_type warning
log_type notice
"""
        )
        self.endpoint = Endpoint("127.0.0.1", self.port, self.ca_file)
        self._proc: subprocess.Popen[bytes] | None = None
        self._identities: dict[str, DeviceIdentity] = {}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start mosquitto and wait until it accepts TCP connections."""
        if self.running:
            return
        with (self.root / "mosquitto.out").open("ab") as out:
            self._proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = (self.root / "mosquitto.out").read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited: {log[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        """Stop mosquitto gracefully (SIGTERM: persistent sessions are saved)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _write_device(self, thing_name: str) -> tuple[Path, Path]:
        cert = self.root / f"{thing_name}.pem"
        key = self.root / f"{thing_name}.key"
        if not cert.exists():
            issued = self.ca.device(thing_name)
            cert.write_bytes(issued.cert_pem)
            key.write_bytes(issued.key_pem)
            key.chmod(0o600)
        return cert, key

    def make_identity(self, thing_name: str) -> DeviceIdentity:
        """A device identity (certificate files signed by the broker's CA)."""
        if thing_name not in self._identities:
            cert, key = self._write_device(thing_name)
            self._identities[thing_name] = DeviceIdentity.from_files(cert, key, self.ca_file)
        return self._identities[thing_name]

    def ssl_context(self, thing_name: str) -> ssl.SSLContext:
        """A client SSL context for an independent (non-SDK) MQTT client."""
        cert, key = self._write_device(thing_name)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(cert), str(key))
        return ctx


@pytest.fixture(scope="session")
def pki() -> LocalPki:
    return LocalPki()


@pytest.fixture
def broker(tmp_path: Path, pki: LocalPki) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(tmp_path, pki)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(params=["crt", "paho", "native"])
def transport_kind(request: pytest.FixtureRequest) -> TransportKind:
    kind = request.param
    assert kind in ("crt", "paho", "native")
    return cast("TransportKind", kind)
