"""JobsClient against the real local IoT Core (both brokers)."""

from __future__ import annotations

import asyncio

import pytest

from cloud_stubs import LocalIoTCore
from device_sdk import ClosedError, RejectedError, VersionConflictError
from device_sdk.jobs import JobErrorCode, JobsClient, JobStatus, jobs_topics
from tests.sdk_shadow._support import make_device, service_publish

DOC = {"operation": "install", "version": "2.0"}


async def test_pending_start_describe_update(cloud: LocalIoTCore) -> None:
    async with make_device(cloud, "jc-1") as dev, JobsClient(dev) as jobs:
        pending = await jobs.get_pending()
        assert (pending.in_progress_jobs, pending.queued_jobs) == ([], [])
        assert await jobs.start_next() is None
        assert await jobs.describe() is None  # $next with nothing pending

        async with jobs.notify_next() as notes:
            await cloud.jobs_control("create", job_id="j1", things=["jc-1"], document=DOC)
            async with asyncio.timeout(5):
                event = await anext(notes)
        assert event.execution is not None
        assert event.execution.job_id == "j1"
        assert event.execution.status is JobStatus.QUEUED
        assert event.execution.job_document == DOC

        pending = await jobs.get_pending()
        assert [j.job_id for j in pending.queued_jobs] == ["j1"]
        nxt = await jobs.describe("$next")
        assert nxt is not None
        assert nxt.job_id == "j1"

        started = await jobs.start_next(status_details={"step": "begin"}, step_timeout_minutes=5)
        assert started is not None
        assert started.status is JobStatus.IN_PROGRESS
        assert started.status_details == {"step": "begin"}
        assert started.job_document == DOC
        assert started.started_at is not None
        assert started.started_at.tzinfo is not None
        assert started.approximate_seconds_before_timed_out is not None

        with pytest.raises(VersionConflictError) as stale:
            await jobs.update("j1", JobStatus.IN_PROGRESS, expected_version=1)
        assert stale.value.code == "VersionMismatch"

        result = await jobs.update(
            "j1",
            JobStatus.SUCCEEDED,
            status_details={"done": "yes"},
            expected_version=started.version_number,
            include_job_execution_state=True,
            include_job_document=True,
        )
        assert result.execution_state is not None
        assert result.execution_state.status is JobStatus.SUCCEEDED
        assert result.execution_state.version_number == started.version_number + 1
        assert result.job_document == DOC

        with pytest.raises(RejectedError) as terminal:
            await jobs.update("j1", JobStatus.FAILED)
        assert terminal.value.code == JobErrorCode.INVALID_STATE_TRANSITION
        done = await jobs.describe("j1", include_job_document=False)
        assert done is not None
        assert done.status is JobStatus.SUCCEEDED
        assert done.job_document is None

        with pytest.raises(RejectedError) as missing:
            await jobs.describe("nope")
        assert missing.value.code == JobErrorCode.RESOURCE_NOT_FOUND
        with pytest.raises(ValueError, match="job id"):
            await jobs.update("bad/id", JobStatus.FAILED)


async def test_per_job_channels_do_not_pile_up_subscriptions(cloud: LocalIoTCore) -> None:
    async with make_device(cloud, "jc-2") as dev, JobsClient(dev, job_channels=2) as jobs:
        for i in range(6):
            await cloud.jobs_control("create", job_id=f"k{i}", things=["jc-2"], document=DOC)
        for i in range(6):
            await jobs.update(f"k{i}", JobStatus.REJECTED, status_details={"reason": "test"})
            await jobs.describe(f"k{i}")
        # two response topics per request topic; fixed channel + at most two job channels
        assert len(dev._subs) <= 2 * 4
        assert (await jobs.get_pending()).queued_jobs == []


async def test_notify_stream_and_garbage(cloud: LocalIoTCore) -> None:
    async with make_device(cloud, "jc-3") as dev, JobsClient(dev) as jobs:
        async with jobs.notify() as notes, jobs.notify_next() as nexts:
            await service_publish(cloud, jobs.topics.notify_next, b"garbage")
            await cloud.jobs_control("create", job_id="n1", things=["jc-3"], document=DOC)
            async with asyncio.timeout(5):
                changed = await anext(notes)
                head = await anext(nexts)
        assert [s.job_id for s in changed.jobs[JobStatus.QUEUED]] == ["n1"]
        assert head.execution is not None
        assert nexts.statistics().malformed == 1


async def test_client_must_be_entered(cloud: LocalIoTCore) -> None:
    async with make_device(cloud, "jc-4") as dev:
        with pytest.raises(ClosedError):
            await JobsClient(dev).get_pending()


def test_topics() -> None:
    topics = jobs_topics("robot-1")
    assert topics.start_next == "$aws/things/robot-1/jobs/start-next"
    assert topics.describe("$next") == "$aws/things/robot-1/jobs/$next/get"
    assert topics.update("j-1") == "$aws/things/robot-1/jobs/j-1/update"
    with pytest.raises(ValueError, match="job id"):
        topics.update("$next")
    with pytest.raises(ValueError, match="thing name"):
        jobs_topics("a/b")
