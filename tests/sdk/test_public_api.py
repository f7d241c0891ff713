"""The curated public surface of device_sdk (and identity/endpoint value types)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

import device_sdk
import device_sdk.transport
from device_sdk import DeviceIdentity, Endpoint, FileCredentials
from tests.sdk.conftest import MosquittoBroker


@pytest.mark.parametrize("module", [device_sdk, device_sdk.transport])
def test_all_is_sorted_complete_and_importable(module: object):
    names = module.__all__  # type: ignore[attr-defined]
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(module, name) is not None, name
    public = {
        n
        for n in dir(module)
        if not n.startswith("_")
        and not isinstance(getattr(module, n), type(importlib))
        and n not in ("annotations", "TYPE_CHECKING", "Any")
    }
    assert public <= set(names), public - set(names)


def test_private_modules_hold_the_implementation():
    for name in ("DeviceClient", "OutboxConfig", "DeviceIdentity", "Limits"):
        assert getattr(device_sdk, name).__module__.startswith("device_sdk._")


def test_identity_from_files_reads_the_cn(tmp_path: Path, broker: MosquittoBroker):
    identity = broker.make_identity("robot-42")
    assert identity.thing_name == "robot-42"
    assert identity.client_id == "robot-42"
    assert isinstance(identity.credentials, FileCredentials)
    cert = identity.credentials.cert_file
    key = identity.credentials.key_file
    pem = DeviceIdentity.from_pem(cert.read_bytes(), key.read_text(), client_id="robot-42-b")
    assert (pem.thing_name, pem.client_id) == ("robot-42", "robot-42-b")
    assert "hidden" in repr(pem.credentials)
    assert key.read_text() not in repr(pem)
    with pytest.raises(ValueError, match="reserved"):
        DeviceIdentity.from_pem(cert.read_bytes(), key.read_bytes(), client_id="$GEN/x")
    with pytest.raises(ValueError, match="128"):
        DeviceIdentity.from_pem(cert.read_bytes(), key.read_bytes(), client_id="x" * 129)


def test_endpoint_from_json_file(tmp_path: Path):
    f = tmp_path / "endpoint.json"
    f.write_text(json.dumps({"host": "localhost", "port": 18883, "ca_file": "ca.pem"}))
    ep = Endpoint.from_json_file(f)
    assert ep == Endpoint("localhost", 18883, tmp_path / "ca.pem", alpn=False)
    f.write_text(json.dumps({"host": "h", "port": 8883, "ca_file": "/abs/ca.pem"}))
    assert Endpoint.from_json_file(f).ca_file == Path("/abs/ca.pem")
    f.write_text(json.dumps({"port": 1}))
    with pytest.raises(ValueError, match="invalid endpoint"):
        Endpoint.from_json_file(f)
    with pytest.raises(ValueError, match="port"):
        Endpoint("h", 0)
