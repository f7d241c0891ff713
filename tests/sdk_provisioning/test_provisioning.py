"""Fleet provisioning by claim with device_sdk, end to end on both brokers."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cloud_stubs import CertStatus, LocalIoTCore, ThingIdentity
from cloud_stubs._state import issue_claim, load_ca
from cloud_stubs.provisioning._store import ProvisioningStore
from device_sdk import (
    ConnectionLostError,
    ConnectionOptions,
    DeviceClient,
    DeviceIdentity,
    Endpoint,
    NegativeAckError,
    ProvisioningError,
    RejectedError,
)
from device_sdk.provisioning import (
    ProvisionedIdentity,
    ProvisioningRejectedError,
    provision_by_claim,
)

TEMPLATE = "FleetTemplate"
BODY: dict[str, Any] = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["", ["robot-", {"Ref": "SerialNumber"}]]}},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                "Status": "ACTIVE",
            },
        },
    },
    "DeviceConfiguration": {"FallbackUrl": "https://example.com"},
}


def _setup(cloud: LocalIoTCore) -> ThingIdentity:
    store = ProvisioningStore(cloud.paths)
    try:
        store.put_template(TEMPLATE, BODY)
    finally:
        store.close()
    return issue_claim(cloud.registry, load_ca(cloud.paths), "claim")


def _options(cloud: LocalIoTCore) -> ConnectionOptions:
    # The embedded broker speaks MQTT 3.1.1 only.
    return ConnectionOptions(mqtt_version=5 if cloud.endpoint.broker == "mosquitto" else 3)


def _endpoint(cloud: LocalIoTCore) -> Endpoint:
    return Endpoint(cloud.endpoint.host, cloud.endpoint.port, ca_file=cloud.paths.ca_cert)


def _claim_identity(claim: ThingIdentity) -> DeviceIdentity:
    return DeviceIdentity.from_files(claim.cert_file, claim.key_file, claim.ca_file)


async def _provision(cloud: LocalIoTCore, out: Path, serial: str, **kw: Any) -> ProvisionedIdentity:
    claim = _setup(cloud)
    return await provision_by_claim(
        _claim_identity(claim),
        _endpoint(cloud),
        template_name=kw.pop("template_name", TEMPLATE),
        parameters={"SerialNumber": serial},
        out_dir=out,
        transport="paho",
        options=_options(cloud),
        timeout_s=10,
        **kw,
    )


async def _telemetry_round_trip(cloud: LocalIoTCore, prov: ProvisionedIdentity) -> None:
    identity = prov.identity()
    assert identity.client_id == prov.thing_name
    topic = f"dt/{prov.thing_name}/telemetry"
    async with cloud.service_client("test-telemetry") as watcher:
        await watcher.subscribe(f"dt/{prov.thing_name}/#", qos=1)
        device = DeviceClient(identity, _endpoint(cloud), transport="paho", options=_options(cloud))
        async with device:
            await device.publish(topic, {"temp": 21.5}, wait_ack=True)
        async with asyncio.timeout(10):
            msg = await anext(aiter(watcher.messages))
    assert str(msg.topic) == topic
    assert isinstance(msg.payload, bytes)
    assert json.loads(msg.payload) == {"temp": 21.5}


@pytest.mark.parametrize("method", ["csr", "keys"])
async def test_provision_then_connect_as_the_new_thing(
    cloud: LocalIoTCore, tmp_path: Path, method: str
) -> None:
    out = tmp_path / "identity"
    prov = await _provision(cloud, out, f"{method}-1", method=method)
    assert prov.thing_name == f"robot-{method}-1"
    assert prov.device_configuration == {"FallbackUrl": "https://example.com"}
    assert (prov.cert_file, prov.key_file) == (out / "cert.pem", out / "key.pem")
    for path in (prov.cert_file, prov.key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    cert = x509.load_pem_x509_certificate(prov.cert_file.read_bytes())
    key = serialization.load_pem_private_key(prov.key_file.read_bytes(), password=None)
    assert cert.public_key() == key.public_key()
    record = cloud.registry.get_certificate(prov.certificate_id)
    assert record.status is CertStatus.ACTIVE
    assert record.thing_name == prov.thing_name
    await _telemetry_round_trip(cloud, prov)


async def test_the_csr_key_never_leaves_the_device(cloud: LocalIoTCore, tmp_path: Path) -> None:
    """With the CSR method the stub only ever saw a public key."""
    prov = await _provision(cloud, tmp_path / "id", "csr-2")
    pem = cloud.registry.get_certificate(prov.certificate_id).pem
    assert "PRIVATE KEY" not in pem
    assert "BEGIN PRIVATE KEY" in prov.key_file.read_text()  # PKCS#8 EC key made here


async def test_unknown_template_is_a_provisioning_rejection(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    out = tmp_path / "id"
    with pytest.raises(ProvisioningRejectedError) as caught:
        await _provision(cloud, out, "x", template_name="NoSuchTemplate")
    err = caught.value
    assert isinstance(err, ProvisioningError)
    assert isinstance(err, RejectedError)
    assert err.operation == "RegisterThing"
    assert (err.status_code, err.error_code) == (404, "ResourceNotFound")
    assert "NoSuchTemplate" in err.error_message
    assert err.code == "ResourceNotFound"
    assert not out.exists() or not any(out.iterdir())  # nothing written


async def test_existing_files_are_not_overwritten(cloud: LocalIoTCore, tmp_path: Path) -> None:
    out = tmp_path / "id"
    out.mkdir()
    (out / "key.pem").write_text("keep me")
    with pytest.raises(ProvisioningError, match="overwrite"):
        await _provision(cloud, out, "ow")
    assert (out / "key.pem").read_text() == "keep me"
    prov = await _provision(cloud, out, "ow", overwrite=True)
    assert stat.S_IMODE(prov.key_file.stat().st_mode) == 0o600
    assert "keep me" not in prov.key_file.read_text()


async def test_the_claim_cannot_publish_telemetry(cloud: LocalIoTCore) -> None:
    claim = _setup(cloud)
    device = DeviceClient(
        _claim_identity(claim), _endpoint(cloud), transport="paho", options=_options(cloud)
    )
    async with device:
        # MQTT 5 (mosquitto): PUBACK 0x87; MQTT 3.1.1 (embedded): the connection is closed.
        expected = NegativeAckError if cloud.endpoint.broker == "mosquitto" else ConnectionLostError
        with pytest.raises(expected) as refused:
            await device.send_now("dt/claim/telemetry", {"temp": 1}, wait_s=5)
        if isinstance(refused.value, NegativeAckError):
            assert refused.value.reason_code == 0x87
