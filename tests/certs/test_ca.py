import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import CertificateAuthority, CertsError, IssuedCert, KeyType, certificate_id
from tests.certs.conftest import expired_ca, future_ca


def load(cert: IssuedCert) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert.cert_pem)


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def assert_leaf_profile(cert: x509.Certificate, ca: CertificateAuthority) -> None:
    cert.verify_directly_issued_by(ca.cert)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    skew = datetime.now(UTC) - cert.not_valid_before_utc
    assert timedelta(minutes=4) < skew < timedelta(minutes=6)


def test_create_ca_profile(ca: CertificateAuthority) -> None:
    cert = ca.cert
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test CA"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca.cert_pem == cert.public_bytes(serialization.Encoding.PEM)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(days=3650)


def test_create_rsa_ca(rsa_ca: CertificateAuthority) -> None:
    public_key = rsa_ca.cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert public_key.key_size == 2048
    device = load(rsa_ca.issue_device_cert("rsa-ca-device"))
    assert_leaf_profile(device, rsa_ca)


def test_create_rejects_bad_days_and_naive_not_before() -> None:
    with pytest.raises(CertsError, match="at least 1 day"):
        CertificateAuthority.create(days=0)
    with pytest.raises(CertsError, match="timezone-aware"):
        CertificateAuthority.create(not_before=datetime(2020, 1, 1))  # noqa: DTZ001


