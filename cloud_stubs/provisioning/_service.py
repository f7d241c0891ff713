"""Fleet Provisioning service (§4): MQTT shell over the template evaluator and the registry.

Error payloads use §4.2's shape ``{"statusCode", "errorCode", "errorMessage"}``. AWS documents
only ``InvalidCertificateOwnershipToken``; the other codes below are our best reading [U] and
live in :data:`ERRORS` so they can be corrected in one place.

Only the ``json`` topic variants are served; CBOR requests are answered on the ``cbor``
rejected topic with a JSON error body (deviation: AWS answers in CBOR).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization

from certs import (
    CertificateAuthority,
    CertsError,
    KeyType,
    generate_private_key,
)
from cloud_stubs._errors import CloudStubError, NotFoundError
from cloud_stubs._paths import StatePaths
from cloud_stubs._policy import Role
from cloud_stubs._registry import CertStatus, Registry
from cloud_stubs.provisioning._store import ProvisioningStore
from cloud_stubs.provisioning._template import TemplateError, evaluate_template
from cloud_stubs.services._runtime import Outgoing, Request

__all__ = ["ERRORS", "HOOK_TIMEOUT_SECONDS", "ProvisioningService"]

_log = logging.getLogger(__name__)

#: Pre-provisioning hooks must answer within 5 s (§4.3).
HOOK_TIMEOUT_SECONDS = 5.0

#: (statusCode, errorCode) per failure. Only the token code is documented by AWS [U].
ERRORS: dict[str, tuple[int, str]] = {
    "bad_json": (400, "InvalidPayload"),
    "bad_csr": (400, "InvalidCertificateSigningRequest"),
    "bad_token": (400, "InvalidCertificateOwnershipToken"),
    "bad_parameters": (400, "InvalidParameters"),
    "no_template": (404, "ResourceNotFound"),
    "template": (400, "InvalidRequest"),
    "denied": (403, "AccessDenied"),
    "internal": (500, "InternalFailure"),
}

_CREATE = re.compile(r"^\$aws/certificates/create/(json|cbor)$")
_CREATE_CSR = re.compile(r"^\$aws/certificates/create-from-csr/(json|cbor)$")
_PROVISION = re.compile(r"^\$aws/provisioning-templates/([^/]+)/provision/(json|cbor)$")


def _error(topic: str, kind: str, message: str, deliver_to: str | None) -> list[Outgoing]:
    status, code = ERRORS[kind]
    body = {"statusCode": status, "errorCode": code, "errorMessage": message}
    return [Outgoing(f"{topic}/rejected", json.dumps(body).encode(), deliver_to=deliver_to)]


def _ok(topic: str, body: dict[str, Any], deliver_to: str | None) -> list[Outgoing]:
    return [Outgoing(f"{topic}/accepted", json.dumps(body).encode(), deliver_to=deliver_to)]


class ProvisioningService:
    """CreateKeysAndCertificate, CreateCertificateFromCsr and RegisterThing."""

    name = "provisioning"

    def __init__(self, paths: StatePaths, ca: CertificateAuthority) -> None:
        """Use the state directory's registry and CA."""
        self._paths = paths
        self._ca = ca
        self._registry = Registry(paths)
        self._store = ProvisioningStore(paths)

    @property
    def filters(self) -> Sequence[str]:
        """Request topics."""
        return (
            "$aws/certificates/create/+",
            "$aws/certificates/create-from-csr/+",
            "$aws/provisioning-templates/+/provision/+",
        )

    def accepts(self, topic: str) -> bool:
        """Request topics only (not our own accepted/rejected)."""
        return bool(_CREATE.match(topic) or _CREATE_CSR.match(topic) or _PROVISION.match(topic))

    def close(self) -> None:
        """Close database connections."""
        self._registry.close()
        self._store.close()

    async def tick(self, now: float) -> list[Outgoing]:
        """Delete certificates whose ownership token expired unused (as IoT Core does)."""
        for cert_id in self._store.expired_unused_certificates(now=now):
            try:
                rec = self._registry.get_certificate(cert_id)
            except NotFoundError:
                continue
            if rec.thing_name is None and rec.status is CertStatus.PENDING_ACTIVATION:
                self._registry.delete_certificate(cert_id)
        return []

    async def handle(self, request: Request) -> list[Outgoing]:
        """Answer one provisioning request."""
        topic, who = request.topic, request.client_id
        if topic.endswith("/cbor"):
            return _error(topic, "bad_json", "CBOR payloads are not supported by the stub", who)
        try:
            body = json.loads(request.payload or b"{}")
        except (ValueError, UnicodeDecodeError):
            return _error(topic, "bad_json", "Payload is not valid JSON", who)
        if not isinstance(body, dict):
            return _error(topic, "bad_json", "Payload must be a JSON object", who)
        try:
            if _CREATE.match(topic):
                return await self._create_keys(topic, who)
            if _CREATE_CSR.match(topic):
                return await self._create_from_csr(topic, body, who)
            m = _PROVISION.match(topic)
            assert m is not None  # noqa: S101 - accepts() guarantees one of the three
            return await self._register_thing(topic, m.group(1), body, who)
        except (CloudStubError, CertsError, OSError) as exc:
            _log.exception("provisioning request on %s failed", topic)
            return _error(topic, "internal", f"Internal failure: {exc}", who)

    async def _create_keys(self, topic: str, who: str | None) -> list[Outgoing]:
        # AWS returns an RSA 2048 key ("-----BEGIN RSA PRIVATE KEY-----") [U]; we follow.
        def make() -> tuple[bytes, bytes, str]:
            key = generate_private_key(KeyType.RSA)
            from certs import create_csr  # noqa: PLC0415 - keep the import local to the thread

            issued = self._ca.sign_csr(create_csr(key, "provisioned-device"))
            pkcs1 = key.private_bytes(  # "-----BEGIN RSA PRIVATE KEY-----", as AWS returns
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            return issued.cert_pem, pkcs1, issued.certificate_id

        cert_pem, key_pem, cert_id = await asyncio.to_thread(make)
        self._registry.register_certificate(
            cert_pem, role=Role.DEVICE, status=CertStatus.PENDING_ACTIVATION
        )
        token = self._store.new_token(cert_id)
        return _ok(
            topic,
            {
                "certificateId": cert_id,
                "certificatePem": cert_pem.decode(),
                "privateKey": key_pem.decode(),
                "certificateOwnershipToken": token,
            },
            who,
        )

    async def _create_from_csr(
        self, topic: str, body: dict[str, Any], who: str | None
    ) -> list[Outgoing]:
        csr = body.get("certificateSigningRequest")
        if not isinstance(csr, str) or not csr.strip():
            return _error(topic, "bad_csr", "certificateSigningRequest is required", who)
        try:
            issued = self._ca.sign_csr(csr.encode())
        except CertsError as exc:
            return _error(topic, "bad_csr", f"Invalid certificate signing request: {exc}", who)
        self._registry.register_certificate(
            issued.cert_pem, role=Role.DEVICE, status=CertStatus.PENDING_ACTIVATION
        )
        token = self._store.new_token(issued.certificate_id)
        return _ok(
            topic,
            {
                "certificateId": issued.certificate_id,
                "certificatePem": issued.cert_pem.decode(),
                "certificateOwnershipToken": token,
            },
            who,
        )

    async def _register_thing(
        self, topic: str, template_name: str, body: dict[str, Any], who: str | None
    ) -> list[Outgoing]:
        token = body.get("certificateOwnershipToken")
        if not isinstance(token, str) or not token:
            return _error(topic, "bad_token", "Certificate ownership token cannot be empty.", who)
        cert_id = self._store.peek_token(token)
        if cert_id is None:
            return _error(
                topic, "bad_token", "Certificate ownership token is invalid or expired.", who
            )
        params = body.get("parameters", {})
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            return _error(topic, "bad_parameters", "parameters must map strings to strings", who)
        try:
            template = self._store.get_template(template_name)
        except NotFoundError:
            return _error(topic, "no_template", f"Template {template_name} does not exist", who)
        if template.hook:
            verdict = await self._run_hook(template.hook, template_name, cert_id, params, who)
            if verdict is None:
                return _error(topic, "denied", "Pre-provisioning hook denied provisioning", who)
            params = {**params, **verdict}
        try:
            result = evaluate_template(template.body, params, certificate_id=cert_id)
        except TemplateError as exc:
            kind = "bad_parameters" if "Parameter" in str(exc) else "template"
            return _error(topic, kind, str(exc), who)
        for group in result.thing_groups:
            if group not in self._registry.list_groups():
                return _error(topic, "template", f"Thing group {group} does not exist", who)
        if result.thing_name is not None:
            self._registry.create_thing(result.thing_name, thing_type=result.thing_type)
            if result.attributes:
                self._registry.update_thing(result.thing_name, attributes=result.attributes)
            for group in result.thing_groups:
                self._registry.add_to_group(group, [result.thing_name])
            self._registry.attach_certificate(cert_id, result.thing_name)
        self._registry.set_certificate_status(cert_id, CertStatus(result.certificate_status))
        self._store.consume_token(token)
        reply: dict[str, Any] = {"deviceConfiguration": result.device_configuration}
        if result.thing_name is not None:
            reply["thingName"] = result.thing_name
        return _ok(topic, reply, who)

    async def _run_hook(
        self, hook: str, template_name: str, cert_id: str, params: dict[str, str], who: str | None
    ) -> dict[str, str] | None:
        """Call the pre-provisioning hook; None means deny (also on error or timeout)."""
        module_name, _, func_name = hook.partition(":")
        event = {
            "claimCertificateId": None,
            "certificateId": cert_id,
            "certificatePem": self._registry.get_certificate(cert_id).pem,
            "templateArn": f"arn:aws:iot:local:000000000000:provisioningtemplate/{template_name}",
            "clientId": who,
            "parameters": dict(params),
        }
        try:
            func = getattr(importlib.import_module(module_name), func_name)
            if inspect.iscoroutinefunction(func):
                answer = await asyncio.wait_for(func(event), HOOK_TIMEOUT_SECONDS)
            else:
                answer = await asyncio.wait_for(
                    asyncio.to_thread(func, event), HOOK_TIMEOUT_SECONDS
                )
        except TimeoutError:
            _log.warning("pre-provisioning hook %s timed out after %ss", hook, HOOK_TIMEOUT_SECONDS)
            return None
        except Exception:  # noqa: BLE001 - a failing hook denies, as on AWS
            _log.exception("pre-provisioning hook %s failed", hook)
            return None
        if not isinstance(answer, dict) or answer.get("allowProvisioning") is not True:
            return None
        overrides = answer.get("parameterOverrides") or {}
        if not isinstance(overrides, dict):
            return None
        return {str(k): str(v) for k, v in overrides.items()}
