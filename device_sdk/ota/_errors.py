"""Reason codes, error types and the two OTA outcomes that end an update without success.

::

    OtaError(reason_code, detail)            any stop of the state machine
     ├── OtaRejectedError                    non-retryable -> job REJECTED (nothing activated)
     └── OtaFailedError                      retryable     -> job FAILED (old image active)
"""

from __future__ import annotations

import enum

__all__ = ["ErrorType", "OtaError", "OtaFailedError", "OtaRejectedError", "ReasonCode"]


class ErrorType(enum.StrEnum):
    """Coarse error class reported as ``statusDetails.error_type`` (ota.md §11.3)."""

    NETWORK = "NETWORK"
    DEVICE = "DEVICE"
    SIGNATURE = "SIGNATURE"
    COMPAT = "COMPAT"
    HEALTH = "HEALTH"
    CANCEL = "CANCEL"
    INTERNAL = "INTERNAL"


class ReasonCode(enum.StrEnum):
    """Stable reason codes reported as ``statusDetails.reason_code``."""

    # Non-retryable: REJECTED.
    DOCUMENT_INVALID = "DOCUMENT_INVALID"
    DEVICE_TYPE_MISMATCH = "DEVICE_TYPE_MISMATCH"
    DOWNGRADE_NOT_ALLOWED = "DOWNGRADE_NOT_ALLOWED"
    CURRENT_VERSION_TOO_OLD = "CURRENT_VERSION_TOO_OLD"
    UNKNOWN_KEY_ID = "UNKNOWN_KEY_ID"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    IMAGE_HASH_MISMATCH = "IMAGE_HASH_MISMATCH"
    SIZE_MISMATCH = "SIZE_MISMATCH"
    # Retryable: FAILED.
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    DOWNLOAD_TIMEOUT = "DOWNLOAD_TIMEOUT"
    URL_EXPIRED = "URL_EXPIRED"
    DISK_ERROR = "DISK_ERROR"
    INSTALL_FAILED = "INSTALL_FAILED"
    ACTIVATE_FAILED = "ACTIVATE_FAILED"
    BOOT_FAILED = "BOOT_FAILED"
    MAX_BOOT_ATTEMPTS = "MAX_BOOT_ATTEMPTS"
    HEALTH_CHECK_FAILED = "HEALTH_CHECK_FAILED"
    TRIAL_TIMEOUT = "TRIAL_TIMEOUT"
    COMMIT_FAILED = "COMMIT_FAILED"
    STATE_LOOP = "STATE_LOOP"
    CANCELED = "CANCELED"
    FAULT_INJECTED = "FAULT_INJECTED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


_TYPES: dict[ReasonCode, ErrorType] = {
    ReasonCode.DOCUMENT_INVALID: ErrorType.COMPAT,
    ReasonCode.DEVICE_TYPE_MISMATCH: ErrorType.COMPAT,
    ReasonCode.DOWNGRADE_NOT_ALLOWED: ErrorType.COMPAT,
    ReasonCode.CURRENT_VERSION_TOO_OLD: ErrorType.COMPAT,
    ReasonCode.UNKNOWN_KEY_ID: ErrorType.SIGNATURE,
    ReasonCode.SIGNATURE_INVALID: ErrorType.SIGNATURE,
    ReasonCode.IMAGE_HASH_MISMATCH: ErrorType.SIGNATURE,
    ReasonCode.SIZE_MISMATCH: ErrorType.SIGNATURE,
    ReasonCode.DOWNLOAD_FAILED: ErrorType.NETWORK,
    ReasonCode.DOWNLOAD_TIMEOUT: ErrorType.NETWORK,
    ReasonCode.URL_EXPIRED: ErrorType.NETWORK,
    ReasonCode.HEALTH_CHECK_FAILED: ErrorType.HEALTH,
    ReasonCode.TRIAL_TIMEOUT: ErrorType.HEALTH,
    ReasonCode.MAX_BOOT_ATTEMPTS: ErrorType.HEALTH,
    ReasonCode.BOOT_FAILED: ErrorType.HEALTH,
    ReasonCode.CANCELED: ErrorType.CANCEL,
    ReasonCode.STATE_LOOP: ErrorType.INTERNAL,
    ReasonCode.FAULT_INJECTED: ErrorType.INTERNAL,
    ReasonCode.INTERNAL_ERROR: ErrorType.INTERNAL,
}


def error_type_of(code: ReasonCode) -> ErrorType:
    """The :class:`ErrorType` a reason code belongs to (``DEVICE`` by default)."""
    return _TYPES.get(code, ErrorType.DEVICE)


class OtaError(Exception):
    """The state machine stopped for ``reason_code``.

    Attributes:
        reason_code: Stable code.
        detail: Human-readable detail (reported truncated to 1024 characters).
        error_type: Coarse class of the code.
    """

    rejected = False

    def __init__(self, reason_code: ReasonCode | str, detail: str = "") -> None:
        self.reason_code = ReasonCode(reason_code)
        self.detail = detail or self.reason_code.value
        self.error_type = error_type_of(self.reason_code)
        super().__init__(f"{self.reason_code}: {self.detail}")


class OtaRejectedError(OtaError):
    """Non-retryable: the job can never work on this device (``REJECTED``)."""

    rejected = True


class OtaFailedError(OtaError):
    """Retryable: this attempt failed, the device runs its old image (``FAILED``)."""
