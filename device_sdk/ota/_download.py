"""HTTP(S) download of the image with Range resume, one request per call, run in a thread.

Standard library only (``http.client`` + ``ssl``). :meth:`Downloader.fetch` makes one request
for ``dest`` from ``offset`` and writes what arrives, fsyncing and checkpointing every
``checkpoint_bytes`` so that the bytes on disk (and the offset in the journal) survive a crash
or power cut. The agent loops over attempts: it resumes after a dropped connection, fetches
a fresh URL after a 403 and accepts a restart from 0 when a server ignores Range.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import http.client
import os
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from device_sdk.ota._faults import FaultInjector

__all__ = ["AttemptResult", "AttemptStatus", "Downloader"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_HTTP_OK = 200
_HTTP_PARTIAL = 206
_HTTP_FORBIDDEN = 403
_HTTP_RANGE = 416


class AttemptStatus(enum.StrEnum):
    """How one request ended."""

    COMPLETE = "complete"
    DROPPED = "dropped"  # connection cut, timeout or short body: resume from ``offset``
    EXPIRED = "expired"  # 403: fetch a fresh URL
    HTTP_ERROR = "http_error"  # other status
    STOPPED = "stopped"  # the caller asked to stop


@dataclasses.dataclass(slots=True)
class AttemptResult:
    """The result of one request.

    Attributes:
        status: How it ended.
        offset: Bytes of the image on disk (fsynced) afterwards.
        http_status: The response status (0 without a response).
        range_ignored: The server answered 200 to a Range request: the file restarted at 0.
        received: Body bytes received by this request.
        detail: Error text.
    """

    status: AttemptStatus
    offset: int
    http_status: int = 0
    range_ignored: bool = False
    received: int = 0
    detail: str = ""


class Downloader:
    """Downloads over HTTPS trusting ``ca_file`` (or the system store), or plain HTTP.

    Args:
        ca_file: CA bundle to trust for HTTPS (``None``: system defaults).
        timeout_s: Connect and per-read socket timeout.
        chunk_size: Read size.
        checkpoint_bytes: fsync + checkpoint interval.
        bandwidth_bps: Rate cap (token bucket over the request), ``None``: unlimited.
    """

    def __init__(
        self,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        timeout_s: float = 30.0,
        chunk_size: int = 64 * 1024,
        checkpoint_bytes: int = 256 * 1024,
        bandwidth_bps: int | None = None,
    ) -> None:
        self.ca_file = ca_file
        self.timeout_s = timeout_s
        self.chunk_size = chunk_size
        self.checkpoint_bytes = checkpoint_bytes
        self.bandwidth_bps = bandwidth_bps

    def _connection(self, url: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        host = url.hostname or "localhost"
        if url.scheme == "https":
            ctx = ssl.create_default_context(
                cafile=os.fspath(self.ca_file) if self.ca_file is not None else None
            )
            return http.client.HTTPSConnection(
                host, url.port or 443, context=ctx, timeout=self.timeout_s
            )
        if url.scheme == "http":
            return http.client.HTTPConnection(host, url.port or 80, timeout=self.timeout_s)
        raise ValueError(f"unsupported URL scheme {url.scheme!r}")

    def fetch(
        self,
        url: str,
        dest: Path,
        offset: int,
        total: int,
        *,
        on_checkpoint: Callable[[int], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
        faults: FaultInjector | None = None,
    ) -> AttemptResult:
        """One GET of ``url`` into ``dest`` from ``offset`` (blocking; run it in a thread).

        ``on_checkpoint(offset)`` is called after each fsync (durable bytes);
        ``on_progress(position)`` after each chunk written (not yet durable).
        """
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        dest.parent.mkdir(parents=True, exist_ok=True)
        marks = _byte_marks(faults)
        enospc = faults is not None and faults.armed_at("disk.enospc")
        headers = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        conn = self._connection(parts)
        result = AttemptResult(AttemptStatus.DROPPED, offset)
        try:
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                result.detail = f"request failed: {exc!r}"
                return result
            result.http_status = resp.status
            if resp.status == _HTTP_FORBIDDEN:
                resp.read(4096)
                result.status = AttemptStatus.EXPIRED
                return result
            if resp.status == _HTTP_RANGE and offset >= total:
                resp.read(4096)
                result.status = AttemptStatus.COMPLETE
                return result
            start = 0
            if resp.status == _HTTP_PARTIAL:
                m = _CONTENT_RANGE.match(resp.getheader("Content-Range") or "")
                start = int(m.group(1)) if m else -1
                if start != offset:
                    result.status = AttemptStatus.HTTP_ERROR
                    result.detail = f"unexpected Content-Range {resp.getheader('Content-Range')!r}"
                    return result
            elif resp.status == _HTTP_OK:
                if offset > 0:
                    result.range_ignored = True  # restart cleanly from 0
            else:
                resp.read(4096)
                result.status = AttemptStatus.HTTP_ERROR
                result.detail = f"HTTP {resp.status} {resp.reason}"
                return result
            position = start
            mode = "r+b" if dest.exists() else "w+b"
            with dest.open(mode) as f:
                f.seek(position)
                f.truncate(position)
                result.offset = position
                since_sync = 0
                began = time.monotonic()
                while position < total:
                    if stop is not None and stop.is_set():
                        result.status = AttemptStatus.STOPPED
                        break
                    want = min(self.chunk_size, total - position)
                    nxt = next((m for m in marks if position < m <= position + want), None)
                    if nxt is not None:
                        want = nxt - position
                    try:
                        chunk = resp.read(want)
                    except (OSError, http.client.HTTPException) as exc:
                        result.detail = f"connection lost at {position}: {exc!r}"
                        break
                    if not chunk:
                        result.detail = f"connection closed at {position}"
                        break
                    if enospc and faults is not None:
                        fired = faults.hit_sync("disk.enospc", stop)
                        if fired is not None and fired.kind == "inject":
                            raise OSError(errno.ENOSPC, "No space left on device (injected)")
                    f.write(chunk)
                    position += len(chunk)
                    if on_progress is not None:
                        on_progress(position)
                    result.received += len(chunk)
                    since_sync += len(chunk)
                    if since_sync >= self.checkpoint_bytes or position in marks:
                        _sync(f)
                        since_sync = 0
                        result.offset = position
                        if on_checkpoint is not None:
                            on_checkpoint(position)
                    if faults is not None and position in marks:
                        fired = faults.hit_sync(f"download.at_bytes:{position}", stop)
                        if fired is not None and fired.kind == "corrupt":
                            _flip(f, int(fired.arg) if fired.arg else position - 1, position)
                    self._throttle(result.received, began, stop)
                else:
                    result.status = AttemptStatus.COMPLETE
                _sync(f)
                result.offset = position
                if on_checkpoint is not None:
                    on_checkpoint(position)
            return result
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _throttle(self, received: int, began: float, stop: threading.Event | None) -> None:
        if not self.bandwidth_bps:
            return
        ahead = received / self.bandwidth_bps - (time.monotonic() - began)
        while ahead > 0 and not (stop is not None and stop.is_set()):
            time.sleep(min(ahead, 0.05))
            ahead = received / self.bandwidth_bps - (time.monotonic() - began)


def _sync(f: object) -> None:
    f.flush()  # type: ignore[attr-defined]
    os.fsync(f.fileno())  # type: ignore[attr-defined]


def _flip(f: object, at: int, end: int) -> None:
    at = max(0, min(at, end - 1))
    f.seek(at)  # type: ignore[attr-defined]
    byte = f.read(1)  # type: ignore[attr-defined]
    f.seek(at)  # type: ignore[attr-defined]
    f.write(bytes([byte[0] ^ 0xFF]) if byte else b"\x00")  # type: ignore[attr-defined]
    f.seek(end)  # type: ignore[attr-defined]
    _sync(f)


def _byte_marks(faults: FaultInjector | None) -> list[int]:
    if faults is None:
        return []
    marks = []
    for rule in faults.plan.faults:
        prefix = "download.at_bytes:"
        if rule.point.startswith(prefix):
            with contextlib.suppress(ValueError):
                marks.append(int(rule.point[len(prefix) :]))
    return sorted(set(marks))
