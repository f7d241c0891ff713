"""Jobs through AWS's own ``IotJobsClientV2``, on both brokers; jobs come from the control plane.

The sequence of §3.4 is the one awsiotsdk's own service test expects from real IoT Core.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from awsiot import iotjobs

from cloud_stubs import LocalIoTCore
from tests.conformance._jobs import create_job
from tests.conformance._sdk import (
    EventStream,
    await_sdk,
    device_creds,
    expect_rejected,
    open_stream,
    rr_options,
    sdk_connection,
)

DOC = {"operation": "install", "package": {"name": "fw", "version": "1.2.3"}}


def _recent(when: Any) -> None:
    assert isinstance(when, dt.datetime)
    assert abs(when.timestamp() - time.time()) < 120


class SdkJobs:
    """The V2 jobs client for one thing, with its two streams."""

    def __init__(self, conn: Any, thing: str) -> None:
        self.client = iotjobs.IotJobsClientV2(conn, rr_options())
        self.thing = thing
        self.notify: EventStream
        self.notify_next: EventStream

    async def open_streams(self) -> None:
        thing = self.thing
        self.notify = await open_stream(
            lambda opts: self.client.create_job_executions_changed_stream(
                iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=thing), opts
            ),
            iotjobs.JobExecutionsChangedEvent,
        )
        self.notify_next = await open_stream(
            lambda opts: self.client.create_next_job_execution_changed_stream(
                iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), opts
            ),
            iotjobs.NextJobExecutionChangedEvent,
        )

    def pending(self) -> Any:
        return self.client.get_pending_job_executions(
            iotjobs.GetPendingJobExecutionsRequest(thing_name=self.thing)
        )

    def start_next(self, **kwargs: Any) -> Any:
        return self.client.start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(thing_name=self.thing, **kwargs)
        )

    def describe(self, job_id: str, **kwargs: Any) -> Any:
        return self.client.describe_job_execution(
            iotjobs.DescribeJobExecutionRequest(thing_name=self.thing, job_id=job_id, **kwargs)
        )

    def update_request(self, job_id: str, status: str, **kwargs: Any) -> Any:
        return iotjobs.UpdateJobExecutionRequest(
            thing_name=self.thing, job_id=job_id, status=status, **kwargs
        )

    def send(self, request: Any) -> Any:
        return self.client.update_job_execution(request)

    def update(self, job_id: str, status: str, **kwargs: Any) -> Any:
        return self.send(self.update_request(job_id, status, **kwargs))

    async def quiet(self) -> None:
        await self.notify.assert_quiet()
        await self.notify_next.assert_quiet(0)


async def test_p11_nothing_pending(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("idle")
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        jobs = SdkJobs(conn, "idle")
        pending = await await_sdk(jobs.pending())
        # both arrays present even when empty (the SDK leaves absent ones as None)
        assert pending.in_progress_jobs == []
        assert pending.queued_jobs == []
        _recent(pending.timestamp)
        assert isinstance(pending.client_token, str)
        started = await await_sdk(jobs.start_next())
        assert started.execution is None
        _recent(started.timestamp)
        described = await await_sdk(jobs.describe("$next"))
        assert described.execution is None


async def test_p12_sdk_service_test_sequence(cloud: LocalIoTCore) -> None:
    """notify-next + notify on queue; start-next: no events; SUCCEEDED: empty notifications."""
    ident = cloud.create_thing("worker")
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        jobs = SdkJobs(conn, "worker")
        await jobs.open_streams()

        await create_job(cloud, "job-1", ["worker"], DOC)
        nxt = await jobs.notify_next.next()
        _recent(nxt.timestamp)
        assert nxt.execution.job_id == "job-1"
        assert nxt.execution.status == "QUEUED"
        assert nxt.execution.job_document == DOC  # an object, not a string
        assert nxt.execution.version_number == 1
        assert nxt.execution.execution_number == 1
        _recent(nxt.execution.queued_at)
        changed = await jobs.notify.next()
        assert set(changed.jobs) == {"QUEUED"}
        (queued,) = changed.jobs["QUEUED"]
        assert queued.job_id == "job-1"
        assert queued.started_at is None
        _recent(queued.queued_at)
        _recent(queued.last_updated_at)

        started = await await_sdk(jobs.start_next(status_details={"step": "download"}))
        execution = started.execution
        assert (execution.job_id, execution.status) == ("job-1", "IN_PROGRESS")
        assert execution.version_number == 2
        assert execution.status_details == {"step": "download"}
        assert execution.job_document == DOC
        _recent(execution.started_at)
        await jobs.quiet()  # QUEUED -> IN_PROGRESS of the head: no notify, no notify-next

        done = await await_sdk(jobs.update("job-1", "SUCCEEDED", expected_version=2))
        _recent(done.timestamp)
        assert done.execution_state is None  # not asked for
        assert done.job_document is None
        nxt = await jobs.notify_next.next()
        assert nxt.execution is None
        _recent(nxt.timestamp)
        changed = await jobs.notify.next()
        assert changed.jobs == {}

        pending = await await_sdk(jobs.pending())
        assert (pending.in_progress_jobs, pending.queued_jobs) == ([], [])


async def test_p11_pending_lists_order_and_head_changes(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("busy")
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        jobs = SdkJobs(conn, "busy")
        await jobs.open_streams()
        await create_job(cloud, "first", ["busy"], DOC)
        assert (await jobs.notify_next.next()).execution.job_id == "first"
        assert [s.job_id for s in (await jobs.notify.next()).jobs["QUEUED"]] == ["first"]

        await create_job(cloud, "second", ["busy"], {"operation": "reboot"})
        # the head did not change: notify only (§7.12)
        assert [s.job_id for s in (await jobs.notify.next()).jobs["QUEUED"]] == [
            "first",
            "second",
        ]
        await jobs.notify_next.assert_quiet()

        await await_sdk(jobs.start_next())
        await jobs.quiet()
        pending = await await_sdk(jobs.pending())
        assert [s.job_id for s in pending.in_progress_jobs] == ["first"]
        assert [s.job_id for s in pending.queued_jobs] == ["second"]
        (running,) = pending.in_progress_jobs
        assert running.version_number == 2
        assert running.execution_number == 1
        _recent(running.started_at)
        _recent(running.queued_at)
        assert pending.queued_jobs[0].started_at is None

        # the non-head job goes terminal: notify (it left the list), no notify-next
        await await_sdk(jobs.update("second", "REJECTED"))
        changed = await jobs.notify.next()
        assert {k: [s.job_id for s in v] for k, v in changed.jobs.items()} == {
            "IN_PROGRESS": ["first"]
        }
        await jobs.notify_next.assert_quiet()

        # the head goes terminal: notify-next without execution, notify with empty jobs
        await await_sdk(jobs.update("first", "FAILED", status_details={"reason": "disk"}))
        assert (await jobs.notify_next.next()).execution is None
        assert (await jobs.notify.next()).jobs == {}


async def test_p12_describe_next_and_by_id(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("reader")
    await create_job(cloud, "job-d", ["reader"], DOC)
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        jobs = SdkJobs(conn, "reader")
        nxt = await await_sdk(jobs.describe("$next", include_job_document=True))
        assert nxt.execution.job_id == "job-d"
        assert nxt.execution.thing_name == "reader"
        assert nxt.execution.status == "QUEUED"
        assert isinstance(nxt.execution.job_document, dict)
        assert nxt.execution.job_document == DOC
        by_id = await await_sdk(jobs.describe("job-d", include_job_document=False))
        assert by_id.execution.job_id == "job-d"
        assert by_id.execution.job_document is None
        default = await await_sdk(jobs.describe("job-d"))
        assert default.execution.job_document == DOC  # includeJobDocument defaults to true
        first = await await_sdk(jobs.describe("job-d", execution_number=1))
        assert first.execution.execution_number == 1
        # describing is read-only
        again = await await_sdk(jobs.describe("$next"))
        assert again.execution.version_number == 1
        assert again.execution.status == "QUEUED"


async def test_p4_jobs_rejections_carry_string_codes(cloud: LocalIoTCore) -> None:
    ident = cloud.create_thing("clumsy")
    await create_job(cloud, "job-e", ["clumsy"], DOC)
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        jobs = SdkJobs(conn, "clumsy")
        req = jobs.update_request("job-e", "IN_PROGRESS", expected_version=7)
        err = await expect_rejected(jobs.send(req))
        assert err.code == "VersionMismatch"
        assert err.client_token == req.client_token
        assert isinstance(err.message, str)
        _recent(err.timestamp)
        assert err.execution_state.status == "QUEUED"
        assert err.execution_state.version_number == 1

        acc = await await_sdk(
            jobs.update(
                "job-e",
                "SUCCEEDED",
                expected_version=1,
                include_job_execution_state=True,
                include_job_document=True,
            )
        )
        assert acc.execution_state.status == "SUCCEEDED"
        assert acc.execution_state.version_number == 2
        assert acc.job_document == DOC

        err = await expect_rejected(jobs.update("job-e", "IN_PROGRESS"))
        assert err.code == "InvalidStateTransition"
        assert err.execution_state.status == "SUCCEEDED"

        for fut in (jobs.update("no-such-job", "IN_PROGRESS"), jobs.describe("no-such-job")):
            err = await expect_rejected(fut)
            assert err.code == "ResourceNotFound"
            assert err.execution_state is None
            _recent(err.timestamp)


async def test_p12_starting_a_non_head_job_makes_it_the_head(cloud: LocalIoTCore) -> None:
    """QUEUED -> IN_PROGRESS of a non-head job that thereby becomes head: notify-next only."""
    ident = cloud.create_thing("hopper")
    await create_job(cloud, "older", ["hopper"], DOC)
    await create_job(cloud, "newer", ["hopper"], {"operation": "reboot"})
    async with sdk_connection(cloud, device_creds(ident)) as conn:
        jobs = SdkJobs(conn, "hopper")
        await jobs.open_streams()
        acc = await await_sdk(
            jobs.update(
                "newer", "IN_PROGRESS", expected_version=1, include_job_execution_state=True
            )
        )
        assert acc.execution_state.status == "IN_PROGRESS"
        assert acc.execution_state.version_number == 2
        nxt = await jobs.notify_next.next()
        assert (nxt.execution.job_id, nxt.execution.status) == ("newer", "IN_PROGRESS")
        await jobs.notify.assert_quiet()  # membership did not change
        pending = await await_sdk(jobs.pending())
        assert [s.job_id for s in pending.in_progress_jobs] == ["newer"]
        assert [s.job_id for s in pending.queued_jobs] == ["older"]
        # start-next returns the IN_PROGRESS head unchanged
        started = await await_sdk(jobs.start_next(status_details={"ignored": "yes"}))
        assert started.execution.job_id == "newer"
        assert started.execution.version_number == 2
        assert not started.execution.status_details
        await jobs.quiet()
