"""The sans-I/O provisioning sequence, driven by hand (no broker)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from device_sdk import ProvisioningError, Response
from device_sdk.provisioning import (
    FlowResult,
    ProvisioningRejectedError,
    Step,
    provisioning_flow,
    register_thing_topic,
)

CERT = {"certificateId": "ab" * 32, "certificatePem": "-----BEGIN CERTIFICATE-----\n..."}


def _ok(step: Step, body: dict[str, Any]) -> Response:
    return Response(f"{step.topic}/accepted", True, body)


def _finish(flow: Generator[Step, Response, FlowResult], answer: Response) -> FlowResult:
    with pytest.raises(StopIteration) as done:
        flow.send(answer)
    result: FlowResult = done.value.value
    return result


def test_csr_flow_sends_the_csr_then_registers_with_the_token() -> None:
    flow = provisioning_flow("Fleet", {"SerialNumber": "7"}, csr_pem=b"-----CSR-----")
    first = next(flow)
    assert (first.operation, first.topic) == (
        "CreateCertificateFromCsr",
        "$aws/certificates/create-from-csr/json",
    )
    assert first.body == {"certificateSigningRequest": "-----CSR-----"}
    second = flow.send(_ok(first, {**CERT, "certificateOwnershipToken": "tok"}))
    assert second.topic == "$aws/provisioning-templates/Fleet/provision/json"
    assert second.body == {"certificateOwnershipToken": "tok", "parameters": {"SerialNumber": "7"}}
    result = _finish(flow, _ok(second, {"thingName": "robot-7", "deviceConfiguration": {"a": "b"}}))
    assert result.thing_name == "robot-7"
    assert result.device_configuration == {"a": "b"}
    assert result.private_key_pem is None
    assert "tok" not in repr(result)


def test_keys_flow_returns_the_service_made_key() -> None:
    flow = provisioning_flow("Fleet", {}, csr_pem=None)
    first = next(flow)
    assert (first.topic, first.body) == ("$aws/certificates/create/json", {})
    keys = {**CERT, "privateKey": "-----KEY-----", "certificateOwnershipToken": "t"}
    second = flow.send(_ok(first, keys))
    result = _finish(flow, _ok(second, {}))
    assert result.private_key_pem == "-----KEY-----"
    assert result.thing_name is None
    assert result.device_configuration == {}


def test_a_rejection_carries_the_service_error() -> None:
    flow = provisioning_flow("Fleet", {}, csr_pem=b"csr")
    first = next(flow)
    second = flow.send(_ok(first, {**CERT, "certificateOwnershipToken": "t"}))
    body = {
        "statusCode": 400,
        "errorCode": "InvalidCertificateOwnershipToken",
        "errorMessage": "Certificate ownership token cannot be empty.",
    }
    with pytest.raises(ProvisioningRejectedError) as caught:
        flow.send(Response(f"{second.topic}/rejected", False, body))
    err = caught.value
    assert (err.status_code, err.error_code) == (400, "InvalidCertificateOwnershipToken")
    assert err.error_message == "Certificate ownership token cannot be empty."
    assert err.operation == "RegisterThing"
    assert "InvalidCertificateOwnershipToken" in str(err)


def test_unparsable_rejection_and_malformed_acceptance() -> None:
    flow = provisioning_flow("Fleet", {}, csr_pem=b"csr")
    first = next(flow)
    with pytest.raises(ProvisioningRejectedError) as caught:
        flow.send(Response("x/rejected", False, {"statusCode": "nope"}))
    assert caught.value.error_code is None
    flow = provisioning_flow("Fleet", {}, csr_pem=b"csr")
    first = next(flow)
    with pytest.raises(ProvisioningError, match="malformed") as bad:
        flow.send(_ok(first, {"certificateId": "x"}))
    assert not isinstance(bad.value, ProvisioningRejectedError)


@pytest.mark.parametrize("name", ["", "a/b", "a+", "#"])
def test_bad_template_names_are_refused_before_sending(name: str) -> None:
    with pytest.raises(ValueError, match="template"):
        register_thing_topic(name)
    with pytest.raises(ValueError, match="template"):
        next(provisioning_flow(name, {}, csr_pem=None))
