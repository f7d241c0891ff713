import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs import CertificateAuthority, CertsError, KeyType, create_csr, generate_private_key
from tests.certs.helpers import tamper_csr_signature


def test_create_csr() -> None:
    key = generate_private_key()
    csr_pem = create_csr(key, "thing-7")
    assert csr_pem.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=thing-7"
    assert csr.public_key() == key.public_key()


def test_create_csr_rejects_bad_common_name() -> None:
    with pytest.raises(CertsError, match="common name"):
        create_csr(generate_private_key(), "")
    with pytest.raises(CertsError, match="common name"):
        create_csr(generate_private_key(), "x" * 65)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_sign_csr(ca: CertificateAuthority, key_type: KeyType) -> None:
    key = generate_private_key(key_type)
    issued = ca.sign_csr(create_csr(key, "csr-thing"), days=7)
    assert issued.key_pem is None
    assert issued.common_name == "csr-thing"
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=csr-thing"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_sign_csr_common_name_override(ca: CertificateAuthority) -> None:
    issued = ca.sign_csr(create_csr(generate_private_key(), "from-csr"), common_name="override")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=override"
    assert issued.common_name == "override"


def test_sign_der_csr(ca: CertificateAuthority) -> None:
    csr = x509.load_pem_x509_csr(create_csr(generate_private_key(), "der-thing"))
    issued = ca.sign_csr(csr.public_bytes(serialization.Encoding.DER))
    assert issued.common_name == "der-thing"


def test_sign_csr_refuses_tampered_signature(ca: CertificateAuthority) -> None:
    tampered = tamper_csr_signature(create_csr(generate_private_key(), "tampered"))
    with pytest.raises(CertsError, match="CSR signature does not verify"):
        ca.sign_csr(tampered)


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"])
def test_sign_csr_refuses_unparseable(ca: CertificateAuthority, data: bytes) -> None:
    with pytest.raises(CertsError, match="not a PEM or DER certificate signing request"):
        ca.sign_csr(data)


def test_sign_csr_requires_common_name(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertsError, match="no common name"):
        ca.sign_csr(pem)
    assert ca.sign_csr(pem, common_name="given").common_name == "given"


def test_sign_csr_refuses_weak_rsa(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - deliberately weak
    with pytest.raises(CertsError, match="at least 2048"):
        ca.sign_csr(create_csr(key, "weak"))
