import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs import CertificateAuthority, CertsError, KeyType, certificate_id, inspect_certificate
from tests.certs.conftest import expired_ca


def test_certificate_id_matches_der_sha256(ca: CertificateAuthority) -> None:
    expected = hashlib.sha256(ca.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert certificate_id(ca.cert) == expected
    assert certificate_id(ca.cert_pem) == expected
    assert len(expected) == 64
    assert expected == expected.lower()


def test_certificate_id_rejects_non_pem() -> None:
    with pytest.raises(CertsError, match="not a PEM certificate"):
        certificate_id(b"nope")


def test_inspect_ca(ca: CertificateAuthority) -> None:
    info = inspect_certificate(ca.cert_pem)
    assert info.subject == "CN=Test CA"
    assert info.issuer == "CN=Test CA"
    assert info.common_name == "Test CA"
    assert info.is_ca
    assert info.key_type == "EC P-256"
    assert info.fingerprint_sha256 == certificate_id(ca.cert)
    assert info.serial == ca.cert.serial_number
    assert info.sans == ()
    assert not info.expired
    assert info.not_after.tzinfo is not None


def test_inspect_server_file_pem_and_der(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = ca.issue_server_cert(["localhost"], ["127.0.0.1"])
    issued.write(tmp_path / "s.pem")
    info = inspect_certificate(tmp_path / "s.pem")
    assert info.sans == ("localhost", "127.0.0.1")
    assert not info.is_ca
    assert info.issuer == "CN=Test CA"
    assert info.fingerprint_sha256 == issued.certificate_id
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    (tmp_path / "s.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    assert inspect_certificate(tmp_path / "s.der") == info


def test_inspect_rsa_and_expired(rsa_ca: CertificateAuthority) -> None:
    assert inspect_certificate(rsa_ca.cert_pem).key_type == "RSA 2048"
    rsa_device = rsa_ca.issue_device_cert("r", key_type=KeyType.RSA)
    assert inspect_certificate(rsa_device.cert_pem).key_type == "RSA 2048"
    assert inspect_certificate(expired_ca().cert_pem).expired


def test_to_dict_is_json_friendly(ca: CertificateAuthority) -> None:
    info = inspect_certificate(ca.issue_server_cert().cert_pem)
    data = json.loads(json.dumps(info.to_dict()))
    assert data["not_after"] == info.not_after.isoformat()
    assert data["sans"] == ["localhost", "127.0.0.1"]
    assert data["fingerprint_sha256"] == info.fingerprint_sha256
    assert data["is_ca"] is False
    assert set(data) == {
        "subject", "issuer", "common_name", "fingerprint_sha256", "serial", "not_before",
        "not_after", "key_type", "is_ca", "sans", "expired",
    }  # fmt: skip


def test_inspect_errors(tmp_path: Path) -> None:
    with pytest.raises(CertsError, match="file not found") as info:
        inspect_certificate(tmp_path / "missing.pem")
    assert info.value.path == tmp_path / "missing.pem"
    (tmp_path / "junk.pem").write_bytes(b"junk")
    with pytest.raises(CertsError, match="not a PEM or DER certificate"):
        inspect_certificate(tmp_path / "junk.pem")
