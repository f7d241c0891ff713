"""Firmware store: upload, hashing, signing (checked with certs.verify_file), counters, faults."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from certs import CodeSigningKey, verify_digest, verify_file
from cloud_stubs import StatePaths
from cloud_stubs.firmware import (
    DocumentRenderer,
    FirmwareError,
    FirmwareNotFoundError,
    FirmwareStore,
    OtaPaths,
    Presigner,
    artifact_placeholder,
    ensure_signing_key,
    public_key_pem,
)
from cloud_stubs.firmware._presign import ensure_url_secret


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    return StatePaths.at(tmp_path / "state")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "robot-2.1.0.bin"
    path.write_bytes(os.urandom(150_000))
    return path


def test_upload_hashes_signs_and_stores(paths: StatePaths, image: Path) -> None:
    with FirmwareStore(paths) as store:
        m = store.upload(image, version="2.1.0", device_type="robot-pi")
        assert store.get(m.firmware_id) == m
        assert store.list_firmware() == [m]
        stored = store.image_path(m.firmware_id)
    ota = OtaPaths.of(paths)
    assert m.firmware_id.startswith("fw-")
    assert (m.version, m.device_type, m.size) == ("2.1.0", "robot-pi", 150_000)
    assert m.sha256 == hashlib.sha256(image.read_bytes()).hexdigest()
    assert stored.read_bytes() == image.read_bytes()
    assert m.file_name == image.name
    assert m.sig_alg == "ecdsa-p256-sha256"
    # the signature verifies with certs' own verifier, on the stored and the original file
    pub = ota.signing_pub.read_bytes()
    assert pub == public_key_pem(ota)
    assert verify_file(pub, stored, m.signature_der)
    assert verify_file(pub, image, base64.b64decode(m.signature))
    assert verify_digest(pub, bytes.fromhex(m.sha256), m.signature_der)
    tampered = image.read_bytes()[:-1] + b"\x00"
    assert not verify_digest(pub, hashlib.sha256(tampered).digest(), m.signature_der)
    # key on disk: 0600, and its id is the manifest's
    assert stat.S_IMODE(ota.signing_key.stat().st_mode) == 0o600
    assert CodeSigningKey.load(ota.signing_key).key_id == m.key_id
    manifest = json.loads((ota.image_dir(m.firmware_id) / "manifest.json").read_text())
    assert manifest == m.to_dict()
    assert set(manifest) == {
        "firmwareId",
        "version",
        "deviceType",
        "size",
        "sha256",
        "signature",
        "sigAlg",
        "keyId",
        "fileName",
        "createdAt",
    }


def test_key_is_created_once_and_reused(paths: StatePaths, image: Path) -> None:
    with FirmwareStore(paths) as store:
        a = store.upload(image, version="1", device_type="pi")
        b = store.upload(image, version="2", device_type="pi")
        c = store.upload(image, version="1", device_type="other")  # same version, other type
    assert a.key_id == b.key_id == c.key_id == ensure_signing_key(OtaPaths.of(paths)).key_id
    assert len({a.firmware_id, b.firmware_id, c.firmware_id}) == 3


@pytest.mark.parametrize(
    ("version", "device_type", "message"),
    [
        ("", "pi", "invalid version"),
        ("1.0 beta", "pi", "invalid version"),
        ("-1", "pi", "invalid version"),
        ("x" * 65, "pi", "invalid version"),
        ("1.0", "", "invalid device type"),
        ("1.0", "pi/zero", "invalid device type"),
    ],
)
def test_upload_rejects_bad_names(
    paths: StatePaths, image: Path, version: str, device_type: str, message: str
) -> None:
    with FirmwareStore(paths) as store, pytest.raises(FirmwareError, match=message):
        store.upload(image, version=version, device_type=device_type)


def test_upload_rejects_duplicates_and_non_files(
    paths: StatePaths, image: Path, tmp_path: Path
) -> None:
    with FirmwareStore(paths) as store:
        first = store.upload(image, version="1.0", device_type="pi")
        with pytest.raises(FirmwareError, match=f"already uploaded as {first.firmware_id}"):
            store.upload(image, version="1.0", device_type="pi")
        with pytest.raises(FirmwareError, match="not a file"):
            store.upload(tmp_path / "missing.bin", version="1.1", device_type="pi")
        with pytest.raises(FirmwareError, match="not a file"):
            store.upload(tmp_path, version="1.1", device_type="pi")
        with pytest.raises(FirmwareNotFoundError):
            store.get("fw-000000000000")
        assert store.find("not-an-id") is None
        assert len(store.list_firmware()) == 1
    # nothing half-written is left behind
    dirs = [p.name for p in OtaPaths.of(paths).firmware_dir.iterdir() if p.is_dir()]
    assert dirs == [first.firmware_id]


def test_counters_and_faults_in_the_store(paths: StatePaths) -> None:
    with FirmwareStore(paths) as store:
        store.record_download("fw-a", "t1", status=200, bytes_served=10)
        store.record_download("fw-a", "t1", status=206, bytes_served=5)
        store.record_download("fw-a", None, status=403, bytes_served=0)
        store.record_download("fw-a", "t1", status=500, bytes_served=0, faults_fired=1)
        (t1,) = store.downloads("fw-a", "t1")
        assert (t1.requests, t1.bytes_served, t1.status_200, t1.status_206) == (3, 15, 1, 1)
        assert (t1.other_status, t1.faults_fired) == (1, 1)
        total = store.download_totals("fw-a")
        assert (total.thing, total.requests, total.status_403) == ("*", 4, 1)
        store.reset_downloads("fw-a")
        assert store.downloads() == []

        rule = store.add_fault("expired_403", thing="t1", times=2)
        forever = store.add_fault("throttle:1000", times=None)
        assert [r.rule_id for r in store.matching_faults("fw-a", "t1")] == [
            rule.rule_id,
            forever.rule_id,
        ]
        assert [r.rule_id for r in store.matching_faults("fw-a", "t2")] == [forever.rule_id]
        store.use_faults([rule.rule_id, forever.rule_id])
        store.use_faults([rule.rule_id, forever.rule_id])
        assert [r.rule_id for r in store.faults(live_only=True)] == [forever.rule_id]
        spent = store.faults()[0]
        assert (spent.remaining, spent.fired) == (0, 2)
        assert store.faults()[1].remaining is None
        with pytest.raises(FirmwareError, match="times"):
            store.add_fault("expired_403", times=0)
        assert store.clear_faults() == 2
        assert store.faults() == []


def test_renderer_hook_renders_job_documents_in_jobs_messages(paths: StatePaths) -> None:
    renderer = DocumentRenderer(paths)
    fid = "fw-0123456789ab"
    doc = {"artifact": {"url": artifact_placeholder(fid)}}
    payload: dict[str, Any] = {"timestamp": 1, "execution": {"jobId": "j", "jobDocument": doc}}
    # no file server has ever run here: messages pass unchanged
    assert renderer("$aws/things/t1/jobs/notify-next", payload, 1000) is payload
    ota = OtaPaths.of(paths)
    secret = ensure_url_secret(ota)
    server = {"base_url": "https://127.0.0.1:4443", "url_ttl_s": 30}
    ota.server_file.write_text(json.dumps(server))
    presigner = Presigner("https://127.0.0.1:4443", secret, 30)
    out = renderer("$aws/things/t1/jobs/start-next/accepted", payload, 1000)
    assert out["execution"]["jobDocument"]["artifact"]["url"] == presigner.url(
        fid, 1000, thing="t1"
    )
    assert payload["execution"]["jobDocument"] is doc  # the input is not modified
    update = renderer("$aws/things/t2/jobs/j/update/accepted", {"jobDocument": doc}, 1000)
    assert update["jobDocument"]["artifact"]["url"] == presigner.url(fid, 1000, thing="t2")
    plain = {"timestamp": 1, "jobs": {}}
    assert renderer("$aws/things/t1/jobs/notify", plain, 1000) is plain
    # the server moved (restart on another port): the next rendering follows server.json
    ota.server_file.write_text(json.dumps({"base_url": "http://127.0.0.1:8080", "url_ttl_s": 5}))
    out = renderer("$aws/things/t1/jobs/$next/get/accepted", payload, 1000)
    assert out["execution"]["jobDocument"]["artifact"]["url"].startswith(
        f"http://127.0.0.1:8080/firmware/{fid}?thing=t1&expires=1005&sig="
    )
