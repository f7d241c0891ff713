import os
import pickle
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs import (
    CertsError,
    KeyType,
    generate_private_key,
    private_key_to_pem,
    write_file_atomic,
    write_private_key,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_ec_is_default_p256() -> None:
    key = generate_private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_generate_rsa_2048() -> None:
    key = generate_private_key(KeyType.RSA)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048


def test_key_type_is_str_enum() -> None:
    assert KeyType("ec") is KeyType.EC
    assert str(KeyType.RSA) == "rsa"


def test_private_key_to_pem_is_unencrypted_pkcs8() -> None:
    key = generate_private_key()
    pem = private_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert loaded.public_key() == key.public_key()


def test_write_private_key_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key"]


def test_write_private_key_refuses_existing(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"old")
    with pytest.raises(CertsError, match="refusing to overwrite") as info:
        write_private_key(path, b"new")
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key"]


def test_write_private_key_refuses_dangling_symlink(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CertsError):
        write_private_key(path, b"new")
    assert not (tmp_path / "elsewhere").exists()


def test_write_private_key_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private_key(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new"
    assert mode_of(path) == 0o600


def test_write_file_atomic_modes_ignore_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_file_atomic(tmp_path / "a.pem", b"a")
        write_file_atomic(tmp_path / "b.bin", b"b", mode=0o640)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "a.pem") == 0o644
    assert mode_of(tmp_path / "b.bin") == 0o640


def test_write_file_atomic_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a.pem"
    path.write_bytes(b"old")
    write_file_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pem"]


def test_write_into_missing_directory_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_private_key(tmp_path / "nope" / "k.key", b"x")
    with pytest.raises(FileNotFoundError):
        write_file_atomic(tmp_path / "nope" / "a.pem", b"x")


def test_certs_error_is_one_line() -> None:
    error = CertsError("first\nsecond", path=Path("dir/file.pem"))
    assert str(error) == "dir/file.pem: first second"
    assert str(CertsError("plain")) == "plain"


def test_certs_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(CertsError("bad", path=Path("x.pem"))))  # noqa: S301
    assert isinstance(error, CertsError)
    assert error.path == Path("x.pem")
    assert str(error) == "x.pem: bad"
