"""Helpers for the mosquitto backend tests: a throw-away PKI, registry/policy files, a running
broker, aiomqtt clients and a tiny raw MQTT client for exact wire-level checks.

Certificates are made with ``cryptography`` directly (expired and foreign-CA ones included);
registry.tsv and policies.tsv are written here in the documented format, independent of the
stub's own writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_stubs._paths import StatePaths
from cloud_stubs.broker._mosquitto import MosquittoBroker, mosquitto_path
from cloud_stubs.broker._plugin_build import plugin_available

# Outside CI a developer without mosquitto gets a skip; in CI (CI=true, where .ci/run installs
# it) a missing broker must fail loudly instead of hiding the mosquitto tests.
requires_mosquitto = pytest.mark.skipif(
    os.environ.get("CI") != "true" and (mosquitto_path() is None or not plugin_available()),
    reason="mosquitto or the headers to build its plugin are not installed",
)

SERVICE_CLIENT = "cloud-stubs-service-test"

# --------------------------------------------------------------------------------------------
# PKI


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


class _CA:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        self.name = _cn(name)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        cn: str,
        *,
        server: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_cn(cn))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=7))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(self.key, hashes.SHA256()), key


@dataclass(frozen=True)
class Identity:
    """A client certificate on disk."""

    name: str
    cert_path: Path
    key_path: Path
    certificate_id: str


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Pki:
    """Stub CA, server certificate and client certificates under a StatePaths layout."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self.ca = _CA("mosquitto test CA")
        _write(paths.ca_cert, self.ca.cert.public_bytes(serialization.Encoding.PEM))
        _write(paths.ca_key, _pem_key(self.ca.key))
        cert, key = self.ca.issue("localhost", server=True)
        _write(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM))
        _write(paths.server_key, _pem_key(key))
        self._foreign: _CA | None = None

    def issue(
        self, name: str, *, cn: str | None = None, expired: bool = False, foreign: bool = False
    ) -> Identity:
        """Issue a client certificate for ``name`` (CN defaults to the name)."""
        ca = self.ca
        if foreign:
            self._foreign = self._foreign or _CA("some other CA")
            ca = self._foreign
        now = dt.datetime.now(dt.UTC)
        if expired:
            cert, key = ca.issue(
                cn or name,
                not_before=now - dt.timedelta(days=10),
                not_after=now - dt.timedelta(days=1),
            )
        else:
            cert, key = ca.issue(cn or name)
        d = self.paths.root / "clients" / name
        cert_path, key_path = d / "cert.pem", d / "key.pem"
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(key_path, _pem_key(key))
        cert_id = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        return Identity(name, cert_path, key_path, cert_id)


# --------------------------------------------------------------------------------------------
# registry.tsv / policies.tsv

THING = "${iot:Connection.Thing.ThingName}"


def device_policy() -> str:
    """Least-privilege device policy (own shadow/jobs/dt/cmd topics) plus the service role."""
    lines = ["# effect\trole\taction\tpattern", f"Allow\tdevice\tconnect\t{THING}"]
    for action in ("publish", "subscribe", "receive"):
        for pattern in (
            f"$aws/things/{THING}/shadow/*",
            f"$aws/things/{THING}/jobs/*",
            f"dt/{THING}/*",
            f"cmd/{THING}/*",
        ):
            lines.append(f"Allow\tdevice\t{action}\t{pattern}")
    lines.append("Deny\tdevice\tpublish\tdt/*/forbidden")
    lines += [f"Allow\tservice\t{a}\t*" for a in ("connect", "publish", "subscribe", "receive")]
    return "\n".join(lines) + "\n"


@dataclass
class Row:
    status: str
    role: str
    thing: str | None


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# environment: state dir + broker


