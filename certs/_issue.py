"""Issuing leaf certificates: the per-CA pieces are built once and reused for every certificate."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs._errors import CertsError
from certs._files import refuse_existing, write_file_atomic, write_private_key
from certs._keys import PrivateKey, PublicKey

CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this long before "now" so slightly slow device clocks accept them."""


@dataclass(frozen=True)
class IssuedCert:
    """A certificate issued by a :class:`CertificateAuthority`.

    Attributes:
        cert_pem: The certificate, PEM.
        key_pem: Its private key (PKCS#8 PEM), or ``None`` when issued from a CSR.
        certificate_id: AWS IoT certificate id (hex SHA-256 of the DER).
        common_name: Subject CN.
        not_after: End of validity (UTC).
    """

    cert_pem: bytes
    key_pem: bytes | None
    certificate_id: str
    common_name: str
    not_after: datetime

    def write(
        self, cert_path: Path, key_path: Path | None = None, *, overwrite: bool = False
    ) -> None:
        """Write the certificate (mode 0644) and, if ``key_path`` is given, the key (mode 0600).

        Nothing is written if any target exists and ``overwrite`` is false.

        Raises:
            CertsError: A target exists, or a key path was given but there is no key.
            OSError: The directory does not exist or is not writable.
        """
        if key_path is not None and self.key_pem is None:
            raise CertsError(
                "certificate was issued from a CSR; there is no private key to write", path=key_path
            )
        if not overwrite:
            refuse_existing(*(p for p in (cert_path, key_path) if p is not None))
        if key_path is not None and self.key_pem is not None:
            write_private_key(key_path, self.key_pem, overwrite=overwrite)
        write_file_atomic(cert_path, self.cert_pem)


def extension(
    value: x509.ExtensionType, *, critical: bool = False
) -> x509.Extension[x509.ExtensionType]:
    """Wrap an extension value for :class:`x509.CertificateBuilder`'s ``extensions`` list."""
    return x509.Extension(value.oid, critical, value)


def key_usage(public_key: PublicKey, *, ca: bool = False) -> x509.KeyUsage:
    """KeyUsage for a CA or an end-entity key (RSA leaf keys also get keyEncipherment)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca and isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class Issuer:
    """Signs leaf certificates for one CA, reusing the issuer name and AKI for every cert."""

    def __init__(self, ca_cert: x509.Certificate, ca_key: PrivateKey) -> None:
        self._key = ca_key
        self._name = ca_cert.subject
        self._ca_not_after = ca_cert.not_valid_after_utc
        try:
            ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
        self._aki = extension(aki)
        self._not_ca = extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        self._eku = {
            oid: extension(x509.ExtendedKeyUsage([oid]))
            for oid in (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH)
        }
        self._key_usage: dict[bool, x509.Extension[x509.ExtensionType]] = {}

    def validity(self, days: int, now: datetime) -> tuple[datetime, datetime]:
        """(not_before, not_after) for a ``days``-long certificate, capped at the CA's expiry.

        Raises:
            CertsError: ``days`` is less than 1.
        """
        if days < 1:
            raise CertsError(f"validity must be at least 1 day (got {days})")
        return now - CLOCK_SKEW, min(now + timedelta(days=days), self._ca_not_after)

    def _key_usage_ext(self, public_key: PublicKey) -> x509.Extension[x509.ExtensionType]:
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        ext = self._key_usage.get(is_rsa)
        if ext is None:
            ext = self._key_usage[is_rsa] = extension(key_usage(public_key), critical=True)
        return ext

    def sign(
        self,
        subject: x509.Name,
        public_key: PublicKey,
        validity: tuple[datetime, datetime],
        eku: x509.ObjectIdentifier,
        extra: Sequence[x509.Extension[x509.ExtensionType]] = (),
    ) -> x509.Certificate:
        """Build and sign one leaf certificate."""
        extensions = [
            self._not_ca,
            self._key_usage_ext(public_key),
            self._eku[eku],
            extension(x509.SubjectKeyIdentifier.from_public_key(public_key)),
            self._aki,
            *extra,
        ]
        builder = x509.CertificateBuilder(
            issuer_name=self._name,
            subject_name=subject,
            public_key=public_key,
            serial_number=x509.random_serial_number(),
            not_valid_before=validity[0],
            not_valid_after=validity[1],
            extensions=extensions,
        )
        return builder.sign(self._key, hashes.SHA256())


def issued(cert: x509.Certificate, key_pem: bytes | None, common_name: str) -> IssuedCert:
    """Package a signed certificate as an :class:`IssuedCert`."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return IssuedCert(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key_pem,
        certificate_id=hashlib.sha256(der).hexdigest(),
        common_name=common_name,
        not_after=cert.not_valid_after_utc,
    )
