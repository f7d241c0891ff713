"""Fleet provisioning by claim through AWS's own ``IotIdentityClientV2``, on both brokers.

A device holding only the claim certificate gets a certificate (from its CSR, or with keys
made by the service), registers a thing with a template, then reconnects with the new
certificate as that thing and uses its shadow, exactly as the awsiotsdk samples do.
"""

from __future__ import annotations

import base64
import re
import textwrap
from pathlib import Path
from typing import Any

from awsiot import iotidentity
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certs import create_csr, generate_private_key, private_key_to_pem
from cloud_stubs import CertStatus, LocalIoTCore, ThingIdentity
from cloud_stubs._state import issue_claim, load_ca
from cloud_stubs.provisioning._store import ProvisioningStore
from tests.conformance._sdk import (
    Credentials,
    await_sdk,
    expect_rejected,
    rr_options,
    sdk_connection,
    write_identity,
)
from tests.conformance._shadow import SdkShadow

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
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "DevicePolicy"}},
    },
    "DeviceConfiguration": {"FallbackUrl": "https://example.com"},
}


def _template(cloud: LocalIoTCore, name: str = TEMPLATE, hook: str | None = None) -> None:
    store = ProvisioningStore(cloud.paths)
    try:
        store.put_template(name, BODY, hook=hook)
    finally:
        store.close()


def _claim(cloud: LocalIoTCore) -> ThingIdentity:
    return issue_claim(cloud.registry, load_ca(cloud.paths), "claim")


def _claim_creds(claim: ThingIdentity, client_id: str = "factory-line-3") -> Credentials:
    return Credentials(claim.cert_file, claim.key_file, claim.ca_file, client_id)


def _identity(conn: Any) -> iotidentity.IotIdentityClientV2:
    return iotidentity.IotIdentityClientV2(conn, rr_options())


def _register(
    client: iotidentity.IotIdentityClientV2, token: str, serial: str, template: str = TEMPLATE
) -> Any:
    return client.register_thing(
        iotidentity.RegisterThingRequest(
            template_name=template,
            certificate_ownership_token=token,
            parameters={"SerialNumber": serial},
        )
    )


async def _use_new_identity(cloud: LocalIoTCore, cert: Path, key: Path, thing: str) -> None:
    """Reconnect as the provisioned thing (client id = thing name) and use its shadow."""
    async with sdk_connection(cloud, Credentials(cert, key, cloud.paths.ca_cert, thing)) as conn:
        shadow = SdkShadow.over(conn, thing)
        assert (await expect_rejected(shadow.get())).code == 404
        acc = await await_sdk(shadow.update(reported={"provisioned": True}))
        assert acc.version == 1


async def test_p4_provision_from_csr_then_use_the_shadow(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    _template(cloud)
    claim = _claim(cloud)
    key = generate_private_key()
    csr = create_csr(key, "x").decode()
    async with sdk_connection(cloud, _claim_creds(claim)) as conn:
        identity = _identity(conn)
        created = await await_sdk(
            identity.create_certificate_from_csr(
                iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr)
            )
        )
        assert re.fullmatch(r"[0-9a-f]{64}", created.certificate_id)
        assert created.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")
        assert created.certificate_ownership_token
        record = cloud.registry.get_certificate(created.certificate_id)
        assert record.status is CertStatus.PENDING_ACTIVATION
        assert record.thing_name is None

        registered = await await_sdk(
            _register(identity, created.certificate_ownership_token, "0001")
        )
        assert registered.thing_name == "robot-0001"
        assert registered.device_configuration == {"FallbackUrl": "https://example.com"}

        # the ownership token is single use
        err = await expect_rejected(
            _register(identity, created.certificate_ownership_token, "0001")
        )
        assert err.status_code == 400
        assert err.error_code == "InvalidCertificateOwnershipToken"

    record = cloud.registry.get_certificate(created.certificate_id)
    assert record.status is CertStatus.ACTIVE
    assert record.thing_name == "robot-0001"
    cert, key_file = write_identity(
        tmp_path, "robot-0001", created.certificate_pem, private_key_to_pem(key)
    )
    await _use_new_identity(cloud, cert, key_file, "robot-0001")


