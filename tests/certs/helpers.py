import base64
import textwrap

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def der_to_pem(der: bytes, label: str) -> bytes:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode("ascii")


def tamper_csr_signature(csr_pem: bytes) -> bytes:
    """Flip a bit in the last byte of the DER CSR (inside the signature) and re-encode as PEM."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    tampered = der_to_pem(bytes(der), "CERTIFICATE REQUEST")
    assert not x509.load_pem_x509_csr(tampered).is_signature_valid
    return tampered
