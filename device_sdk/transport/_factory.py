"""``create_transport``: pick a transport by kind (CRT where awscrt imports, else paho)."""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Literal

from device_sdk._identity import Pkcs11Credentials

if TYPE_CHECKING:
    from device_sdk._identity import DeviceIdentity, Endpoint
    from device_sdk.transport._base import ConnectionOptions, Transport

__all__ = ["TransportKind", "create_transport", "crt_available"]

TransportKind = Literal["auto", "crt", "paho", "native"]


def crt_available() -> bool:
    """Whether awscrt and awsiotsdk are importable on this platform."""
    return (
        importlib.util.find_spec("awscrt") is not None
        and importlib.util.find_spec("awsiot") is not None
    )


def create_transport(
    identity: DeviceIdentity,
    endpoint: Endpoint,
    kind: TransportKind = "auto",
    options: ConnectionOptions | None = None,
    *,
    logger: logging.Logger | None = None,
) -> Transport:
    """Create a transport for ``identity`` at ``endpoint``.

    Args:
        identity: The device identity.
        endpoint: The broker endpoint.
        kind: ``"crt"`` (awscrt MQTT 5; the only one for PKCS#11 keys), ``"paho"`` (aiomqtt),
            ``"native"`` (pure Python on a raw TLS socket: no compiled dependency, about 55 KB
            per idle connection against ~90 KB for CRT, and the cheapest per message; the
            choice for many connections in one process or for boards without an awscrt
            wheel; needs a selector event loop), or ``"auto"``: CRT when awscrt imports,
            else paho.
        options: Connection options shared by all implementations.
        logger: Logger passed to the transport.

    Raises:
        ValueError: ``kind`` is unknown.
        TypeError: A PKCS#11 identity with the paho or native transport.
        ImportError: ``kind="crt"`` but awscrt is not installed.
    """
    if kind == "auto":
        kind = "crt" if crt_available() else "paho"
    if kind == "crt":
        from device_sdk.transport._crt import CrtTransport  # noqa: PLC0415 - optional dependency

        return CrtTransport(identity, endpoint, options, logger=logger)
    if kind == "paho":
        if isinstance(identity.credentials, Pkcs11Credentials):
            raise TypeError("PKCS#11 identities need the 'crt' transport, and awscrt is missing")
        from device_sdk.transport._paho import PahoTransport  # noqa: PLC0415 - optional dependency

        return PahoTransport(identity, endpoint, options, logger=logger)
    if kind == "native":
        from device_sdk.transport._native import NativeTransport  # noqa: PLC0415 - lazy

        return NativeTransport(identity, endpoint, options, logger=logger)
    raise ValueError(f"unknown transport kind {kind!r}: use 'auto', 'crt', 'paho' or 'native'")
