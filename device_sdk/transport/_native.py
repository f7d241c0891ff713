"""Pure-Python MQTT 5 / 3.1.1 transport over a raw non-blocking TLS socket (low memory).

Choose it when memory or platform matters. An idle connection costs about 37 KB of RSS
(measured with ``benchmarks/bench_transport_memory.py``): a few KB of Python objects and
~30 KB of OpenSSL connection state. Identities loaded from files share one ``SSLContext``
per trust setting (see "shared TLS contexts" below; a context is ~22 KB, which was the
largest part of a connection when each identity had its own). CPython sets
``SSL_MODE_RELEASE_BUFFERS``, so an idle connection keeps no TLS record buffers. That
compares with ~90 KB for awscrt, ~75 KB for paho, and the 256 KiB buffer asyncio's
``sslproto`` allocates per connection. It needs no compiled dependency (32-bit Raspberry Pi
OS, musl) and has the lowest CPU cost per message, which matters for many connections in
one process (fleet simulation). It does not support PKCS#11 keys (use the CRT transport).

How it works, all on the event-loop thread and without a task per connection:

* TCP with ``loop.sock_connect``; TLS by ``SSLContext.wrap_socket(...,
  do_handshake_on_connect=False)`` (in a worker thread, right after loading the device's
  certificate and key into the shared context), the handshake driven by
  ``add_reader``/``add_writer``.
* Reads in a reader callback: ``recv`` until ``SSLWantReadError`` (which also drains the
  bytes OpenSSL already decrypted, ``SSLSocket.pending()``), then packets are cut with
  :func:`~device_sdk.transport._codec.split_packets` and dispatched.
* Writes are coalesced per event-loop iteration and sent with ``send``; only when the kernel
  buffer is full (``SSLWantWriteError`` or a short write) is the rest kept and a writer
  callback registered. A retried TLS write always starts with the same bytes, as OpenSSL
  requires.
* PINGREQ every keep-alive period and the ping timeout run on ``loop.call_later`` handles.

Selector event loops only (Linux, macOS; uvloop works too). On Windows' proactor loop,
entering the transport raises ``RuntimeError``; use ``asyncio.SelectorEventLoop`` there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ipaddress
import logging
import socket
import ssl
import struct
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

from device_sdk._aio import LazyEvent
from device_sdk._exceptions import (
    AuthorizationError,
    ClosedError,
    ConnectError,
    ConnectionLostError,
    DeviceSdkError,
    LimitExceededError,
    NegativeAckError,
    ProtocolError,
    RequestTimeoutError,
)
from device_sdk._identity import FileCredentials, PemCredentials, Pkcs11Credentials
from device_sdk.transport import _codec as codec
from device_sdk.transport._base import (
    ConnectionOptions,
    Message,
    MessageBuffer,
    QoS,
    TransportStatistics,
    UserProperties,
)
from device_sdk.transport._errors import (
    AUTH_SUBACK_CODES,
    NON_RETRYABLE_CONNACK_CODES,
    is_certificate_problem,
)
from device_sdk.transport._tls import configure_client_context, configure_trust, load_client_chain

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from types import TracebackType

    from device_sdk._identity import DeviceIdentity, Endpoint

__all__ = ["NativeTransport", "clear_context_cache"]

_FAILURE: Final = 0x80
_DISCONNECT_WITH_WILL: Final = 0x04
_READ_SIZE: Final = 65536
_CLOSE_WAIT_S: Final = 2.0
_DEFAULT_RECEIVE_MAXIMUM: Final = 65535
_SELECTOR_NEEDED: Final = (
    "NativeTransport needs an event loop with add_reader/add_writer (a selector loop on "
    "Linux or macOS, or uvloop); on Windows use asyncio.SelectorEventLoop"
)

# -- shared TLS contexts ----------------------------------------------------------------
#
# Identities from files share ONE client context per trust setting (CA file, ALPN): OpenSSL
# copies the context's certificate and key into each connection when the connection object
# is created (SSL_new -> ssl_cert_dup, reference-counted), so loading a device's chain into
# the shared context and wrapping its socket right after, under a lock, gives that socket
# that device's identity. A context costs ~22 KB and ~0.8 ms to build (CA parsing, OpenSSL 3
# context setup); per identity that was the largest part of a simulated device's memory and
# of the client's share of a connect. Each connect re-reads the certificate and key files
# (~0.7 ms in a worker thread, GIL released), so a certificate rotated on disk is used from
# the next connect on. PEM identities (in memory) keep one context each.


class _SharedContext:
    """A trust-only client context and the lock held from loading a chain to wrapping."""

    __slots__ = ("__weakref__", "ctx", "lock")

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.lock = threading.Lock()

    def wrap(self, identity: DeviceIdentity, raw: socket.socket, host: str) -> ssl.SSLSocket:
        """Wrap ``raw`` as a TLS client socket presenting ``identity`` (blocking).

        Raises:
            AuthorizationError: The certificate or key cannot be loaded.
        """
        with self.lock:
            load_client_chain(self.ctx, identity)
            return self.ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)


_SHARED: weakref.WeakValueDictionary[tuple[object, ...], _SharedContext] = (
    weakref.WeakValueDictionary()
)
_CONTEXTS: weakref.WeakValueDictionary[tuple[object, ...], ssl.SSLContext] = (
    weakref.WeakValueDictionary()
)
_CONTEXTS_LOCK = threading.Lock()


def clear_context_cache() -> None:
    """Forget the shared TLS contexts (transports keep the ones they already use)."""
    with _CONTEXTS_LOCK:
        _CONTEXTS.clear()
        _SHARED.clear()


def _file_stamp(path: Path | None) -> tuple[str, int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), st.st_mtime_ns, st.st_size)


def _pem_context_key(creds: PemCredentials, endpoint: Endpoint) -> tuple[object, ...]:
    digest = hashlib.sha256()
    for part in (creds.cert_pem, creds.key_pem, creds.ca_pem or b""):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return ("pem", digest.hexdigest(), _file_stamp(endpoint.ca_file), endpoint.alpn)


def _shared_context(identity: DeviceIdentity, endpoint: Endpoint) -> _SharedContext:
    """The trust-only context for a file identity (blocking: worker thread).

    Raises:
        AuthorizationError: The CA cannot be loaded.
    """
    creds = identity.credentials
    if not isinstance(creds, FileCredentials):
        raise TypeError("only file identities share a context")
    key = (_file_stamp(endpoint.ca_file or creds.ca_file), endpoint.alpn)
    with _CONTEXTS_LOCK:
        shared = _SHARED.get(key)
    if shared is not None:
        return shared
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and hostname
    configure_trust(ctx, identity, endpoint)
    with _CONTEXTS_LOCK:
        return _SHARED.setdefault(key, _SharedContext(ctx))


def _build_context(identity: DeviceIdentity, endpoint: Endpoint) -> ssl.SSLContext:
    """Build (blocking: worker thread) or reuse the client context of a PEM identity.

    Raises:
        AuthorizationError: The certificate, key or CA cannot be loaded.
    """
    creds = identity.credentials
    if not isinstance(creds, PemCredentials):
        raise TypeError("PKCS#11 identities need the 'crt' transport (awscrt)")
    key = _pem_context_key(creds, endpoint)
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(key)
    if ctx is not None:
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and hostname
    configure_client_context(ctx, identity, endpoint)
    with _CONTEXTS_LOCK:
        return _CONTEXTS.setdefault(key, ctx)


def _close_late(fut: asyncio.Future[ssl.SSLSocket], raw: socket.socket) -> None:
    """A wrap finished after its connect was abandoned: close what it produced."""
    if fut.cancelled() or fut.exception() is not None:
        raw.close()
    else:
        fut.result().close()


def _map_connect_error(exc: BaseException) -> DeviceSdkError:
    if isinstance(exc, DeviceSdkError):
        return exc
    if isinstance(exc, ssl.SSLError | ssl.CertificateError) and is_certificate_problem(exc):
        return AuthorizationError(f"TLS refused the certificate: {exc}")
    if isinstance(exc, TimeoutError):
        return ConnectError(f"connection attempt timed out: {exc}")
    return ConnectError(f"cannot connect: {exc or type(exc).__name__}")


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


_Queued = tuple["asyncio.Future[None]", str, bytes, bool, UserProperties]


class NativeTransport:
    """MQTT 5 (or 3.1.1) over mutual TLS on a raw socket; see :class:`~device_sdk.Transport`.

    The low-memory, dependency-free transport (see the module documentation for when to
    choose it). It also implements the pipelined fast path
    :meth:`start_publish` (:class:`~device_sdk.transport._base.PipelinedTransport`).

    Args:
        identity: Certificate and key (files or PEM; PKCS#11 is not supported here).
        endpoint: Broker host, port and CA (``alpn=True`` for mTLS on port 443).
        options: Connection options (``mqtt_version=3`` selects MQTT 3.1.1).
        logger: Logger for this transport (defaults to this module's logger).

    Raises:
        TypeError: A PKCS#11 identity.
    """

    __slots__ = (
        "_acked",
        "_buffer",
        "_client_id",
        "_closing",
        "_connack",
        "_connect_failures",
        "_connected",
        "_connects",
        "_corked",
        "_ctx",
        "_disconnects",
        "_down",
        "_endpoint",
        "_flush_handle",
        "_identity",
        "_inflight",
        "_keepalive",
        "_last_cause",
        "_lock",
        "_logger",
        "_loop",
        "_max_inflight",
        "_max_packet",
        "_nacked",
        "_ops",
        "_options",
        "_out",
        "_partial_writes",
        "_pid",
        "_ping_handle",
        "_pong_handle",
        "_published",
        "_qos0",
        "_queue",
        "_rbuf",
        "_shared",
        "_sock",
        "_unsent",
        "_version",
        "_writing",
    )

    def __init__(
        self,
        identity: DeviceIdentity,
        endpoint: Endpoint,
        options: ConnectionOptions | None = None,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        if isinstance(identity.credentials, Pkcs11Credentials):
            raise TypeError("PKCS#11 identities need the 'crt' transport (awscrt)")
        self._identity = identity
        self._endpoint = endpoint
        self._options = options or ConnectionOptions()
        self._logger = logger or logging.getLogger(__name__)
        self._client_id = self._options.client_id or identity.client_id
        self._version = 5 if self._options.mqtt_version == 5 else 4  # noqa: PLR2004
        self._ctx: ssl.SSLContext | None = None  # PEM identities: a context of their own
        self._shared: _SharedContext | None = None  # file identities: shared trust context
        self._lock = asyncio.Lock()
        self._connected = LazyEvent()
        self._down: asyncio.Future[DeviceSdkError | None] | None = None
        self._last_cause: DeviceSdkError | None = None
        self._buffer = MessageBuffer(self._options.receive_buffer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: ssl.SSLSocket | None = None
        self._connack: asyncio.Future[codec.Connack] | None = None
        self._closing = False
        self._rbuf = b""
        self._out: list[bytes] = []
        self._unsent = b""
        self._writing = False
        self._corked = False
        self._flush_handle: asyncio.Handle | None = None
        self._qos0: list[asyncio.Future[None]] = []
        self._inflight: dict[int, tuple[asyncio.Future[None], str]] = {}
        self._queue: collections.deque[_Queued] | None = None
        self._ops: dict[int, asyncio.Future[codec.Ack]] = {}
        self._pid = 0
        self._max_inflight = self._options.max_inflight
        self._max_packet = codec.MAX_VARINT
        self._keepalive = float(self._options.keepalive_s)
        self._ping_handle: asyncio.TimerHandle | None = None
        self._pong_handle: asyncio.TimerHandle | None = None
        self._connects = self._connect_failures = self._disconnects = 0
        self._published = self._acked = self._nacked = 0
        self._partial_writes = 0

    # -- properties -----------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The MQTT client id."""
        return self._client_id

    @property
    def connected(self) -> asyncio.Event:
        """Set while connected."""
        return self._connected

    # -- connecting -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Connect: TCP, TLS handshake, CONNECT and CONNACK within ``connect_timeout_s``.

        Raises:
            AuthorizationError: The certificate or the client was refused (do not retry).
            ConnectError: Any other failure (unreachable, timeout, retryable CONNACK code).
            RuntimeError: Already connected, or the event loop has no ``add_reader``.
        """
        if self._lock.locked():
            raise RuntimeError("NativeTransport is reusable but not reentrant: already connected")
        await self._lock.acquire()
        try:
            await self._connect()
        except BaseException:
            self._connect_failures += 1
            self._lock.release()
            raise
        return self

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if getattr(type(loop), "add_reader", None) is asyncio.AbstractEventLoop.add_reader:
            raise RuntimeError(_SELECTOR_NEEDED)  # e.g. Windows' ProactorEventLoop
        self._loop = loop
        self._closing = False
        try:
            async with asyncio.timeout(self._options.connect_timeout_s):
                if isinstance(self._identity.credentials, FileCredentials):
                    if self._shared is None:
                        self._shared = await asyncio.to_thread(
                            _shared_context, self._identity, self._endpoint
                        )
                elif self._ctx is None:
                    self._ctx = await asyncio.to_thread(
                        _build_context, self._identity, self._endpoint
                    )
                sock = await self._open(loop)
                connack = await self._mqtt_connect(loop, sock)
        except NotImplementedError as exc:
            self._abort_connect()
            raise RuntimeError(_SELECTOR_NEEDED) from exc
        except TimeoutError as exc:
            self._abort_connect()
            raise ConnectError(
                f"no connection to {self._endpoint.host}:{self._endpoint.port} within "
                f"{self._options.connect_timeout_s}s"
            ) from exc
        except (OSError, ssl.SSLError, ssl.CertificateError, DeviceSdkError) as exc:
            self._abort_connect()
            raise _map_connect_error(exc) from exc
        except BaseException:
            self._abort_connect()
            raise
        self._connected_with(loop, connack)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> ssl.SSLSocket:
        host, port = self._endpoint.host, self._endpoint.port
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addrs: list[tuple[int, Any]] = [(info[0], info[4]) for info in infos]
        else:
            ip_family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET  # noqa: PLR2004
            addrs = [(ip_family, (host, port))]
        if not addrs:
            raise ConnectError(f"cannot resolve {host!r}")
        last: OSError | None = None
        for family, addr in addrs:
            raw = socket.socket(family, socket.SOCK_STREAM)
            try:
                raw.setblocking(False)  # noqa: FBT003 - socket API
                await loop.sock_connect(raw, addr)
            except OSError as exc:
                raw.close()
                last = exc
                continue
            except BaseException:
                raw.close()
                raise
            break
        else:
            raise last or ConnectError(f"cannot connect to {host}:{port}")
        owned = True  # False once a worker thread owns ``raw`` (abandoned wrap)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._shared is not None:
                wrapping = loop.run_in_executor(None, self._shared.wrap, self._identity, raw, host)
                try:
                    sock = await asyncio.shield(wrapping)
                except asyncio.CancelledError:
                    if not wrapping.done():
                        owned = False
                        wrapping.add_done_callback(lambda f: _close_late(f, raw))
                    elif not wrapping.cancelled() and wrapping.exception() is None:
                        wrapping.result().close()
                    raise
            else:
                assert self._ctx is not None  # noqa: S101 - set by _connect
                sock = self._ctx.wrap_socket(
                    raw, server_hostname=host, do_handshake_on_connect=False
                )
        except BaseException:
            if owned:
                raw.close()
            raise
        self._sock = sock
        fd = sock.fileno()
        while True:
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                await self._ready(loop, fd, write=False)
            except ssl.SSLWantWriteError:
                await self._ready(loop, fd, write=True)
            else:
                return sock

    @staticmethod
    async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
        fut: asyncio.Future[None] = loop.create_future()
        if write:
            loop.add_writer(fd, _wake, fut)
        else:
            loop.add_reader(fd, _wake, fut)
        try:
            await fut
        finally:
            if write:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    async def _mqtt_connect(
        self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket
    ) -> codec.Connack:
        opts = self._options
        v5 = self._version == 5  # noqa: PLR2004
        will = opts.will
        packet = codec.encode_connect(
            self._client_id,
            keepalive_s=opts.keepalive_s,
            clean_start=opts.clean_start,
            version=self._version,
            session_expiry_s=opts.session_expiry_s if v5 else 0,
            will_topic=will.topic if will is not None else None,
            will_payload=will.payload if will is not None else b"",
            will_qos=will.qos if will is not None else 0,
            will_retain=will.retain if will is not None else False,
            will_delay_s=will.delay_s if will is not None and v5 else None,
        )
        connack: asyncio.Future[codec.Connack] = loop.create_future()
        self._connack = connack
        # Before anything can arrive: a drop right after CONNACK must not be lost, and
        # messages of a resumed session may follow CONNACK in the same read.
        self._down = loop.create_future()
        self._buffer.open()
        self._rbuf = b""
        loop.add_reader(sock.fileno(), self._on_readable)
        self._send_now(packet)
        result = await connack
        code = result.reason_code
        if code:
            msg = f"connection refused by {self._endpoint.host} (CONNACK {code:#04x})"
            if code in NON_RETRYABLE_CONNACK_CODES:
                raise AuthorizationError(msg, reason_code=code)
            raise ConnectError(msg, reason_code=code)
        if self._down.done():
            raise ConnectError(f"connection dropped right after CONNACK: {self._down.result()}")
        return result

    def _connected_with(self, loop: asyncio.AbstractEventLoop, connack: codec.Connack) -> None:
        props = connack.properties
        receive_max = props.get_int(codec.PROP_RECEIVE_MAXIMUM) or _DEFAULT_RECEIVE_MAXIMUM
        self._max_inflight = max(1, min(self._options.max_inflight, receive_max))
        self._max_packet = props.get_int(codec.PROP_MAXIMUM_PACKET_SIZE) or codec.MAX_VARINT
        server_keepalive = props.get_int(codec.PROP_SERVER_KEEP_ALIVE)
        keepalive = self._options.keepalive_s if server_keepalive is None else server_keepalive
        self._keepalive = float(keepalive)
        if keepalive:
            self._ping_handle = loop.call_later(self._keepalive, self._ping)
        self._connected.set()
        self._connects += 1
        self._logger.debug(
            "connected to %s:%d (MQTT %s, session present: %s)",
            self._endpoint.host,
            self._endpoint.port,
            "5" if self._version == 5 else "3.1.1",  # noqa: PLR2004
            connack.session_present,
        )

    # -- disconnecting ----------------------------------------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect; with an exception, disconnect so that the broker sends the Will.

        MQTT 5 sends DISCONNECT with reason 0x04; MQTT 3.1.1 has no such code, so the socket
        is closed without DISCONNECT.
        """
        if not self._lock.locked():
            return
        try:
            down = self._down
            self._closing = True
            if down is not None and not down.done() and self._sock is not None:
                with_will = exc_type is not None and self._options.will is not None
                if with_will and self._version != 5:  # noqa: PLR2004
                    pass  # 3.1.1: an abrupt close is what makes the broker send the Will
                else:
                    reason = _DISCONNECT_WITH_WILL if with_will else 0
                    self._send_now(codec.encode_disconnect(reason, version=self._version))
                    # The server closes the connection on DISCONNECT; waiting for that keeps
                    # our close from resetting the connection before DISCONNECT was read.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_CLOSE_WAIT_S):
                            await asyncio.shield(down)
        finally:
            self._link_down(None)  # also when cancelled while waiting
            if self._lock.locked():
                self._lock.release()

    def _abort_connect(self) -> None:
        self._teardown()
        self._connected.clear()
        self._down = None
        self._buffer.close(None)

    def _teardown(self) -> None:
        """Release the socket and timers (no state change reported)."""
        sock, self._sock = self._sock, None
        loop = self._loop
        if sock is not None:
            fd = sock.fileno()
            if loop is not None and fd >= 0 and not loop.is_closed():
                with contextlib.suppress(NotImplementedError):
                    loop.remove_reader(fd)
                    loop.remove_writer(fd)
            sock.close()
        for handle in (self._ping_handle, self._pong_handle, self._flush_handle):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._pong_handle = self._flush_handle = None
        self._rbuf = b""
        self._out.clear()
        self._unsent = b""
        self._writing = False
        connack, self._connack = self._connack, None
        if connack is not None and not connack.done():
            connack.set_exception(ConnectError("connection closed before CONNACK"))
            connack.add_done_callback(_consume)

    def _link_down(self, cause: DeviceSdkError | None) -> None:
        """The connection ended: close everything and fail what waits on it."""
        was_up = self._connected.is_set()
        self._teardown()
        self._connected.clear()
        down = self._down
        if down is not None and not down.done():
            if was_up:  # a failed attempt is reported by __aenter__, not as a disconnect
                self._disconnects += 1
                self._last_cause = cause
            down.set_result(cause)
            self._buffer.close(cause)
        err = cause if isinstance(cause, ConnectionLostError) else None
        if self._inflight or self._queue or self._ops or self._qos0:
            err = err or ConnectionLostError(
                f"connection closed: {cause}" if cause else "connection closed"
            )
            futures: list[asyncio.Future[None]] = [f for f, _ in self._inflight.values()]
            futures += self._qos0
            if self._queue:
                futures += [q[0] for q in self._queue]
            self._inflight.clear()
            self._qos0 = []
            self._queue = None
            for fut in futures:
                if not fut.done():
                    fut.set_exception(err)
            for op in self._ops.values():
                if not op.done():
                    op.set_exception(err)
            self._ops.clear()

    def _lost(self, cause: DeviceSdkError) -> None:
        """Connection failure from a callback: fail the connect attempt or the connection."""
        connack = self._connack
        if connack is not None and not connack.done():
            err = cause if isinstance(cause, ConnectError) else ConnectError(str(cause))
            connack.set_exception(err)
            self._teardown()
            return
        if self._closing:
            cause_or_none: DeviceSdkError | None = None
        else:
            cause_or_none = cause
            self._logger.info("connection lost: %s", cause)
        self._link_down(cause_or_none)

    # -- writing ----------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Queue ``data``; everything queued in one loop iteration goes out in one write."""
        self._out.append(data)
        if self._flush_handle is None and not self._writing and not self._corked:
            loop = self._loop
            if loop is not None:
                self._flush_handle = loop.call_soon(self._flush)

    def cork(self) -> None:
        """Buffer packets queued from now on until :meth:`uncork` (event-loop thread)."""
        self._corked = True

    def uncork(self) -> None:
        """Write the packets buffered since :meth:`cork` with one system call, now."""
        self._corked = False
        if self._out and not self._writing:
            self._flush()

    def _send_now(self, data: bytes) -> None:
        self._out.append(data)
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        self._flush_handle = None
        out = self._out
        if self._writing or not out or self._sock is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._write(data)

    def _write(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            sent = 0
        except (OSError, ValueError) as exc:
            self._lost(ConnectionLostError(f"connection lost while writing: {exc}"))
            return
        if sent < len(data):
            # OpenSSL needs the retry to start with the same bytes: keep them all.
            self._unsent = data[sent:]
            if not self._writing:
                self._writing = True
                self._partial_writes += 1
                if self._loop is not None:
                    self._loop.add_writer(sock.fileno(), self._on_writable)
            return
        if self._writing:
            self._writing = False
            if self._loop is not None:
                self._loop.remove_writer(sock.fileno())
        self._unsent = b""
        if self._qos0:
            waiting, self._qos0 = self._qos0, []
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)

    def _on_writable(self) -> None:
        out = self._out
        data = self._unsent + b"".join(out) if out else self._unsent
        out.clear()
        self._write(data)

    # -- reading ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        chunks: list[bytes] = []
        eof = False
        try:
            while True:
                data = sock.recv(_READ_SIZE)
                if not data:
                    eof = True
                    break
                chunks.append(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        except (OSError, ValueError) as exc:
            if chunks:
                self._received(chunks)
            if self._sock is sock:
                self._lost(ConnectionLostError(f"connection lost: {exc}"))
            return
        if chunks:
            self._received(chunks)
        if eof and self._sock is sock:
            if self._connack is not None and not self._connack.done():
                # MQTT 3.1.1 brokers (IoT Core, the stub) refuse a client this way.
                self._lost(ConnectError("the server closed the connection before CONNACK"))
            else:
                self._lost(ConnectionLostError("the server closed the connection"))

    def _received(self, chunks: list[bytes]) -> None:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        buf = self._rbuf + data if self._rbuf else data
        try:
            packets, used = codec.split_packets(buf)
            self._rbuf = buf[used:] if used < len(buf) else b""
            acks: list[bytes] = []
            for ptype, flags, body in packets:
                if self._sock is None:
                    return
                if ptype == codec.PUBLISH:
                    self._on_publish(flags, body, acks)
                elif ptype == codec.PUBACK:
                    self._on_puback(body)
                else:
                    self._on_control(ptype, body)
            if acks and self._sock is not None:
                self._send_now(b"".join(acks))
        except (ProtocolError, ValueError, IndexError, struct.error) as exc:
            self._lost(ConnectionLostError(f"protocol error: {exc}"))

    def _on_publish(self, flags: int, body: bytes, acks: list[bytes]) -> None:
        p = codec.decode_publish(flags, body, version=self._version)
        message = Message(p.topic, p.payload, p.qos, p.retain, p.properties.user)
        if not self._buffer.put_nowait(message):
            self._logger.warning(
                "inbound buffer full (%d): dropped message on %s", self._buffer.maxsize, p.topic
            )
        if p.qos == 1:
            acks.append(codec.encode_puback(p.packet_id, version=self._version))

    def _on_puback(self, body: bytes) -> None:
        ack = codec.decode_ack(codec.PUBACK, body, version=self._version)
        inflight = self._inflight
        entry = inflight.pop(ack.packet_id, None)
        if entry is None:
            self._logger.debug("PUBACK for unknown packet id %d", ack.packet_id)
            return
        if not inflight:
            self._inflight = {}  # dicts never shrink: drop the table a burst made large
        fut, topic = entry
        code = ack.reason_codes[0]
        if code >= _FAILURE:
            self._nacked += 1
            if not fut.done():
                fut.set_exception(
                    NegativeAckError(
                        f"PUBACK {code:#04x} for {topic!r}",
                        packet="PUBACK",
                        reason_code=code,
                        reason_string=ack.properties.get_str(codec.PROP_REASON_STRING),
                    )
                )
        else:
            self._acked += 1
            if not fut.done():
                fut.set_result(None)
        if self._queue:
            self._release_queue()

    def _on_control(self, ptype: int, body: bytes) -> None:
        if ptype == codec.PINGRESP:
            if self._pong_handle is not None:
                self._pong_handle.cancel()
                self._pong_handle = None
        elif ptype in (codec.SUBACK, codec.UNSUBACK):
            ack = codec.decode_ack(ptype, body, version=self._version)
            op = self._ops.pop(ack.packet_id, None)
            if op is not None and not op.done():
                op.set_result(ack)
        elif ptype == codec.CONNACK:
            connack = self._connack
            if connack is None or connack.done():
                raise ProtocolError("unexpected CONNACK")
            connack.set_result(codec.decode_connack(body, version=self._version))
            self._connack = None
        elif ptype == codec.DISCONNECT:
            packet = codec.decode_disconnect(body)
            code = packet.reason_code
            reason = packet.properties.get_str(codec.PROP_REASON_STRING)
            text = f"the server sent DISCONNECT {code:#04x}" + (f": {reason}" if reason else "")
            if self._connack is not None and not self._connack.done():
                self._lost(ConnectError(text, reason_code=code))
            else:
                self._lost(ConnectionLostError(text, reason_code=code))
        else:
            raise ProtocolError(f"unexpected packet type {ptype}")

    # -- keep-alive -------------------------------------------------------------------------

    def _ping(self) -> None:
        loop = self._loop
        if self._sock is None or loop is None:
            self._ping_handle = None
            return
        self._send_now(codec.PINGREQ_PACKET)
        if self._pong_handle is None:
            timeout = min(self._options.ping_timeout_s, self._keepalive)
            self._pong_handle = loop.call_later(timeout, self._ping_timeout)
        self._ping_handle = loop.call_later(self._keepalive, self._ping)

    def _ping_timeout(self) -> None:
        self._pong_handle = None
        if self._sock is not None:
            self._lost(
                ConnectionLostError(
                    f"no PINGRESP within {self._options.ping_timeout_s}s (half-open connection)"
                )
            )

    # -- publishing -------------------------------------------------------------------------

    def _next_pid(self) -> int:
        pid = self._pid
        inflight, ops = self._inflight, self._ops
        for _ in range(codec.MAX_PACKET_ID):
            pid = pid % codec.MAX_PACKET_ID + 1
            if pid not in inflight and pid not in ops:
                self._pid = pid
                return pid
        raise ProtocolError("all 65535 packet ids are in use")

    def _packet_too_big(self, size: int, topic: str) -> LimitExceededError:
        return LimitExceededError(
            f"PUBLISH of {size} bytes to {topic!r} exceeds the server's maximum packet size",
            limit="packet_bytes",
            value=size,
            maximum=self._max_packet,
        )

    def _send_qos1(
        self,
        fut: asyncio.Future[None],
        topic: str,
        payload: bytes,
        retain: bool,
        user_properties: UserProperties,
    ) -> None:
        pid = self._next_pid()
        packet = codec.encode_publish(
            topic,
            payload,
            1,
            pid,
            retain=retain,
            version=self._version,
            user_properties=user_properties,
        )
        if len(packet) > self._max_packet:
            fut.set_exception(self._packet_too_big(len(packet), topic))
            return
        self._inflight[pid] = (fut, topic)
        self._published += 1
        self._send(packet)

    def _release_queue(self) -> None:
        queue = self._queue
        while queue and len(self._inflight) < self._max_inflight:
            fut, topic, payload, retain, props = queue.popleft()
            if not fut.done():
                self._send_qos1(fut, topic, payload, retain, props)

    def _start(
        self,
        topic: str,
        payload: bytes,
        qos: QoS,
        *,
        retain: bool,
        user_properties: UserProperties,
    ) -> asyncio.Future[None]:
        loop = self._loop
        if self._sock is None or loop is None or not self._connected.is_set():
            raise ConnectionLostError("transport is not connected") from self._last_cause
        fut: asyncio.Future[None] = loop.create_future()
        if qos == 0:
            packet = codec.encode_publish(
                topic,
                payload,
                0,
                retain=retain,
                version=self._version,
                user_properties=user_properties,
            )
            if len(packet) > self._max_packet:
                raise self._packet_too_big(len(packet), topic)
            self._published += 1
            self._qos0.append(fut)
            self._send(packet)
        elif len(self._inflight) < self._max_inflight and not self._queue:
            self._send_qos1(fut, topic, payload, retain, user_properties)
        else:
            if self._queue is None:
                self._queue = collections.deque()
            self._queue.append((fut, topic, payload, retain, user_properties))
        return fut

    def start_publish(
        self, topic: str, payload: bytes, qos: QoS, *, user_properties: UserProperties = ()
    ) -> asyncio.Future[None]:
        """Queue one PUBLISH without awaiting anything (call on the event-loop thread).

        The future resolves when the PUBACK arrives (QoS 1) or once the packet is handed to
        the network (QoS 0). Beyond the in-flight limit (the smaller of ``max_inflight`` and
        the server's Receive Maximum) publishes wait in order inside the transport.

        Raises:
            ConnectionLostError: Not connected (the future fails with it if the connection
                ends before the PUBACK; with NegativeAckError on a failure reason code).
            LimitExceededError: The packet exceeds the server's Maximum Packet Size.
        """
        return self._start(topic, payload, qos, retain=False, user_properties=user_properties)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: QoS,
        *,
        retain: bool = False,
        user_properties: UserProperties = (),
    ) -> None:
        """Publish; for QoS 1 wait for the PUBACK.

        Raises:
            NegativeAckError: The PUBACK carried a failure reason code (e.g. 0x87).
            ConnectionLostError: The connection dropped before the PUBACK arrived.
            ClosedError: Not connected.
            LimitExceededError: The packet exceeds the server's Maximum Packet Size.
        """
        self._require()
        await self._start(topic, payload, qos, retain=retain, user_properties=user_properties)

    # -- subscriptions ----------------------------------------------------------------------

    def _require(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if self._sock is None or loop is None or not self._connected.is_set():
            raise ClosedError("transport is not connected") from self._last_cause
        return loop

    async def _request(self, packet_id: int, packet: bytes, what: str) -> codec.Ack:
        loop = self._require()
        fut: asyncio.Future[codec.Ack] = loop.create_future()
        self._ops[packet_id] = fut
        self._send_now(packet)
        timeout = self._options.ack_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError as exc:
            raise RequestTimeoutError(
                f"no ack for {what} within {timeout}s", timeout=timeout
            ) from exc
        finally:
            if self._ops.get(packet_id) is fut:
                del self._ops[packet_id]

    async def subscribe(self, filters: Sequence[tuple[str, QoS]]) -> list[int]:
        """Subscribe and return the granted QoS per filter.

        Raises:
            AuthorizationError: A filter was refused with 0x80 or 0x87.
            NegativeAckError: A filter was refused with another failure code.
            RequestTimeoutError: No SUBACK within ``ack_timeout_s``.
            ConnectionLostError: The connection dropped before the SUBACK.
            ClosedError: Not connected.
        """
        self._require()
        pid = self._next_pid()
        packet = codec.encode_subscribe(pid, list(filters), version=self._version)
        ack = await self._request(pid, packet, "SUBSCRIBE")
        codes = list(ack.reason_codes)
        reason = ack.properties.get_str(codec.PROP_REASON_STRING)
        for (flt, _), code in zip(filters, codes, strict=False):
            if code in AUTH_SUBACK_CODES:
                raise AuthorizationError(
                    f"subscription to {flt!r} refused ({code:#04x})", reason_code=code
                )
            if code >= _FAILURE:
                raise NegativeAckError(
                    f"subscription to {flt!r} refused ({code:#04x})",
                    packet="SUBACK",
                    reason_code=code,
                    reason_string=reason,
                )
        return codes

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Unsubscribe from ``filters``.

        Raises:
            NegativeAckError: MQTT 5 UNSUBACK with a failure code (other than 0x11,
                "no subscription existed", which is success for this purpose).
            RequestTimeoutError: No UNSUBACK within ``ack_timeout_s``.
            ConnectionLostError: The connection dropped before the UNSUBACK.
            ClosedError: Not connected.
        """
        self._require()
        pid = self._next_pid()
        packet = codec.encode_unsubscribe(pid, list(filters), version=self._version)
        ack = await self._request(pid, packet, "UNSUBSCRIBE")
        for flt, code in zip(filters, ack.reason_codes, strict=False):
            if code >= _FAILURE:
                raise NegativeAckError(
                    f"unsubscribe from {flt!r} refused ({code:#04x})",
                    packet="UNSUBACK",
                    reason_code=code,
                    reason_string=ack.properties.get_str(codec.PROP_REASON_STRING),
                )

    # -- state ------------------------------------------------------------------------------

    def messages(self) -> AsyncIterator[Message]:
        """Inbound messages; ends when the connection closes (raises if it was lost)."""
        return aiter(self._buffer)

    async def disconnected(self) -> DeviceSdkError | None:
        """Wait for the end of the current connection and return its cause."""
        if self._down is None:
            return self._last_cause
        return await asyncio.shield(self._down)

    def statistics(self) -> TransportStatistics:
        """Counter snapshot."""
        return TransportStatistics(
            connects=self._connects,
            connect_failures=self._connect_failures,
            disconnects=self._disconnects,
            published=self._published,
            acked=self._acked,
            nacked=self._nacked,
            received=self._buffer.received,
            dropped=self._buffer.dropped,
            buffered=len(self._buffer),
            buffer_size=self._buffer.maxsize,
            in_flight=len(self._inflight) + len(self._queue or ()),
        )
