"""The one exception tree of ``device_sdk``.

Every error the SDK raises on purpose derives from :class:`DeviceSdkError`. Errors of the
libraries underneath (aiomqtt/paho, awscrt, ``ssl``, ``sqlite3``, ``cryptography``) are mapped
at the transport or storage boundary and re-raised ``from`` the original, so callers never
need to import those libraries to handle failures::

    DeviceSdkError
    ├── ConnectError               could not establish the MQTT connection (retryable)
    │   └── AuthorizationError     certificate rejected / not authorized (do not retry)
    ├── ConnectionLostError        an established connection dropped (retryable)
    ├── ProtocolError              the peer broke or refused the protocol
    │   └── NegativeAckError       PUBACK / SUBACK / UNSUBACK with a failure reason code
    ├── LimitExceededError         an AWS IoT Core limit would be violated (nothing was sent)
    ├── RejectedError              a service answered on a ``.../rejected`` topic
    │   └── VersionConflictError   shadow / jobs version mismatch (code 409)
    ├── RequestTimeoutError        no response within the request timeout
    ├── ProvisioningError          fleet provisioning failed
    ├── OutboxFullError            the durable outbox is at its bound (policy "reject")
    └── ClosedError                the client, transport or outbox is closed

Each class calls ``super().__init__(message)`` and carries its context as attributes
(``reason_code``, ``packet``, ``code``, ``client_token``, ...).
"""

from __future__ import annotations

__all__ = [
    "AuthorizationError",
    "ClosedError",
    "ConnectError",
    "ConnectionLostError",
    "DeviceSdkError",
    "LimitExceededError",
    "NegativeAckError",
    "OutboxFullError",
    "ProtocolError",
    "ProvisioningError",
    "RejectedError",
    "RequestTimeoutError",
    "VersionConflictError",
]


class DeviceSdkError(Exception):
    """Base class of every error raised by ``device_sdk``."""


class ConnectError(DeviceSdkError):
    """The MQTT connection could not be established; retrying later may succeed.

    Attributes:
        reason_code: The CONNACK reason code, when the broker sent one.
    """

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class AuthorizationError(ConnectError):
    """The broker refused the identity or the operation: not authorized, bad certificate.

    Retrying with the same credentials cannot succeed, so reconnect loops stop on it.
    """


class ConnectionLostError(DeviceSdkError):
    """An established connection was lost (socket error, keep-alive timeout, server DISCONNECT).

    Attributes:
        reason_code: The DISCONNECT reason code, when the server sent one.
    """

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class ProtocolError(DeviceSdkError):
    """The peer violated or refused the protocol."""


class NegativeAckError(ProtocolError):
    """An acknowledgement carried a failure reason code (>= 0x80).

    Attributes:
        packet: ``"PUBACK"``, ``"SUBACK"`` or ``"UNSUBACK"``.
        reason_code: The MQTT 5 reason code.
        reason_string: The reason string sent by the broker, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        packet: str,
        reason_code: int,
        reason_string: str | None = None,
    ) -> None:
        super().__init__(message)
        self.packet = packet
        self.reason_code = reason_code
        self.reason_string = reason_string


class LimitExceededError(DeviceSdkError):
    """An AWS IoT Core limit would be exceeded; the operation was not attempted.

    Attributes:
        limit: Name of the limit (``"topic_bytes"``, ``"topic_levels"``, ``"payload_bytes"``,
            ``"wildcard_in_topic"``, ``"subscriptions"``, ...).
        value: The offending value.
        maximum: The allowed maximum, when the limit is numeric.
    """

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        value: object = None,
        maximum: int | None = None,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.maximum = maximum


class RejectedError(DeviceSdkError):
    """A service rejected a request (``.../rejected`` response).

    Attributes:
        code: The service error code (HTTP-like integer or a string code such as
            ``"InvalidStateTransition"``).
        message: The service's error message.
        client_token: The client token of the rejected request, if any.
    """

    def __init__(self, code: int | str, message: str, client_token: str | None = None) -> None:
        super().__init__(f"request rejected ({code}): {message}")
        self.code = code
        self.message = message
        self.client_token = client_token


class VersionConflictError(RejectedError):
    """The request's version does not match the service's current version."""


class RequestTimeoutError(DeviceSdkError):
    """No response arrived within the request timeout.

    Attributes:
        timeout: The timeout in seconds.
        client_token: The client token of the request, if any.
    """

    def __init__(
        self, message: str, *, timeout: float | None = None, client_token: str | None = None
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.client_token = client_token


class ProvisioningError(DeviceSdkError):
    """Fleet provisioning (CreateCertificateFromCsr / RegisterThing) failed."""


class OutboxFullError(DeviceSdkError):
    """The outbox is at its bound and its overflow policy is ``"reject"``.

    Attributes:
        depth: Messages in the outbox.
        size_bytes: Payload bytes in the outbox.
    """

    def __init__(self, message: str, *, depth: int, size_bytes: int) -> None:
        super().__init__(message)
        self.depth = depth
        self.size_bytes = size_bytes


class ClosedError(DeviceSdkError):
    """The client, transport or outbox is closed (or was never opened)."""
