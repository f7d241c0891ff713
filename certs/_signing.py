"""ECDSA P-256 / SHA-256 code signing for OTA firmware images."""

import hashlib
from pathlib import Path
from typing import Self

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from certs._errors import CertsError
from certs._files import read_input, refuse_existing, write_file_atomic, write_private_key
from certs._keys import load_private_key, private_key_to_pem, public_key_der

_CHUNK = 1 << 20
_DIGEST_SIZE = hashlib.sha256().digest_size
_PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA256()))


def _check_digest(sha256_digest: bytes) -> None:
    if len(sha256_digest) != _DIGEST_SIZE:
        raise CertsError(f"a SHA-256 digest is {_DIGEST_SIZE} bytes, got {len(sha256_digest)}")


def sha256_file(path: Path) -> bytes:
    """SHA-256 of a file, read in 1 MiB chunks.

    Raises:
        CertsError: The file is missing or unreadable.
    """
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        raise CertsError("file not found", path=path) from None
    except OSError as exc:
        raise CertsError(f"cannot read file: {exc.strerror or exc}", path=path) from None
    return digest.digest()


def _key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    return hashlib.sha256(public_key_der(public_key)).hexdigest()[:16]


class CodeSigningKey:
    """An ECDSA P-256 key that signs SHA-256 digests of firmware images.

    Attributes:
        key_id: First 16 hex characters of the SHA-256 of the public key's DER
            SubjectPublicKeyInfo; stable for the key's lifetime.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise CertsError(f"code signing keys must be EC P-256, not {key.curve.name}")
        self._key = key
        self.key_id = _key_id(key.public_key())

    @classmethod
    def generate(cls) -> Self:
        """Generate a new P-256 code signing key."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load(cls, key_path: Path) -> Self:
        """Load a PEM P-256 private key.

        Raises:
            CertsError: Missing file, not a key, or not an EC P-256 key.
        """
        key = load_private_key(read_input(key_path), path=key_path)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise CertsError("code signing key must be an EC P-256 private key", path=key_path)
        return cls(key)

    def save(self, key_path: Path, pub_path: Path, *, overwrite: bool = False) -> None:
        """Write the private key (0600) and public key PEM (0644); never overwrites unless asked.

        Raises:
            CertsError: A target exists and ``overwrite`` is false.
            OSError: The directory does not exist or is not writable.
        """
        if not overwrite:
            refuse_existing(key_path, pub_path)
        write_private_key(key_path, private_key_to_pem(self._key), overwrite=overwrite)
        write_file_atomic(pub_path, self.public_key_pem())

    def public_key_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign_digest(self, sha256_digest: bytes) -> bytes:
        """DER-encoded ECDSA signature over an already computed SHA-256 digest.

        Raises:
            CertsError: The digest is not 32 bytes.
        """
        _check_digest(sha256_digest)
        return self._key.sign(sha256_digest, _PREHASHED)

    def sign_file(self, path: Path) -> tuple[str, bytes]:
        """Hash ``path`` (streaming) and sign the digest.

        Returns:
            The file's SHA-256 as lowercase hex, and the DER signature.

        Raises:
            CertsError: The file is missing or unreadable.
        """
        digest = sha256_file(path)
        return digest.hex(), self.sign_digest(digest)


def load_public_key(public_key_pem: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a PEM EC public key.

    Raises:
        CertsError: Not a PEM public key, or not EC.
    """
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, UnsupportedAlgorithm):
        raise CertsError("not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertsError(f"code signing public key must be EC, not {type(key).__name__}")
    return key


def verify_digest(public_key_pem: bytes, sha256_digest: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (DER ECDSA) is valid for the SHA-256 digest under the public key.

    Raises:
        CertsError: The public key is not a PEM EC public key, or the digest is not 32 bytes.
    """
    _check_digest(sha256_digest)
    key = load_public_key(public_key_pem)
    try:
        key.verify(signature, sha256_digest, _PREHASHED)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_file(public_key_pem: bytes, path: Path, signature: bytes) -> bool:
    """Whether ``signature`` is valid for the file's content under the public key.

    Raises:
        CertsError: The file is unreadable or the public key is unusable.
    """
    load_public_key(public_key_pem)  # fail on a bad key before hashing a large file
    return verify_digest(public_key_pem, sha256_file(path), signature)
