"""Private key generation, serialization and loading."""

import enum
from pathlib import Path
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certs._errors import CertsError

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""The private key types this package generates and accepts."""

PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

RSA_KEY_SIZE = 2048
MIN_RSA_KEY_SIZE = 2048


class KeyType(enum.StrEnum):
    """Key algorithm for generated keys."""

    EC = "ec"
    """ECDSA on NIST P-256 (the default: small, fast, supported by AWS IoT)."""
    RSA = "rsa"
    """RSA 2048."""


def generate_private_key(key_type: KeyType = KeyType.EC) -> PrivateKey:
    """Generate a new private key: ECDSA P-256 (default) or RSA 2048."""
    if KeyType(key_type) is KeyType.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    return ec.generate_private_key(ec.SECP256R1())


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Serialize a private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_der(key: CertificatePublicKeyTypes) -> bytes:
    """DER SubjectPublicKeyInfo of a public key."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(data: bytes, *, path: Path | None = None) -> PrivateKey:
    """Parse an unencrypted PEM private key (EC or RSA).

    Raises:
        CertsError: Not a PEM private key, encrypted, or an unsupported algorithm.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertsError("private key is encrypted (not supported)", path=path) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertsError("not a PEM private key", path=path) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertsError(
            f"unsupported private key type {type(key).__name__} (need EC or RSA)", path=path
        )
    return key
