"""Operator operations on deployments (what the CLI calls; no running stub needed).

A deployment created here is QUEUED in ``DIR/deployments.sqlite``; the engine of the running
stub (:func:`cloud_stubs.deployments.start_ota`) starts it within one poll interval, or when
the stub next starts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cloud_stubs._paths import StatePaths
from cloud_stubs._registry import Registry
from cloud_stubs.deployments._errors import (
    DeploymentConflictError,
    DeploymentError,
    DeploymentSpecError,
)
from cloud_stubs.deployments._machine import CancelRequested, new_deployment, step
from cloud_stubs.deployments._model import Deployment, DeploymentStatus
from cloud_stubs.deployments._store import DeploymentStore
from cloud_stubs.firmware import FirmwareStore, OtaPolicy, build_ota_document

__all__ = ["cancel_deployment", "create_deployment", "resolve_targets"]


def resolve_targets(
    registry: Registry, things: Sequence[str] = (), groups: Sequence[str] = ()
) -> list[str]:
    """Target things: the given things, then each group's members (order kept, no duplicates).

    Raises:
        cloud_stubs.NotFoundError: An unknown thing or group.
    """
    names: list[str] = []
    for thing in things:
        registry.get_thing(thing)
        names.append(thing)
    for group in groups:
        names.extend(registry.group_members(group))
    return list(dict.fromkeys(names))


def create_deployment(
    paths: StatePaths,
    *,
    firmware_id: str,
    things: Sequence[str] = (),
    groups: Sequence[str] = (),
    batch_size: int,
    success_threshold: float,
    timeout_minutes: int | None = None,
    batch_timeout_s: float | None = None,
    max_per_minute: int | None = None,
    abort_on_threshold: bool = True,
    policy: Mapping[str, Any] | OtaPolicy | None = None,
    test_faults: Sequence[str] | None = None,
    now: float | None = None,
) -> Deployment:
    """Validate and store a QUEUED deployment of a stored firmware.

    Targets are resolved now (groups are snapshots, like a SNAPSHOT job's).

    Raises:
        cloud_stubs.firmware.FirmwareNotFoundError: Unknown firmware.
        cloud_stubs.NotFoundError: Unknown thing or group.
        DeploymentSpecError: No targets, bad batch size, threshold, timeouts or rate.
        cloud_stubs.firmware.FirmwareError: Bad policy or test faults.
    """
    with FirmwareStore(paths) as firmware:
        manifest = firmware.get(firmware_id)
    ota_policy = policy if isinstance(policy, OtaPolicy) else OtaPolicy.from_json(policy)
    document = build_ota_document(manifest, policy=ota_policy, test_faults=test_faults)
    registry = Registry(paths)
    try:
        targets = resolve_targets(registry, things, groups)
    finally:
        registry.close()
    if not targets:
        raise DeploymentSpecError("no target things (empty groups?)")
    deployment = new_deployment(
        firmware_id=manifest.firmware_id,
        target_version=manifest.version,
        document=document,
        targets=targets,
        batch_size=batch_size,
        success_threshold=success_threshold,
        now=time.time() if now is None else now,
        timeout_minutes=timeout_minutes,
        batch_timeout_s=batch_timeout_s,
        max_per_minute=max_per_minute,
        abort_on_threshold=abort_on_threshold,
    )
    with DeploymentStore(paths) as store:
        store.insert(deployment)
    return deployment


def cancel_deployment(
    paths: StatePaths, deployment_id: str, *, reason: str = "canceled by the operator"
) -> Deployment:
    """Cancel a deployment.

    A QUEUED one is canceled at once; a running one is canceled by the stub's engine on its
    next poll (its current batch job is canceled: QUEUED executions become CANCELED).

    Returns:
        The deployment as stored after the request.

    Raises:
        DeploymentNotFoundError: No such deployment.
        DeploymentError: It has already finished.
    """
    with DeploymentStore(paths) as store:
        stored = store.load(deployment_id)
        if stored.deployment.status.is_terminal:
            raise DeploymentError(
                f"deployment {deployment_id} is already {stored.deployment.status}"
            )
        store.request_cancel(deployment_id, reason)
        if stored.deployment.status is DeploymentStatus.QUEUED:
            result = step(stored.deployment, CancelRequested(time.time(), reason))
            # on a conflict the engine started it meanwhile: the engine applies the request
            with contextlib.suppress(DeploymentConflictError):
                store.save(result.deployment, expected_version=stored.version)
        return store.get(deployment_id)
