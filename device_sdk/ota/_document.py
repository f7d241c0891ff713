"""The ``ota/1`` job document as the device validates it, and the pre-download checks.

The model mirrors ``cloud_stubs.firmware.OtaJobDocument`` (contract: ``docs/ota_cloud.md``)
with strict types; unknown keys are ignored for forward compatibility (the contract allows it;
renamed or removed fields will be ``ota/2``, which is rejected).

:func:`check_document` runs every check that can be made before downloading: schema, device
type, anti-rollback, pinned key id and the ECDSA signature over the declared SHA-256. Any
failure is an :class:`~device_sdk.ota.OtaRejectedError` (the job is ``REJECTED``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal

import pydantic
from cryptography.hazmat.primitives import serialization

from certs import CertsError, verify_digest
from device_sdk.ota._errors import OtaRejectedError, ReasonCode

__all__ = [
    "OtaArtifact",
    "OtaDocument",
    "OtaPolicy",
    "check_document",
    "compare_versions",
    "key_id_of",
    "parse_document",
    "verify_signature",
]


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        frozen=True, strict=True, extra="ignore", populate_by_name=True
    )


class OtaArtifact(_Model):
    """``artifact``: where the image is and how to check it."""

    url: str = pydantic.Field(pattern=r"^https?://")  # an unrendered placeholder is invalid
    size: int = pydantic.Field(ge=0)
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = pydantic.Field(min_length=1)
    sig_alg: Literal["ecdsa-p256-sha256"] = pydantic.Field(alias="sigAlg")
    key_id: str = pydantic.Field(alias="keyId", pattern=r"^[0-9a-f]{16}$")


class OtaPolicy(_Model):
    """``policy``."""

    reboot: Literal["auto", "defer", "none"] = "auto"
    allow_downgrade: bool = pydantic.Field(default=False, alias="allowDowngrade")
    trial_timeout_s: int = pydantic.Field(default=300, alias="trialTimeoutS", ge=1, le=86_400)
    max_boot_attempts: int = pydantic.Field(default=3, alias="maxBootAttempts", ge=1, le=10)
    health_checks: list[str] = pydantic.Field(default_factory=list, alias="healthChecks")
    min_current_version: str | None = pydantic.Field(default=None, alias="minCurrentVersion")
    bandwidth_bps: int | None = pydantic.Field(default=None, alias="bandwidthBps", ge=1)


class _Test(_Model):
    faults: list[str] = pydantic.Field(default_factory=list)


class OtaDocument(_Model):
    """The ``ota/1`` job document."""

    operation: Literal["ota"]
    schema_: Literal["ota/1"] = pydantic.Field(alias="schema")
    firmware_id: str = pydantic.Field(alias="firmwareId", pattern=r"^fw-[0-9a-f]{12}$")
    target_version: str = pydantic.Field(alias="targetVersion", min_length=1, max_length=64)
    device_type: str = pydantic.Field(alias="deviceType", min_length=1, max_length=64)
    artifact: OtaArtifact
    policy: OtaPolicy
    test: _Test | None = None


def parse_document(raw: Any) -> OtaDocument:
    """Validate a job document (a mapping as received).

    Raises:
        OtaRejectedError: ``DOCUMENT_INVALID`` (wrong schema, missing or mistyped field).
    """
    if not isinstance(raw, Mapping):
        raise OtaRejectedError(ReasonCode.DOCUMENT_INVALID, "job document is not an object")
    if raw.get("schema") != "ota/1":
        raise OtaRejectedError(
            ReasonCode.DOCUMENT_INVALID, f"unsupported schema {raw.get('schema')!r}"
        )
    try:
        return OtaDocument.model_validate(dict(raw))
    except pydantic.ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise OtaRejectedError(ReasonCode.DOCUMENT_INVALID, errors) from exc


_PART = re.compile(r"\d+|[A-Za-z]+")


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    main = re.split(r"[+]", version, maxsplit=1)[0]
    parts: list[tuple[int, int | str]] = []
    for token in _PART.findall(main):
        parts.append((1, int(token)) if token.isdigit() else (0, token.lower()))
    return tuple(parts)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, equal to or newer than ``b``.

    Numeric parts compare as numbers (``1.10 > 1.9``); alphabetic parts (pre-releases such
    as ``rc1``) sort before numbers; build metadata after ``+`` is ignored.
    """
    ka, kb = _version_key(a), _version_key(b)
    # pad with (1, 0) so that 1.0 == 1.0.0, and 1.0rc1 < 1.0 (letters sort before numbers)
    width = max(len(ka), len(kb))
    ka += ((1, 0),) * (width - len(ka))
    kb += ((1, 0),) * (width - len(kb))
    for x, y in zip(ka, kb, strict=True):
        if x != y:
            if x[0] != y[0]:
                return -1 if x[0] < y[0] else 1
            return -1 if x[1] < y[1] else 1  # type: ignore[operator]
    return 0


def key_id_of(public_key_pem: bytes) -> str:
    """The key id of a PEM public key (first 16 hex of SHA-256 over its DER SPKI)."""
    key = serialization.load_pem_public_key(public_key_pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def verify_signature(
    doc: OtaDocument, trusted_keys: Mapping[str, bytes], digest: bytes | None = None
) -> None:
    """Check the artifact signature over ``digest`` (default: the declared SHA-256).

    Raises:
        OtaRejectedError: ``UNKNOWN_KEY_ID`` or ``SIGNATURE_INVALID``.
    """
    art = doc.artifact
    pem = trusted_keys.get(art.key_id)
    if pem is None:
        raise OtaRejectedError(ReasonCode.UNKNOWN_KEY_ID, f"key {art.key_id} is not trusted")
    try:
        signature = base64.b64decode(art.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OtaRejectedError(ReasonCode.SIGNATURE_INVALID, "signature is not base64") from exc
    try:
        ok = verify_digest(pem, digest or bytes.fromhex(art.sha256), signature)
    except CertsError as exc:
        raise OtaRejectedError(ReasonCode.SIGNATURE_INVALID, str(exc)) from exc
    if not ok:
        raise OtaRejectedError(ReasonCode.SIGNATURE_INVALID, "ECDSA signature does not verify")


def check_document(
    raw: Any,
    *,
    device_type: str,
    current_version: str | None,
    trusted_keys: Mapping[str, bytes],
) -> OtaDocument:
    """All checks possible before downloading; the validated document.

    Raises:
        OtaRejectedError: With the reason code of the first failed check.
    """
    doc = parse_document(raw)
    if doc.device_type != device_type:
        raise OtaRejectedError(
            ReasonCode.DEVICE_TYPE_MISMATCH,
            f"image is for {doc.device_type!r}, this device is {device_type!r}",
        )
    policy = doc.policy
    if current_version is not None:
        if (
            policy.min_current_version is not None
            and compare_versions(current_version, policy.min_current_version) < 0
        ):
            raise OtaRejectedError(
                ReasonCode.CURRENT_VERSION_TOO_OLD,
                f"running {current_version}, needs at least {policy.min_current_version}",
            )
        if not policy.allow_downgrade and compare_versions(doc.target_version, current_version) < 0:
            raise OtaRejectedError(
                ReasonCode.DOWNGRADE_NOT_ALLOWED,
                f"{doc.target_version} is older than the running {current_version}",
            )
    verify_signature(doc, trusted_keys)
    return doc
