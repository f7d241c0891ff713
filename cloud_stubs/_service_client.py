"""Privileged MQTT connections the stub's own services (and tests) use to reach the broker."""

from __future__ import annotations

import os
import socket
import ssl
import uuid
from typing import TYPE_CHECKING

import aiomqtt

from cloud_stubs._paths import SERVICE_CLIENT_PREFIX

if TYPE_CHECKING:
    from cloud_stubs._paths import StatePaths

__all__ = ["NODELAY", "service_client", "tls_context"]

#: Socket option that turns Nagle's algorithm off (pass to aiomqtt's ``socket_options``).
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


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
) -> aiomqtt.Client:
    """An aiomqtt client with the stub's privileged service identity (not yet connected)."""
    client_id = f"{SERVICE_CLIENT_PREFIX}-{purpose}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return aiomqtt.Client(
        host,
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311,
        tls_context=tls_context(paths.ca_cert, paths.service_cert, paths.service_key),
        keepalive=60,
        max_queued_incoming_messages=max_queued_incoming_messages,
        max_inflight_messages=1000,
        # paho leaves Nagle on; with delayed ACKs that adds ~40 ms per QoS 1 exchange.
        socket_options=NODELAY,
    )
