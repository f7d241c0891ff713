"""Who the device is (:class:`DeviceIdentity`) and where it connects (:class:`Endpoint`).

Each credential source has its own named factory; the credentials themselves are frozen
values handed to the transport, which builds its TLS context from them.
"""

from __future__ import annotations

import dataclasses
import ssl
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Self

import pydantic

if TYPE_CHECKING:
    from os import PathLike

__all__ = [
    "DeviceIdentity",
    "Endpoint",
    "FileCredentials",
    "PemCredentials",
    "Pkcs11Credentials",
]

MAX_CLIENT_ID_BYTES = 128
DEFAULT_MQTT_PORT = 8883


@dataclasses.dataclass(frozen=True, slots=True)
class FileCredentials:
    """Certificate and private key as PEM files on disk."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class PemCredentials:
    """Certificate and private key as PEM bytes in memory (the key is not shown in ``repr``)."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None = None

    def __repr__(self) -> str:
        return f"PemCredentials(cert_pem=<{len(self.cert_pem)} bytes>, key_pem=<hidden>)"


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class Pkcs11Credentials:
    """A private key held by a PKCS#11 token (HSM, TPM, smart card); CRT transport only."""

    lib: Path
    slot: int | None
    pin: str | None
    token_label: str | None
    key_label: str | None
    cert_file: Path

    def __repr__(self) -> str:
        return (
            f"Pkcs11Credentials(lib={str(self.lib)!r}, slot={self.slot!r}, "
            f"token_label={self.token_label!r}, key_label={self.key_label!r}, pin=<hidden>)"
        )


Credentials = FileCredentials | PemCredentials | Pkcs11Credentials


def _common_name(cert_pem: bytes, path: Path | None = None) -> str:
    """The subject CN of a PEM certificate (the default thing name).

    Read with the ``ssl`` module's certificate decoder when it is available (CPython's
    ``_ssl._test_decode_cert``, present since Python 3.4), because importing
    ``cryptography.x509`` costs ~10 MB of RSS that a daemon never needs otherwise
    (edge_agent's idle footprint); ``cryptography`` is the fallback.
    """
    decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]  # noqa: SLF001
    if decode is not None:
        try:
            if path is not None:
                decoded = decode(str(path))
            else:
                with tempfile.TemporaryDirectory(prefix="device_sdk-") as tmp:
                    file = Path(tmp) / "cert.pem"
                    file.write_bytes(cert_pem)
                    decoded = decode(str(file))
        except (OSError, ssl.SSLError):
            decoded = None  # not PEM the ssl module can read: let cryptography explain
        if isinstance(decoded, dict):
            for rdn in decoded.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return str(value)
            raise ValueError("the certificate has no subject CN; pass thing_name= explicitly")
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ValueError("the certificate has no subject CN; pass thing_name= explicitly")
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


def _validate_client_id(client_id: str) -> None:
    size = len(client_id.encode())
    if not 0 < size <= MAX_CLIENT_ID_BYTES:
        raise ValueError(f"client id must be 1..{MAX_CLIENT_ID_BYTES} UTF-8 bytes, got {size}")
    if client_id.startswith("$"):
        raise ValueError(f"client id {client_id!r}: the '$' prefix is reserved for AWS")


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device's X.509 identity plus the thing name and MQTT client id it uses.

    Build it with :meth:`from_files`, :meth:`from_pem` or :meth:`from_pkcs11`. The thing name
    defaults to the certificate's subject CN and the client id to the thing name, which is
    what IoT Core policies keyed on ``iot:Connection.Thing.ThingName`` expect.
    """

    credentials: Credentials
    thing_name: str
    client_id: str

    def __post_init__(self) -> None:
        if not self.thing_name:
            raise ValueError("thing_name must not be empty")
        _validate_client_id(self.client_id)

    @classmethod
    def from_files(
        cls,
        cert: str | PathLike[str],
        key: str | PathLike[str],
        ca: str | PathLike[str] | None = None,
        *,
        thing_name: str | None = None,
        client_id: str | None = None,
    ) -> Self:
        """Identity from a PEM certificate file and a PEM private-key file.

        Reads the certificate once (to find its CN), so call it at start-up, not on a hot path.
        """
        cert_path = Path(cert)
        name = thing_name or _common_name(cert_path.read_bytes(), cert_path)
        creds = FileCredentials(cert_path, Path(key), Path(ca) if ca is not None else None)
        return cls(creds, name, client_id or name)

    @classmethod
    def from_pem(
        cls,
        cert_pem: bytes | str,
        key_pem: bytes | str,
        ca_pem: bytes | str | None = None,
        *,
        thing_name: str | None = None,
        client_id: str | None = None,
    ) -> Self:
        """Identity from PEM data held in memory (e.g. fetched from a secure element)."""
        cert_b = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
        key_b = key_pem.encode() if isinstance(key_pem, str) else key_pem
        ca_b = ca_pem.encode() if isinstance(ca_pem, str) else ca_pem
        name = thing_name or _common_name(cert_b)
        return cls(PemCredentials(cert_b, key_b, ca_b), name, client_id or name)

    @classmethod
    def from_pkcs11(
        cls,
        lib: str | PathLike[str],
        slot: int | None,
        pin: str | None,
        token_label: str | None,
        key_label: str | None,
        cert_file: str | PathLike[str],
        *,
        thing_name: str | None = None,
        client_id: str | None = None,
    ) -> Self:
        """Identity whose private key stays in a PKCS#11 token (supported by the CRT transport).

        The arguments are passed through to ``awscrt``'s PKCS#11 TLS support unchanged.
        """
        cert_path = Path(cert_file)
        name = thing_name or _common_name(cert_path.read_bytes(), cert_path)
        creds = Pkcs11Credentials(Path(lib), slot, pin, token_label, key_label, cert_path)
        return cls(creds, name, client_id or name)


class _EndpointFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)

    host: str = pydantic.Field(min_length=1)
    port: int = pydantic.Field(default=DEFAULT_MQTT_PORT, ge=1, le=65535)
    ca_file: str | None = None
    alpn: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """The broker to connect to: AWS IoT Core's device data endpoint or the local stub.

    Attributes:
        host: Host name; also used for SNI and server-certificate verification.
        port: 8883 for MQTT over TLS, or 443 together with ``alpn=True``.
        ca_file: CA bundle that signs the server certificate; ``None`` uses the system store
            (AWS IoT Core's ATS endpoints chain to Amazon Root CA 1).
        alpn: Offer ALPN ``x-amzn-mqtt-ca`` (needed for mTLS MQTT on port 443).
    """

    host: str
    port: int = DEFAULT_MQTT_PORT
    ca_file: Path | None = None
    alpn: bool = False

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("endpoint host must not be empty")
        if not 0 < self.port < 65536:  # noqa: PLR2004
            raise ValueError(f"endpoint port out of range: {self.port}")

    @classmethod
    def from_json_file(cls, path: str | PathLike[str]) -> Self:
        """Read ``{"host": ..., "port": ..., "ca_file": ...}`` (the stub's ``endpoint.json``).

        A relative ``ca_file`` is resolved against the JSON file's directory.

        Raises:
            ValueError: The file is not valid endpoint JSON.
        """
        file = Path(path)
        try:
            data = _EndpointFile.model_validate_json(file.read_bytes())
        except pydantic.ValidationError as exc:
            raise ValueError(f"{file}: invalid endpoint file: {exc}") from exc
        ca = None
        if data.ca_file is not None:
            ca = Path(data.ca_file)
            if not ca.is_absolute():
                ca = file.parent / ca
        return cls(data.host, data.port, ca, data.alpn)
