"""DeviceIdentity: the thing name defaults to the certificate's subject CN."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_sdk import DeviceIdentity
from tests.sdk._pki import LocalPki


def _files(tmp_path: Path, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return cert, key


def test_thing_name_is_the_subject_cn(tmp_path: Path):
    issued = LocalPki().device("robot-0042")
    cert, key = _files(tmp_path, issued.cert_pem, issued.key_pem)
    assert DeviceIdentity.from_files(cert, key).thing_name == "robot-0042"
    assert DeviceIdentity.from_pem(issued.cert_pem, issued.key_pem).thing_name == "robot-0042"
    assert DeviceIdentity.from_files(cert, key, thing_name="other").thing_name == "other"


def test_reading_the_cn_does_not_load_cryptography(tmp_path: Path):
    """A daemon that only connects must not pay ~10 MB of RSS for cryptography.x509."""
    issued = LocalPki().device("sensor-7")
    cert, key = _files(tmp_path, issued.cert_pem, issued.key_pem)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from device_sdk import DeviceIdentity\n"
        f"i = DeviceIdentity.from_files(Path({str(cert)!r}), Path({str(key)!r}))\n"
        "print(i.thing_name, 'cryptography' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["sensor-7", "False"]


def test_certificate_without_cn_needs_an_explicit_thing_name(tmp_path: Path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "no cn")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_file, key_file = _files(tmp_path, cert_pem, key_pem)
    with pytest.raises(ValueError, match="no subject CN"):
        DeviceIdentity.from_files(cert_file, key_file)
    assert DeviceIdentity.from_files(cert_file, key_file, thing_name="x").thing_name == "x"
