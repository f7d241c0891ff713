"""The firmware file server: an asyncio HTTP(S)/1.1 server for presigned download URLs.

``GET``/``HEAD /firmware/<id>?[thing=…&]expires=…&sig=…`` answers like S3 with a presigned URL:

- 403 (S3-style XML ``<Error><Code>…``) when the query is missing, the signature is wrong
  (``SignatureDoesNotMatch``) or the URL has expired (``AccessDenied``, "Request has expired");
- 404 ``NoSuchKey`` for an unknown firmware (checked after the signature, as S3 does);
- 200 with the whole image, 206 with ``Content-Range`` for one satisfiable range, 416 with
  ``Content-Range: bytes */<size>`` otherwise (rules in :mod:`cloud_stubs.firmware._http`);
- ``Accept-Ranges: bytes``, ``ETag: "<sha256>"``, ``Content-Length`` always; HTTP/1.1
  keep-alive.

``GET /healthz`` answers 200 ``ok``. Every request for a firmware is counted per (firmware,
thing) in ``firmware.sqlite`` (:meth:`FirmwareServer.counters`); armed faults
(:mod:`cloud_stubs.firmware._faults`) are applied and used up per request.

HTTPS is the default (presigned S3 URLs are HTTPS, and devices already trust the stub's CA
``DIR/ca/ca.pem``): the server presents the stub's server certificate (SAN ``localhost``,
``127.0.0.1``, ``::1``). ``tls=False`` serves plain HTTP. On start the server writes
``DIR/firmware/server.json`` (scheme, host, port, base URL, URL lifetime); the jobs service's
document renderer reads it to put fresh URLs into job documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qsl, urlsplit

from certs import write_file_atomic
from cloud_stubs._errors import StateDirError
from cloud_stubs._paths import StatePaths
from cloud_stubs.firmware._faults import FaultPlan, FaultRule, FaultSpec, plan_faults
from cloud_stubs.firmware._http import (
    BadRequestError,
    ByteRange,
    HttpRequest,
    RangeNotSatisfiableError,
    parse_range,
    read_request,
    reason_phrase,
)
from cloud_stubs.firmware._paths import OtaPaths
from cloud_stubs.firmware._presign import (
    DEFAULT_URL_TTL_S,
    Presigner,
    UrlVerdict,
    ensure_url_secret,
)
from cloud_stubs.firmware._store import DownloadCounters, FirmwareStore

__all__ = ["FirmwareServer"]

_log = logging.getLogger(__name__)

_CHUNK: Final = 64 * 1024
_IDLE_TIMEOUT_S: Final = 60.0
_MAX_DISCARDED_BODY: Final = 1 << 20
_PREFIX: Final = "/firmware/"

_S3_ERRORS: Final = {
    UrlVerdict.MISSING: (
        "AccessDenied",
        "Query-string authentication requires the expires and sig parameters",
    ),
    UrlVerdict.BAD_SIGNATURE: (
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided",
    ),
    UrlVerdict.EXPIRED: ("AccessDenied", "Request has expired"),
}


def _error_body(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>\n"
    ).encode()


class _Dropped(Exception):  # noqa: N818 - internal control flow, not an error
    """The response was cut on purpose (``drop_after``)."""


class FirmwareServer:
    """Serves the firmware store over HTTP(S) with presigned URLs, Range, counters and faults.

    Usage::

        async with FirmwareServer(paths, port=0) as server:
            url = server.url(manifest.firmware_id, thing="robot-1")

    Attributes:
        paths: The state directory.
        store: The firmware store it serves (also where counters and faults live).
    """

    def __init__(
        self,
        paths: StatePaths,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = True,
        url_ttl_s: int = DEFAULT_URL_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure the server; nothing listens until ``async with`` (or :meth:`start`).

        Args:
            paths: The stub's state directory (its server certificate is used for HTTPS).
            host: Address to listen on.
            port: TCP port; 0 picks a free one.
            tls: HTTPS (default) or plain HTTP.
            url_ttl_s: Lifetime of the URLs :meth:`url` and the document renderer make.
            clock: Epoch seconds (URL expiry is checked against it).
        """
        if url_ttl_s < 1:
            raise ValueError("url_ttl_s must be at least 1 second")
        self.paths = paths
        self._ota = OtaPaths.of(paths)
        self._host = host
        self._port = port
        self._tls = tls
        self._ttl = url_ttl_s
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._store: FirmwareStore | None = None
        self._secret = b""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, then write ``server.json``.

        Raises:
            StateDirError: HTTPS without the stub's server certificate (run the stub once).
            OSError: The port is taken.
        """
        if self._server is not None:
            raise RuntimeError("FirmwareServer is already running")
        ctx: ssl.SSLContext | None = None
        if self._tls:
            sp = self.paths
            if not (sp.server_cert.exists() and sp.server_key.exists()):
                raise StateDirError(
                    f"{sp.root} has no server certificate for HTTPS: run "
                    f"'cloud-stubs init --state-dir {sp.root}' first (or use tls=False)"
                )
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(sp.server_cert), str(sp.server_key))
        self._store = FirmwareStore(self._ota)
        self._secret = ensure_url_secret(self._ota)
        self._server = await asyncio.start_server(
            self._connection,
            self._host,
            self._port,
            ssl=ctx,
            ssl_handshake_timeout=10 if ctx is not None else None,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._write_server_file(running=True)
        _log.info("firmware server on %s", self.base_url)

    async def stop(self) -> None:
        """Stop listening, close open connections, mark ``server.json`` not running."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()
        self._write_server_file(running=False)
        if self._store is not None:
            self._store.close()
            self._store = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _write_server_file(self, *, running: bool) -> None:
        data = {
            "scheme": self.scheme,
            "host": self._host,
            "port": self._port,
            "base_url": self.base_url,
            "url_ttl_s": self._ttl,
            "running": running,
            "pid": os.getpid(),
        }
        write_file_atomic(self._ota.server_file, (json.dumps(data, indent=2) + "\n").encode())

    # -- accessors --------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        """``https`` or ``http``."""
        return "https" if self._tls else "http"

    @property
    def host(self) -> str:
        """The listening address."""
        return self._host

    @property
    def port(self) -> int:
        """The listening port (the real one once started)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``scheme://host:port`` (IPv6 hosts bracketed)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{self.scheme}://{host}:{self._port}"

    @property
    def store(self) -> FirmwareStore:
        """The firmware store (open while running)."""
        if self._store is None:
            raise RuntimeError("FirmwareServer is not running: use 'async with FirmwareServer'")
        return self._store

    @property
    def url_ttl_s(self) -> int:
        """Lifetime of newly rendered URLs, seconds."""
        return self._ttl

    @url_ttl_s.setter
    def url_ttl_s(self, seconds: int) -> None:
        if seconds < 1:
            raise ValueError("url_ttl_s must be at least 1 second")
        self._ttl = seconds
        if self._server is not None:
            self._write_server_file(running=True)

    @property
    def presigner(self) -> Presigner:
        """Makes URLs this server accepts."""
        if self._server is None:
            raise RuntimeError("FirmwareServer is not running")
        return Presigner(self.base_url, self._secret, self._ttl)

    def url(self, firmware_id: str, *, thing: str | None = None, now: float | None = None) -> str:
        """A presigned URL for ``firmware_id``, valid ``url_ttl_s`` from ``now``."""
        return self.presigner.url(firmware_id, self._clock() if now is None else now, thing=thing)

    def counters(
        self, firmware_id: str | None = None, thing: str | None = None
    ) -> list[DownloadCounters]:
        """Download counters per (firmware, thing)."""
        return self.store.downloads(firmware_id, thing)

    def totals(self, firmware_id: str) -> DownloadCounters:
        """Download counters of a firmware summed over things."""
        return self.store.download_totals(firmware_id)

    def add_fault(
        self,
        spec: FaultSpec | str,
        *,
        firmware_id: str | None = None,
        thing: str | None = None,
        times: int | None = 1,
    ) -> FaultRule:
        """Arm a fault (see :mod:`cloud_stubs.firmware._faults`)."""
        return self.store.add_fault(spec, firmware_id=firmware_id, thing=thing, times=times)

    def clear_faults(self) -> int:
        """Disarm every fault."""
        return self.store.clear_faults()

    # -- connections ------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        abort = False
        try:
            while True:
                try:
                    async with asyncio.timeout(_IDLE_TIMEOUT_S):
                        request = await read_request(reader)
                except BadRequestError:
                    await self._send(writer, 400, body=_error_body("BadRequest", "bad request"))
                    break
                if request is None:
                    break
                keep = await self._answer(request, reader, writer)
                if not keep:
                    break
        except _Dropped:
            abort = True
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            abort = True
        except asyncio.CancelledError:
            abort = True
            raise
        finally:
            if task is not None:
                self._connections.discard(task)
            await _close(writer, abort=abort)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        head_only: bool = False,
        close: bool = True,
    ) -> None:
        all_headers = {
            "Content-Type": "application/xml" if status >= 400 else "text/plain",  # noqa: PLR2004
            "Content-Length": str(len(body)),
            **(headers or {}),
            "Connection": "close" if close else "keep-alive",
        }
        writer.write(_head(status, all_headers))
        if not head_only:
            writer.write(body)
        await writer.drain()

    async def _answer(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; return whether the connection stays open."""
        keep = request.keep_alive
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > _MAX_DISCARDED_BODY:
            await self._send(writer, 400, body=_error_body("BadRequest", "bad Content-Length"))
            return False
        if int(length):
            await reader.readexactly(int(length))
        split = urlsplit(request.target)
        path = split.path
        if request.method not in {"GET", "HEAD"}:
            body = _error_body("MethodNotAllowed", "use GET or HEAD")
            await self._send(writer, 405, headers={"Allow": "GET, HEAD"}, body=body, close=not keep)
            return keep
        head_only = request.method == "HEAD"
        if path == "/healthz":
            await self._send(writer, 200, body=b"ok\n", head_only=head_only, close=not keep)
            return keep
        if not path.startswith(_PREFIX) or "/" in path[len(_PREFIX) :]:
            body = _error_body("NoSuchKey", "The specified key does not exist.")
            await self._send(writer, 404, body=body, head_only=head_only, close=not keep)
            return keep
        firmware_id = path[len(_PREFIX) :]
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        thing = query.get("thing") or None
        store = self.store
        now = self._clock()

        verdict = Presigner(self.base_url, self._secret, self._ttl).check(path, query, now)
        if verdict is not UrlVerdict.OK:
            code, message = _S3_ERRORS[verdict]
            await self._send(
                writer, 403, body=_error_body(code, message), head_only=head_only, close=not keep
            )
            store.record_download(firmware_id, thing, status=403, bytes_served=0, at=now)
            return keep
        manifest = store.find(firmware_id)
        image = self._ota.image_file(firmware_id)
        if manifest is None or not image.exists():
            body = _error_body("NoSuchKey", "The specified key does not exist.")
            await self._send(writer, 404, body=body, head_only=head_only, close=not keep)
            store.record_download(firmware_id, thing, status=404, bytes_served=0, at=now)
            return keep
        size = manifest.size
        unsatisfiable = False
        try:
            rng = parse_range(request.headers.get("range"), size)
        except RangeNotSatisfiableError:
            rng, unsatisfiable = None, True
        serve = rng or ByteRange(0, size)
        plan = plan_faults(
            store.matching_faults(firmware_id, thing),
            has_range=rng is not None,
            size=size,
            start=0 if unsatisfiable else serve.start,
            length=0 if unsatisfiable else serve.length,
        )
        store.use_faults(plan.used)
        fired = len(plan.used)
        if plan.delay_s:
            await asyncio.sleep(plan.delay_s)
        if plan.status is not None:
            status = plan.status
            body = (
                _error_body(*_S3_ERRORS[UrlVerdict.EXPIRED])
                if status == 403  # noqa: PLR2004
                else _error_body("InjectedFault", f"fault status:{status}")
            )
            await self._send(writer, status, body=body, head_only=head_only, close=not keep)
            store.record_download(
                firmware_id, thing, status=status, bytes_served=0, faults_fired=fired, at=now
            )
            return keep
        if unsatisfiable:
            body = _error_body("InvalidRange", "The requested range is not satisfiable")
            await self._send(
                writer,
                416,
                headers={"Content-Range": f"bytes */{size}"},
                body=body,
                head_only=head_only,
                close=not keep,
            )
            store.record_download(
                firmware_id, thing, status=416, bytes_served=0, faults_fired=fired, at=now
            )
            return keep
        if plan.ignore_range:
            rng, serve = None, ByteRange(0, size)
        status = 206 if rng is not None else 200
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(serve.length),
            "Accept-Ranges": "bytes",
            "ETag": f'"{manifest.sha256}"',
            "Connection": "keep-alive" if keep else "close",
        }
        if rng is not None:
            headers["Content-Range"] = rng.content_range(size)
        writer.write(_head(status, headers))
        sent = 0
        try:
            if not head_only:
                sent = await self._body(writer, image, serve, plan)
            else:
                await writer.drain()
        except _Dropped as exc:
            store.record_download(
                firmware_id,
                thing,
                status=status,
                bytes_served=int(str(exc) or 0),
                dropped=True,
                faults_fired=fired,
                at=now,
            )
            raise
        except (ConnectionError, ssl.SSLError):
            store.record_download(
                firmware_id, thing, status=status, bytes_served=0, dropped=True, at=now
            )
            raise
        store.record_download(
            firmware_id, thing, status=status, bytes_served=sent, faults_fired=fired, at=now
        )
        return keep

    async def _body(
        self, writer: asyncio.StreamWriter, image: Path, serve: ByteRange, plan: FaultPlan
    ) -> int:
        """Write the body; return bytes written. Raises ``_Dropped(bytes)`` when cut."""
        limit = serve.length if plan.drop_after is None else min(plan.drop_after, serve.length)
        chunk_size = _CHUNK
        if plan.throttle_bps is not None:
            chunk_size = max(1, min(_CHUNK, plan.throttle_bps // 10))
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        with image.open("rb") as handle:
            handle.seek(serve.start)
            while sent < limit:
                data = handle.read(min(chunk_size, limit - sent))
                if not data:
                    break
                if plan.corrupt_offsets:
                    data = _corrupt(data, serve.start + sent, plan.corrupt_offsets)
                writer.write(data)
                try:
                    await writer.drain()
                except (ConnectionError, ssl.SSLError) as exc:
                    raise _Dropped(str(sent)) from exc
                sent += len(data)
                if plan.throttle_bps is not None:
                    due = started + sent / plan.throttle_bps
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
        if plan.drop_after is not None and sent < serve.length:
            raise _Dropped(str(sent))
        return sent


def _corrupt(data: bytes, offset: int, offsets: list[int]) -> bytes:
    buf = bytearray(data)
    for at in offsets:
        if offset <= at < offset + len(buf):
            buf[at - offset] ^= 0xFF
    return bytes(buf)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _close(writer: asyncio.StreamWriter, *, abort: bool) -> None:
    if abort:
        writer.transport.abort()
        return
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await writer.wait_closed()
