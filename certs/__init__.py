"""X.509 tooling for AWS IoT Core devices.

A local CA, device/server/claim certificates, CSRs, certificate inspection and OTA code
signing. All cryptography comes from ``cryptography``.
"""

from certs._ca import CertificateAuthority
from certs._csr import create_csr
from certs._errors import CertsError
from certs._files import write_file_atomic, write_private_key
from certs._inspect import CertificateInfo, certificate_id, inspect_certificate
from certs._issue import IssuedCert
from certs._keys import KeyType, PrivateKey, generate_private_key, private_key_to_pem
from certs._signing import CodeSigningKey, verify_digest, verify_file

__all__ = [
    "CertificateAuthority",
    "CertificateInfo",
    "CertsError",
    "CodeSigningKey",
    "IssuedCert",
    "KeyType",
    "PrivateKey",
    "certificate_id",
    "create_csr",
    "generate_private_key",
    "inspect_certificate",
    "private_key_to_pem",
    "verify_digest",
    "verify_file",
    "write_file_atomic",
    "write_private_key",
]
