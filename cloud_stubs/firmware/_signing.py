"""The stub's code-signing key: created under ``DIR/signing/`` on first use."""

from __future__ import annotations

import logging

from certs import CertsError, CodeSigningKey
from cloud_stubs.firmware._paths import OtaPaths

__all__ = ["SIG_ALG", "ensure_signing_key", "public_key_pem"]

_log = logging.getLogger(__name__)

#: The signature algorithm of every artifact: ECDSA on P-256 over the SHA-256 of the image,
#: DER-encoded (what ``certs.verify_file`` checks; FreeRTOS OTA calls it ``sig-sha256-ecdsa``).
SIG_ALG = "ecdsa-p256-sha256"


def ensure_signing_key(paths: OtaPaths) -> CodeSigningKey:
    """Load the code-signing key, generating it (key 0600, public key 0644) on first use.

    Raises:
        certs.CertsError: The key file exists but is not an EC P-256 private key.
    """
    if paths.signing_key.exists():
        return CodeSigningKey.load(paths.signing_key)
    paths.signing_dir.mkdir(parents=True, exist_ok=True)
    key = CodeSigningKey.generate()
    try:
        key.save(paths.signing_key, paths.signing_pub)
    except CertsError:
        # Another process created it between our check and our write: use theirs.
        return CodeSigningKey.load(paths.signing_key)
    _log.info("created code-signing key %s (key id %s)", paths.signing_key, key.key_id)
    return key


def public_key_pem(paths: OtaPaths) -> bytes:
    """The code-signing public key devices pin (PEM SubjectPublicKeyInfo)."""
    return ensure_signing_key(paths).public_key_pem()
