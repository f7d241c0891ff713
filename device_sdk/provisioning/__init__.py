"""Fleet Provisioning by claim (``iot_core_protocol.md`` §4), device side.

A device ships with a shared *claim* certificate that may only use the provisioning topics.
On first boot it trades it for its own certificate and thing, then reconnects as that thing::

    claim = DeviceIdentity.from_files("claim.pem", "claim.key")
    endpoint = Endpoint.from_json_file("endpoint.json")
    provisioned = await provision_by_claim(
        claim,
        endpoint,
        template_name="FleetTemplate",
        parameters={"SerialNumber": "0042"},
        out_dir="/var/lib/device/identity",
    )
    async with DeviceClient(provisioned.identity(), endpoint) as device:
        ...

By default the key pair is generated on the device and only a CSR is sent
(CreateCertificateFromCsr); ``method="keys"`` uses CreateKeysAndCertificate instead.
"""

from device_sdk.provisioning._client import (
    CERT_FILE_NAME,
    KEY_FILE_NAME,
    ProvisionedIdentity,
    provision_by_claim,
)
from device_sdk.provisioning._flow import FlowResult, Step, provisioning_flow
from device_sdk.provisioning._model import (
    CreateCertificateFromCsrResponse,
    CreateKeysAndCertificateResponse,
    ErrorResponse,
    ProvisioningMethod,
    ProvisioningRejectedError,
    RegisterThingResponse,
    create_from_csr_topic,
    create_keys_topic,
    register_thing_topic,
)

__all__ = [
    "CERT_FILE_NAME",
    "KEY_FILE_NAME",
    "CreateCertificateFromCsrResponse",
    "CreateKeysAndCertificateResponse",
    "ErrorResponse",
    "FlowResult",
    "ProvisionedIdentity",
    "ProvisioningMethod",
    "ProvisioningRejectedError",
    "RegisterThingResponse",
    "Step",
    "create_from_csr_topic",
    "create_keys_topic",
    "provision_by_claim",
    "provisioning_flow",
    "register_thing_topic",
]
