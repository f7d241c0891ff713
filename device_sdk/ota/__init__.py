"""OTA updates on the device: the ``ota/1`` job document, a persisted state machine, A/B slots.

Contract with the cloud: ``docs/ota_cloud.md``; design: ``shared/docs/ota.md``; this side:
``docs/ota_device.md``::

    agent = OtaAgent(
        ABSlotInstaller("/data/slots"),
        OtaConfig(device_type="robot-pi", trusted_keys={key_id: pem},
                  state_dir=Path("/data/ota"), ca_file=Path("ca.pem")),
    )
    async with DeviceClient(identity, endpoint) as device, JobsClient(device) as jobs:
        runner = JobRunner(device, {"ota": ota_job_handler(agent, jobs)},
                           journal_path="/data/jobs.journal", jobs=jobs)
        outcome = await runner.run()   # returns when the update needs a reboot
"""

from device_sdk.ota._agent import AGENT_VERSION, OtaAgent, OtaConfig, OtaResult, StatusReporter
from device_sdk.ota._document import (
    OtaArtifact,
    OtaDocument,
    OtaPolicy,
    check_document,
    compare_versions,
    key_id_of,
    parse_document,
    verify_signature,
)
from device_sdk.ota._download import AttemptResult, AttemptStatus, Downloader
from device_sdk.ota._errors import (
    ErrorType,
    OtaError,
    OtaFailedError,
    OtaRejectedError,
    ReasonCode,
)
from device_sdk.ota._faults import (
    CRASH_EXIT_CODE,
    EFFECT_POINTS,
    FAULT_POINTS,
    FaultInjector,
    FaultPlan,
    FaultRule,
    Fired,
    SimulatedCrash,
)
from device_sdk.ota._handler import (
    JobContextReporter,
    VersionHook,
    ota_job_handler,
    shadow_version_hook,
)
from device_sdk.ota._health import HealthCheck, HealthResult, run_health_checks
from device_sdk.ota._installer import ABSlotInstaller, Installer, SimulatedInstaller
from device_sdk.ota._journal import TERMINAL_STATES, OtaJournal, OtaRecord, OtaState

__all__ = [
    "AGENT_VERSION",
    "CRASH_EXIT_CODE",
    "EFFECT_POINTS",
    "FAULT_POINTS",
    "TERMINAL_STATES",
    "ABSlotInstaller",
    "AttemptResult",
    "AttemptStatus",
    "Downloader",
    "ErrorType",
    "FaultInjector",
    "FaultPlan",
    "FaultRule",
    "Fired",
    "HealthCheck",
    "HealthResult",
    "Installer",
    "JobContextReporter",
    "OtaAgent",
    "OtaArtifact",
    "OtaConfig",
    "OtaDocument",
    "OtaError",
    "OtaFailedError",
    "OtaJournal",
    "OtaPolicy",
    "OtaRecord",
    "OtaRejectedError",
    "OtaResult",
    "OtaState",
    "ReasonCode",
    "SimulatedCrash",
    "SimulatedInstaller",
    "StatusReporter",
    "VersionHook",
    "check_document",
    "compare_versions",
    "key_id_of",
    "ota_job_handler",
    "parse_document",
    "run_health_checks",
    "shadow_version_hook",
    "verify_signature",
]
