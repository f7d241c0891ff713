"""Greengrass v2 mode: the device SDK's :class:`~device_sdk.Transport` over the nucleus' IPC.

Inside a Greengrass component the nucleus owns the MQTT connection and the certificate; the
component talks to it over IPC (``awsiot.greengrasscoreipc.clientv2``). This transport maps
the :class:`~device_sdk.Transport` operations onto IPC operations, so the outbox, telemetry,
commands, jobs and the settings shadow run unchanged:

==============================================  =============================================
Transport operation                             IPC operation
==============================================  =============================================
``publish`` (any topic but shadow requests)     ``PublishToIoTCore`` (QoS 0/1)
``subscribe`` (any filter but shadow topics)    ``SubscribeToIoTCore`` (a stream per filter)
``publish`` to ``$aws/things/T/shadow/...``     ``GetThingShadow`` / ``UpdateThingShadow`` /
``/get``, ``/update``, ``/delete``              ``DeleteThingShadow`` (ShadowManager); the
                                                answer is delivered as the matching
                                                ``/accepted`` or ``/rejected`` message
``subscribe`` to shadow ``update/delta`` and    ``SubscribeToTopic`` on local pub/sub, where
``update/documents``                            ShadowManager publishes shadow events
``async with`` / ready                          connect (``SVCUID`` from the nucleus);
                                                ``UpdateState(RUNNING)`` once the agent is ready
==============================================  =============================================

No nucleus runs in this repository's tests: they drive this transport through a fake IPC
client that implements the same operations (``tests/edge_agent/test_greengrass.py``), backed
by the local IoT Core stub.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from device_sdk import (
    AuthorizationError,
    ClosedError,
    ConnectError,
    ConnectionLostError,
    DeviceSdkError,
    Message,
    NegativeAckError,
    TransportStatistics,
)
from device_sdk.transport import MessageBuffer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from types import TracebackType

    from device_sdk import QoS
    from device_sdk.transport import UserProperties

__all__ = ["GreengrassIpcTransport", "IpcClient", "LifecycleReporter", "default_ipc_client"]

_log = logging.getLogger(__name__)
_SHADOW_OP = re.compile(r"^\$aws/things/([^/]+)/shadow/(?:name/([^/]+)/)?(get|update|delete)$")
_SHADOW_EVENT = re.compile(r"^\$aws/things/[^/]+/shadow/(?:name/[^/]+/)?update/(delta|documents)$")
_SHADOW_RESPONSE = re.compile(
    r"^\$aws/things/[^/]+/shadow/(?:name/[^/]+/)?\w+/(accepted|rejected)$"
)
_IPC_TIMEOUT_S = 10.0
# ShadowManager / IPC error class name -> (HTTP-like code IoT Core would send, message).
_SHADOW_ERRORS = {
    "ResourceNotFoundError": 404,
    "ConflictError": 409,
    "InvalidArgumentsError": 400,
    "UnauthorizedError": 401,
    "ServiceError": 500,
}


class IpcClient(Protocol):
    """The operations of ``GreengrassCoreIPCClientV2`` this transport uses."""

    def publish_to_iot_core_async(self, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """PublishToIoTCore."""
        ...

    def subscribe_to_iot_core_async(
        self, **kwargs: Any
    ) -> tuple[concurrent.futures.Future[Any], Any]:
        """SubscribeToIoTCore (a stream)."""
        ...

    def subscribe_to_topic_async(self, **kwargs: Any) -> tuple[concurrent.futures.Future[Any], Any]:
        """SubscribeToTopic on local pub/sub (a stream)."""
        ...

    def get_thing_shadow_async(self, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """GetThingShadow (ShadowManager)."""
        ...

    def update_thing_shadow_async(self, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """UpdateThingShadow (ShadowManager)."""
        ...

    def delete_thing_shadow_async(self, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """DeleteThingShadow (ShadowManager)."""
        ...

    def update_state_async(self, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """UpdateState (component lifecycle)."""
        ...

    def close(self, **kwargs: Any) -> Any:
        """Close the IPC connection."""
        ...


@runtime_checkable
class LifecycleReporter(Protocol):
    """A transport that can tell its host the component is running."""

    async def report_running(self) -> None:
        """Report the component RUNNING."""
        ...


def default_ipc_client() -> IpcClient:
    """Connect to the nucleus (inside a Greengrass component only).

    Raises:
        ConnectError: awsiotsdk is missing or the nucleus cannot be reached.
    """
    try:
        from awsiot.greengrasscoreipc.clientv2 import (  # noqa: PLC0415 - Greengrass mode only
            GreengrassCoreIPCClientV2,
        )
    except ImportError as exc:  # pragma: no cover - awsiotsdk is a dependency
        raise ConnectError(f"Greengrass mode needs awsiotsdk: {exc}") from exc
    try:
        client: IpcClient = GreengrassCoreIPCClientV2()
    except Exception as exc:
        raise ConnectError(
            f"cannot connect to the Greengrass nucleus over IPC: {exc} (run the agent as a "
            'Greengrass component, or set transport.mode = "mqtt")'
        ) from exc
    return client


async def _await(future: concurrent.futures.Future[Any]) -> Any:
    async with asyncio.timeout(_IPC_TIMEOUT_S):
        return await asyncio.wrap_future(future)


def _rejected_body(exc: BaseException, token: str | None) -> dict[str, Any]:
    code = _SHADOW_ERRORS.get(type(exc).__name__, 500)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    body: dict[str, Any] = {"code": code, "message": str(message)}
    if token is not None:
        body["clientToken"] = token
    return body


class GreengrassIpcTransport:
    """A :class:`~device_sdk.Transport` through the Greengrass nucleus (see module docs).

    Args:
        thing_name: The core device's thing name (``AWS_IOT_THING_NAME``).
        client_factory: Builds the IPC client (default: connect to the nucleus).
        receive_buffer: Inbound messages buffered at most.
        logger: Logger (defaults to this module's).
    """

    def __init__(
        self,
        thing_name: str,
        *,
        client_factory: Callable[[], IpcClient] = default_ipc_client,
        receive_buffer: int = 1000,
        logger: logging.Logger | None = None,
    ) -> None:
        self._thing = thing_name
        self._factory = client_factory
        self._log = logger or _log
        self._client: IpcClient | None = None
        self._connected = asyncio.Event()
        self._down: asyncio.Future[DeviceSdkError | None] | None = None
        self._last_cause: DeviceSdkError | None = None
        self._buffer = MessageBuffer(receive_buffer)
        self._streams: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._counts = dict.fromkeys(
            ("connects", "connect_failures", "disconnects", "published", "acked", "nacked"), 0
        )
        self._in_flight = 0

    # -- Transport protocol -------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The thing name (the nucleus connects with its own client id)."""
        return self._thing

    @property
    def connected(self) -> asyncio.Event:
        """Set while the IPC connection is up."""
        return self._connected

    async def __aenter__(self) -> Self:
        """Connect to the nucleus."""
        if self._client is not None:
            raise RuntimeError("GreengrassIpcTransport is not reentrant")
        self._loop = asyncio.get_running_loop()
        try:
            self._client = await asyncio.to_thread(self._factory)
        except DeviceSdkError:
            self._counts["connect_failures"] += 1
            raise
        except Exception as exc:
            self._counts["connect_failures"] += 1
            raise ConnectError(f"Greengrass IPC connect failed: {exc}") from exc
        self._down = self._loop.create_future()
        self._buffer.open()
        self._connected.set()
        self._counts["connects"] += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the streams and the IPC connection."""
        client, self._client = self._client, None
        self._connected.clear()
        for op in self._streams.values():
            _close_stream(op)
        self._streams.clear()
        if client is not None:
            try:
                await asyncio.to_thread(client.close)
            except Exception as close_exc:  # noqa: BLE001 - best effort at shutdown
                self._log.debug("closing the IPC client failed: %s", close_exc)
        self._counts["disconnects"] += 1
        self._end(None)

    def _end(self, cause: DeviceSdkError | None) -> None:
        self._connected.clear()
        self._last_cause = cause
        self._buffer.close(cause)
        if self._down is not None and not self._down.done():
            self._down.set_result(cause)

    def _require(self) -> IpcClient:
        if self._client is None:
            raise ClosedError("the Greengrass IPC transport is not connected")
        return self._client

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: QoS,
        *,
        retain: bool = False,
        user_properties: UserProperties = (),
    ) -> None:
        """PublishToIoTCore, or a ShadowManager operation for shadow request topics."""
        client = self._require()
        shadow = _SHADOW_OP.match(topic)
        if shadow is not None:
            await self._shadow_request(client, topic, shadow, payload)
            return
        self._counts["published"] += 1
        self._in_flight += 1
        kwargs: dict[str, Any] = {
            "topic_name": topic,
            "qos": "1" if qos == 1 else "0",
            "payload": payload,
        }
        if retain:
            kwargs["retain"] = True
        if user_properties:
            kwargs["user_properties"] = _user_properties(user_properties)
        try:
            await _await(client.publish_to_iot_core_async(**kwargs))
        except TimeoutError as exc:
            raise ConnectionLostError(f"the nucleus did not accept {topic!r} in time") from exc
        except Exception as exc:
            self._counts["nacked"] += 1
            raise _map_error(exc, f"PublishToIoTCore {topic!r}") from exc
        finally:
            self._in_flight -= 1
        self._counts["acked"] += 1

    async def _shadow_request(
        self, client: IpcClient, topic: str, match: re.Match[str], payload: bytes
    ) -> None:
        thing, shadow_name, op = match.group(1), match.group(2) or "", match.group(3)
        try:
            body = json.loads(payload) if payload else {}
        except ValueError:
            body = {}
        token = body.get("clientToken") if isinstance(body, dict) else None
        args: dict[str, Any] = {"thing_name": thing, "shadow_name": shadow_name}
        try:
            if op == "get":
                response = await _await(client.get_thing_shadow_async(**args))
            elif op == "update":
                response = await _await(client.update_thing_shadow_async(**args, payload=payload))
            else:
                response = await _await(client.delete_thing_shadow_async(**args))
        except Exception as exc:  # noqa: BLE001 - every ShadowManager error becomes /rejected
            answer = _rejected_body(exc, token if isinstance(token, str) else None)
            self._deliver(f"{topic}/rejected", json.dumps(answer).encode())
            return
        data = getattr(response, "payload", None) or b"{}"
        if isinstance(token, str):  # echo the request's token, as IoT Core's shadow topics do
            try:
                doc = json.loads(data)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and doc.get("clientToken") != token:
                data = json.dumps({**doc, "clientToken": token}).encode()
        self._deliver(f"{topic}/accepted", data if isinstance(data, bytes) else data.encode())

    def _deliver(self, topic: str, payload: bytes) -> None:
        if not self._buffer.put_nowait(Message(topic, payload, 1)):
            self._log.warning("inbound buffer full: dropped a message on %s", topic)

    def _deliver_threadsafe(self, topic: str, payload: bytes) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, topic, payload)

    async def subscribe(self, filters: Sequence[tuple[str, QoS]]) -> list[int]:
        """SubscribeToIoTCore per filter (local pub/sub for shadow events)."""
        client = self._require()
        granted: list[int] = []
        for flt, qos in filters:
            if _SHADOW_RESPONSE.match(flt):
                granted.append(qos)  # answered by this transport from ShadowManager results
                continue
            if flt in self._streams:
                granted.append(qos)
                continue
            try:
                if _SHADOW_EVENT.match(flt):
                    future, op = client.subscribe_to_topic_async(
                        topic=flt,
                        on_stream_event=self._on_local_event,
                        on_stream_error=self._on_stream_error,
                        on_stream_closed=lambda: None,
                    )
                else:
                    future, op = client.subscribe_to_iot_core_async(
                        topic_name=flt,
                        qos="1" if qos == 1 else "0",
                        on_stream_event=self._on_iot_core_event,
                        on_stream_error=self._on_stream_error,
                        on_stream_closed=lambda: None,
                    )
                await _await(future)
            except Exception as exc:
                raise _map_error(exc, f"subscribe to {flt!r}") from exc
            self._streams[flt] = op
            granted.append(qos)
        return granted

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Close the streams of ``filters``."""
        for flt in filters:
            op = self._streams.pop(flt, None)
            if op is not None:
                await asyncio.to_thread(_close_stream, op)

    def _on_iot_core_event(self, event: Any) -> None:
        message = getattr(event, "message", None)
        if message is None:
            return
        payload = message.payload or b""
        self._deliver_threadsafe(
            str(message.topic_name), payload if isinstance(payload, bytes) else payload.encode()
        )

    def _on_local_event(self, event: Any) -> None:
        binary = getattr(event, "binary_message", None)
        if binary is not None:
            topic = getattr(getattr(binary, "context", None), "topic", None)
            data = binary.message or b""
        else:
            js = getattr(event, "json_message", None)
            if js is None:
                return
            topic = getattr(getattr(js, "context", None), "topic", None)
            data = json.dumps(js.message).encode()
        if topic:
            self._deliver_threadsafe(str(topic), data if isinstance(data, bytes) else data.encode())

    def _on_stream_error(self, error: Exception) -> bool:
        self._log.warning("IPC stream error: %s", error)
        return False  # keep the stream open

    def messages(self) -> AsyncIterator[Message]:
        """Inbound messages from IoT Core and ShadowManager."""
        return aiter(self._buffer)

    async def disconnected(self) -> DeviceSdkError | None:
        """Wait until the IPC connection ends."""
        if self._down is None:
            return self._last_cause
        return await asyncio.shield(self._down)

    def statistics(self) -> TransportStatistics:
        """Counter snapshot."""
        return TransportStatistics(
            **self._counts,
            received=self._buffer.received,
            dropped=self._buffer.dropped,
            buffered=len(self._buffer),
            buffer_size=self._buffer.maxsize,
            in_flight=self._in_flight,
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def report_running(self) -> None:
        """UpdateState(RUNNING): the component is ready (best effort)."""
        client = self._client
        if client is None:
            return
        try:
            await _await(client.update_state_async(state="RUNNING"))
        except Exception as exc:  # noqa: BLE001 - lifecycle reporting must not stop the agent
            self._log.warning("UpdateState(RUNNING) failed: %s", exc)


def _close_stream(op: Any) -> None:
    close = getattr(op, "close", None)
    if close is None:
        return
    try:
        result = close()
        if isinstance(result, concurrent.futures.Future):
            result.result(timeout=_IPC_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - closing a stream is best effort
        _log.debug("closing an IPC stream failed: %s", exc)


def _user_properties(props: UserProperties) -> list[Any]:
    try:
        from awsiot.greengrasscoreipc.model import UserProperty  # noqa: PLC0415
    except ImportError:  # pragma: no cover - awsiotsdk is a dependency
        return [{"key": k, "value": v} for k, v in props]
    return [UserProperty(key=k, value=v) for k, v in props]


def _map_error(exc: BaseException, what: str) -> DeviceSdkError:
    name = type(exc).__name__
    if name == "UnauthorizedError":
        return AuthorizationError(f"{what}: not authorized by the component's access policy")
    if isinstance(exc, DeviceSdkError):
        return exc
    if name in ("EventStreamClosedError", "EventStreamError", "ConnectionError"):
        return ConnectionLostError(f"{what}: IPC connection lost: {exc}")
    return NegativeAckError(f"{what} failed: {name}: {exc}", packet="PUBACK", reason_code=0x80)
