"""The ``ota/1`` job document and the rendering of its presigned-URL placeholder.

The document a deployment puts in each batch job (contract: ``docs/ota_cloud.md``)::

    {"operation": "ota", "schema": "ota/1",
     "firmwareId": "fw-…", "targetVersion": "1.4.0", "deviceType": "robot-pi",
     "artifact": {"url": "${aws:iot:s3-presigned-url:cloud-stubs://firmware/fw-…}",
                  "size": 1048576, "sha256": "<64 hex>", "signature": "<base64 DER>",
                  "sigAlg": "ecdsa-p256-sha256", "keyId": "<16 hex>"},
     "policy": {"reboot": "auto", "allowDowngrade": false, "trialTimeoutS": 300,
                "maxBootAttempts": 3, "healthChecks": []}}

As in AWS IoT, the stored document keeps the ``${aws:iot:s3-presigned-url:…}`` placeholder and
every delivery to a device (start-next, describe, notify-next, update with
``includeJobDocument``) carries a freshly presigned URL: :func:`render_document` (pure) does the
replacement; :class:`DocumentRenderer` is the hook the jobs service calls on outgoing messages.
A device whose URL expired (HTTP 403) re-describes its job execution and gets a new one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud_stubs._paths import StatePaths
from cloud_stubs.firmware._errors import FirmwareError
from cloud_stubs.firmware._paths import OtaPaths
from cloud_stubs.firmware._presign import DEFAULT_URL_TTL_S, Presigner
from cloud_stubs.firmware._store import FirmwareManifest

__all__ = [
    "OTA_SCHEMA",
    "PRESIGNED_URL_PLACEHOLDER",
    "DocumentRenderer",
    "OtaJobDocument",
    "OtaPolicy",
    "artifact_placeholder",
    "build_ota_document",
    "render_document",
]

OTA_SCHEMA: Final = "ota/1"
#: ``${aws:iot:s3-presigned-url:<key>}``: the regular expression of AWS's placeholder.
PRESIGNED_URL_PLACEHOLDER: Final = re.compile(r"\$\{aws:iot:s3-presigned-url:([^}]*)\}")
#: Keys of placeholders that name an object of the stub's firmware store.
STORE_KEY_PREFIX: Final = "cloud-stubs://firmware/"
_FIRMWARE_ID: Final = re.compile(r"fw-[0-9a-f]{12}")

_REBOOT_MODES: Final = ("auto", "defer", "none")
_MAX_TRIAL_S: Final = 86_400
_MAX_BOOT_ATTEMPTS: Final = 10


def artifact_placeholder(firmware_id: str) -> str:
    """The ``artifact.url`` stored in job documents for a firmware of the store."""
    return f"${{aws:iot:s3-presigned-url:{STORE_KEY_PREFIX}{firmware_id}}}"


@dataclass(frozen=True, slots=True)
class OtaPolicy:
    """The ``policy`` object: how the device installs (it decides; the cloud only says).

    Attributes:
        reboot: ``auto`` (reboot into the new image when installed), ``defer`` (wait for a
            local trigger), ``none`` (no reboot needed, e.g. an application file).
        allow_downgrade: Whether ``targetVersion`` may be older than the running version.
        trial_timeout_s: Seconds the trial boot may take to pass its health checks (1-86400).
        max_boot_attempts: Trial boots before the device rolls back (1-10).
        health_checks: Names of the device's health checks that must pass before commit.
        min_current_version: Refuse (REJECTED) when the running version is older, if set.
        bandwidth_bps: Cap on the download rate in bytes per second, if set.
    """

    reboot: str = "auto"
    allow_downgrade: bool = False
    trial_timeout_s: int = 300
    max_boot_attempts: int = 3
    health_checks: tuple[str, ...] = field(default_factory=tuple)
    min_current_version: str | None = None
    bandwidth_bps: int | None = None

    def __post_init__(self) -> None:
        if self.reboot not in _REBOOT_MODES:
            raise FirmwareError(f"policy.reboot must be one of {', '.join(_REBOOT_MODES)}")
        if not _int_in(self.trial_timeout_s, 1, _MAX_TRIAL_S):
            raise FirmwareError(f"policy.trialTimeoutS must be an integer 1-{_MAX_TRIAL_S}")
        if not _int_in(self.max_boot_attempts, 1, _MAX_BOOT_ATTEMPTS):
            raise FirmwareError(f"policy.maxBootAttempts must be an integer 1-{_MAX_BOOT_ATTEMPTS}")
        if not isinstance(self.allow_downgrade, bool):
            raise FirmwareError("policy.allowDowngrade must be true or false")
        if not all(isinstance(c, str) and c for c in self.health_checks):
            raise FirmwareError("policy.healthChecks must be a list of non-empty strings")
        if self.min_current_version is not None and not (
            isinstance(self.min_current_version, str) and self.min_current_version
        ):
            raise FirmwareError("policy.minCurrentVersion must be a non-empty string")
        if self.bandwidth_bps is not None and not _int_in(self.bandwidth_bps, 1, 2**40):
            raise FirmwareError("policy.bandwidthBps must be a positive integer")

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> OtaPolicy:
        """Build from the document's camelCase form; missing keys take the defaults.

        Raises:
            FirmwareError: Not an object, an unknown key, or a bad value.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise FirmwareError("policy must be a JSON object")
        names = {
            "reboot": "reboot",
            "allowDowngrade": "allow_downgrade",
            "trialTimeoutS": "trial_timeout_s",
            "maxBootAttempts": "max_boot_attempts",
            "healthChecks": "health_checks",
            "minCurrentVersion": "min_current_version",
            "bandwidthBps": "bandwidth_bps",
        }
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise FirmwareError(f"unknown policy key(s) {unknown}; known: {sorted(names)}")
        kwargs = {names[k]: v for k, v in data.items()}
        if "health_checks" in kwargs:
            checks = kwargs["health_checks"]
            if not isinstance(checks, list):
                raise FirmwareError("policy.healthChecks must be a list of strings")
            kwargs["health_checks"] = tuple(checks)
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        """The document's form: required keys always, optional ones only when set."""
        body: dict[str, Any] = {
            "reboot": self.reboot,
            "allowDowngrade": self.allow_downgrade,
            "trialTimeoutS": self.trial_timeout_s,
            "maxBootAttempts": self.max_boot_attempts,
            "healthChecks": list(self.health_checks),
        }
        if self.min_current_version is not None:
            body["minCurrentVersion"] = self.min_current_version
        if self.bandwidth_bps is not None:
            body["bandwidthBps"] = self.bandwidth_bps
        return body


