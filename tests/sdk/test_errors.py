"""The exception tree and the mapping of lower-layer exceptions at the transport boundary."""

from __future__ import annotations

import inspect
import ssl

import aiomqtt
import aiomqtt.exceptions
import pytest
from awscrt.exceptions import AwsCrtError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

import device_sdk
from device_sdk import (
    AuthorizationError,
    ConnectError,
    ConnectionLostError,
    DeviceSdkError,
    LimitExceededError,
    NegativeAckError,
    OutboxFullError,
    RejectedError,
    RequestTimeoutError,
    VersionConflictError,
)
from device_sdk.transport._crt import map_crt_error
from device_sdk.transport._paho import _AiomqttClient, map_paho_error


def _all_aiomqtt_exceptions() -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(aiomqtt.exceptions, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__.startswith("aiomqtt")
    ]


def _instance(cls: type[BaseException]) -> BaseException:
    if issubclass(cls, aiomqtt.exceptions.MqttConnectError):
        return cls(ReasonCode(PacketTypes.CONNACK, identifier=0x87))
    if issubclass(cls, aiomqtt.exceptions.MqttCodeError):
        return cls(0x8E, "Unexpected disconnection")
    return cls("boom")


@pytest.mark.parametrize("connecting", [True, False])
def test_every_aiomqtt_exception_is_mapped(connecting: bool):
    classes = _all_aiomqtt_exceptions()
    assert len(classes) >= 4
    for cls in classes:
        mapped = map_paho_error(_instance(cls), connecting=connecting)
        assert isinstance(mapped, DeviceSdkError), cls


def test_paho_mapping_details():
    refused = aiomqtt.exceptions.MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x87))
    assert isinstance(map_paho_error(refused, connecting=True), AuthorizationError)
    busy = aiomqtt.exceptions.MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x89))
    mapped = map_paho_error(busy, connecting=True)
    assert type(mapped) is ConnectError
    assert mapped.reason_code == 0x89
    # aiomqtt raises MqttError(str(os_error)) from None; the SSL error stays in __context__.
    wrapped = aiomqtt.MqttError("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    wrapped.__context__ = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    wrapped.__suppress_context__ = True
    assert isinstance(map_paho_error(wrapped, connecting=True), AuthorizationError)
    refused_tcp = aiomqtt.MqttError("[Errno 111] Connection refused")
    assert type(map_paho_error(refused_tcp, connecting=True)) is ConnectError
    lost = aiomqtt.MqttCodeError(7, "Unexpected disconnection")
    assert isinstance(map_paho_error(lost, connecting=False), ConnectionLostError)
    assert isinstance(map_paho_error(OSError("x"), connecting=False), ConnectionLostError)


def test_aiomqtt_internals_we_rely_on_are_still_there():
    # _AiomqttClient overrides _on_publish and uses the paho client in `_client`.
    params = list(inspect.signature(aiomqtt.Client._on_publish).parameters)
    assert params == ["self", "client", "userdata", "mid", "reason_code", "properties"]
    assert "self._client: mqtt.Client" in inspect.getsource(aiomqtt.Client.__init__)
    assert _AiomqttClient._on_publish is not aiomqtt.Client._on_publish


@pytest.mark.parametrize(
    ("name", "connecting", "code", "expected"),
    [
        ("AWS_ERROR_MQTT5_CONNACK_CONNECTION_REFUSED", True, 0x87, AuthorizationError),
        ("AWS_IO_SOCKET_CONNECTION_REFUSED", True, None, ConnectError),
        ("AWS_IO_TLS_ERROR_READ_FAILURE", True, None, ConnectError),
        ("AWS_IO_FILE_VALIDATION_FAILURE_CERT", True, None, AuthorizationError),
        ("AWS_ERROR_MQTT5_USER_REQUESTED_STOP", False, None, ConnectionLostError),
        ("AWS_ERROR_MQTT_TIMEOUT", False, None, RequestTimeoutError),
    ],
)
def test_crt_mapping(name: str, connecting: bool, code: int | None, expected: type[Exception]):
    mapped = map_crt_error(AwsCrtError(1, name, "msg"), connecting=connecting, reason_code=code)
    assert type(mapped) is expected


def test_tree_shape_and_context_attributes():
    assert issubclass(AuthorizationError, ConnectError)
    assert issubclass(VersionConflictError, RejectedError)
    for name in device_sdk.__all__:
        obj = getattr(device_sdk, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, DeviceSdkError), name
    e = RejectedError(409, "Version conflict", "tok-1")
    assert (e.code, e.message, e.client_token) == (409, "Version conflict", "tok-1")
    assert "Version conflict" in str(e)
    n = NegativeAckError("x", packet="SUBACK", reason_code=0x87, reason_string="no")
    assert (n.packet, n.reason_code, n.reason_string) == ("SUBACK", 0x87, "no")
    lim = LimitExceededError("x", limit="payload_bytes", value=1, maximum=0)
    assert (lim.limit, lim.value, lim.maximum) == ("payload_bytes", 1, 0)
    assert OutboxFullError("x", depth=1, size_bytes=2).depth == 1
    assert "ConnectError" in (device_sdk._exceptions.__doc__ or "")  # the documented tree