async def test_p4_provision_with_service_made_keys(cloud: LocalIoTCore, tmp_path: Path) -> None:
    _template(cloud)
    claim = _claim(cloud)
    async with sdk_connection(cloud, _claim_creds(claim)) as conn:
        identity = _identity(conn)
        created = await await_sdk(
            identity.create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest())
        )
        assert re.fullmatch(r"[0-9a-f]{64}", created.certificate_id)
        assert "PRIVATE KEY-----" in created.private_key
        serialization.load_pem_private_key(created.private_key.encode(), password=None)
        cert = x509.load_pem_x509_certificate(created.certificate_pem.encode())
        assert cert.fingerprint(hashes.SHA256()).hex() == created.certificate_id
        registered = await await_sdk(
            _register(identity, created.certificate_ownership_token, "0002")
        )
        assert registered.thing_name == "robot-0002"
    cert_file, key_file = write_identity(
        tmp_path, "robot-0002", created.certificate_pem, created.private_key
    )
    await _use_new_identity(cloud, cert_file, key_file, "robot-0002")


async def test_p4_bad_ownership_tokens_are_rejected(cloud: LocalIoTCore) -> None:
    _template(cloud)
    claim = _claim(cloud)
    async with sdk_connection(cloud, _claim_creds(claim)) as conn:
        identity = _identity(conn)
        err = await expect_rejected(_register(identity, "not-a-token", "0003"))
        assert err.status_code == 400
        assert type(err.status_code) is int
        assert err.error_code == "InvalidCertificateOwnershipToken"
        assert isinstance(err.error_message, str)
        # the text IoT Core was observed to send for an empty token
        err = await expect_rejected(_register(identity, "", "0003"))
        assert (err.status_code, err.error_code) == (400, "InvalidCertificateOwnershipToken")
        assert err.error_message == "Certificate ownership token cannot be empty."
    assert not cloud.registry.has_thing("robot-0003")


def _tampered(csr_pem: bytes) -> str:
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the signature: still parses, no longer verifies
    body = "\n".join(textwrap.wrap(base64.b64encode(bytes(der)).decode(), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"


async def test_p4_csr_with_a_bad_signature_is_rejected(cloud: LocalIoTCore) -> None:
    claim = _claim(cloud)
    bad = _tampered(create_csr(generate_private_key(), "x"))
    assert not x509.load_pem_x509_csr(bad.encode()).is_signature_valid  # really tampered
    async with sdk_connection(cloud, _claim_creds(claim)) as conn:
        identity = _identity(conn)
        for csr in (bad, "not a CSR"):
            err = await expect_rejected(
                identity.create_certificate_from_csr(
                    iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr)
                )
            )
            assert err.status_code == 400
            assert isinstance(err.error_code, str)
            assert isinstance(err.error_message, str)


async def test_p4_pre_provisioning_hooks(cloud: LocalIoTCore) -> None:
    _template(cloud, "Denied", hook="tests.conformance._sdk:deny_hook")
    _template(cloud, "Hooked", hook="tests.conformance._sdk:allow_hook")
    claim = _claim(cloud)
    async with sdk_connection(cloud, _claim_creds(claim)) as conn:
        identity = _identity(conn)
        created = await await_sdk(
            identity.create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest())
        )
        token = created.certificate_ownership_token
        err = await expect_rejected(_register(identity, token, "0004", template="Denied"))
        assert err.status_code == 403
        assert isinstance(err.error_code, str)
        assert not cloud.registry.has_thing("robot-0004")
        record = cloud.registry.get_certificate(created.certificate_id)
        assert record.status is CertStatus.PENDING_ACTIVATION
        # an allowing hook's parameterOverrides are merged into the parameters
        registered = await await_sdk(_register(identity, token, "0004", template="Hooked"))
        assert registered.thing_name == "robot-hooked"
