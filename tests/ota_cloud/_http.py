"""A tiny asyncio HTTP/1.1 client that shows what a device would see (incl. cut bodies)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # the whole Content-Length arrived


def client_tls(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))


async def _read_response(reader: asyncio.StreamReader, *, head_only: bool) -> Response:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if head_only:
        return Response(status, headers, b"", True)
    body = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while len(body) < length:
            chunk = await reader.read(length - len(body))
            if not chunk:
                break
            body += chunk
    return Response(status, headers, body, len(body) == length)


async def fetch(
    url: str,
    *,
    ca_file: Path | None = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> Response:
    """One request on a fresh connection."""
    (response,) = await fetch_many(url, [headers or {}], ca_file=ca_file, method=method)
    return response


async def fetch_many(
    url: str,
    header_sets: list[dict[str, str]],
    *,
    ca_file: Path | None = None,
    method: str = "GET",
) -> list[Response]:
    """Several requests on one keep-alive connection (the last asks to close)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    tls = client_tls(ca_file) if parts.scheme == "https" and ca_file else None
    if parts.scheme == "https" and tls is None:
        tls = ssl.create_default_context()
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    out = []
    try:
        for i, extra in enumerate(header_sets):
            last = i == len(header_sets) - 1
            lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
            lines += [f"{k}: {v}" for k, v in extra.items()]
            lines.append(f"Connection: {'close' if last else 'keep-alive'}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            out.append(await _read_response(reader, head_only=method == "HEAD"))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return out
