"""Certificate signing requests: creating them on the device side, vetting them on the CA side."""

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs._errors import CertsError
from certs._keys import MIN_RSA_KEY_SIZE, PrivateKey, PublicKey

MAX_COMMON_NAME = 64
"""X.509 upper bound for a common name (RFC 5280 ub-common-name)."""


def common_name_attribute(value: str) -> x509.NameAttribute[str]:
    """A CN attribute, refusing values X.509 cannot carry.

    Raises:
        CertsError: Empty or longer than 64 UTF-8 bytes.
    """
    size = len(value.encode("utf-8"))
    if not 1 <= size <= MAX_COMMON_NAME:
        raise CertsError(
            f"common name {value[:80]!r} must be 1-{MAX_COMMON_NAME} bytes long (it is {size})"
        )
    return x509.NameAttribute(NameOID.COMMON_NAME, value)


def create_csr(key: PrivateKey, common_name: str) -> bytes:
    """Create a PEM certificate signing request for ``key`` with subject ``CN=common_name``.

    Raises:
        CertsError: The common name is empty or too long.
    """
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([common_name_attribute(common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_verified_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR and check its self-signature and key.

    Raises:
        CertsError: Unparseable, bad signature, or a key AWS IoT would not accept.
    """
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError:
        raise CertsError("not a PEM or DER certificate signing request") from None
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        signature_ok = False
    if not signature_ok:
        raise CertsError("CSR signature does not verify")
    csr_public_key(csr)
    return csr


def csr_public_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    """The CSR's public key, if it is one this package issues certificates for.

    Raises:
        CertsError: Not EC (P-256/P-384/P-521) or RSA of at least 2048 bits.
    """
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CertsError("CSR public key cannot be parsed") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_KEY_SIZE:
            raise CertsError(f"CSR has an RSA {key.key_size} key; at least 2048 bits required")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key
    raise CertsError(f"CSR key type {type(key).__name__} is not supported (need EC or RSA)")
