"""``device_sdk``: the asyncio device library for AWS IoT Core.

Start with :class:`DeviceClient`::

    identity = DeviceIdentity.from_files("device.pem", "device.key")
    endpoint = Endpoint.from_json_file("endpoint.json")
    async with DeviceClient(identity, endpoint, outbox=OutboxConfig(path="outbox.db")) as dev:
        await dev.publish("telemetry/robot-1", {"temp": 21.5})
        async with dev.subscribe("cmd/robot-1/#") as commands:
            async for message in commands:
                ...
"""

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