@dataclass
class Env:
    """A running mosquitto with a PKI, a registry and policies written by the test."""

    paths: StatePaths
    pki: Pki
    broker: MosquittoBroker
    rows: dict[str, Row] = field(default_factory=dict)
    service: Identity | None = None

    def write_registry(self) -> None:
        lines = ["# certificate_id\tstatus\trole\tthing_name"]
        for cert_id in sorted(self.rows):
            r = self.rows[cert_id]
            lines.append(f"{cert_id}\t{r.status}\t{r.role}\t{r.thing or '-'}")
        _atomic_write(self.paths.registry_snapshot, "\n".join(lines) + "\n")

    def register(
        self,
        ident: Identity,
        *,
        status: str = "ACTIVE",
        role: str = "device",
        thing: str | None = "",
    ) -> Identity:
        self.rows[ident.certificate_id] = Row(status, role, ident.name if thing == "" else thing)
        self.write_registry()
        return ident

    def device(self, name: str, *, status: str = "ACTIVE") -> Identity:
        return self.register(self.pki.issue(name), status=status)

    def set_status(self, ident: Identity, status: str) -> None:
        self.rows[ident.certificate_id].status = status
        self.write_registry()

    def tls(self, ident: Identity) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.paths.ca_cert))
        ctx.load_cert_chain(str(ident.cert_path), str(ident.key_path))
        return ctx

    def client(
        self,
        ident: Identity,
        client_id: str | None = None,
        *,
        v5: bool = True,
        **kwargs: object,
    ) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=client_id if client_id is not None else ident.name,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            tls_context=self.tls(ident),
            timeout=5,
            **kwargs,  # type: ignore[arg-type]
        )

    def service_client(self, suffix: str = "") -> aiomqtt.Client:
        assert self.service is not None
        return self.client(self.service, SERVICE_CLIENT + suffix)

    async def raw(self, ident: Identity, *, v5: bool = True) -> Raw:
        raw = Raw(v5=v5)
        await raw.open(self.broker.host, self.broker.port, self.tls(ident))
        return raw


@contextlib.asynccontextmanager
async def broker_env(
    tmp_path: Path, *, policy: str | None = None, **broker_options: Any
) -> AsyncIterator[Env]:
    """State dir with PKI + service identity + device policy, and a running broker."""
    paths = StatePaths.at(tmp_path / "state")
    pki = Pki(paths)
    _atomic_write(paths.policy_file, policy if policy is not None else device_policy())
    env = Env(paths, pki, MosquittoBroker(paths, **broker_options))
    env.service = env.register(pki.issue("service"), role="service", thing=None)
    async with env.broker:
        yield env


# --------------------------------------------------------------------------------------------
# raw MQTT (just enough of MQTT 3.1.1 / 5 to see the exact packets the broker sends)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


@dataclass(frozen=True)
class Packet:
    kind: int  # high nibble of the fixed header
    flags: int
    body: bytes


