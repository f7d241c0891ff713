"""Local health endpoint: ``GET /healthz`` (JSON) and ``GET /metrics`` (Prometheus text 0.0.4).

A deliberately small HTTP/1.0-style server on :func:`asyncio.start_server`: one request per
connection, ``GET``/``HEAD`` only, request head capped at 8 KiB, 5 s to send it. It binds to
127.0.0.1 by default: the numbers are for a local scraper (node_exporter's textfile
collector, a Prometheus agent, ``edge-agent status``), not for the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from typing import TYPE_CHECKING, Any

from edge_agent._tasks import IGNORED, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Callable

    from device_sdk import LatencyHistogram

__all__ = ["HealthServer", "MetricsWriter"]

_log = logging.getLogger(__name__)
_MAX_HEAD = 8192
_READ_TIMEOUT_S = 5.0
_HTTP_OK = 200
_HTTP_UNAVAILABLE = 503
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:  # noqa: PLR2004
        return str(int(value))
    return repr(float(value))


class MetricsWriter:
    """Builds Prometheus text exposition format; samples are grouped by family on output."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def _family(self, name: str, kind: str, help_text: str) -> list[str]:
        if name not in self._families:
            self._families[name] = (kind, help_text, [])
        return self._families[name][2]

    @staticmethod
    def _labels(labels: dict[str, str] | None) -> str:
        if not labels:
            return ""
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        return "{" + inner + "}"

    def gauge(
        self, name: str, value: float, help_text: str, labels: dict[str, str] | None = None
    ) -> None:
        """One gauge sample."""
        self._family(name, "gauge", help_text).append(f"{name}{self._labels(labels)} {_fmt(value)}")

    def counter(
        self, name: str, value: float, help_text: str, labels: dict[str, str] | None = None
    ) -> None:
        """One counter sample (``name`` should end in ``_total``)."""
        self._family(name, "counter", help_text).append(
            f"{name}{self._labels(labels)} {_fmt(value)}"
        )

    def histogram(
        self,
        name: str,
        hist: LatencyHistogram,
        help_text: str,
        *,
        every: int = 4,
        labels: dict[str, str] | None = None,
    ) -> None:
        """A :class:`~device_sdk.LatencyHistogram` as cumulative buckets (one per octave)."""
        lines = self._family(name, "histogram", help_text)
        counts = hist.counts
        cumulative = 0
        extra = dict(labels or {})
        for i, bound in enumerate(hist.bounds):
            cumulative += counts[i]
            if i % every == 0:
                lbl = self._labels({**extra, "le": _fmt(bound)})
                lines.append(f"{name}_bucket{lbl} {cumulative}")
        lines.append(f"{name}_bucket{self._labels({**extra, 'le': '+Inf'})} {hist.count}")
        lines.append(f"{name}_sum{self._labels(extra)} {_fmt(hist.sum)}")
        lines.append(f"{name}_count{self._labels(extra)} {hist.count}")

    def text(self) -> str:
        """The exposition, newline-terminated."""
        out: list[str] = []
        for name, (kind, help_text, lines) in self._families.items():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n"


class HealthServer:
    """Serves ``/healthz`` and ``/metrics`` from two callables.

    Args:
        host: Address to bind (127.0.0.1 by default in the configuration).
        port: TCP port; 0 picks a free one (see :attr:`port` once started).
        health: Returns ``(healthy, details)``; unhealthy answers 503.
        metrics: Returns the Prometheus text.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        metrics: Callable[[], str],
    ) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one once started)."""
        return self._port

    async def run(self, *, task_status: TaskStatus = IGNORED) -> None:
        """Listen until cancelled."""
        server = await asyncio.start_server(self._serve, self._host, self._port)
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        _log.info("health endpoint on http://%s:%d/healthz and /metrics", self._host, self._port)
        try:
            async with server:
                task_status.started()
                await server.serve_forever()
        finally:
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, ctype, body = self._answer(head)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        except ConnectionError:
            writer.close()
            return
        method = head.split(b" ", 1)[0]
        header = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(header + (b"" if method == b"HEAD" else body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[int, str, bytes]:
        parts = head[:_MAX_HEAD].split(b"\r\n", 1)[0].split()
        if len(parts) < 2:  # noqa: PLR2004
            return 405, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].decode(errors="replace").split("?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        if target == "/healthz":
            healthy, details = self._health()
            body = json.dumps(details, separators=(",", ":"), default=str).encode() + b"\n"
            return (_HTTP_OK if healthy else _HTTP_UNAVAILABLE), "application/json", body
        if target == "/metrics":
            return _HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", self._metrics().encode()
        return 404, "text/plain", b"try /healthz or /metrics\n"
