"""The little HTTP/1.1 the firmware server needs: request parsing and Range (pure parts).

Range handling (RFC 9110 §14, with the choices a test server should make loudly):

- no ``Range`` header, or a unit other than ``bytes``: the whole file, 200 (the RFC's "ignore");
- several ranges (``bytes=0-1,5-6``): the whole file, 200 (S3 does not serve multipart ranges);
- one range ``a-b``, ``a-`` or ``-n`` that overlaps the file: 206 with ``Content-Range``; ``b``
  past the end is clipped, ``-n`` larger than the file means the whole file;
- one range that does not overlap the file (``a`` >= size, ``b`` < ``a``, ``-0``, any range of an
  empty file) **or that is malformed** (``bytes=x-``, ``bytes=--1``): 416 with
  ``Content-Range: bytes */<size>``. The RFC allows ignoring a malformed range; answering 416
  shows a device's bug instead of hiding it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ByteRange",
    "HttpRequest",
    "RangeNotSatisfiableError",
    "parse_range",
    "read_request",
    "reason_phrase",
]

_MAX_HEADERS: Final = 100
_SPEC_RE: Final = re.compile(r"(\d*)-(\d*)")

_REASONS: Final = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def reason_phrase(status: int) -> str:
    """The reason phrase of a status code."""
    return _REASONS.get(status, "Error" if status >= 400 else "OK")  # noqa: PLR2004


class RangeNotSatisfiableError(ValueError):
    """The Range cannot be served: answer 416."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A satisfiable byte range: ``length`` bytes from ``start`` (both within the file)."""

    start: int
    length: int

    @property
    def end(self) -> int:
        """Last offset, inclusive (as in ``Content-Range``)."""
        return self.start + self.length - 1

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` header value."""
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Decide what a ``Range`` header asks of a file of ``size`` bytes.

    Returns:
        The range to serve with 206, or ``None`` to serve the whole file with 200.

    Raises:
        RangeNotSatisfiableError: Answer 416 (see the module docstring).
    """
    if header is None:
        return None
    unit, sep, specs = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = specs.split(",")
    if len(parts) > 1:
        return None
    match = _SPEC_RE.fullmatch(parts[0].strip())
    if match is None or match.group(0) == "-":
        raise RangeNotSatisfiableError(f"malformed range {header!r}")
    first, last = match.group(1), match.group(2)
    if size == 0:
        raise RangeNotSatisfiableError("the file is empty")
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiableError("empty suffix range")
        n = min(n, size)
        return ByteRange(size - n, n)
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiableError(f"range {header!r} outside 0-{size - 1}")
    end = min(end, size - 1)
    return ByteRange(start, end - start + 1)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A parsed request head (header names lowercased; repeated headers joined by ``, ``)."""

    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may serve another request after this one."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


class BadRequestError(ValueError):
    """The request head cannot be parsed: answer 400 and close."""


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """Read one request head; ``None`` at a clean end of the connection.

    Raises:
        BadRequestError: Malformed request line or headers, or too many headers.
        asyncio.IncompleteReadError: The connection ended inside the head.
    """
    try:
        line = await reader.readline()
        while line in (b"\r\n", b"\n"):  # RFC 9112 §2.2: ignore empty lines before a request
            line = await reader.readline()
        if not line:
            return None
        parts = line.decode("latin-1").strip().split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):  # noqa: PLR2004
            raise BadRequestError(f"bad request line {line[:80]!r}")
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            raw = await reader.readline()
            if not raw.endswith(b"\n"):
                raise asyncio.IncompleteReadError(raw, None)
            if raw in (b"\r\n", b"\n"):
                return HttpRequest(parts[0].upper(), parts[1], parts[2], headers)
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or not name.strip() or name != name.strip():
                raise BadRequestError(f"bad header line {raw[:80]!r}")
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    except (asyncio.LimitOverrunError, ValueError) as exc:
        if isinstance(exc, BadRequestError):
            raise
        raise BadRequestError(str(exc)) from exc
    raise BadRequestError("too many headers")
