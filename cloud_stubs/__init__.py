"""cloud_stubs: a local, wire-exact stand-in for AWS IoT Core's device side.

Public API::

    from cloud_stubs import LocalIoTCore
    async with LocalIoTCore("state", broker="auto") as core:
        identity = core.create_thing("robot-1")
"""

from __future__ import annotations

from cloud_stubs._core import EndpointInfo, LocalIoTCore
from cloud_stubs._errors import (
    BrokerError,
    CloudStubError,
    NotFoundError,
    RegistryError,
    StateDirError,
)
from cloud_stubs._paths import SERVICE_CLIENT_PREFIX, StatePaths
from cloud_stubs._policy import DEFAULT_DATA_PREFIXES
from cloud_stubs._registry import CertRecord, CertStatus, Registry, ThingRecord
from cloud_stubs._state import ThingIdentity, ensure_things

__all__ = [
    "DEFAULT_DATA_PREFIXES",
    "SERVICE_CLIENT_PREFIX",
    "BrokerError",
    "CertRecord",
    "CertStatus",
    "CloudStubError",
    "EndpointInfo",
    "LocalIoTCore",
    "NotFoundError",
    "Registry",
    "RegistryError",
    "StateDirError",
    "StatePaths",
    "ThingIdentity",
    "ThingRecord",
    "ensure_things",
]
