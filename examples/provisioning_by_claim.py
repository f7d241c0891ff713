"""Fleet provisioning by claim: trade a shared claim certificate for the device's own identity.

Run against the local IoT Core::

    cloud-stubs up --state-dir state                      # in another terminal
    cat > fleet-template.json <<'EOF'
    {"Parameters": {"SerialNumber": {"Type": "String"}},
     "Resources": {
       "thing": {"Type": "AWS::IoT::Thing", "Properties": {
         "ThingName": {"Fn::Join": ["", ["robot-", {"Ref": "SerialNumber"}]]}}},
       "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
         "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}}},
     "DeviceConfiguration": {"telemetryTopic": "dt"}}
    EOF
    cloud-stubs provisioning template create FleetTemplate --file fleet-template.json \\
        --state-dir state
    cloud-stubs provisioning claim create --template FleetTemplate --state-dir state
    python examples/provisioning_by_claim.py --state-dir state --serial 0042

The device connects with the claim certificate (``state/claims/claim/``) under a unique client
id, generates its key pair locally and sends only a CSR (``--method keys`` lets the service
make the key instead), registers thing ``robot-<serial>`` with the template, and stores
``cert.pem``/``key.pem`` (mode 0600) in ``--out-dir`` (default ``state/devices/<serial>``).
Then it reconnects as the new thing and publishes one message to ``dt/robot-<serial>/hello``,
which the claim certificate itself may not do. A second run finds the files and skips
provisioning.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from device_sdk import ConnectionOptions, DeviceClient, DeviceIdentity, Endpoint
from device_sdk.provisioning import (
    CERT_FILE_NAME,
    KEY_FILE_NAME,
    ProvisionedIdentity,
    ProvisioningRejectedError,
    provision_by_claim,
)
from device_sdk.transport import TransportKind


def endpoint_for(state_dir: Path) -> tuple[Endpoint, ConnectionOptions, TransportKind]:
    """The stub's endpoint; the embedded broker speaks MQTT 3.1.1 only (paho transport)."""
    path = state_dir / "endpoint.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: start 'cloud-stubs up --state-dir {state_dir}'")
    if json.loads(path.read_text()).get("broker") == "embedded":
        return Endpoint.from_json_file(path), ConnectionOptions(mqtt_version=3), "paho"
    return Endpoint.from_json_file(path), ConnectionOptions(), "auto"


async def main(args: argparse.Namespace) -> None:
    state: Path = args.state_dir
    endpoint, options, transport = endpoint_for(state)
    out_dir: Path = args.out_dir or state / "devices" / args.serial
    thing = f"robot-{args.serial}"
    if (out_dir / CERT_FILE_NAME).exists() and (out_dir / KEY_FILE_NAME).exists():
        print(f"already provisioned: using {out_dir}")
        identity = DeviceIdentity.from_files(
            out_dir / CERT_FILE_NAME, out_dir / KEY_FILE_NAME, endpoint.ca_file, thing_name=thing
        )
    else:
        claim_dir = state / "claims" / args.claim
        claim = DeviceIdentity.from_files(
            claim_dir / "cert.pem", claim_dir / "key.pem", endpoint.ca_file
        )
        try:
            provisioned: ProvisionedIdentity = await provision_by_claim(
                claim,
                endpoint,
                template_name=args.template,
                parameters={"SerialNumber": args.serial},
                out_dir=out_dir,
                method=args.method,
                transport=transport,
                options=options,
            )
        except ProvisioningRejectedError as exc:
            raise SystemExit(
                f"provisioning refused: {exc.status_code} {exc.error_code}: {exc.error_message}"
            ) from exc
        print(
            f"provisioned thing {provisioned.thing_name}: certificate "
            f"{provisioned.certificate_id[:16]}…, files in {out_dir}, "
            f"device configuration {provisioned.device_configuration}"
        )
        identity = provisioned.identity()
        thing = identity.thing_name
    async with DeviceClient(identity, endpoint, transport=transport, options=options) as device:
        await device.publish(f"dt/{thing}/hello", {"hello": "world"}, wait_ack=True)
        print(
            f"connected as {thing} (client id {identity.client_id}) and published dt/{thing}/hello"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".iot-state"))
    parser.add_argument("--serial", default="0042", help="SerialNumber template parameter")
    parser.add_argument("--template", default="FleetTemplate")
    parser.add_argument("--claim", default="claim", help="name given to 'claim create'")
    parser.add_argument("--method", choices=["csr", "keys"], default="csr")
    parser.add_argument("--out-dir", type=Path, help="where cert.pem and key.pem go")
    asyncio.run(main(parser.parse_args()))
