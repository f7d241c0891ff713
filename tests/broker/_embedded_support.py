"""Shared helpers of the embedded-broker tests: a real PKI, real TLS, real MQTT clients.

The state directory is built with ``cryptography`` directly (EC P-256, fast), the registry
snapshot with :func:`cloud_stubs._snapshot.write_snapshot` and the policies with
:func:`cloud_stubs._policy.render_statements`, so these tests depend on nothing but the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import ssl
import struct
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_stubs._paths import SERVICE_CLIENT_PREFIX, StatePaths
from cloud_stubs._policy import Role, Statement, default_statements, render_statements
from cloud_stubs._snapshot import SnapshotRow, write_snapshot
from cloud_stubs.broker._embedded import EmbeddedBroker

THINGS = ("T1", "T2", "T3")
TIMEOUT = 5.0


@dataclass(frozen=True)
class Identity:
    """A certificate + key on disk."""

    name: str
    cert: Path
    key: Path
    certificate_id: str


@dataclass
class Pki:
    """A state directory with CA, server, service and device identities."""

    paths: StatePaths
    service: Identity
    things: dict[str, Identity]
    unregistered: Identity
    expired: Identity
    foreign: Identity
    status: dict[str, str] = field(default_factory=dict)
    extra_statements: list[Statement] = field(default_factory=list)

    def rows(self) -> list[SnapshotRow]:
        rows = [SnapshotRow(self.service.certificate_id, "ACTIVE", Role.SERVICE, None)]
        rows += [
            SnapshotRow(i.certificate_id, self.status.get(name, "ACTIVE"), Role.DEVICE, name)
            for name, i in self.things.items()
        ]
        rows.append(SnapshotRow(self.expired.certificate_id, "ACTIVE", Role.DEVICE, "old"))
        return rows

    def write_snapshot(self) -> None:
        write_snapshot(self.paths.registry_snapshot, self.rows())

    def set_status(self, thing: str, status: str) -> None:
        self.status[thing] = status
        self.write_snapshot()

    def write_policies(self, extra: Iterable[Statement] = ()) -> None:
        # Extra (deny) statements go first; order does not matter for evaluation.
        self.extra_statements = list(extra)
        text = render_statements([*self.extra_statements, *default_statements()])
        self.paths.policy_file.write_text(text, encoding="utf-8")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _Ca:
    def __init__(self, cn: str) -> None:
        self.key = _key()
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, cn: str, *, server: bool = False, expired: bool = False
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        start, end = now - dt.timedelta(days=1), now + dt.timedelta(days=30)
        if expired:
            start, end = now - dt.timedelta(days=30), now - dt.timedelta(days=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        return builder.sign(self.key, hashes.SHA256()), key

    def identity(self, directory: Path, cn: str, *, expired: bool = False) -> Identity:
        cert, key = self.issue(cn, expired=expired)
        der = cert.public_bytes(serialization.Encoding.DER)
        cert_file, key_file = directory / "cert.pem", directory / "key.pem"
        _write(cert_file, cert.public_bytes(serialization.Encoding.PEM))
        _write(key_file, _key_pem(key))
        return Identity(cn, cert_file, key_file, hashlib.sha256(der).hexdigest())


def make_pki(root: Path, things: Iterable[str] = THINGS) -> Pki:
    """Create a complete state directory under ``root``."""
    paths = StatePaths.at(root)
    ca = _Ca("test local IoT Core CA")
    _write(paths.ca_cert, ca.cert.public_bytes(serialization.Encoding.PEM))
    _write(paths.ca_key, _key_pem(ca.key))
    server_cert, server_key = ca.issue("localhost", server=True)
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths.server_key, _key_pem(server_key))
    service = ca.identity(paths.service_cert.parent, SERVICE_CLIENT_PREFIX)
    devices = {name: ca.identity(paths.thing_dir(name), name) for name in things}
    unregistered = ca.identity(root / "unregistered", "T9")
    expired = ca.identity(root / "expired", "old", expired=True)
    foreign = _Ca("somebody else's CA").identity(root / "foreign", "T1")
    pki = Pki(paths, service, devices, unregistered, expired, foreign)
    pki.write_snapshot()
    pki.write_policies()
    return pki


# -- clients ------------------------------------------------------------------------------


def client_tls(pki: Pki, ident: Identity) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.paths.ca_cert))
    ctx.load_cert_chain(str(ident.cert), str(ident.key))
    return ctx


def device(
    broker: EmbeddedBroker,
    pki: Pki,
    thing: str,
    *,
    client_id: str | None = None,
    ident: Identity | None = None,
    **kwargs: Any,
) -> aiomqtt.Client:
    """An MQTT 3.1.1 client for ``thing`` (client id = thing name unless said otherwise)."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=thing if client_id is None else client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        tls_context=client_tls(pki, ident or pki.things[thing]),
        timeout=TIMEOUT,
        **kwargs,
    )


