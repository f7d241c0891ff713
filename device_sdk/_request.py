"""Request/response over MQTT, correlated the way AWS IoT services answer.

Shadow and Jobs requests carry a ``clientToken`` that the service echoes in the matching
``<request topic>/accepted`` or ``/rejected`` message; Fleet Provisioning answers carry none,
so those requests are serialized per topic and the first answer completes the one in flight.

The correlation table is sans-I/O (:class:`PendingRequests`); :class:`RequestChannel` is the
thin async shell over a :class:`~device_sdk.DeviceClient`: it keeps one subscription per
response topic for its lifetime (re-established after reconnects by the client) and publishes
requests without the durable outbox, so a stale request is never replayed after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from device_sdk._exceptions import ClosedError, DeviceSdkError, RequestTimeoutError

if TYPE_CHECKING:
    from device_sdk._client import DeviceClient
    from device_sdk._subscription import Subscription

__all__ = ["PendingRequests", "RequestChannel", "Response"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Response:
    """An answer: which topic it came on, whether it was accepted, and its JSON body."""

    topic: str
    accepted: bool
    body: dict[str, Any]


class PendingRequests:
    """clientToken -> future table (no I/O)."""

    def __init__(self) -> None:
        """Start empty."""
        self._by_token: dict[str, asyncio.Future[Response]] = {}
        self._untokened: dict[str, asyncio.Future[Response]] = {}

    def add(self, token: str | None, topic: str) -> asyncio.Future[Response]:
        """Register a request; with ``token=None`` it is matched by topic alone."""
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        if token is None:
            self._untokened[topic] = fut
        else:
            self._by_token[token] = fut
        return fut

    def discard(self, token: str | None, topic: str) -> None:
        """Forget a request (after it completed or timed out)."""
        if token is None:
            self._untokened.pop(topic, None)
        else:
            self._by_token.pop(token, None)

    def resolve(self, request_topic: str, response: Response) -> bool:
        """Complete the request this response answers; False if none is waiting."""
        token = response.body.get("clientToken")
        fut = self._by_token.get(token) if isinstance(token, str) else None
        if fut is None:
            fut = self._untokened.get(request_topic)
        if fut is None or fut.done():
            return False
        fut.set_result(response)
        return True

    def fail_all(self, exc: BaseException) -> None:
        """Fail every waiting request (the channel is closing)."""
        for fut in [*self._by_token.values(), *self._untokened.values()]:
            if not fut.done():
                fut.set_exception(exc)
        self._by_token.clear()
        self._untokened.clear()


class RequestChannel:
    """JSON request/response over a connected :class:`~device_sdk.DeviceClient`.

    Use as ``async with RequestChannel(device) as channel:``; then
    ``await channel.request(topic, body)`` returns the :class:`Response`.
    """

    def __init__(self, device: DeviceClient, *, timeout_s: float = 10.0) -> None:
        """Bind to ``device``; ``timeout_s`` is the default time to wait for an answer."""
        self._device = device
        self._timeout = timeout_s
        self._pending = PendingRequests()
        self._stack: contextlib.AsyncExitStack | None = None
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sub_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        self._stack = contextlib.AsyncExitStack()
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pending.fail_all(ClosedError("request channel closed"))
        for task in self._readers.values():
            task.cancel()
        for task in self._readers.values():
            with contextlib.suppress(asyncio.CancelledError, DeviceSdkError):
                await task
        self._readers.clear()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    async def _ensure_subscribed(self, request_topic: str) -> None:
        async with self._sub_lock:
            if request_topic in self._readers:
                return
            if self._stack is None:
                raise ClosedError("use 'async with RequestChannel(device)'")
            for suffix in ("accepted", "rejected"):
                topic = f"{request_topic}/{suffix}"
                sub = await self._stack.enter_async_context(self._device.subscribe(topic))
                self._readers[topic] = asyncio.create_task(
                    self._read(request_topic, sub, accepted=suffix == "accepted"),
                    name=f"device_sdk[{self._device.thing_name}].responses:{topic}",
                )
            self._readers[request_topic] = self._readers[f"{request_topic}/accepted"]

    async def _read(self, request_topic: str, sub: Subscription, *, accepted: bool) -> None:
        async for msg in sub:
            try:
                body = json.loads(msg.payload)
            except (ValueError, UnicodeDecodeError):
                _log.warning("ignoring non-JSON response on %s", msg.topic)
                continue
            if not isinstance(body, dict):
                _log.warning("ignoring non-object response on %s", msg.topic)
                continue
            self._pending.resolve(request_topic, Response(msg.topic, accepted, body))

    async def request(
        self,
        topic: str,
        body: dict[str, Any],
        *,
        correlate: bool = True,
        timeout_s: float | None = None,
    ) -> Response:
        """Publish ``body`` to ``topic`` and wait for ``topic``/accepted or /rejected.

        With ``correlate`` (Shadow, Jobs) a fresh ``clientToken`` is added and only the answer
        echoing it counts; without it (Fleet Provisioning) requests on one topic are serialized.

        Raises:
            RequestTimeoutError: No answer in time (the request may still have been applied).
        """
        await self._ensure_subscribed(topic)
        wait = self._timeout if timeout_s is None else timeout_s
        if correlate:
            token: str | None = uuid.uuid4().hex
            return await self._exchange(topic, {**body, "clientToken": token}, token, wait)
        lock = self._locks.setdefault(topic, asyncio.Lock())
        async with lock:
            return await self._exchange(topic, body, None, wait)

    async def _exchange(
        self, topic: str, body: dict[str, Any], token: str | None, wait: float
    ) -> Response:
        fut = self._pending.add(token, topic)
        try:
            async with asyncio.timeout(wait):
                await self._device.send_now(topic, body, 1, wait_s=wait)
                return await fut
        except TimeoutError as exc:
            raise RequestTimeoutError(
                f"no answer on {topic}/accepted|rejected within {wait:g} s"
            ) from exc
        finally:
            self._pending.discard(token, topic)
