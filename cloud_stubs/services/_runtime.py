"""Run services as one privileged MQTT client of the broker.

A :class:`Service` declares the topic filters it serves and turns each request into the
messages to publish; the :class:`ServiceHost` owns the connection, subscribes, dispatches in
arrival order (so one thing's requests are handled in the order it sent them) and publishes the
results. The same code runs against mosquitto and the embedded broker, because it is just an
MQTT client.

Requester identity: where the broker can, it adds the MQTT 5 user property ``x-iot-client-id``
to each request (the mosquitto plugin does); a response carrying ``x-iot-deliver-to`` is then
delivered by the broker only to that client, as IoT Core does for Jobs updates and Fleet
Provisioning responses. Where the broker cannot, responses go to every authorized subscriber of
the response topic (documented in docs/cloud_stubs.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = [
    "CLIENT_ID_PROPERTY",
    "DELIVER_TO_PROPERTY",
    "Outgoing",
    "Request",
    "Service",
    "ServiceHost",
]

_log = logging.getLogger(__name__)

CLIENT_ID_PROPERTY = "x-iot-client-id"
DELIVER_TO_PROPERTY = "x-iot-deliver-to"
_MAX_IN_FLIGHT = 2000


@dataclass(frozen=True)
class Request:
    """A message a device published to a service topic."""

    topic: str
    payload: bytes
    client_id: str | None = None


@dataclass(frozen=True)
class Outgoing:
    """A message a service publishes (QoS 1 unless said otherwise)."""

    topic: str
    payload: bytes
    qos: int = 1
    deliver_to: str | None = None


class Service(Protocol):
    """A cloud service driven by the host."""

    name: str

    @property
    def filters(self) -> Sequence[str]:
        """Topic filters carrying this service's requests."""
        ...

    def accepts(self, topic: str) -> bool:
        """True when ``topic`` is one of this service's request topics."""
        ...

    async def handle(self, request: Request) -> list[Outgoing]:
        """Answer one request; must never raise for bad input (answer with a rejection)."""
        ...

    async def tick(self, now: float) -> list[Outgoing]:
        """Run timers; called about once a second."""
        ...


class ServiceHost:
    """Connects once and serves every registered service until cancelled."""

    def __init__(
        self,
        client_factory: Callable[[], aiomqtt.Client],
        services: Sequence[Service],
        *,
        mqtt5: bool,
        tick_interval: float = 1.0,
    ) -> None:
        """Remember the services; nothing connects until :meth:`run`."""
        self._factory = client_factory
        self._services = list(services)
        self._mqtt5 = mqtt5
        self._tick_interval = tick_interval
        self._slots = asyncio.Semaphore(_MAX_IN_FLIGHT)
        self.handled = 0
        self.errors = 0
        self._client: aiomqtt.Client | None = None
        self._tg: asyncio.TaskGroup | None = None

    async def run(self, ready: asyncio.Event) -> None:
        """Serve until cancelled; set ``ready`` once every subscription is acknowledged."""
        async with self._factory() as client, asyncio.TaskGroup() as tg:
            for service in self._services:
                for flt in service.filters:
                    if self._mqtt5:
                        await client.subscribe(flt, options=SubscribeOptions(qos=1, noLocal=True))
                    else:
                        await client.subscribe(flt, qos=1)
            self._client, self._tg = client, tg
            ready.set()
            tg.create_task(self._ticker(client, tg), name="cloud_stubs.services.tick")
            async for msg in client.messages:
                topic = str(msg.topic)
                payload = msg.payload if isinstance(msg.payload, bytes) else b""
                request = Request(topic, payload, _client_id(msg.properties))
                for service in self._services:
                    if service.accepts(topic):
                        await self._dispatch(client, tg, service, request)
                        break

    async def emit(self, messages: Sequence[Outgoing]) -> None:
        """Publish messages produced outside a request (control plane), in order."""
        if self._client is None or self._tg is None:
            raise RuntimeError("the service host is not running")
        for msg in messages:
            await self._publish(self._client, self._tg, msg)

    async def _dispatch(
        self, client: aiomqtt.Client, tg: asyncio.TaskGroup, service: Service, request: Request
    ) -> None:
        try:
            out = await service.handle(request)
        except Exception:  # noqa: BLE001 - a service bug must not stop the others
            self.errors += 1
            _log.exception("%s failed on %s; request dropped", service.name, request.topic)
            return
        self.handled += 1
        for msg in out:
            await self._publish(client, tg, msg)

    async def _publish(self, client: aiomqtt.Client, tg: asyncio.TaskGroup, msg: Outgoing) -> None:
        await self._slots.acquire()
        props = None
        if self._mqtt5 and msg.deliver_to is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [(DELIVER_TO_PROPERTY, msg.deliver_to)]

        async def send() -> None:
            try:
                await client.publish(msg.topic, msg.payload, qos=msg.qos, properties=props)
            except aiomqtt.MqttError as exc:
                _log.warning("publish to %s failed: %s", msg.topic, exc)
            finally:
                self._slots.release()

        # The task's first step hands the message to the client synchronously, so
        # publishes leave in the order they were created.
        tg.create_task(send())
        await asyncio.sleep(0)

    async def _ticker(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            for service in self._services:
                try:
                    out = await service.tick(time.time())
                except Exception:  # noqa: BLE001 - keep the other timers running
                    _log.exception("%s timer failed", service.name)
                    continue
                for msg in out:
                    await self._publish(client, tg, msg)


def _client_id(props: Properties | None) -> str | None:
    if props is None:
        return None
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        for key, value in getattr(props, "UserProperty", ()):
            if key == CLIENT_ID_PROPERTY:
                return str(value)
    return None
