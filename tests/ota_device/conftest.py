from __future__ import annotations

import pytest

from cloud_stubs import LocalIoTCore
from cloud_stubs.deployments import OtaRuntime


@pytest.fixture
def ota(cloud_mosquitto: LocalIoTCore) -> OtaRuntime:
    runtime = cloud_mosquitto.ota
    assert runtime is not None, "LocalIoTCore did not start OTA"
    runtime.engine.poll_interval_s = 0.1
    return runtime
