"""Test PKI: a CA, a server certificate and device certificates.

Uses the project's ``certs`` package when it is importable, else ``cryptography`` directly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclasses.dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _LocalCA:
    """Minimal CA on ``cryptography`` (fallback when ``certs`` is unavailable)."""

    def __init__(self, common_name: str = "device_sdk test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def _issue(
        self, cn: str, usage: x509.ObjectIdentifier, san: x509.SubjectAlternativeName | None
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_server_cert(self) -> Issued:
        san = x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        )
        return self._issue("localhost", ExtendedKeyUsageOID.SERVER_AUTH, san)

    def issue_device_cert(self, thing_name: str) -> Issued:
        return self._issue(thing_name, ExtendedKeyUsageOID.CLIENT_AUTH, None)


class LocalPki:
    """CA facade used by the fixtures: ``cert_pem``, ``server()``, ``device(name)``."""

    def __init__(self) -> None:
        try:
            import certs  # noqa: PLC0415 - optional teammate package

            self._ca: object = certs.CertificateAuthority.create()
            self.backend = "certs"
        except (ImportError, AttributeError):
            self._ca = _LocalCA()
            self.backend = "cryptography"

    @property
    def cert_pem(self) -> bytes:
        pem = getattr(self._ca, "cert_pem")  # noqa: B009
        assert isinstance(pem, bytes)
        return pem

    def server(self) -> Issued:
        issued = self._ca.issue_server_cert()  # type: ignore[attr-defined]
        return Issued(issued.cert_pem, issued.key_pem)

    def device(self, thing_name: str) -> Issued:
        issued = self._ca.issue_device_cert(thing_name)  # type: ignore[attr-defined]
        return Issued(issued.cert_pem, issued.key_pem)
