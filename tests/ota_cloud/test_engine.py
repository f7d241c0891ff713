"""The deployment engine against the real (pure) jobs core: restarts, crashes, cancel.

The control plane here is ``cloud_stubs.jobs`` itself (``run_control`` over a ``JobsState``),
and devices answer through the jobs device API (``handle_jobs_request``): a fake that speaks
the protocol, without MQTT, so crash points can be placed exactly.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_stubs import StatePaths
from cloud_stubs._registry import Registry
from cloud_stubs.deployments import (
    BatchStatus,
    DeploymentEngine,
    DeploymentError,
    DeploymentNotFoundError,
    DeploymentStatus,
    DeploymentStore,
    cancel_deployment,
    create_deployment,
)
from cloud_stubs.firmware import FirmwareManifest, FirmwareNotFoundError, FirmwareStore
from cloud_stubs.jobs import ExecutionStatus, JobsState, handle_jobs_request, parse_jobs_topic
from cloud_stubs.jobs._service import run_control

THINGS = [f"dev-{i:02d}" for i in range(1, 10)]


class CoreJobs:
    """``jobs_control`` backed by the pure jobs core, with injectable crashes."""

    def __init__(self, paths: StatePaths) -> None:
        self.state = JobsState()
        self.registry = Registry(paths)
        self.calls: list[str] = []
        self.crash_before_create = 0
        self.crash_after_create = 0

    async def __call__(self, op: str, **args: Any) -> Any:
        self.calls.append(op)
        if op == "create" and self.crash_before_create:
            self.crash_before_create -= 1
            raise ConnectionError("stub went away before creating")
        result, _ = run_control(self.state, self.registry, op, args, int(time.time()))
        if op == "create" and self.crash_after_create:
            self.crash_after_create -= 1
            raise ConnectionError("stub went away after creating")
        return result

    def answer(self, job_id: str, status: str, things: list[str] | None = None) -> None:
        """Devices report a final status for their execution of ``job_id``."""
        for thing in things or self.state.jobs[job_id].targets:
            parsed = parse_jobs_topic(f"$aws/things/{thing}/jobs/{job_id}/update")
            assert parsed is not None
            body = json.dumps({"status": status}).encode()
            outcome = handle_jobs_request(self.state, parsed, body, int(time.time()))
            assert outcome.accepted, outcome.messages

    def status(self, job_id: str, thing: str) -> ExecutionStatus:
        latest = self.state.latest(job_id, thing)
        assert latest is not None
        return latest.status


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    p = StatePaths.at(tmp_path / "state")
    reg = Registry(p)
    reg.create_things(THINGS)
    reg.create_group("all")
    reg.add_to_group("all", THINGS)
    reg.close()
    return p


@pytest.fixture
def firmware(paths: StatePaths, tmp_path: Path) -> FirmwareManifest:
    (tmp_path / "fw.bin").write_bytes(os.urandom(1024))
    with FirmwareStore(paths) as store:
        return store.upload(tmp_path / "fw.bin", version="9.0", device_type="pi")


@pytest.fixture
def jobs(paths: StatePaths) -> CoreJobs:
    return CoreJobs(paths)


def engine(paths: StatePaths, jobs: CoreJobs) -> DeploymentEngine:
    return DeploymentEngine(paths, jobs, poll_interval_s=0.01)


def stored(paths: StatePaths, deployment_id: str) -> Any:
    with DeploymentStore(paths) as store:
        return store.get(deployment_id)


async def test_survives_a_restart_between_every_poll(
    paths: StatePaths, jobs: CoreJobs, firmware: FirmwareManifest
) -> None:
    dep = create_deployment(
        paths,
        firmware_id=firmware.firmware_id,
        groups=["all"],
        batch_size=4,
        success_threshold=1.0,
    )
    assert [len(b.things) for b in dep.batches] == [4, 4, 1]
    for index in (1, 2, 3):
        await engine(paths, jobs).poll_once()  # a fresh engine each time: state is on disk
        job_id = f"{dep.deployment_id}-b{index}"
        assert sorted(jobs.state.jobs) == [f"{dep.deployment_id}-b{i}" for i in range(1, index + 1)]
        assert stored(paths, dep.deployment_id).batches[index - 1].status is BatchStatus.RUNNING
        await engine(paths, jobs).poll_once()  # nothing finished: nothing new
        assert len(jobs.state.jobs) == index
        jobs.answer(job_id, "SUCCEEDED")
    await engine(paths, jobs).poll_once()
    done = stored(paths, dep.deployment_id)
    assert done.status is DeploymentStatus.COMPLETED
    assert [b.status for b in done.batches] == [BatchStatus.SUCCEEDED] * 3
    # the batch job carries the ota/1 document with the placeholder (rendered on delivery)
    document = jobs.state.jobs[f"{dep.deployment_id}-b1"].document
    assert document["artifact"]["url"].startswith("${aws:iot:s3-presigned-url:")
    with DeploymentStore(paths) as store:
        assert store.engine_work() == []


async def test_crash_before_and_after_job_creation(
    paths: StatePaths,
    jobs: CoreJobs,
    firmware: FirmwareManifest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dep = create_deployment(
        paths,
        firmware_id=firmware.firmware_id,
        things=THINGS[:4],
        batch_size=2,
        success_threshold=1.0,
    )
    jobs.crash_before_create = 1
    with caplog.at_level(logging.ERROR):
        await engine(paths, jobs).poll_once()
    assert "engine error" in caplog.text
    assert jobs.state.jobs == {}
    assert stored(paths, dep.deployment_id).batches[0].status is BatchStatus.CREATING
    await engine(paths, jobs).poll_once()  # re-issued
    assert list(jobs.state.jobs) == [f"{dep.deployment_id}-b1"]
    jobs.answer(f"{dep.deployment_id}-b1", "SUCCEEDED")
    jobs.crash_after_create = 1  # batch 2's job is created, but the engine never hears so
    await engine(paths, jobs).poll_once()
    assert stored(paths, dep.deployment_id).batches[1].status is BatchStatus.CREATING
    await engine(paths, jobs).poll_once()  # "already exists" counts as created
    assert stored(paths, dep.deployment_id).batches[1].status is BatchStatus.RUNNING
    assert len(jobs.state.jobs) == 2
    jobs.answer(f"{dep.deployment_id}-b2", "SUCCEEDED")
    await engine(paths, jobs).poll_once()
    assert stored(paths, dep.deployment_id).status is DeploymentStatus.COMPLETED


async def test_failure_cancels_what_is_queued_and_nothing_later_starts(
    paths: StatePaths, jobs: CoreJobs, firmware: FirmwareManifest
) -> None:
    dep = create_deployment(
        paths,
        firmware_id=firmware.firmware_id,
        groups=["all"],
        batch_size=5,
        success_threshold=0.6,
        abort_on_threshold=False,  # the engine itself must cancel
    )
    e = engine(paths, jobs)
    await e.poll_once()
    job_id = f"{dep.deployment_id}-b1"
    batch = THINGS[:5]
    jobs.answer(job_id, "FAILED", batch[:2])
    jobs.answer(job_id, "REJECTED", batch[2:3])  # 3 of 5 failed: 60 % is out of reach
    await e.poll_once()
    done = stored(paths, dep.deployment_id)
    assert done.status is DeploymentStatus.FAILED
    assert "at most 2/5 can still succeed" in done.reason
    assert [jobs.status(job_id, t) for t in batch[3:]] == [ExecutionStatus.CANCELED] * 2
    assert jobs.state.jobs[job_id].reason_code == "THRESHOLD_MISSED"
    for _ in range(3):
        await e.poll_once()
    assert list(jobs.state.jobs) == [job_id]
    settled = stored(paths, dep.deployment_id)
    assert settled.batches[0].current_counts.failed == 5
    assert settled.batches[0].settled
    assert settled.batches[1].status is BatchStatus.SKIPPED


async def test_abort_config_cancels_in_the_jobs_engine(
    paths: StatePaths, jobs: CoreJobs, firmware: FirmwareManifest
) -> None:
    dep = create_deployment(
        paths,
        firmware_id=firmware.firmware_id,
        things=THINGS[:5],
        batch_size=5,
        success_threshold=0.95,
    )
    await engine(paths, jobs).poll_once()
    job_id = f"{dep.deployment_id}-b1"
    jobs.answer(job_id, "FAILED", THINGS[:1])
    # the job's abortConfig fired inside the jobs core, before the engine looked
    assert jobs.state.jobs[job_id].status.value == "CANCELED"
    assert jobs.status(job_id, THINGS[1]) is ExecutionStatus.CANCELED
    await engine(paths, jobs).poll_once()
    assert stored(paths, dep.deployment_id).status is DeploymentStatus.FAILED


async def test_cancel_running_and_queued_deployments(
    paths: StatePaths, jobs: CoreJobs, firmware: FirmwareManifest
) -> None:
    running = create_deployment(
        paths, firmware_id=firmware.firmware_id, groups=["all"], batch_size=3, success_threshold=1
    )
    await engine(paths, jobs).poll_once()
    requested = cancel_deployment(paths, running.deployment_id, reason="wrong image")
    assert requested.status is DeploymentStatus.IN_PROGRESS  # the engine applies it
    await engine(paths, jobs).poll_once()
    done = stored(paths, running.deployment_id)
    assert done.status is DeploymentStatus.CANCELED
    assert done.reason == "wrong image"
    job_id = f"{running.deployment_id}-b1"
    assert jobs.state.jobs[job_id].status.value == "CANCELED"
    assert [b.status for b in done.batches[1:]] == [BatchStatus.SKIPPED] * 2
    with pytest.raises(DeploymentError, match="already CANCELED"):
        cancel_deployment(paths, running.deployment_id)

    queued = create_deployment(
        paths,
        firmware_id=firmware.firmware_id,
        things=THINGS[:1],
        batch_size=1,
        success_threshold=1,
    )
    canceled = cancel_deployment(paths, queued.deployment_id)  # no engine needed
    assert canceled.status is DeploymentStatus.CANCELED
    calls = len(jobs.calls)
    await engine(paths, jobs).poll_once()
    assert not any(c == "create" for c in jobs.calls[calls:])
    with pytest.raises(DeploymentNotFoundError):
        cancel_deployment(paths, "dep-nope")


async def test_refused_job_creation_fails_the_deployment(
    paths: StatePaths, jobs: CoreJobs, firmware: FirmwareManifest
) -> None:
    # a test fault plan larger than the 32 KiB a job document may hold
    dep = create_deployment(
        paths,
        firmware_id=firmware.firmware_id,
        things=THINGS[:2],
        batch_size=2,
        success_threshold=1,
        test_faults=["x" * 1000] * 40,
    )
    await engine(paths, jobs).poll_once()
    done = stored(paths, dep.deployment_id)
    assert done.status is DeploymentStatus.FAILED
    assert f"could not create job {dep.deployment_id}-b1" in done.reason
    assert jobs.state.jobs == {}


def test_create_deployment_validates_inputs(paths: StatePaths, firmware: FirmwareManifest) -> None:
    from cloud_stubs import NotFoundError  # noqa: PLC0415

    with pytest.raises(FirmwareNotFoundError):
        create_deployment(
            paths, firmware_id="fw-000000000000", things=THINGS, batch_size=1, success_threshold=1
        )
    with pytest.raises(NotFoundError):
        create_deployment(
            paths,
            firmware_id=firmware.firmware_id,
            things=["ghost"],
            batch_size=1,
            success_threshold=1,
        )
    with pytest.raises(NotFoundError):
        create_deployment(
            paths,
            firmware_id=firmware.firmware_id,
            groups=["nope"],
            batch_size=1,
            success_threshold=1,
        )
    reg = Registry(paths)
    reg.create_group("empty")
    reg.close()
    with pytest.raises(DeploymentError, match="no target things"):
        create_deployment(
            paths,
            firmware_id=firmware.firmware_id,
            groups=["empty"],
            batch_size=1,
            success_threshold=1,
        )
    with DeploymentStore(paths) as store:
        assert store.list_deployments() == []
