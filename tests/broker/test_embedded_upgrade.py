"""Embedded broker: `$aws/...` topics work, and an amqtt upgrade cannot silently break that.

amqtt 0.12.1 closes the connection of any client that publishes to a topic starting with ``$``
(``Broker._handle_message_delivery``, its reading of [MQTT-4.7.2-1]); the embedded broker lifts
exactly that check. These tests fail if the check comes back (a device publishing a shadow
request must stay connected and its request must arrive), and if the amqtt internals the
overrides rely on change.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from cloud_stubs.broker._embedded import EmbeddedBroker
from cloud_stubs.broker._embedded_amqtt import IotBroker, _IotHandler
from tests.broker._embedded_support import (
    Pki,
    device,
    make_pki,
    messages_until,
    next_message,
    running,
    service,
)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "state")


@pytest.fixture
async def broker(pki: Pki) -> AsyncIterator[EmbeddedBroker]:
    async with running(pki) as b:
        yield b


async def test_device_publishing_to_dollar_aws_stays_connected(
    broker: EmbeddedBroker, pki: Pki
) -> None:
    """Fails if amqtt's `$`-topic publish check is back (the request would be dropped and the
    client's message loop ended)."""
    async with service(broker, pki) as svc, device(broker, pki, "T1") as t1:
        await svc.subscribe("$aws/things/+/shadow/get", qos=1)
        await t1.publish("$aws/things/T1/shadow/get", b'{"clientToken":"1"}', qos=1)
        request = await next_message(svc)
        assert (request.topic.value, request.payload) == (
            "$aws/things/T1/shadow/get",
            b'{"clientToken":"1"}',
        )
        # the same connection keeps working: SUBACK, PUBACK and delivery
        await t1.subscribe("dt/T1/#", qos=1)
        await t1.publish("dt/T1/after", b"still connected", qos=1)
        assert (await next_message(t1)).payload == b"still connected"
        # and can publish to `$aws` again
        await t1.publish("$aws/things/T1/shadow/update", b"{}", qos=1)
        await svc.subscribe("$aws/things/T1/shadow/update")
        await t1.publish("$aws/things/T1/shadow/update", b'{"n":2}', qos=1)
        assert (await next_message(svc)).payload == b'{"n":2}'


async def test_plus_filter_on_dollar_aws_receives(broker: EmbeddedBroker, pki: Pki) -> None:
    async with service(broker, pki) as svc, device(broker, pki, "T1") as t1:
        await t1.subscribe("$aws/things/T1/shadow/get/+", qos=1)
        await t1.subscribe("$aws/things/T1/shadow/update/#", qos=1)
        await svc.publish("$aws/things/T1/shadow/get/accepted", b'{"state":{}}', qos=1)
        await svc.publish("$aws/things/T1/shadow/update/delta", b'{"state":{"a":1}}', qos=1)
        first, second = await next_message(t1), await next_message(t1)
        assert (first.topic.value, first.payload) == (
            "$aws/things/T1/shadow/get/accepted",
            b'{"state":{}}',
        )
        assert second.topic.value == "$aws/things/T1/shadow/update/delta"


async def test_leading_wildcards_do_not_match_dollar_topics(
    broker: EmbeddedBroker, pki: Pki
) -> None:
    async with service(broker, pki, purpose="all") as everything, service(broker, pki) as svc:
        await everything.subscribe("#", qos=1)
        await everything.subscribe("+/things/T1/shadow/get", qos=1)
        await svc.publish("$aws/things/T1/shadow/get", b"{}", qos=1)
        await svc.publish("barrier", b"", qos=1)
        assert [m.topic.value for m in await messages_until(everything, "barrier")] == ["barrier"]


def test_amqtt_is_the_pinned_version() -> None:
    assert importlib.metadata.version("amqtt") == "0.12.1"


def test_overridden_amqtt_internals_still_exist() -> None:
    """The overrides replace these amqtt methods; a rename or new signature must fail here."""
    expected = {
        Broker: {
            "_initialize_client_session": [
                "self",
                "reader",
                "writer",
                "remote_address",
                "remote_port",
            ],
            "_handle_client_session": [
                "self",
                "reader",
                "writer",
                "client_session",
                "handler",
                "server",
                "listener_name",
            ],
            "_handle_message_delivery": ["self", "client_session", "handler", "wait_deliver"],
            "_run_broadcast": ["self", "running_tasks"],
            "_publish_retained_messages_for_subscription": ["self", "subscription", "session"],
            "_session_monitor": ["self"],
            "_topic_filtering": ["self", "session", "topic", "action"],
            "_matches": ["self", "topic", "a_filter"],
            "add_subscription": ["self", "subscription", "session"],
            # used as they are
            "_client_message_loop": ["self", "client_session", "handler"],
            "_handle_disconnect": ["self", "client_session", "handler", "disconnect_waiter"],
            "_broadcast_message": ["self", "session", "topic", "data", "force_qos"],
            "_retain_broadcast_message": ["self", "broadcast", "qos", "target_session"],
            "_publish_session_retained_messages": ["self", "session"],
            "_cleanup_session": ["self", "client_id"],
            "_delete_session": ["self", "client_id"],
            "_stop_handler": ["self", "handler"],
            "_del_all_subscriptions": ["self", "session"],
            "_del_subscription": ["self", "a_filter", "session"],
            "retain_message": ["self", "source_session", "topic_name", "data", "qos"],
            "_get_handler": ["self", "session"],
            "external_connected": ["self", "reader", "writer", "listener_name"],
        },
        BrokerProtocolHandler: {
            "handle_publish": ["self", "publish_packet"],
            "handle_read_timeout": ["self"],
            "handle_connect": ["self", "connect"],
            "handle_disconnect": ["self", "disconnect"],
            "handle_connection_closed": ["self"],
            "mqtt_deliver_next_message": ["self"],
            "mqtt_connack_authorize": ["self", "authorize"],
            "attach": ["self", "session", "reader", "writer"],
            "init_from_connect": ["reader", "writer", "plugins_manager", "loop"],
        },
    }
    for cls, methods in expected.items():
        for name, params in methods.items():
            assert list(inspect.signature(getattr(cls, name)).parameters) == params, (cls, name)
    for name in (
        "_sessions",
        "_subscriptions",
        "_retained_messages",
        "_broadcast_queue",
        "_tasks_queue",
    ):
        assert name in inspect.getsource(Broker.__init__), name
    # the one check that was lifted is still where the override expects it
    assert "[MQTT-4.7.2-1]" in inspect.getsource(Broker._handle_message_delivery)
    assert IotBroker._handle_message_delivery is not Broker._handle_message_delivery
    assert issubclass(_IotHandler, BrokerProtocolHandler)
