"""The provisioning-by-claim sequence as a sans-I/O generator.

:func:`provisioning_flow` yields each :class:`Step` (a request to publish) and is sent the
:class:`~device_sdk.Response` that answered it; it returns the :class:`FlowResult`. It never
awaits, so the sequence and its error handling are tested without a broker, and the async
shell (:func:`~device_sdk.provisioning.provision_by_claim`) only moves messages::

    flow = provisioning_flow("FleetTemplate", {"SerialNumber": "42"}, csr_pem=csr)
    step = next(flow)
    while True:
        response = await channel.request(step.topic, step.body, correlate=False)
        try:
            step = flow.send(response)
        except StopIteration as done:
            result = done.value
            break
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Mapping
from typing import TypeVar

import pydantic

from device_sdk._exceptions import ProvisioningError
from device_sdk._request import Response
from device_sdk.provisioning._model import (
    CreateCertificateFromCsrResponse,
    CreateKeysAndCertificateResponse,
    ErrorResponse,
    ProvisioningRejectedError,
    RegisterThingResponse,
    create_from_csr_topic,
    create_keys_topic,
    register_thing_topic,
)

__all__ = ["FlowResult", "Step", "provisioning_flow"]

_M = TypeVar("_M", bound=pydantic.BaseModel)


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One request of the sequence: publish ``body`` to ``topic``, send back the answer."""

    operation: str
    topic: str
    body: dict[str, object]


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class FlowResult:
    """What the sequence produced.

    Attributes:
        certificate_id: The new certificate's id.
        certificate_pem: The new certificate (PEM).
        private_key_pem: The private key the service made (``keys`` method only).
        thing_name: The thing the template registered, if it creates one.
        device_configuration: The template's ``DeviceConfiguration``.
    """

    certificate_id: str
    certificate_pem: str
    private_key_pem: str | None
    thing_name: str | None
    device_configuration: dict[str, str]

    def __repr__(self) -> str:
        return (
            f"FlowResult(certificate_id={self.certificate_id!r}, thing_name={self.thing_name!r},"
            f" device_configuration={self.device_configuration!r})"
        )


def _parse(operation: str, response: Response, model: type[_M]) -> _M:
    if not response.accepted:
        try:
            err = ErrorResponse.model_validate(response.body)
        except pydantic.ValidationError:
            err = ErrorResponse(errorMessage=f"unparsable error answer: {str(response.body)[:200]}")
        raise ProvisioningRejectedError(
            operation,
            status_code=err.status_code,
            error_code=err.error_code,
            error_message=err.error_message,
        )
    try:
        return model.model_validate(response.body)
    except pydantic.ValidationError as exc:
        raise ProvisioningError(
            f"{operation}: malformed answer on {response.topic}: "
            f"{exc.error_count()} invalid field(s)"
        ) from exc


def provisioning_flow(
    template_name: str,
    parameters: Mapping[str, str],
    *,
    csr_pem: bytes | None,
) -> Generator[Step, Response, FlowResult]:
    """Get a certificate (from ``csr_pem``, or with service-made keys), then RegisterThing.

    Raises (from ``send``):
        ProvisioningRejectedError: A step was answered on its ``/rejected`` topic.
        ProvisioningError: An accepted answer is malformed.
    """
    register_topic = register_thing_topic(template_name)  # validate before anything is sent
    params = {str(k): str(v) for k, v in parameters.items()}
    private_key: str | None = None
    if csr_pem is not None:
        op = "CreateCertificateFromCsr"
        answer = yield Step(
            op, create_from_csr_topic(), {"certificateSigningRequest": csr_pem.decode()}
        )
        from_csr = _parse(op, answer, CreateCertificateFromCsrResponse)
        cert_id, cert_pem = from_csr.certificate_id, from_csr.certificate_pem
        token = from_csr.certificate_ownership_token
    else:
        op = "CreateKeysAndCertificate"
        answer = yield Step(op, create_keys_topic(), {})
        keys = _parse(op, answer, CreateKeysAndCertificateResponse)
        cert_id, cert_pem, token = (
            keys.certificate_id,
            keys.certificate_pem,
            keys.certificate_ownership_token,
        )
        private_key = keys.private_key
    op = "RegisterThing"
    answer = yield Step(
        op, register_topic, {"certificateOwnershipToken": token, "parameters": params}
    )
    registered = _parse(op, answer, RegisterThingResponse)
    return FlowResult(
        certificate_id=cert_id,
        certificate_pem=cert_pem,
        private_key_pem=private_key,
        thing_name=registered.thing_name,
        device_configuration=dict(registered.device_configuration),
    )
