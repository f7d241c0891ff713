"""``create_transport``: pick the CRT transport where awscrt imports, else the paho one."""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Literal

from device_sdk._identity import Pkcs11Credentials

if TYPE_CHECKING:
    from device_sdk._identity import DeviceIdentity, Endpoint
    from device_sdk.transport._base import ConnectionOptions, Transport

__all__ = ["TransportKind", "create_transport", "crt_available"]

TransportKind = Literal["auto", "crt", "paho"]


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
        kind: ``"crt"`` (awscrt MQTT 5), ``"paho"`` (aiomqtt) or ``"auto"``: CRT when awscrt
            imports, else paho.
        options: Connection options shared by both implementations.
        logger: Logger passed to the transport.

    Raises:
        ValueError: ``kind`` is unknown.
        TypeError: A PKCS#11 identity with the paho transport.
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
    raise ValueError(f"unknown transport kind {kind!r}: use 'auto', 'crt' or 'paho'")
