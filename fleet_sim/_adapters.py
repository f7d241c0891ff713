"""Shadow and command traffic of one virtual device, behind small swappable adapters.

:class:`TopicShadow` speaks the classic shadow's MQTT API directly (``update``/``get`` requests
with a ``clientToken``, ``update/delta`` for desired changes) over one subscription to
``$aws/things/<thing>/shadow/+/+``; :class:`TopicCommands` serves the simple command scheme::

    cmd/<thing>/request/<name>   {"correlationId": "c-1", "args": {...}}
    cmd/<thing>/response/<name>  {"correlationId": "c-1", "status": "SUCCEEDED", "result": {...}}
                                 {"correlationId": "c-1", "status": "REJECTED",
                                  "reason": {"code": "REJECTED", "description": "..."}}

Both only need :meth:`DeviceClient.subscribe <device_sdk.DeviceClient.subscribe>` and
:meth:`~device_sdk.DeviceClient.send_now`, and the device runner only uses the small
:class:`ShadowPort` / :class:`CommandPort` protocols, so ``device_sdk.shadow.ShadowSync`` and
``device_sdk.commands.Commands`` can replace them without touching the engine.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from device_sdk import DeviceClient, DeviceSdkError, Message, Subscription
from fleet_sim._metrics import RunMetrics
from fleet_sim._model import CommandResult
from fleet_sim._transport import error_kind

__all__ = ["CommandPort", "ShadowPort", "TopicCommands", "TopicShadow"]

_log = logging.getLogger(__name__)
_perf = time.perf_counter
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
#: Seconds after which an unanswered shadow request counts as timed out.
SHADOW_TIMEOUT_S = 30.0
_SEND_WAIT_S = 10.0


class ShadowPort(Protocol):
    """What the device runner needs from a shadow implementation."""

    @property
    def topic_filter(self) -> str:
        """The filter to subscribe to."""
        ...

    async def report(self, reported: Mapping[str, Any]) -> None:
        """Send the reported state (the answer is awaited by :meth:`handle`)."""
        ...

    async def sync(self) -> None:
        """Request the current document, to apply a desired state set while offline."""
        ...

    async def serve(self, subscription: Subscription) -> None:
        """Handle inbound shadow messages until the subscription ends."""
        ...


class CommandPort(Protocol):
    """What the device runner needs from a command implementation."""

    @property
    def topic_filter(self) -> str:
        """The filter to subscribe to."""
        ...

    async def serve(self, subscription: Subscription) -> None:
        """Answer commands until the subscription ends."""
        ...


class TopicShadow:
    """Classic shadow over plain topics (see the module documentation).

    Args:
        client: The device's client.
        metrics: Where round trips, deltas and rejections are counted.
        on_desired: Called with the desired state (delta) to apply.
    """

    __slots__ = ("_client", "_metrics", "_next", "_on_desired", "_pending", "_prefix")

    def __init__(
        self,
        client: DeviceClient,
        metrics: RunMetrics,
        on_desired: Callable[[Mapping[str, Any]], None],
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._on_desired = on_desired
        self._prefix = f"$aws/things/{client.thing_name}/shadow"
        self._pending: dict[str, float] = {}
        self._next = 0

    @property
    def topic_filter(self) -> str:
        """``$aws/things/<thing>/shadow/+/+``."""
        return f"{self._prefix}/+/+"

    def _token(self) -> str:
        self._next += 1
        now = _perf()
        if len(self._pending) > 8:  # noqa: PLR2004 - stale answers are rare; sweep lazily
            for token, sent in list(self._pending.items()):
                if now - sent > SHADOW_TIMEOUT_S:
                    del self._pending[token]
                    self._metrics.error("shadow:timeout")
        token = str(self._next)
        self._pending[token] = now
        return token

    async def _send(self, op: str, body: dict[str, Any]) -> None:
        try:
            await self._client.send_now(
                f"{self._prefix}/{op}", _encode(body).encode(), 1, wait_s=_SEND_WAIT_S
            )
        except (DeviceSdkError, TimeoutError) as exc:
            self._pending.pop(str(body.get("clientToken")), None)
            self._metrics.error(f"shadow:{error_kind(exc)}")

    async def report(self, reported: Mapping[str, Any]) -> None:
        """Publish ``{"state": {"reported": ...}}`` to ``update``."""
        self._metrics.counters["shadow_updates"] += 1
        body = {"state": {"reported": dict(reported)}, "clientToken": self._token()}
        await self._send("update", body)

    async def sync(self) -> None:
        """Publish a ``get`` request; its answer's delta is applied by :meth:`serve`."""
        self._metrics.counters["shadow_gets"] += 1
        await self._send("get", {"clientToken": self._token()})

    async def serve(self, subscription: Subscription) -> None:
        """Route accepted/rejected answers and deltas."""
        async for message in subscription:
            self.handle(message)

    def handle(self, message: Message) -> None:
        """Handle one inbound shadow message."""
        counters = self._metrics.counters
        op, _, result = message.topic[len(self._prefix) + 1 :].partition("/")
        if result == "documents":
            counters["shadow_documents"] += 1
            return
        try:
            body = json.loads(message.payload)
        except ValueError:
            self._metrics.error("shadow:malformed")
            return
        if not isinstance(body, dict):
            self._metrics.error("shadow:malformed")
            return
        if result == "delta":
            counters["shadow_deltas"] += 1
            state = body.get("state")
            if isinstance(state, dict):
                self._on_desired(state)
            return
        sent = self._pending.pop(str(body.get("clientToken")), None)
        if sent is None:
            return  # somebody else's request (the operator's desired updates)
        self._metrics.histograms["shadow_rtt"].record(_perf() - sent)
        if result == "accepted":
            counters[f"shadow_{op}_accepted"] += 1
            if op == "get":
                delta = (body.get("state") or {}).get("delta")
                if isinstance(delta, dict):
                    self._on_desired(delta)
        elif op == "get" and body.get("code") == 404:  # noqa: PLR2004 - no shadow yet
            counters["shadow_get_not_found"] += 1
        else:
            counters[f"shadow_{op}_rejected"] += 1
            self._metrics.error(f"shadow:rejected({body.get('code')})")


