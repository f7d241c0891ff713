"""``device_sdk``: the asyncio device library for AWS IoT Core.

Start with :class:`DeviceClient`::

    identity = DeviceIdentity.from_files("device.pem", "device.key")
    endpoint = Endpoint.from_json_file("endpoint.json")
    async with DeviceClient(identity, endpoint, outbox=OutboxConfig(path="outbox.db")) as dev:
        await dev.publish("telemetry/robot-1", {"temp": 21.5})
        async with dev.subscribe("cmd/robot-1/#") as commands:
            async for message in commands:
                ...

Every public name is importable from here (``from device_sdk import DeviceClient``), but the
modules behind them load on first use (:pep:`562`), so a process that never provisions, runs
OTA or uses AWS IoT Commands does not pay for them (cryptography, their pydantic models).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from device_sdk._backoff import ReconnectPolicy
    from device_sdk._client import ClientState, DeviceClient, Payload
    from device_sdk._clock import Clock, SystemClock
    from device_sdk._exceptions import (
        AuthorizationError,
        ClosedError,
        ConnectError,
        ConnectionLostError,
        DeviceSdkError,
        LimitExceededError,
        NegativeAckError,
        OutboxFullError,
        ProtocolError,
        ProvisioningError,
        RejectedError,
        RequestTimeoutError,
        VersionConflictError,
    )
    from device_sdk._identity import (
        DeviceIdentity,
        Endpoint,
        FileCredentials,
        PemCredentials,
        Pkcs11Credentials,
    )
    from device_sdk._limits import IOT_CORE_LIMITS, Limits, TokenBucket
    from device_sdk._metrics import ClientMetrics, LatencyHistogram
    from device_sdk._outbox import (
        Outbox,
        OutboxConfig,
        OutboxDatabase,
        OutboxDatabaseStatistics,
        OutboxRecord,
        OutboxStatistics,
        OutboxStorageError,
    )
    from device_sdk._request import RequestChannel, Response
    from device_sdk._subscription import Subscription, SubscriptionStatistics, topic_matches
    from device_sdk.commands import (
        CommandExecution,
        CommandRequest,
        Commands,
        CommandStatus,
    )
    from device_sdk.jobs import (
        JobContext,
        JobHandler,
        JobOutcome,
        JobRunner,
        JobsClient,
        JobStatus,
    )
    from device_sdk.ota import (
        ABSlotInstaller,
        OtaAgent,
        OtaConfig,
        OtaState,
        SimulatedInstaller,
        ota_job_handler,
    )
    from device_sdk.provisioning import (
        ProvisionedIdentity,
        ProvisioningRejectedError,
        provision_by_claim,
    )
    from device_sdk.shadow import ShadowChange, ShadowClient, ShadowSync
    from device_sdk.transport import (
        ConnectionOptions,
        Message,
        QoS,
        Transport,
        TransportStatistics,
        Will,
        create_transport,
    )

__all__ = [
    "IOT_CORE_LIMITS",
    "ABSlotInstaller",
    "AuthorizationError",
    "ClientMetrics",
    "ClientState",
    "Clock",
    "ClosedError",
    "CommandExecution",
    "CommandRequest",
    "CommandStatus",
    "Commands",
    "ConnectError",
    "ConnectionLostError",
    "ConnectionOptions",
    "DeviceClient",
    "DeviceIdentity",
    "DeviceSdkError",
    "Endpoint",
    "FileCredentials",
    "JobContext",
    "JobHandler",
    "JobOutcome",
    "JobRunner",
    "JobStatus",
    "JobsClient",
    "LatencyHistogram",
    "LimitExceededError",
    "Limits",
    "Message",
    "NegativeAckError",
    "OtaAgent",
    "OtaConfig",
    "OtaState",
    "Outbox",
    "OutboxConfig",
    "OutboxDatabase",
    "OutboxDatabaseStatistics",
    "OutboxFullError",
    "OutboxRecord",
    "OutboxStatistics",
    "OutboxStorageError",
    "Payload",
    "PemCredentials",
    "Pkcs11Credentials",
    "ProtocolError",
    "ProvisionedIdentity",
    "ProvisioningError",
    "ProvisioningRejectedError",
    "QoS",
    "ReconnectPolicy",
    "RejectedError",
    "RequestChannel",
    "RequestTimeoutError",
    "Response",
    "ShadowChange",
    "ShadowClient",
    "ShadowSync",
    "SimulatedInstaller",
    "Subscription",
    "SubscriptionStatistics",
    "SystemClock",
    "TokenBucket",
    "Transport",
    "TransportStatistics",
    "VersionConflictError",
    "Will",
    "create_transport",
    "ota_job_handler",
    "provision_by_claim",
    "topic_matches",
]

_LAZY: dict[str, str] = {
    "ReconnectPolicy": "device_sdk._backoff",
    "ClientState": "device_sdk._client",
    "DeviceClient": "device_sdk._client",
    "Payload": "device_sdk._client",
    "Clock": "device_sdk._clock",
    "SystemClock": "device_sdk._clock",
    "AuthorizationError": "device_sdk._exceptions",
    "ClosedError": "device_sdk._exceptions",
    "ConnectError": "device_sdk._exceptions",
    "ConnectionLostError": "device_sdk._exceptions",
    "DeviceSdkError": "device_sdk._exceptions",
    "LimitExceededError": "device_sdk._exceptions",
    "NegativeAckError": "device_sdk._exceptions",
    "OutboxFullError": "device_sdk._exceptions",
    "ProtocolError": "device_sdk._exceptions",
    "ProvisioningError": "device_sdk._exceptions",
    "RejectedError": "device_sdk._exceptions",
    "RequestTimeoutError": "device_sdk._exceptions",
    "VersionConflictError": "device_sdk._exceptions",
    "DeviceIdentity": "device_sdk._identity",
    "Endpoint": "device_sdk._identity",
    "FileCredentials": "device_sdk._identity",
    "PemCredentials": "device_sdk._identity",
    "Pkcs11Credentials": "device_sdk._identity",
    "IOT_CORE_LIMITS": "device_sdk._limits",
    "Limits": "device_sdk._limits",
    "TokenBucket": "device_sdk._limits",
    "ClientMetrics": "device_sdk._metrics",
    "LatencyHistogram": "device_sdk._metrics",
    "Outbox": "device_sdk._outbox",
    "OutboxConfig": "device_sdk._outbox",
    "OutboxDatabase": "device_sdk._outbox",
    "OutboxDatabaseStatistics": "device_sdk._outbox",
    "OutboxRecord": "device_sdk._outbox",
    "OutboxStatistics": "device_sdk._outbox",
    "OutboxStorageError": "device_sdk._outbox",
    "RequestChannel": "device_sdk._request",
    "Response": "device_sdk._request",
    "Subscription": "device_sdk._subscription",
    "SubscriptionStatistics": "device_sdk._subscription",
    "topic_matches": "device_sdk._subscription",
    "CommandExecution": "device_sdk.commands",
    "CommandRequest": "device_sdk.commands",
    "CommandStatus": "device_sdk.commands",
    "Commands": "device_sdk.commands",
    "JobContext": "device_sdk.jobs",
    "JobHandler": "device_sdk.jobs",
    "JobOutcome": "device_sdk.jobs",
    "JobRunner": "device_sdk.jobs",
    "JobStatus": "device_sdk.jobs",
    "JobsClient": "device_sdk.jobs",
    "ABSlotInstaller": "device_sdk.ota",
    "OtaAgent": "device_sdk.ota",
    "OtaConfig": "device_sdk.ota",
    "OtaState": "device_sdk.ota",
    "SimulatedInstaller": "device_sdk.ota",
    "ota_job_handler": "device_sdk.ota",
    "ProvisionedIdentity": "device_sdk.provisioning",
    "ProvisioningRejectedError": "device_sdk.provisioning",
    "provision_by_claim": "device_sdk.provisioning",
    "ShadowChange": "device_sdk.shadow",
    "ShadowClient": "device_sdk.shadow",
    "ShadowSync": "device_sdk.shadow",
    "ConnectionOptions": "device_sdk.transport",
    "Message": "device_sdk.transport",
    "QoS": "device_sdk.transport",
    "Transport": "device_sdk.transport",
    "TransportStatistics": "device_sdk.transport",
    "Will": "device_sdk.transport",
    "create_transport": "device_sdk.transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