def service(broker: EmbeddedBroker, pki: Pki, *, purpose: str = "test") -> aiomqtt.Client:
    """A client with the stub's privileged service identity."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"{SERVICE_CLIENT_PREFIX}-{purpose}-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V311,
        tls_context=client_tls(pki, pki.service),
        timeout=TIMEOUT,
    )


def granted(result: object) -> list[int]:
    """SUBACK return codes from aiomqtt's subscribe() result (ints or paho ReasonCodes)."""
    assert isinstance(result, list | tuple)
    return [r if isinstance(r, int) else int(r.value) for r in result]


async def next_message(client: aiomqtt.Client, timeout: float = TIMEOUT) -> aiomqtt.Message:
    return await asyncio.wait_for(client.messages.__anext__(), timeout)


async def no_message(client: aiomqtt.Client, within: float = 0.3) -> None:
    with contextlib.suppress(TimeoutError):
        msg = await asyncio.wait_for(client.messages.__anext__(), within)
        raise AssertionError(f"unexpected message on {msg.topic}: {msg.payload!r}")


async def messages_until(
    client: aiomqtt.Client, last_topic: str, timeout: float = TIMEOUT
) -> list[aiomqtt.Message]:
    """Collect messages up to and including one on ``last_topic`` (a barrier)."""
    out: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await client.messages.__anext__()
            out.append(msg)
            if msg.topic.value == last_topic:
                return out


async def wait_disconnected(client: aiomqtt.Client, timeout: float = TIMEOUT) -> None:
    """Return once the broker has closed ``client``'s connection."""
    async with asyncio.timeout(timeout):
        try:
            async for msg in client.messages:
                del msg
        except aiomqtt.MqttError:
            return
    raise AssertionError("connection still open")  # pragma: no cover


def presence(msg: aiomqtt.Message) -> dict[str, Any]:
    assert isinstance(msg.payload, bytes)
    data = json.loads(msg.payload)
    assert isinstance(data, dict)
    return data


@contextlib.asynccontextmanager
async def running(pki: Pki) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(pki.paths, port=0) as broker:
        yield broker


# -- raw MQTT 3.1.1 over TLS (for what a client library hides) -----------------------------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(
    client_id: str,
    *,
    keep_alive: int = 60,
    level: int = 4,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    flags = 0x02 | (0x04 if will else 0)  # clean session (+ will, QoS 0)
    body = _utf8("MQTT") + bytes([level, flags]) + struct.pack("!H", keep_alive)
    if level == 5:
        body += b"\x00"
    body += _utf8(client_id)
    if will:
        body += _utf8(will[0]) + struct.pack("!H", len(will[1])) + will[1]
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 1) -> bytes:
    body = _utf8(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _remaining_length(len(body)) + body


@dataclass
class RawConnection:
    reader: asyncio.StreamReader | None
    writer: asyncio.StreamWriter | None
    connack: bytes | None
    error: BaseException | None = None

    def abort(self) -> None:
        assert self.writer is not None
        self.writer.transport.abort()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await self.writer.wait_closed()

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def read_until_closed(self, timeout: float = TIMEOUT) -> bytes:
        """Everything the broker sends until it closes the connection."""
        assert self.reader is not None
        out = bytearray()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await self.reader.read(4096)
                except (OSError, ssl.SSLError):
                    return bytes(out)
                if not chunk:
                    return bytes(out)
                out += chunk

    async def closed_by_peer(self, timeout: float = TIMEOUT) -> bool:
        """True when the broker closes the connection within ``timeout`` (sending nothing)."""
        assert self.reader is not None
        try:
            async with asyncio.timeout(timeout):
                data = await self.reader.read(1)
        except TimeoutError:
            return False
        except (OSError, ssl.SSLError):
            return True
        return data == b""


async def raw_connect(
    broker: EmbeddedBroker,
    ctx: ssl.SSLContext,
    client_id: str,
    *,
    keep_alive: int = 60,
    level: int = 4,
    will: tuple[str, bytes] | None = None,
) -> RawConnection:
    """TLS-connect, send CONNECT, read the CONNACK (None when the connection fails instead)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(broker.host, broker.port, ssl=ctx), TIMEOUT
        )
    except (OSError, ssl.SSLError) as exc:
        return RawConnection(None, None, None, exc)
    try:
        writer.write(connect_packet(client_id, keep_alive=keep_alive, level=level, will=will))
        await writer.drain()
        connack = await asyncio.wait_for(reader.readexactly(4), TIMEOUT)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        conn = RawConnection(reader, writer, None, exc)
        await conn.close()
        return conn
    return RawConnection(reader, writer, connack)
