"""Privileged MQTT connections the stub's own services (and tests) use to reach the broker."""

from __future__ import annotations

import os
import socket
import ssl
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomqtt

from cloud_stubs._paths import SERVICE_CLIENT_PREFIX

if TYPE_CHECKING:
    from cloud_stubs._paths import StatePaths

__all__ = ["NODELAY", "ConnectSettings", "ServiceClient", "service_client", "tls_context"]

#: Socket option that turns Nagle's algorithm off (pass to aiomqtt's ``socket_options``).
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

#: Seconds between control packets the service connections promise the broker.
KEEPALIVE = 60


@dataclass(frozen=True)
class ConnectSettings:
    """Everything needed to open a service connection (TLS, client certificate auth)."""

    host: str
    port: int
    client_id: str
    tls: ssl.SSLContext
    mqtt5: bool
    keepalive: int = KEEPALIVE


class ServiceClient(aiomqtt.Client):
    """An aiomqtt client that also exposes how it connects.

    The service host (:mod:`cloud_stubs.services._runtime`) uses :attr:`settings` to open its
    own lean MQTT session with the same identity instead of going through paho, which costs
    several times more CPU per message than the services themselves.
    """

    def __init__(self, settings: ConnectSettings, *, max_queued_incoming_messages: int = 0) -> None:
        """Configure (do not connect) an aiomqtt client for ``settings``."""
        self.settings = settings
        super().__init__(
            settings.host,
            settings.port,
            identifier=settings.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if settings.mqtt5 else aiomqtt.ProtocolVersion.V311,
            tls_context=settings.tls,
            keepalive=settings.keepalive,
            max_queued_incoming_messages=max_queued_incoming_messages,
            max_inflight_messages=1000,
            # paho leaves Nagle on; with delayed ACKs that adds ~40 ms per QoS 1 exchange.
            socket_options=NODELAY,
        )


def tls_context(
    ca_file: os.PathLike[str] | str,
    cert_file: os.PathLike[str] | str,
    key_file: os.PathLike[str] | str,
) -> ssl.SSLContext:
    """A client TLS context presenting ``cert_file`` and trusting only ``ca_file``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def service_client(
    paths: StatePaths,
    host: str,
    port: int,
    *,
    purpose: str,
    mqtt5: bool = True,
    max_queued_incoming_messages: int = 0,
) -> ServiceClient:
    """An aiomqtt client with the stub's privileged service identity (not yet connected)."""
    client_id = f"{SERVICE_CLIENT_PREFIX}-{purpose}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    settings = ConnectSettings(
        host,
        port,
        client_id,
        tls_context(paths.ca_cert, paths.service_cert, paths.service_key),
        mqtt5,
    )
    return ServiceClient(settings, max_queued_incoming_messages=max_queued_incoming_messages)
