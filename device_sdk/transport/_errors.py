"""Reason-code tables and TLS error classification shared by the transports."""

from __future__ import annotations

__all__ = [
    "AUTH_SUBACK_CODES",
    "NON_RETRYABLE_CONNACK_CODES",
    "is_certificate_problem",
]

NON_RETRYABLE_CONNACK_CODES = frozenset(
    {
        4,  # MQTT 3.1.1: bad user name or password
        5,  # MQTT 3.1.1: not authorized
        0x85,  # client identifier not valid
        0x86,  # bad user name or password
        0x87,  # not authorized
        0x8A,  # banned
        0x8C,  # bad authentication method
    }
)
"""CONNACK codes after which retrying with the same identity cannot succeed."""

AUTH_SUBACK_CODES = frozenset({0x80, 0x87})
"""SUBACK failure codes IoT Core uses for policy denials (0x80 on some paths, 0x87 on MQTT 5)."""

_CERT_MARKERS = (
    "CERTIFICATE",
    "UNKNOWN_CA",
    "ACCESS_DENIED",
    "KEY_VALUES_MISMATCH",
    "NO_CERTIFICATE",
    "HANDSHAKE_FAILURE",
)


def is_certificate_problem(exc: BaseException) -> bool:
    """Whether a TLS error means a certificate was refused (ours or the server's).

    Such errors are not transient: the broker will refuse the same certificate again, and a
    server certificate that fails verification will fail it again.
    """
    reason = getattr(exc, "reason", None) or ""
    text = f"{reason} {exc}".upper()
    return any(marker in text for marker in _CERT_MARKERS)
