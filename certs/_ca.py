"""A local certificate authority for AWS IoT device, server and claim certificates."""

import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs._csr import common_name_attribute, csr_public_key, load_verified_csr
from certs._errors import CertsError
from certs._files import read_input, refuse_existing, write_file_atomic, write_private_key
from certs._inspect import common_name as name_common_name
from certs._inspect import is_ca_certificate, parse_certificate
from certs._issue import CLOCK_SKEW, IssuedCert, Issuer, extension, issued, key_usage
from certs._keys import (
    KeyType,
    PrivateKey,
    generate_private_key,
    load_private_key,
    private_key_to_pem,
    public_key_der,
)

_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
CLAIM_OU = "fleet-provisioning-claim"


def validate_thing_name(thing_name: str) -> str:
    """Check an AWS IoT thing name (``[a-zA-Z0-9:_-]{1,128}``) that must also fit a CN.

    Raises:
        CertsError: The name does not match the AWS pattern or exceeds the 64-byte CN limit.
    """
    if not _THING_NAME.fullmatch(thing_name):
        raise CertsError(
            f"invalid thing name {thing_name[:80]!r}: must match [a-zA-Z0-9:_-]{{1,128}}"
        )
    common_name_attribute(thing_name)
    return thing_name


class CertificateAuthority:
    """A CA certificate and its private key, able to issue leaf certificates.

    Attributes:
        cert: The CA certificate.
        cert_pem: The CA certificate, PEM (what devices and servers trust).
    """

    def __init__(self, cert: x509.Certificate, key: PrivateKey) -> None:
        self.cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._key = key
        self._issuer = Issuer(cert, key)

    @classmethod
    def create(
        cls,
        *,
        common_name: str = "IoT Toolkit Local CA",
        key_type: KeyType = KeyType.EC,
        days: int = 3650,
        not_before: datetime | None = None,
    ) -> Self:
        """Create a new self-signed CA in memory.

        Args:
            common_name: Subject CN of the CA.
            key_type: CA key algorithm.
            days: Validity, counted from ``not_before``.
            not_before: Start of validity (tz-aware); defaults to now minus five minutes.
                A date in the past gives a backdated (possibly already expired) CA.

        Raises:
            CertsError: ``days`` < 1, bad common name, or a naive ``not_before``.
        """
        if days < 1:
            raise CertsError(f"validity must be at least 1 day (got {days})")
        if not_before is None:
            not_before = datetime.now(UTC) - CLOCK_SKEW
        elif not_before.tzinfo is None:
            raise CertsError("not_before must be timezone-aware")
        key = generate_private_key(key_type)
        public_key = key.public_key()
        name = x509.Name([common_name_attribute(common_name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(public_key, ca=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Self:
        """Load and validate a CA from a PEM certificate and its PEM private key.

        Raises:
            CertsError: Naming the offending file: missing, not a certificate / key, key does
                not match the certificate, not a CA, expired or not yet valid.
        """
        cert = parse_certificate(read_input(cert_path), path=cert_path)
        key = load_private_key(read_input(key_path), path=key_path)
        try:
            is_ca = is_ca_certificate(cert)
        except ValueError:
            raise CertsError("malformed certificate extensions", path=cert_path) from None
        if not is_ca:
            raise CertsError(
                "certificate is not a CA (basicConstraints CA:TRUE missing)", path=cert_path
            )
        try:
            cert_key_der = public_key_der(cert.public_key())
        except (ValueError, UnsupportedAlgorithm):
            raise CertsError("certificate public key cannot be parsed", path=cert_path) from None
        if public_key_der(key.public_key()) != cert_key_der:
            raise CertsError(f"private key does not match certificate {cert_path}", path=key_path)
        now = datetime.now(UTC)
        if now > cert.not_valid_after_utc:
            raise CertsError(
                f"CA certificate expired on {cert.not_valid_after_utc.isoformat()}", path=cert_path
            )
        if now < cert.not_valid_before_utc:
            raise CertsError(
                f"CA certificate is not valid until {cert.not_valid_before_utc.isoformat()}",
                path=cert_path,
            )
        return cls(cert, key)

    def save(self, cert_path: Path, key_path: Path, *, overwrite: bool = False) -> None:
        """Write the CA certificate (0644) and key (0600); never overwrites unless asked.

        Raises:
            CertsError: A target exists and ``overwrite`` is false.
            OSError: The directory does not exist or is not writable.
        """
        if not overwrite:
            refuse_existing(key_path, cert_path)
        write_private_key(key_path, private_key_to_pem(self._key), overwrite=overwrite)
        write_file_atomic(cert_path, self.cert_pem)

    def issue_server_cert(
        self,
        hostnames: Sequence[str] = ("localhost",),
        ips: Sequence[str] = ("127.0.0.1",),
        *,
        days: int = 825,
    ) -> IssuedCert:
        """Issue a TLS server certificate (EC P-256) with DNS and IP SANs and serverAuth.

        The CN is the first hostname (or the first IP when there are no hostnames).

        Raises:
            CertsError: No names at all, an invalid IP address, or bad ``days``.
        """
        try:
            addresses = [ipaddress.ip_address(ip) for ip in ips]
        except ValueError as exc:
            raise CertsError(str(exc)) from None
        names = [*hostnames, *ips]
        if not names:
            raise CertsError("a server certificate needs at least one hostname or IP address")
        san = x509.SubjectAlternativeName(
            [*(x509.DNSName(h) for h in hostnames), *(x509.IPAddress(a) for a in addresses)]
        )
        key = generate_private_key(KeyType.EC)
        subject = x509.Name([common_name_attribute(names[0])])
        validity = self._issuer.validity(days, datetime.now(UTC))
        cert = self._issuer.sign(
            subject,
            key.public_key(),
            validity,
            ExtendedKeyUsageOID.SERVER_AUTH,
            [extension(san)],
        )
        return issued(cert, private_key_to_pem(key), names[0])

    def issue_device_cert(
        self, thing_name: str, *, days: int = 365, key_type: KeyType = KeyType.EC
    ) -> IssuedCert:
        """Issue a device (clientAuth) certificate with a new key and ``CN=thing_name``.

        Raises:
            CertsError: Invalid thing name or bad ``days``.
        """
        validate_thing_name(thing_name)
        validity = self._issuer.validity(days, datetime.now(UTC))
        return self._issue_client(thing_name, validity, key_type)

    def issue_device_certs(
        self, thing_names: Iterable[str], *, days: int = 365
    ) -> Iterator[IssuedCert]:
        """Issue EC device certificates in bulk, lazily, one per thing name.

        All certificates share one validity window computed up front.

        Raises:
            CertsError: When an invalid thing name is reached, or bad ``days`` (at first use).
        """
        validity = self._issuer.validity(days, datetime.now(UTC))
        for thing_name in thing_names:
            validate_thing_name(thing_name)
            yield self._issue_client(thing_name, validity, KeyType.EC)

    def issue_claim_cert(self, name: str = "claim", *, days: int = 365) -> IssuedCert:
        """Issue a fleet-provisioning claim certificate (``CN=name, OU=fleet-provisioning-claim``).

        Raises:
            CertsError: Bad name or ``days``.
        """
        validity = self._issuer.validity(days, datetime.now(UTC))
        subject = x509.Name(
            [
                common_name_attribute(name),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, CLAIM_OU),
            ]
        )
        key = generate_private_key(KeyType.EC)
        cert = self._issuer.sign(
            subject, key.public_key(), validity, ExtendedKeyUsageOID.CLIENT_AUTH
        )
        return issued(cert, private_key_to_pem(key), name)

    def sign_csr(
        self, csr_pem: bytes, *, common_name: str | None = None, days: int = 365
    ) -> IssuedCert:
        """Issue a clientAuth certificate for a CSR (PEM or DER); the key stays with the requester.

        The subject is ``CN=common_name`` if given, else the CSR's CN; other CSR attributes and
        requested extensions are ignored.

        Raises:
            CertsError: Unparseable CSR, bad CSR signature, unsupported key, or no common name.
        """
        csr = load_verified_csr(csr_pem)
        cn = common_name if common_name is not None else name_common_name(csr.subject)
        if cn is None:
            raise CertsError("CSR has no common name; pass one explicitly")
        subject = x509.Name([common_name_attribute(cn)])
        validity = self._issuer.validity(days, datetime.now(UTC))
        cert = self._issuer.sign(
            subject, csr_public_key(csr), validity, ExtendedKeyUsageOID.CLIENT_AUTH
        )
        return issued(cert, None, cn)

    def _issue_client(
        self, cn: str, validity: tuple[datetime, datetime], key_type: KeyType
    ) -> IssuedCert:
        key = generate_private_key(key_type)
        subject = x509.Name([common_name_attribute(cn)])
        cert = self._issuer.sign(
            subject, key.public_key(), validity, ExtendedKeyUsageOID.CLIENT_AUTH
        )
        return issued(cert, private_key_to_pem(key), cn)
