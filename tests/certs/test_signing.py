import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs import (
    CertificateAuthority,
    CertsError,
    CodeSigningKey,
    KeyType,
    generate_private_key,
    private_key_to_pem,
    verify_digest,
    verify_file,
)


@pytest.fixture
def firmware(tmp_path: Path) -> Path:
    path = tmp_path / "firmware.bin"
    path.write_bytes(bytes(range(256)) * 9000)  # > 2 MiB: several streaming chunks
    return path


def test_key_id_is_sha256_of_spki() -> None:
    key = CodeSigningKey.generate()
    spki = serialization.load_pem_public_key(key.public_key_pem()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.key_id == hashlib.sha256(spki).hexdigest()[:16]
    assert len(key.key_id) == 16


def test_sign_and_verify_file(firmware: Path) -> None:
    key = CodeSigningKey.generate()
    digest_hex, signature = key.sign_file(firmware)
    assert digest_hex == hashlib.sha256(firmware.read_bytes()).hexdigest()
    assert verify_file(key.public_key_pem(), firmware, signature)
    assert verify_digest(key.public_key_pem(), bytes.fromhex(digest_hex), signature)
    # Interoperates with a plain ECDSA-SHA256 verification over the whole content.
    public_key = serialization.load_pem_public_key(key.public_key_pem())
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(signature, firmware.read_bytes(), ec.ECDSA(hashes.SHA256()))


def test_verify_rejects_tampered_file(firmware: Path) -> None:
    key = CodeSigningKey.generate()
    _, signature = key.sign_file(firmware)
    data = bytearray(firmware.read_bytes())
    data[1_500_000] ^= 0xFF
    firmware.write_bytes(bytes(data))
    assert not verify_file(key.public_key_pem(), firmware, signature)


def test_verify_rejects_wrong_key_and_garbage_signature(firmware: Path) -> None:
    key, other = CodeSigningKey.generate(), CodeSigningKey.generate()
    _, signature = key.sign_file(firmware)
    assert not verify_file(other.public_key_pem(), firmware, signature)
    assert not verify_file(key.public_key_pem(), firmware, b"not a der signature")
    assert not verify_file(key.public_key_pem(), firmware, b"")


def test_sign_digest_validates_length() -> None:
    key = CodeSigningKey.generate()
    with pytest.raises(CertsError, match="32 bytes"):
        key.sign_digest(b"short")
    with pytest.raises(CertsError, match="32 bytes"):
        verify_digest(key.public_key_pem(), b"short", b"sig")


def test_verify_bad_public_key(firmware: Path, ca: CertificateAuthority) -> None:
    with pytest.raises(CertsError, match="not a PEM public key"):
        verify_file(b"junk", firmware, b"sig")
    rsa_pub = (
        generate_private_key(KeyType.RSA)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(CertsError, match="must be EC"):
        verify_digest(rsa_pub, bytes(32), b"sig")


def test_sign_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CertsError, match="file not found") as info:
        CodeSigningKey.generate().sign_file(tmp_path / "missing.bin")
    assert info.value.path == tmp_path / "missing.bin"


def test_save_load_roundtrip(tmp_path: Path, firmware: Path) -> None:
    key = CodeSigningKey.generate()
    key_path, pub_path = tmp_path / "signing.key", tmp_path / "signing.pub"
    key.save(key_path, pub_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert pub_path.read_bytes() == key.public_key_pem()
    loaded = CodeSigningKey.load(key_path)
    assert loaded.key_id == key.key_id
    _, signature = loaded.sign_file(firmware)
    assert verify_file(key.public_key_pem(), firmware, signature)


def test_save_refuses_overwrite(tmp_path: Path) -> None:
    key_path, pub_path = tmp_path / "signing.key", tmp_path / "signing.pub"
    first = CodeSigningKey.generate()
    first.save(key_path, pub_path)
    second = CodeSigningKey.generate()
    with pytest.raises(CertsError, match="refusing") as info:
        second.save(key_path, pub_path)
    assert info.value.path == key_path
    assert CodeSigningKey.load(key_path).key_id == first.key_id
    second.save(key_path, pub_path, overwrite=True)
    assert CodeSigningKey.load(key_path).key_id == second.key_id


def test_load_rejects_non_p256(tmp_path: Path) -> None:
    (tmp_path / "rsa.key").write_bytes(private_key_to_pem(generate_private_key(KeyType.RSA)))
    with pytest.raises(CertsError, match="EC P-256") as info:
        CodeSigningKey.load(tmp_path / "rsa.key")
    assert info.value.path == tmp_path / "rsa.key"
    p384 = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.key").write_bytes(private_key_to_pem(p384))
    with pytest.raises(CertsError, match="EC P-256"):
        CodeSigningKey.load(tmp_path / "p384.key")
    with pytest.raises(CertsError, match="P-256"):
        CodeSigningKey(p384)
    with pytest.raises(CertsError, match="file not found"):
        CodeSigningKey.load(tmp_path / "missing.key")