class Raw:
    """A minimal MQTT client over TLS, for asserting reason codes and hang-ups."""

    def __init__(self, *, v5: bool) -> None:
        self.v5 = v5
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._mid = 0
        self.session_present = False

    async def open(self, host: str, port: int, tls: ssl.SSLContext) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls), timeout=5
        )

    def _send(self, first: int, body: bytes) -> None:
        assert self._writer is not None
        self._writer.write(bytes([first]) + _varint(len(body)) + body)

    def _props(self) -> bytes:
        return b"\x00" if self.v5 else b""

    async def read(self, timeout: float = 5.0) -> Packet | None:
        """Next packet, or None on EOF / connection reset."""
        assert self._reader is not None
        try:
            head = await asyncio.wait_for(self._reader.readexactly(1), timeout)
            length, mult = 0, 1
            while True:
                b = (await asyncio.wait_for(self._reader.readexactly(1), timeout))[0]
                length += (b & 0x7F) * mult
                mult *= 128
                if not b & 0x80:
                    break
            body = await asyncio.wait_for(self._reader.readexactly(length), timeout)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return None
        return Packet(head[0] >> 4, head[0] & 0x0F, body)

    async def connect(
        self,
        client_id: str,
        *,
        keepalive: int = 60,
        clean: bool = True,
        will: tuple[str, bytes] | None = None,
        session_expiry: int = 0,
    ) -> Packet | None:
        level = 5 if self.v5 else 4
        flags = (0x02 if clean else 0) | (0x04 | 0x08 if will else 0)  # will at QoS 1
        body = _str("MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive)
        if self.v5:
            props = b"\x11" + struct.pack("!I", session_expiry) if session_expiry else b""
            body += _varint(len(props)) + props
        body += _str(client_id)
        if will:
            body += self._props() + _str(will[0]) + struct.pack("!H", len(will[1])) + will[1]
        self._send(0x10, body)
        return await self.read()

    async def connack_code(self, client_id: str, **kwargs: Any) -> int | None:
        """CONNACK reason/return code, or None when the broker hung up without one."""
        pkt = await self.connect(client_id, **kwargs)
        if pkt is None:
            return None
        assert pkt.kind == 2, pkt
        self.session_present = bool(pkt.body[0] & 1)
        return pkt.body[1]

    def _next_mid(self) -> int:
        self._mid = self._mid % 65535 + 1
        return self._mid

    async def subscribe(self, topic_filter: str, qos: int = 1) -> int | None:
        """SUBACK code for one filter, or None on hang-up."""
        mid = self._next_mid()
        self._send(0x82, struct.pack("!H", mid) + self._props() + _str(topic_filter) + bytes([qos]))
        while True:
            pkt = await self.read()
            if pkt is None:
                return None
            if pkt.kind == 9:  # SUBACK
                pos = 2
                if self.v5:
                    pos += 1 + pkt.body[2]  # property length (small) + properties
                return pkt.body[pos]

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> int | None:
        """PUBACK reason code (0 when absent), or None on hang-up. QoS 0 returns 0."""
        first = 0x30 | (qos << 1)
        body = _str(topic)
        mid = 0
        if qos:
            mid = self._next_mid()
            body += struct.pack("!H", mid)
        body += self._props() + payload
        self._send(first, body)
        if not qos:
            return 0
        while True:
            pkt = await self.read()
            if pkt is None:
                return None
            if pkt.kind == 4 and struct.unpack("!H", pkt.body[:2])[0] == mid:  # PUBACK
                return pkt.body[2] if len(pkt.body) > 2 else 0

    async def next_publish(self, timeout: float = 5.0) -> tuple[str, bytes] | None:
        """Next PUBLISH (acknowledged if QoS 1) as (topic, payload), or None on hang-up."""
        while True:
            pkt = await self.read(timeout)
            if pkt is None:
                return None
            if pkt.kind != 3:  # PUBLISH
                continue
            (tlen,) = struct.unpack("!H", pkt.body[:2])
            topic = pkt.body[2 : 2 + tlen].decode()
            pos = 2 + tlen
            if (pkt.flags >> 1) & 3:
                self._send(0x40, pkt.body[pos : pos + 2])
                pos += 2
            if self.v5:
                plen, mult = 0, 1
                while True:
                    b = pkt.body[pos]
                    pos += 1
                    plen += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        break
                pos += plen
            return topic, pkt.body[pos:]

    async def disconnect(self) -> None:
        if self._writer is not None:
            self._send(0xE0, b"\x00" if self.v5 else b"")
            await self.close()

    async def closed_by_server(self, timeout: float = 5.0) -> Packet:
        """Read until EOF; return the server's DISCONNECT packet if one came first."""
        disconnect = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pkt = await self.read(timeout=max(0.01, deadline - time.monotonic()))
            if pkt is None:
                return disconnect or Packet(0, 0, b"")
            if pkt.kind == 14:
                disconnect = pkt
        raise AssertionError("the broker did not close the connection")

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


# --------------------------------------------------------------------------------------------
# misc


async def wait_until(predicate: object, timeout: float = 5.0, interval: float = 0.02) -> None:
    """Poll a zero-argument callable until it returns a truthy value."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def next_message(client: aiomqtt.Client, timeout: float = 5.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            return message
    raise AssertionError("unreachable")


def payload_json(message: aiomqtt.Message) -> dict[str, object]:
    assert isinstance(message.payload, bytes | bytearray)
    data = json.loads(message.payload)
    assert isinstance(data, dict)
    return data