class TopicCommands:
    """The simple ``cmd/<thing>/request/<name>`` scheme (see the module documentation).

    Args:
        client: The device's client.
        metrics: Where handling time and outcomes are counted.
        handler: The model's ``handle_command``.
    """

    __slots__ = ("_client", "_handler", "_metrics", "_prefix")

    def __init__(
        self,
        client: DeviceClient,
        metrics: RunMetrics,
        handler: Callable[[str, Mapping[str, Any]], CommandResult],
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._handler = handler
        self._prefix = f"cmd/{client.thing_name}"

    @property
    def topic_filter(self) -> str:
        """``cmd/<thing>/request/+``."""
        return f"{self._prefix}/request/+"

    async def serve(self, subscription: Subscription) -> None:
        """Answer every request."""
        async for message in subscription:
            await self.handle(message)

    async def handle(self, message: Message) -> None:
        """Answer one request."""
        started = _perf()
        name = message.topic.rsplit("/", 1)[-1]
        try:
            body = json.loads(message.payload)
        except ValueError:
            body = None
        correlation = body.get("correlationId") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(correlation, str):
            self._metrics.error("command:malformed")
            return
        args = body.get("args")
        outcome = self._handler(name, args if isinstance(args, dict) else {})
        response: dict[str, Any] = {"correlationId": correlation}
        if outcome.accepted:
            response["status"] = "SUCCEEDED"
            response["result"] = dict(outcome.result or {})
        else:
            response["status"] = "REJECTED"
            response["reason"] = {"code": "REJECTED", "description": outcome.reason or ""}
        self._metrics.commands[f"{name}:{response['status']}"] += 1
        try:
            await self._client.send_now(
                f"{self._prefix}/response/{name}",
                _encode(response).encode(),
                1,
                wait_s=_SEND_WAIT_S,
            )
        except (DeviceSdkError, TimeoutError) as exc:
            self._metrics.error(f"command:{error_kind(exc)}")
            return
        self._metrics.histograms["command_handling"].record(_perf() - started)
