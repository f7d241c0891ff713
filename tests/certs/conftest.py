from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certs import CertificateAuthority, KeyType


@pytest.fixture(scope="session")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(common_name="Test CA")


@pytest.fixture(scope="session")
def rsa_ca() -> CertificateAuthority:
    return CertificateAuthority.create(common_name="Test RSA CA", key_type=KeyType.RSA)


@pytest.fixture
def ca_dir(tmp_path: Path, ca: CertificateAuthority) -> Path:
    directory = tmp_path / "ca"
    directory.mkdir()
    ca.save(directory / "ca.pem", directory / "ca.key")
    return directory


def expired_ca() -> CertificateAuthority:
    return CertificateAuthority.create(not_before=datetime.now(UTC) - timedelta(days=10), days=1)


def future_ca() -> CertificateAuthority:
    return CertificateAuthority.create(not_before=datetime.now(UTC) + timedelta(days=1), days=30)
