"""OTA deployments: roll a firmware out in batches, each gated by a success threshold.

::

    from cloud_stubs.deployments import create_deployment, start_ota

    async with LocalIoTCore(state) as core, start_ota(core) as ota:
        dep = create_deployment(core.paths, firmware_id=fw.firmware_id, groups=["fleet"],
                                batch_size=5, success_threshold=0.95)
        async with asyncio.timeout(120):
            done = await ota.engine.wait(dep.deployment_id)
        print(done.status, done.reason)

Each batch is one AWS IoT job carrying the ``ota/1`` document; the next batch starts only
when every execution of the current one has ended and enough succeeded. Rules:
:mod:`cloud_stubs.deployments._machine` (pure); driver: :class:`DeploymentEngine`.
"""

from cloud_stubs.deployments._engine import DeploymentEngine, JobsControl, OtaRuntime, start_ota
from cloud_stubs.deployments._errors import (
    DeploymentConflictError,
    DeploymentError,
    DeploymentNotFoundError,
    DeploymentSpecError,
)
from cloud_stubs.deployments._machine import (
    Action,
    CancelJob,
    CancelRequested,
    CreateJob,
    Event,
    JobCreated,
    JobCreateFailed,
    Observed,
    Step,
    Tick,
    jobs_to_observe,
    new_deployment,
    step,
)
from cloud_stubs.deployments._model import (
    FAILURE_STATUSES,
    Batch,
    BatchCounts,
    BatchStatus,
    Deployment,
    DeploymentStatus,
    ExecutionView,
    ThingFailure,
)
from cloud_stubs.deployments._operations import (
    cancel_deployment,
    create_deployment,
    resolve_targets,
)
from cloud_stubs.deployments._store import DeploymentStore, StoredDeployment

__all__ = [
    "FAILURE_STATUSES",
    "Action",
    "Batch",
    "BatchCounts",
    "BatchStatus",
    "CancelJob",
    "CancelRequested",
    "CreateJob",
    "Deployment",
    "DeploymentConflictError",
    "DeploymentEngine",
    "DeploymentError",
    "DeploymentNotFoundError",
    "DeploymentSpecError",
    "DeploymentStatus",
    "DeploymentStore",
    "Event",
    "ExecutionView",
    "JobCreateFailed",
    "JobCreated",
    "JobsControl",
    "Observed",
    "OtaRuntime",
    "Step",
    "StoredDeployment",
    "ThingFailure",
    "Tick",
    "cancel_deployment",
    "create_deployment",
    "jobs_to_observe",
    "new_deployment",
    "resolve_targets",
    "start_ota",
    "step",
]
