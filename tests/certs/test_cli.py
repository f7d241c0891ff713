import base64
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner, Result

from certs import CertificateAuthority, create_csr, generate_private_key, inspect_certificate
from certs.cli import app
from tests.certs.conftest import expired_ca
from tests.certs.helpers import tamper_csr_signature

runner = CliRunner()


def run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str | Path) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def ok_json(*args: str | Path) -> dict[str, object]:
    data = json.loads(ok(*args, "--json").stdout)
    assert isinstance(data, dict)
    return data


def assert_bad_input(result: Result, *names: str) -> str:
    """Exit 2, exactly one ``iot-certs: error:`` line on stderr naming the file(s), no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("iot-certs: error: ")
    for name in names:
        assert name in lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_create(tmp_path: Path) -> None:
    data = ok_json("ca", "create", "--out-dir", tmp_path / "ca", "--cn", "My CA", "--days", "30")
    cert_path, key_path = tmp_path / "ca" / "ca.pem", tmp_path / "ca" / "ca.key"
    assert data["cert"] == str(cert_path)
    assert data["key"] == str(key_path)
    assert mode_of(key_path) == 0o600
    loaded = CertificateAuthority.load(cert_path, key_path)
    assert data["certificate_id"] == inspect_certificate(cert_path).fingerprint_sha256
    assert loaded.cert.subject.rfc4514_string() == "CN=My CA"


def test_ca_create_rsa_human_output(tmp_path: Path) -> None:
    result = ok("ca", "create", "--out-dir", tmp_path, "--key-type", "rsa")
    assert "RSA 2048" in result.stdout
    assert inspect_certificate(tmp_path / "ca.pem").key_type == "RSA 2048"


def test_ca_create_refuses_existing_key_without_force(tmp_path: Path) -> None:
    ok("ca", "create", "--out-dir", tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    line = assert_bad_input(run("ca", "create", "--out-dir", tmp_path), "ca.key")
    assert "refusing to overwrite" in line
    assert (tmp_path / "ca.key").read_bytes() == before
    ok("ca", "create", "--out-dir", tmp_path, "--force")
    assert (tmp_path / "ca.key").read_bytes() != before
    assert mode_of(tmp_path / "ca.key") == 0o600


def test_server(tmp_path: Path, ca_dir: Path, ca: CertificateAuthority) -> None:
    out = tmp_path / "out"
    data = ok_json(
        "server", "--ca-dir", ca_dir, "--out-dir", out,
        "--host", "localhost", "--host", "broker.local", "--ip", "127.0.0.1", "--ip", "::1",
    )  # fmt: skip
    assert data["common_name"] == "localhost"
    load_cert(out / "server.pem").verify_directly_issued_by(ca.cert)
    assert inspect_certificate(out / "server.pem").sans == (
        "localhost", "broker.local", "127.0.0.1", "::1",
    )  # fmt: skip
    assert mode_of(out / "server.key") == 0o600


def test_server_defaults(tmp_path: Path, ca_dir: Path) -> None:
    ok("server", "--ca-dir", ca_dir, "--out-dir", tmp_path)
    assert inspect_certificate(tmp_path / "server.pem").sans == ("localhost", "127.0.0.1")


def test_device(tmp_path: Path, ca_dir: Path, ca: CertificateAuthority) -> None:
    data = ok_json("device", "thing-1", "--ca-dir", ca_dir, "--out-dir", tmp_path / "d")
    cert_path, key_path = tmp_path / "d" / "thing-1.pem", tmp_path / "d" / "thing-1.key"
    cert = load_cert(cert_path)
    cert.verify_directly_issued_by(ca.cert)
    assert data["certificate_id"] == inspect_certificate(cert_path).fingerprint_sha256
    assert data["common_name"] == "thing-1"
    assert mode_of(key_path) == 0o600


def test_device_existing_key_needs_force(tmp_path: Path, ca_dir: Path) -> None:
    ok("device", "t", "--ca-dir", ca_dir, "--out-dir", tmp_path)
    assert_bad_input(run("device", "t", "--ca-dir", ca_dir, "--out-dir", tmp_path), "t.")
    ok("device", "t", "--ca-dir", ca_dir, "--out-dir", tmp_path, "--force")


def test_device_invalid_thing_name(tmp_path: Path, ca_dir: Path) -> None:
    line = assert_bad_input(run("device", "bad name", "--ca-dir", ca_dir, "--out-dir", tmp_path))
    assert "invalid thing name" in line


def test_device_bulk(tmp_path: Path, ca_dir: Path, ca: CertificateAuthority) -> None:
    out = tmp_path / "fleet"
    data = ok_json(
        "device", "--count", "12", "--prefix", "sim-", "--ca-dir", ca_dir, "--out-dir", out
    )
    assert data["count"] == 12
    certificates = data["certificates"]
    assert isinstance(certificates, list)
    assert len({c["certificate_id"] for c in certificates}) == 12
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"sim-{i:02d}.{ext}" for i in range(12) for ext in ("key", "pem")])
    load_cert(out / "sim-11.pem").verify_directly_issued_by(ca.cert)
    assert all(mode_of(p) == 0o600 for p in out.glob("*.key"))


def test_device_bulk_refuses_before_issuing(tmp_path: Path, ca_dir: Path) -> None:
    out = tmp_path / "out"
    ok("device", "device-3", "--ca-dir", ca_dir, "--out-dir", out)
    result = run("device", "--count", "5", "--ca-dir", ca_dir, "--out-dir", out)
    assert_bad_input(result, "device-3.")
    assert sorted(p.name for p in out.iterdir()) == ["device-3.key", "device-3.pem"]


def test_device_usage_errors(tmp_path: Path, ca_dir: Path) -> None:
    assert run("device", "--ca-dir", ca_dir, "--out-dir", tmp_path).exit_code == 2
    both = run("device", "x", "--count", "2", "--ca-dir", ca_dir, "--out-dir", tmp_path)
    assert both.exit_code == 2
    assert run("device", "x", "--out-dir", tmp_path).exit_code == 2  # missing --ca-dir
    assert (
        run("device", "x", "--ca-dir", ca_dir, "--out-dir", tmp_path, "--count", "0").exit_code == 2
    )
    assert run("no-such-command").exit_code == 2
    assert run().exit_code == 2


def test_claim(tmp_path: Path, ca_dir: Path) -> None:
    data = ok_json("claim", "--ca-dir", ca_dir, "--out-dir", tmp_path, "--name", "fab-claim")
    assert data["common_name"] == "fab-claim"
    info = inspect_certificate(tmp_path / "fab-claim.pem")
    assert "OU=fleet-provisioning-claim" in info.subject
    assert mode_of(tmp_path / "fab-claim.key") == 0o600


def test_csr_create_and_sign(tmp_path: Path, ca_dir: Path, ca: CertificateAuthority) -> None:
    key, csr, cert = tmp_path / "d.key", tmp_path / "d.csr", tmp_path / "d.pem"
    ok("csr", "create", "--cn", "csr-dev", "--key-out", key, "--csr-out", csr)
    assert mode_of(key) == 0o600
    data = ok_json("csr", "sign", csr, "--ca-dir", ca_dir, "--out", cert)
    assert data["common_name"] == "csr-dev"
    issued = load_cert(cert)
    issued.verify_directly_issued_by(ca.cert)
    assert issued.public_key() == x509.load_pem_x509_csr(csr.read_bytes()).public_key()
    ok("csr", "sign", csr, "--ca-dir", ca_dir, "--out", tmp_path / "o.pem", "--cn", "other")
    assert inspect_certificate(tmp_path / "o.pem").common_name == "other"


def test_csr_create_refuses_existing_key(tmp_path: Path) -> None:
    key = tmp_path / "d.key"
    key.write_bytes(b"precious")
    result = run("csr", "create", "--cn", "x", "--key-out", key, "--csr-out", tmp_path / "d.csr")
    assert_bad_input(result, "d.key")
    assert key.read_bytes() == b"precious"


def test_csr_sign_tampered_signature(tmp_path: Path, ca_dir: Path) -> None:
    csr = tmp_path / "bad.csr"
    csr.write_bytes(tamper_csr_signature(create_csr(generate_private_key(), "evil")))
    result = run("csr", "sign", csr, "--ca-dir", ca_dir, "--out", tmp_path / "evil.pem")
    line = assert_bad_input(result, "bad.csr")
    assert "signature does not verify" in line
    assert not (tmp_path / "evil.pem").exists()


def test_csr_sign_not_a_csr(tmp_path: Path, ca_dir: Path) -> None:
    result = run("csr", "sign", ca_dir / "ca.pem", "--ca-dir", ca_dir, "--out", tmp_path / "x.pem")
    assert_bad_input(result, "ca.pem", "certificate signing request")


def test_signing_sign_verify(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    created = ok_json("signing-key", "create", "--out-dir", keys)
    assert mode_of(keys / "signing.key") == 0o600
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"\x7fELF" + bytes(100_000))
    sig = tmp_path / "fw.sig"
    signed = ok_json("sign", firmware, "--key", keys / "signing.key", "--out", sig)
    assert signed["key_id"] == created["key_id"]
    assert isinstance(signed["signature"], str)
    assert base64.b64decode(signed["signature"]) == base64.b64decode(sig.read_bytes())
    verified = ok_json("verify", firmware, "--pub", keys / "signing.pub", "--signature", sig)
    assert verified["valid"] is True
    human = ok("sign", firmware, "--key", keys / "signing.key")
    assert str(created["key_id"]) in human.stdout
    assert "sha256" in human.stdout
    # raw DER signature files are accepted too
    raw = tmp_path / "fw.der"
    raw.write_bytes(base64.b64decode(sig.read_bytes()))
    ok("verify", firmware, "--pub", keys / "signing.pub", "--signature", raw)


def test_verify_invalid_exits_1(tmp_path: Path) -> None:
    ok("signing-key", "create", "--out-dir", tmp_path / "a")
    ok("signing-key", "create", "--out-dir", tmp_path / "b")
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"firmware v1")
    sig = tmp_path / "fw.sig"
    ok("sign", firmware, "--key", tmp_path / "a" / "signing.key", "--out", sig)
    wrong_key = run("verify", firmware, "--pub", tmp_path / "b" / "signing.pub", "--signature", sig)
    assert wrong_key.exit_code == 1
    assert "False" in wrong_key.stdout
    firmware.write_bytes(b"firmware v2")
    tampered = run(
        "verify", firmware, "--pub", tmp_path / "a" / "signing.pub", "--signature", sig, "--json"
    )
    assert tampered.exit_code == 1
    assert json.loads(tampered.stdout)["valid"] is False


def test_signing_key_create_refuses_overwrite(tmp_path: Path) -> None:
    ok("signing-key", "create", "--out-dir", tmp_path)
    assert_bad_input(run("signing-key", "create", "--out-dir", tmp_path), "signing.key")
    ok("signing-key", "create", "--out-dir", tmp_path, "--force")


def test_sign_and_verify_bad_input(tmp_path: Path, ca_dir: Path) -> None:
    ok("signing-key", "create", "--out-dir", tmp_path)
    missing = tmp_path / "missing.bin"
    assert_bad_input(run("sign", missing, "--key", tmp_path / "signing.key"), "missing.bin")
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"x")
    assert_bad_input(run("sign", firmware, "--key", ca_dir / "ca.pem"), "ca.pem")
    sig = tmp_path / "fw.sig"
    ok("sign", firmware, "--key", tmp_path / "signing.key", "--out", sig)
    result = run("verify", firmware, "--pub", ca_dir / "ca.pem", "--signature", sig)
    assert_bad_input(result, "ca.pem", "public key")
    result = run("verify", firmware, "--pub", tmp_path / "signing.pub", "--signature", missing)
    assert_bad_input(result, "missing.bin")


def test_inspect(tmp_path: Path, ca_dir: Path) -> None:
    data = ok_json("inspect", ca_dir / "ca.pem")
    assert data["is_ca"] is True
    assert data["key_type"] == "EC P-256"
    human = ok("inspect", ca_dir / "ca.pem").stdout
    for label in ("subject:", "issuer:", "fingerprint:", "not_after:", "key_type:", "sans:"):
        assert label in human
    assert str(data["fingerprint_sha256"]) in human


def test_inspect_bad_input(tmp_path: Path) -> None:
    assert_bad_input(run("inspect", tmp_path / "nope.pem"), "nope.pem", "file not found")
    (tmp_path / "junk.pem").write_text("junk")
    assert_bad_input(run("inspect", tmp_path / "junk.pem"), "junk.pem", "not a")
    assert_bad_input(run("inspect", tmp_path), str(tmp_path))


@pytest.mark.parametrize("command", ["device", "claim", "server", "csr-sign"])
def test_ca_errors_for_issuing_commands(tmp_path: Path, ca_dir: Path, command: str) -> None:
    def invoke(directory: Path) -> Result:
        out = tmp_path / "out"
        if command == "device":
            return run("device", "t", "--ca-dir", directory, "--out-dir", out)
        if command == "csr-sign":
            csr = tmp_path / "ok.csr"
            csr.write_bytes(create_csr(generate_private_key(), "t"))
            return run("csr", "sign", csr, "--ca-dir", directory, "--out", out / "c.pem")
        return run(command, "--ca-dir", directory, "--out-dir", out)

    # missing CA directory
    assert_bad_input(invoke(tmp_path / "nowhere"), "ca.pem", "file not found")
    # not a certificate
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ca.pem").write_text("not a certificate\n")
    (broken / "ca.key").write_bytes((ca_dir / "ca.key").read_bytes())
    assert_bad_input(invoke(broken), "ca.pem", "not a PEM certificate")
    # wrong key for the certificate
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    CertificateAuthority.create().save(wrong / "other.pem", wrong / "ca.key")
    (wrong / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    line = assert_bad_input(invoke(wrong), "ca.key")
    assert line == (
        f"iot-certs: error: {wrong / 'ca.key'}: private key does not match certificate "
        f"{wrong / 'ca.pem'}"
    )
    # expired CA
    expired = tmp_path / "expired"
    expired.mkdir()
    expired_ca().save(expired / "ca.pem", expired / "ca.key")
    assert_bad_input(invoke(expired), "ca.pem", "expired")
    assert not (tmp_path / "out").exists()


def test_main_usage_error_and_bad_input_exit_2(tmp_path: Path) -> None:
    code = "from certs.cli import main; main()"
    usage = subprocess.run(
        [sys.executable, "-c", code, "device"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2
    bad = subprocess.run(
        [sys.executable, "-c", code, "inspect", str(tmp_path / "nope.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr == f"iot-certs: error: {tmp_path / 'nope.pem'}: file not found\n"
    assert bad.stdout == ""