def _int_in(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def build_ota_document(
    manifest: FirmwareManifest,
    *,
    policy: OtaPolicy | None = None,
    test_faults: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``ota/1`` job document for a stored firmware (URL as a placeholder).

    Args:
        manifest: The firmware.
        policy: Install policy (defaults when omitted).
        test_faults: Fault plan for devices in test mode (``test.faults``); omitted when
            ``None``. Devices honour it only in test mode (``shared/docs/ota.md`` §11.6).

    Raises:
        FirmwareError: ``test_faults`` is not a list of non-empty strings.
    """
    doc: dict[str, Any] = {
        "operation": "ota",
        "schema": OTA_SCHEMA,
        "firmwareId": manifest.firmware_id,
        "targetVersion": manifest.version,
        "deviceType": manifest.device_type,
        "artifact": {
            "url": artifact_placeholder(manifest.firmware_id),
            "size": manifest.size,
            "sha256": manifest.sha256,
            "signature": manifest.signature,
            "sigAlg": manifest.sig_alg,
            "keyId": manifest.key_id,
        },
        "policy": (policy or OtaPolicy()).to_json(),
    }
    if test_faults is not None:
        if not all(isinstance(f, str) and f for f in test_faults):
            raise FirmwareError("test faults must be non-empty strings")
        doc["test"] = {"faults": list(test_faults)}
    return doc


def _firmware_id_of(key: str) -> str | None:
    if not key.startswith(STORE_KEY_PREFIX):
        return None
    rest = key[len(STORE_KEY_PREFIX) :]
    return rest if _FIRMWARE_ID.fullmatch(rest) else None


def render_document(
    document: Any, now: float, *, presigner: Presigner, thing: str | None = None
) -> Any:
    """Replace the store's presigned-URL placeholders with URLs valid from ``now`` (pure).

    Walks any JSON value and returns a copy; placeholders whose key is not
    ``cloud-stubs://firmware/<id>`` are left as they are.

    Args:
        document: A job document (or any JSON value).
        now: Epoch seconds the URL's lifetime starts at.
        presigner: The file server's signer.
        thing: The thing the document is delivered to (labels the download counters).
    """

    def sub(match: re.Match[str]) -> str:
        firmware_id = _firmware_id_of(match.group(1))
        if firmware_id is None:
            return match.group(0)
        return presigner.url(firmware_id, now, thing=thing)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return PRESIGNED_URL_PLACEHOLDER.sub(sub, value) if "${" in value else value
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(document)


class DocumentRenderer:
    """The jobs service's hook: render job documents in outgoing jobs messages.

    Reads the file server's ``server.json`` (cached until it changes) and the URL secret of
    the state directory. When no file server has ever run there, messages pass unchanged.

    Call it on every outgoing jobs message: ``payload = renderer(topic, payload, now)``.
    """

    def __init__(self, paths: StatePaths) -> None:
        """Bind to a state directory (nothing is read yet)."""
        self._paths = OtaPaths.of(paths)
        self._stamp: tuple[int, int] | None = None
        self._presigner: Presigner | None = None

    def presigner(self) -> Presigner | None:
        """The presigner of the last file server that ran in this state directory, if any."""
        try:
            st = self._paths.server_file.stat()
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                info = json.loads(self._paths.server_file.read_text())
                secret = bytes.fromhex(self._paths.url_secret.read_text().strip())
                self._presigner = Presigner(
                    str(info["base_url"]), secret, int(info.get("url_ttl_s", DEFAULT_URL_TTL_S))
                )
            except (OSError, ValueError, KeyError, TypeError):
                return None  # being rewritten or unusable: try again next time
            self._stamp = stamp
        return self._presigner

    def render_document(self, document: Any, now: float, *, thing: str | None = None) -> Any:
        """:func:`render_document` with this state directory's presigner."""
        presigner = self.presigner()
        if presigner is None:
            return document
        return render_document(document, now, presigner=presigner, thing=thing)

    def __call__(self, topic: str, payload: dict[str, Any], now: float) -> dict[str, Any]:
        """Render the ``jobDocument`` of a jobs message (top level or under ``execution``).

        Args:
            topic: The message's topic; ``$aws/things/<thing>/jobs/...`` names the thing.
            payload: The message body (not modified).
            now: Epoch seconds.

        Returns:
            ``payload`` itself when it carries no job document, else a rendered copy.
        """
        execution = payload.get("execution")
        nested = isinstance(execution, dict) and "jobDocument" in execution
        if "jobDocument" not in payload and not nested:
            return payload
        presigner = self.presigner()
        if presigner is None:
            return payload
        parts = topic.split("/")
        thing = parts[2] if len(parts) > 2 and parts[:2] == ["$aws", "things"] else None  # noqa: PLR2004
        body = dict(payload)
        if "jobDocument" in body:
            body["jobDocument"] = render_document(
                body["jobDocument"], now, presigner=presigner, thing=thing
            )
        if nested:
            assert isinstance(execution, dict)  # noqa: S101 - narrowed above
            body["execution"] = {
                **execution,
                "jobDocument": render_document(
                    execution["jobDocument"], now, presigner=presigner, thing=thing
                ),
            }
        return body


# -- the wire model (strict): what a consumer of ota/1 may rely on ----------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class OtaArtifact(_Strict):
    """``artifact``: where to get the image and how to check it."""

    url: str = Field(min_length=1)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(min_length=1)
    sig_alg: Literal["ecdsa-p256-sha256"] = Field(alias="sigAlg")
    key_id: str = Field(alias="keyId", pattern=r"^[0-9a-f]{16}$")


class OtaPolicyModel(_Strict):
    """``policy``."""

    reboot: Literal["auto", "defer", "none"]
    allow_downgrade: bool = Field(alias="allowDowngrade")
    trial_timeout_s: int = Field(alias="trialTimeoutS", ge=1, le=_MAX_TRIAL_S)
    max_boot_attempts: int = Field(alias="maxBootAttempts", ge=1, le=_MAX_BOOT_ATTEMPTS)
    health_checks: list[str] = Field(alias="healthChecks")
    min_current_version: str | None = Field(default=None, alias="minCurrentVersion")
    bandwidth_bps: int | None = Field(default=None, alias="bandwidthBps", ge=1)


class OtaTest(_Strict):
    """``test``: faults for devices in test mode."""

    faults: list[str]


class OtaJobDocument(_Strict):
    """The ``ota/1`` job document, strictly (unknown keys are errors here).

    ``OtaJobDocument.model_validate_json(raw)`` checks a document as delivered; the contract
    is ``docs/ota_cloud.md``.
    """

    operation: Literal["ota"]
    schema_: Literal["ota/1"] = Field(alias="schema")
    firmware_id: str = Field(alias="firmwareId", pattern=r"^fw-[0-9a-f]{12}$")
    target_version: str = Field(alias="targetVersion", min_length=1, max_length=64)
    device_type: str = Field(alias="deviceType", min_length=1, max_length=64)
    artifact: OtaArtifact
    policy: OtaPolicyModel
    test: OtaTest | None = None
