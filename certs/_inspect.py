"""Certificate parsing, AWS IoT certificate ids and human/JSON-friendly summaries."""

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from certs._errors import CertsError
from certs._files import read_input

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def parse_certificate(
    data: bytes, *, path: Path | None = None, allow_der: bool = False
) -> x509.Certificate:
    """Parse a PEM (or, with ``allow_der``, DER) certificate.

    Raises:
        CertsError: The data is not a certificate.
    """
    try:
        if allow_der and b"-----BEGIN" not in data:
            return x509.load_der_x509_certificate(data)
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        kind = "PEM or DER" if allow_der else "PEM"
        raise CertsError(f"not a {kind} certificate", path=path) from None


def certificate_id(cert: x509.Certificate | bytes) -> str:
    """AWS IoT certificate id: lowercase hex SHA-256 of the certificate's DER encoding.

    Args:
        cert: A certificate object or PEM bytes.

    Raises:
        CertsError: ``cert`` is bytes that are not a PEM certificate.
    """
    if isinstance(cert, bytes):
        cert = parse_certificate(cert)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def common_name(name: x509.Name) -> str | None:
    """The first common name in an X.509 name, if any."""
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def describe_public_key(key: object) -> str:
    """Short algorithm description such as ``"EC P-256"`` or ``"RSA 2048"``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {_CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def _key_type(cert: x509.Certificate) -> str:
    try:
        return describe_public_key(cert.public_key())
    except (ValueError, UnsupportedAlgorithm):
        return f"unsupported ({cert.public_key_algorithm_oid.dotted_string})"


@dataclass(frozen=True)
class CertificateInfo:
    """Summary of one certificate (see :func:`inspect_certificate`).

    Attributes:
        subject: Subject as an RFC 4514 string.
        issuer: Issuer as an RFC 4514 string.
        common_name: Subject CN, if present.
        fingerprint_sha256: Lowercase hex SHA-256 of the DER (equals the AWS certificate id).
        serial: Serial number.
        not_before: Start of validity (UTC).
        not_after: End of validity (UTC).
        key_type: Public key algorithm, e.g. ``"EC P-256"`` or ``"RSA 2048"``.
        is_ca: Whether basicConstraints says CA:TRUE.
        sans: Subject alternative names (DNS names, IP addresses, URIs, e-mails) as strings.
        expired: Whether ``not_after`` was in the past when inspected.
    """

    subject: str
    issuer: str
    common_name: str | None
    fingerprint_sha256: str
    serial: int
    not_before: datetime
    not_after: datetime
    key_type: str
    is_ca: bool
    sans: tuple[str, ...]
    expired: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form: datetimes as ISO 8601 strings, SANs as a list."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "common_name": self.common_name,
            "fingerprint_sha256": self.fingerprint_sha256,
            "serial": self.serial,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "key_type": self.key_type,
            "is_ca": self.is_ca,
            "sans": list(self.sans),
            "expired": self.expired,
        }


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """Whether the certificate carries basicConstraints CA:TRUE."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(general_name.value) for general_name in ext.value)


def certificate_info(cert: x509.Certificate, *, path: Path | None = None) -> CertificateInfo:
    """Summarize a parsed certificate.

    Raises:
        CertsError: The certificate has malformed extensions.
    """
    try:
        is_ca = is_ca_certificate(cert)
        sans = _sans(cert)
    except ValueError as exc:
        raise CertsError(f"malformed certificate extensions: {exc}", path=path) from None
    not_after = cert.not_valid_after_utc
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_name=common_name(cert.subject),
        fingerprint_sha256=certificate_id(cert),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=not_after,
        key_type=_key_type(cert),
        is_ca=is_ca,
        sans=sans,
        expired=datetime.now(UTC) > not_after,
    )


def inspect_certificate(path_or_pem: Path | bytes) -> CertificateInfo:
    """Summarize a certificate given as a file (PEM or DER) or as PEM bytes.

    Raises:
        CertsError: The file is missing or does not hold a certificate.
    """
    if isinstance(path_or_pem, bytes):
        return certificate_info(parse_certificate(path_or_pem, allow_der=True))
    data = read_input(path_or_pem)
    cert = parse_certificate(data, path=path_or_pem, allow_der=True)
    return certificate_info(cert, path=path_or_pem)