def test_save_and_load_roundtrip(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key"
    ca.save(cert_path, key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    loaded = CertificateAuthority.load(cert_path, key_path)
    assert loaded.cert == ca.cert
    assert_leaf_profile(load(loaded.issue_device_cert("after-load")), ca)


def test_save_never_silently_overwrites(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key"
    ca.save(cert_path, key_path)
    other = CertificateAuthority.create()
    with pytest.raises(CertsError, match="refusing to overwrite") as info:
        other.save(cert_path, key_path)
    assert info.value.path == key_path
    assert CertificateAuthority.load(cert_path, key_path).cert == ca.cert
    other.save(cert_path, key_path, overwrite=True)
    assert CertificateAuthority.load(cert_path, key_path).cert == other.cert
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_save_refuses_existing_cert_alone(tmp_path: Path, ca: CertificateAuthority) -> None:
    (tmp_path / "ca.pem").write_bytes(b"keep me")
    with pytest.raises(CertsError, match="refusing"):
        ca.save(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert not (tmp_path / "ca.key").exists()


def _error(cert_path: Path, key_path: Path) -> CertsError:
    with pytest.raises(CertsError) as info:
        CertificateAuthority.load(cert_path, key_path)
    assert "\n" not in str(info.value)
    return info.value


def test_load_missing_files(ca_dir: Path) -> None:
    error = _error(ca_dir / "nope.pem", ca_dir / "ca.key")
    assert error.path == ca_dir / "nope.pem"
    assert "file not found" in str(error)
    error = _error(ca_dir / "ca.pem", ca_dir / "nope.key")
    assert error.path == ca_dir / "nope.key"


def test_load_directory_instead_of_file(ca_dir: Path) -> None:
    error = _error(ca_dir, ca_dir / "ca.key")
    assert error.path == ca_dir
    assert "cannot read" in error.message


def test_load_not_a_certificate(ca_dir: Path) -> None:
    (ca_dir / "ca.pem").write_bytes(b"hello\n")
    error = _error(ca_dir / "ca.pem", ca_dir / "ca.key")
    assert error.path == ca_dir / "ca.pem"
    assert error.message == "not a PEM certificate"


def test_load_not_a_key(ca_dir: Path) -> None:
    error = _error(ca_dir / "ca.pem", ca_dir / "ca.pem")
    assert error.message == "not a PEM private key"


def test_load_encrypted_key(ca_dir: Path) -> None:
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    (ca_dir / "enc.key").write_bytes(encrypted)
    error = _error(ca_dir / "ca.pem", ca_dir / "enc.key")
    assert "encrypted" in error.message


def test_load_key_mismatch(ca_dir: Path) -> None:
    CertificateAuthority.create().save(ca_dir / "other.pem", ca_dir / "other.key")
    error = _error(ca_dir / "ca.pem", ca_dir / "other.key")
    assert error.path == ca_dir / "other.key"
    assert error.message == f"private key does not match certificate {ca_dir / 'ca.pem'}"


def test_load_expired_ca(tmp_path: Path) -> None:
    old = expired_ca()
    assert old.cert.not_valid_after_utc < datetime.now(UTC)
    old.save(tmp_path / "ca.pem", tmp_path / "ca.key")
    error = _error(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert error.path == tmp_path / "ca.pem"
    assert "expired" in error.message


def test_load_not_yet_valid_ca(tmp_path: Path) -> None:
    future_ca().save(tmp_path / "ca.pem", tmp_path / "ca.key")
    error = _error(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert "not valid until" in error.message


def test_load_leaf_is_not_a_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    ca.issue_device_cert("leaf").write(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    error = _error(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    assert error.path == tmp_path / "leaf.pem"
    assert "not a CA" in error.message


def test_issue_device_cert(ca: CertificateAuthority) -> None:
    issued = ca.issue_device_cert("my-thing_1:a")
    cert = load(issued)
    assert_leaf_profile(cert, ca)
    assert cert.subject.rfc4514_string() == "CN=my-thing_1:a"
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert issued.common_name == "my-thing_1:a"
    assert issued.certificate_id == certificate_id(cert)
    assert len(issued.certificate_id) == 64
    assert issued.not_after == cert.not_valid_after_utc
    assert issued.not_after.tzinfo is not None
    assert issued.key_pem is not None
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert key.public_key() == cert.public_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(days=365, minutes=5)


def test_issue_device_cert_rsa(ca: CertificateAuthority) -> None:
    issued = ca.issue_device_cert("rsa-thing", key_type=KeyType.RSA, days=30)
    cert = load(issued)
    assert_leaf_profile(cert, ca)
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


@pytest.mark.parametrize("name", ["", "has space", "slash/no", "ünïcode", "a" * 129, "x\n"])
def test_issue_device_cert_rejects_bad_thing_names(ca: CertificateAuthority, name: str) -> None:
    with pytest.raises(CertsError, match="invalid thing name"):
        ca.issue_device_cert(name)


def test_thing_name_longer_than_cn_limit(ca: CertificateAuthority) -> None:
    assert load(ca.issue_device_cert("a" * 64)).subject.rfc4514_string() == "CN=" + "a" * 64
    with pytest.raises(CertsError, match="1-64 bytes"):
        ca.issue_device_cert("a" * 65)


def test_validity_capped_at_ca_expiry() -> None:
    short = CertificateAuthority.create(days=10)
    issued = short.issue_device_cert("capped", days=365)
    assert issued.not_after == short.cert.not_valid_after_utc


def test_bad_days(ca: CertificateAuthority) -> None:
    with pytest.raises(CertsError, match="at least 1 day"):
        ca.issue_device_cert("x", days=0)
    with pytest.raises(CertsError, match="at least 1 day"):
        ca.issue_claim_cert(days=-1)


def test_issue_server_cert(ca: CertificateAuthority) -> None:
    issued = ca.issue_server_cert(["localhost", "broker.local"], ["127.0.0.1", "::1"], days=10)
    cert = load(issued)
    assert_leaf_profile(cert, ca)
    assert issued.common_name == "localhost"
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "broker.local"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_issue_server_cert_defaults_and_ip_only(ca: CertificateAuthority) -> None:
    default = load(ca.issue_server_cert())
    san = default.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ca.issue_server_cert([], ["10.0.0.1"]).common_name == "10.0.0.1"


def test_issue_server_cert_bad_input(ca: CertificateAuthority) -> None:
    with pytest.raises(CertsError, match="does not appear to be an IPv4 or IPv6"):
        ca.issue_server_cert(["localhost"], ["not-an-ip"])
    with pytest.raises(CertsError, match="at least one"):
        ca.issue_server_cert([], [])


def test_issue_claim_cert(ca: CertificateAuthority) -> None:
    issued = ca.issue_claim_cert()
    cert = load(issued)
    assert_leaf_profile(cert, ca)
    assert issued.common_name == "claim"
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in ou] == ["fleet-provisioning-claim"]
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ca.issue_claim_cert("factory-claim").common_name == "factory-claim"


def test_bulk_device_certs(ca: CertificateAuthority) -> None:
    names = [f"bulk-{i:04d}" for i in range(1000)]
    issued = list(ca.issue_device_certs(names, days=30))
    assert [c.common_name for c in issued] == names
    assert len({c.certificate_id for c in issued}) == 1000
    assert len({c.key_pem for c in issued}) == 1000
    serials = {load(c).serial_number for c in issued[:50]}
    assert len(serials) == 50
    for cert in issued[::100]:
        assert_leaf_profile(load(cert), ca)


def test_bulk_is_lazy_and_validates(ca: CertificateAuthority) -> None:
    certs = ca.issue_device_certs(["good", "bad name"])
    assert next(certs).common_name == "good"
    with pytest.raises(CertsError, match="invalid thing name"):
        next(certs)


def test_issued_cert_write(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = ca.issue_device_cert("writer")
    cert_path, key_path = tmp_path / "w.pem", tmp_path / "w.key"
    issued.write(cert_path, key_path)
    assert cert_path.read_bytes() == issued.cert_pem
    assert key_path.read_bytes() == issued.key_pem
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    again = ca.issue_device_cert("writer")
    with pytest.raises(CertsError, match="refusing") as info:
        again.write(cert_path, key_path)
    assert info.value.path in {cert_path, key_path}
    assert key_path.read_bytes() == issued.key_pem
    assert cert_path.read_bytes() == issued.cert_pem
    again.write(cert_path, key_path, overwrite=True)
    assert key_path.read_bytes() == again.key_pem


def test_issued_cert_write_cert_only(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = ca.issue_device_cert("cert-only")
    issued.write(tmp_path / "c.pem")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem"]
