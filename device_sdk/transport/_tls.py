"""``ssl.SSLContext`` for mutual TLS from a :class:`~device_sdk.DeviceIdentity` (paho transport).

Loading certificates and keys reads files and parses PEM, and creating a default context may
load the system trust store: all of it runs in a worker thread, never on the event loop.
Contexts are immutable once built and safe to share between threads.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_sdk._exceptions import AuthorizationError
from device_sdk._identity import FileCredentials, PemCredentials, Pkcs11Credentials

if TYPE_CHECKING:
    from device_sdk._identity import DeviceIdentity, Endpoint

__all__ = [
    "ALPN_MQTT_CA",
    "TrackingSSLContext",
    "build_ssl_context",
    "configure_client_context",
    "configure_trust",
    "load_client_chain",
    "ssl_context",
]

ALPN_MQTT_CA = "x-amzn-mqtt-ca"


class TrackingSSLContext(ssl.SSLContext):
    """An ``SSLContext`` that remembers the last socket it wrapped.

    paho 2.2 leaks the socket when the TLS handshake fails inside ``connect()`` (no
    ``try/finally`` around ``do_handshake``); the transport closes it through this reference.
    One transport uses its context for one connection attempt at a time.
    """

    last_socket: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        """Wrap as usual and remember the result."""
        sock = super().wrap_socket(*args, **kwargs)
        self.last_socket = sock
        return sock

    def close_failed_socket(self) -> None:
        """Close the socket of a failed connection attempt, if any."""
        sock, self.last_socket = self.last_socket, None
        if sock is not None:
            sock.close()

    def forget_socket(self) -> None:
        """The connection succeeded: its socket belongs to paho now."""
        self.last_socket = None


def build_ssl_context(identity: DeviceIdentity, endpoint: Endpoint) -> TrackingSSLContext:
    """Build the client context (blocking: call it from a worker thread).

    Raises:
        AuthorizationError: The certificate, key or CA cannot be loaded (retrying won't help).
        TypeError: The identity's key lives in PKCS#11, which needs the CRT transport.
    """
    ctx = TrackingSSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and hostname
    configure_client_context(ctx, identity, endpoint)
    return ctx


def configure_client_context(
    ctx: ssl.SSLContext, identity: DeviceIdentity, endpoint: Endpoint
) -> None:
    """Load CA, client certificate and ALPN of ``identity`` into a fresh client context.

    Shared by the paho and native transports (blocking: call it from a worker thread).

    Raises:
        AuthorizationError: The certificate, key or CA cannot be loaded (retrying won't help).
        TypeError: The identity's key lives in PKCS#11, which needs the CRT transport.
    """
    configure_trust(ctx, identity, endpoint)
    load_client_chain(ctx, identity)


def configure_trust(ctx: ssl.SSLContext, identity: DeviceIdentity, endpoint: Endpoint) -> None:
    """Load the CA, TLS versions and ALPN (everything but the client certificate).

    Blocking: call it from a worker thread.

    Raises:
        AuthorizationError: The CA cannot be loaded (retrying won't help).
        TypeError: The identity's key lives in PKCS#11, which needs the CRT transport.
    """
    creds = identity.credentials
    if isinstance(creds, Pkcs11Credentials):
        raise TypeError(
            "PKCS#11 identities need the 'crt' transport (awscrt); paho and native cannot use them"
        )
    ca_file = endpoint.ca_file
    ca_pem: bytes | None = None
    if ca_file is None and isinstance(creds, FileCredentials):
        ca_file = creds.ca_file
    if ca_file is None and isinstance(creds, PemCredentials):
        ca_pem = creds.ca_pem
    try:
        if ca_file is None and ca_pem is None:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            ctx.load_verify_locations(
                cafile=str(ca_file) if ca_file is not None else None,
                cadata=ca_pem.decode() if ca_pem is not None else None,
            )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # TLS 1.2 on purpose: the server verifies the client certificate *inside* the handshake,
        # so a refused certificate fails connect() at once with an alert (mapped to
        # AuthorizationError). Under TLS 1.3 the refusal arrives after the client considers the
        # handshake done, and aiomqtt 2.x then only reports a CONNACK timeout.
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    except (OSError, ssl.SSLError, ValueError) as exc:
        msg = f"cannot load the CA of {identity.thing_name!r}: {exc}"
        raise AuthorizationError(msg) from exc
    if endpoint.alpn:
        ctx.set_alpn_protocols([ALPN_MQTT_CA])


def load_client_chain(ctx: ssl.SSLContext, identity: DeviceIdentity) -> None:
    """Load the client certificate and key of ``identity`` into ``ctx`` (blocking).

    Raises:
        AuthorizationError: The certificate or key cannot be loaded (retrying won't help).
        TypeError: The identity's key lives in PKCS#11, which needs the CRT transport.
    """
    creds = identity.credentials
    if isinstance(creds, Pkcs11Credentials):
        raise TypeError(
            "PKCS#11 identities need the 'crt' transport (awscrt); paho and native cannot use them"
        )
    try:
        if isinstance(creds, FileCredentials):
            ctx.load_cert_chain(str(creds.cert_file), str(creds.key_file))
        else:
            _load_pem_chain(ctx, creds.cert_pem, creds.key_pem)
    except (OSError, ssl.SSLError, ValueError) as exc:
        msg = f"cannot load TLS credentials of {identity.thing_name!r}: {exc}"
        raise AuthorizationError(msg) from exc


def _load_pem_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # The ssl module only loads a client chain from files: use a private temporary directory
    # that is removed right after loading.
    with tempfile.TemporaryDirectory(prefix="device_sdk-") as tmp:
        cert = Path(tmp) / "cert.pem"
        key = Path(tmp) / "key.pem"
        cert.write_bytes(cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(str(cert), str(key))


async def ssl_context(identity: DeviceIdentity, endpoint: Endpoint) -> TrackingSSLContext:
    """Build the context in a worker thread (see :func:`build_ssl_context`)."""
    return await asyncio.to_thread(build_ssl_context, identity, endpoint)
