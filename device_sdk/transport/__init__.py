"""MQTT transports: the :class:`Transport` protocol and its CRT, paho and native implementations.

``CrtTransport``, ``PahoTransport`` and ``NativeTransport`` are imported lazily so that a
platform without awscrt (armv7, musl) can use the paho or native transport, and vice versa.
``NativeTransport`` (pure Python, raw TLS socket) is the low-memory choice for many
connections per process and for devices without an awscrt wheel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from device_sdk.transport._base import (
    ConnectionOptions,
    Message,
    MessageBuffer,
    QoS,
    Transport,
    TransportStatistics,
    UserProperties,
    Will,
)
from device_sdk.transport._factory import TransportKind, create_transport, crt_available

if TYPE_CHECKING:
    from device_sdk.transport._crt import CrtTransport
    from device_sdk.transport._native import NativeTransport
    from device_sdk.transport._paho import PahoTransport

__all__ = [
    "ConnectionOptions",
    "CrtTransport",
    "Message",
    "MessageBuffer",
    "NativeTransport",
    "PahoTransport",
    "QoS",
    "Transport",
    "TransportKind",
    "TransportStatistics",
    "UserProperties",
    "Will",
    "create_transport",
    "crt_available",
]


def __getattr__(name: str) -> Any:
    if name == "CrtTransport":
        from device_sdk.transport._crt import CrtTransport  # noqa: PLC0415

        return CrtTransport
    if name == "NativeTransport":
        from device_sdk.transport._native import NativeTransport  # noqa: PLC0415

        return NativeTransport
    if name == "PahoTransport":
        from device_sdk.transport._paho import PahoTransport  # noqa: PLC0415

        return PahoTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
