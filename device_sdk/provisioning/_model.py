"""Fleet Provisioning wire format (``iot_core_protocol.md`` §4): topics, payloads, errors.

The payloads are pydantic models validated once at the JSON edge; field names are the
service's camelCase ones. Provisioning answers carry no ``clientToken`` (§1.2).
"""

from __future__ import annotations

import enum

import pydantic

from device_sdk._exceptions import ProvisioningError, RejectedError

__all__ = [
    "CreateCertificateFromCsrResponse",
    "CreateKeysAndCertificateResponse",
    "ErrorResponse",
    "ProvisioningMethod",
    "ProvisioningRejectedError",
    "RegisterThingResponse",
    "create_from_csr_topic",
    "create_keys_topic",
    "register_thing_topic",
]


class ProvisioningMethod(enum.StrEnum):
    """How the device gets its permanent certificate."""

    CSR = "csr"
    """The device makes the key pair and sends a CSR (CreateCertificateFromCsr); the private
    key never leaves the device. Prefer this one."""
    KEYS = "keys"
    """The service makes the key pair and returns the private key (CreateKeysAndCertificate)."""


def create_keys_topic() -> str:
    """The CreateKeysAndCertificate request topic (JSON variant)."""
    return "$aws/certificates/create/json"


def create_from_csr_topic() -> str:
    """The CreateCertificateFromCsr request topic (JSON variant)."""
    return "$aws/certificates/create-from-csr/json"


def register_thing_topic(template_name: str) -> str:
    """The RegisterThing request topic of a provisioning template (JSON variant).

    Raises:
        ValueError: The template name is empty or contains MQTT special characters.
    """
    if not template_name or any(c in template_name for c in "/+#"):
        raise ValueError(f"invalid provisioning template name {template_name!r}")
    return f"$aws/provisioning-templates/{template_name}/provision/json"


class _Wire(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class CreateKeysAndCertificateResponse(_Wire):
    """``$aws/certificates/create/json/accepted``."""

    certificate_id: str = pydantic.Field(alias="certificateId", min_length=1)
    certificate_pem: str = pydantic.Field(alias="certificatePem", min_length=1)
    private_key: str = pydantic.Field(alias="privateKey", min_length=1, repr=False)
    certificate_ownership_token: str = pydantic.Field(
        alias="certificateOwnershipToken", min_length=1, repr=False
    )


class CreateCertificateFromCsrResponse(_Wire):
    """``$aws/certificates/create-from-csr/json/accepted``."""

    certificate_id: str = pydantic.Field(alias="certificateId", min_length=1)
    certificate_pem: str = pydantic.Field(alias="certificatePem", min_length=1)
    certificate_ownership_token: str = pydantic.Field(
        alias="certificateOwnershipToken", min_length=1, repr=False
    )


class RegisterThingResponse(_Wire):
    """``$aws/provisioning-templates/<name>/provision/json/accepted``."""

    thing_name: str | None = pydantic.Field(default=None, alias="thingName")
    device_configuration: dict[str, str] = pydantic.Field(
        default_factory=dict, alias="deviceConfiguration"
    )


class ErrorResponse(_Wire):
    """The body of any provisioning ``.../rejected`` message (camelCase, §4.2)."""

    status_code: int | None = pydantic.Field(default=None, alias="statusCode")
    error_code: str | None = pydantic.Field(default=None, alias="errorCode")
    error_message: str = pydantic.Field(default="", alias="errorMessage")


class ProvisioningRejectedError(ProvisioningError, RejectedError):
    """The provisioning service answered on a ``.../rejected`` topic.

    Both a :class:`~device_sdk.ProvisioningError` and a :class:`~device_sdk.RejectedError`
    (whose ``code`` is the ``errorCode`` string).

    Attributes:
        operation: ``"CreateKeysAndCertificate"``, ``"CreateCertificateFromCsr"`` or
            ``"RegisterThing"``.
        status_code: The service's HTTP-like ``statusCode`` (e.g. 400), if sent.
        error_code: The service's ``errorCode`` (e.g. ``"InvalidCertificateOwnershipToken"``).
        error_message: The service's ``errorMessage``.
    """

    def __init__(
        self,
        operation: str,
        *,
        status_code: int | None,
        error_code: str | None,
        error_message: str,
    ) -> None:
        RejectedError.__init__(self, error_code or "unknown", error_message)
        self.args = (f"{operation} rejected ({status_code} {error_code}): {error_message}",)
        self.operation = operation
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message
