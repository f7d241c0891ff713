"""JobRunner against the real local IoT Core (both brokers): outcomes, journal, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud_stubs import LocalIoTCore
from device_sdk.jobs import (
    Handler,
    JobContext,
    JobFailed,
    JobHandler,
    JobOutcome,
    JobRejected,
    JobRunner,
    JobsClient,
    JobStatus,
    RebootRequested,
)
from device_sdk.shadow import BufferedStream
from tests.sdk_shadow._support import CuttableLink, eventually, make_device

WAIT = 10.0


@contextlib.asynccontextmanager
async def running(runner: JobRunner) -> AsyncIterator[BufferedStream[JobOutcome]]:
    """Run ``runner`` in a task for the block; yield its outcome stream."""
    async with runner.outcomes() as outcomes:
        task = asyncio.create_task(runner.run())
        try:
            yield outcomes
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def next_outcome(outcomes: BufferedStream[JobOutcome]) -> JobOutcome:
    async with asyncio.timeout(WAIT):
        return await anext(outcomes)


async def execution(cloud: LocalIoTCore, job_id: str, thing: str) -> dict[str, Any]:
    result = await cloud.jobs_control("describe-execution", job_id=job_id, thing=thing)
    assert isinstance(result, dict)
    return result


def details(ex: dict[str, Any]) -> dict[str, str]:
    found = ex["statusDetails"]["detailsMap"]
    assert isinstance(found, dict)
    return found


async def create(cloud: LocalIoTCore, job_id: str, thing: str, document: dict[str, Any]) -> None:
    await cloud.jobs_control("create", job_id=job_id, things=[thing], document=document)


async def journal_phase(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["phase"])
    except FileNotFoundError:
        return None


async def test_runs_jobs_to_succeeded(cloud: LocalIoTCore, tmp_path: Path) -> None:
    progress_seen: list[dict[str, str]] = []

    async def install(ctx: JobContext) -> dict[str, Any]:
        await ctx.progress({"step": "download", "pct": 50})
        progress_seen.append(
            details(await execution(cloud, ctx.job_id, "run-1")),
        )
        return {"installed": ctx.document["version"], "attempts": 1}

    await create(cloud, "before", "run-1", {"operation": "install", "version": "1.0"})
    async with make_device(cloud, "run-1") as dev:
        runner = JobRunner(dev, {"install": install}, journal_path=tmp_path / "journal.json")
        async with running(runner) as outcomes:
            first = await next_outcome(outcomes)  # picked up by start-next at start
            await create(cloud, "after", "run-1", {"operation": "install", "version": "2.0"})
            second = await next_outcome(outcomes)  # picked up on notify-next
    assert first == JobOutcome("before", JobStatus.SUCCEEDED, {"installed": "1.0", "attempts": "1"})
    assert second.job_id == "after"
    assert second.status is JobStatus.SUCCEEDED
    ex = await execution(cloud, "after", "run-1")
    assert ex["status"] == "SUCCEEDED"
    assert details(ex) == {"installed": "2.0", "attempts": "1"}
    assert progress_seen[0] == {"step": "download", "pct": "50"}
    assert not (tmp_path / "journal.json").exists()


async def test_bad_documents_are_rejected_and_the_runner_goes_on(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    async def ok(ctx: JobContext) -> None:
        return None

    docs: dict[str, dict[str, Any]] = {
        "unknown": {"operation": "format-disk"},
        "missing": {"op": "ok"},
        "not-str": {"operation": ["ok"]},
        "fine": {"operation": "ok"},
    }
    async with make_device(cloud, "run-2") as dev:
        runner = JobRunner(dev, {"ok": ok}, journal_path=tmp_path / "j.json")
        async with running(runner) as outcomes:
            for job_id, doc in docs.items():
                await create(cloud, job_id, "run-2", doc)
            got = {o.job_id: o for o in [await next_outcome(outcomes) for _ in docs]}
    assert got["unknown"].status is JobStatus.REJECTED
    assert got["unknown"].status_details == {"reason": "unknown operation 'format-disk'"}
    assert got["missing"].status_details == {"reason": "job document has no 'operation' string"}
    assert got["not-str"].status is JobStatus.REJECTED
    assert got["fine"].status is JobStatus.SUCCEEDED
    ex = await execution(cloud, "unknown", "run-2")
    assert (ex["status"], details(ex)["reason"]) == ("REJECTED", "unknown operation 'format-disk'")


async def test_handler_failures(cloud: LocalIoTCore, tmp_path: Path) -> None:
    async def fail(ctx: JobContext) -> None:
        raise JobFailed("disk full", {"free_mb": 0})

    async def crash(ctx: JobContext) -> None:
        raise RuntimeError("boom")

    async def refuse(ctx: JobContext) -> None:
        raise JobRejected("wrong hardware")

    async def hang(ctx: JobContext) -> None:
        await asyncio.Event().wait()

    handlers: dict[str, Handler | JobHandler] = {
        "fail": fail,
        "crash": crash,
        "refuse": refuse,
        "hang": JobHandler(hang, timeout_s=0.3),
    }
    async with make_device(cloud, "run-3") as dev:
        runner = JobRunner(dev, handlers, journal_path=tmp_path / "j.json")
        async with running(runner) as outcomes:
            for op in handlers:
                await create(cloud, f"job-{op}", "run-3", {"operation": op})
            got = {o.job_id: o for o in [await next_outcome(outcomes) for _ in handlers]}
    assert got["job-fail"].status is JobStatus.FAILED
    assert got["job-fail"].status_details == {"reason": "disk full", "free_mb": "0"}
    assert got["job-crash"].status is JobStatus.FAILED
    assert got["job-crash"].status_details == {"reason": "handler raised RuntimeError: boom"}
    assert got["job-refuse"].status is JobStatus.REJECTED
    assert got["job-hang"].status is JobStatus.FAILED
    assert got["job-hang"].status_details == {"reason": "handler timed out after 0.3 s"}
    ex = await execution(cloud, "job-fail", "run-3")
    assert (ex["status"], details(ex)["reason"]) == ("FAILED", "disk full")


async def test_reboot_job_completes_after_the_restart(cloud: LocalIoTCore, tmp_path: Path) -> None:
    journal = tmp_path / "journal.json"
    calls: list[str] = []

    async def reboot(ctx: JobContext) -> RebootRequested:
        calls.append(ctx.job_id)
        return RebootRequested({"slot": "B"}, step_timeout_minutes=10)

    await create(cloud, "fw", "run-4", {"operation": "reboot"})
    async with make_device(cloud, "run-4") as dev:
        outcome = await asyncio.wait_for(
            JobRunner(dev, {"reboot": reboot}, journal_path=journal).run(), WAIT
        )
    # run() returned: the application would reboot the machine now
    assert outcome == JobOutcome("fw", JobStatus.IN_PROGRESS, {"slot": "B"}, reboot_requested=True)
    assert await journal_phase(journal) == "reboot-requested"
    ex = await execution(cloud, "fw", "run-4")
    assert (ex["status"], details(ex)) == ("IN_PROGRESS", {"slot": "B"})
    assert "approximateSecondsBeforeTimedOut" in ex  # the reboot's dead-man timer

    # "after the reboot": a new process, a new client, the same journal
    async with make_device(cloud, "run-4") as dev:
        runner = JobRunner(dev, {"reboot": reboot}, journal_path=journal)
        async with running(runner) as outcomes:
            done = await next_outcome(outcomes)
    assert done == JobOutcome("fw", JobStatus.SUCCEEDED, {"slot": "B"}, resumed=True)
    assert calls == ["fw"]  # the handler did not run twice
    ex = await execution(cloud, "fw", "run-4")
    assert (ex["status"], details(ex)) == ("SUCCEEDED", {"slot": "B"})
    assert await journal_phase(journal) is None


async def test_interrupted_handlers_after_a_restart(cloud: LocalIoTCore, tmp_path: Path) -> None:
    journal = tmp_path / "journal.json"
    runs: list[tuple[str, bool]] = []

    async def stuck(ctx: JobContext) -> dict[str, str]:
        runs.append((ctx.job_id, ctx.resumed))
        if not ctx.resumed:
            await asyncio.Event().wait()
        return {"resumed": "yes"}

    handlers: dict[str, Handler | JobHandler] = {
        "once": stuck,
        "again": JobHandler(stuck, resumable=True),
    }
    for job_id in ("once", "again"):
        await create(cloud, job_id, "run-5", {"operation": job_id})
        async with make_device(cloud, "run-5") as dev:
            runner = JobRunner(dev, handlers, journal_path=journal)
            async with running(runner):  # the process dies in the middle of the handler
                await eventually(lambda: journal_phase(journal), lambda p: p == "running")
        async with make_device(cloud, "run-5") as dev:
            runner = JobRunner(dev, handlers, journal_path=journal)
            async with running(runner) as outcomes:
                outcome = await next_outcome(outcomes)
        assert outcome.job_id == job_id
        assert outcome.resumed
    once = await execution(cloud, "once", "run-5")
    assert (once["status"], details(once)) == ("FAILED", {"reason": "interrupted by restart"})
    again = await execution(cloud, "again", "run-5")
    assert (again["status"], details(again)) == ("SUCCEEDED", {"resumed": "yes"})
    assert runs == [("once", False), ("again", False), ("again", True)]


async def test_version_mismatch_is_handled_by_re_describing(
    cloud: LocalIoTCore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="device_sdk.jobs")
    async with make_device(cloud, "run-6") as dev, JobsClient(dev) as other:

        async def meddle(ctx: JobContext) -> dict[str, str]:
            # another writer bumps the execution's version behind the runner's back
            await other.update(ctx.job_id, JobStatus.IN_PROGRESS, status_details={"x": "1"})
            await ctx.progress({"step": "2"})
            await other.update(ctx.job_id, JobStatus.IN_PROGRESS, status_details={"x": "2"})
            return {"result": "ok"}

        runner = JobRunner(dev, {"meddle": meddle}, journal_path=tmp_path / "j.json")
        async with running(runner) as outcomes:
            await create(cloud, "vm", "run-6", {"operation": "meddle"})
            outcome = await next_outcome(outcomes)
    assert outcome.status is JobStatus.SUCCEEDED
    assert outcome.reported
    ex = await execution(cloud, "vm", "run-6")
    assert (ex["status"], details(ex)) == ("SUCCEEDED", {"result": "ok"})
    # start-next 2, other 3, progress 4 (after a VersionMismatch), other 5, final 6 (after one)
    assert ex["versionNumber"] == 6
    assert "job vm moved to v5: retrying" in caplog.text


async def test_cancelled_in_the_cloud_cancels_the_handler(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def long(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with make_device(cloud, "run-7") as dev:
        runner = JobRunner(dev, {"long": long}, journal_path=tmp_path / "j.json")
        async with running(runner) as outcomes:
            await create(cloud, "c1", "run-7", {"operation": "long"})
            async with asyncio.timeout(WAIT):
                await started.wait()
            await cloud.jobs_control("cancel", job_id="c1", force=True)
            outcome = await next_outcome(outcomes)
    assert cancelled.is_set()
    assert outcome == JobOutcome("c1", JobStatus.CANCELED, {}, reported=False)
    assert (await execution(cloud, "c1", "run-7"))["status"] == "CANCELED"


async def test_jobs_queued_while_offline_start_after_reconnect(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    async def ok(ctx: JobContext) -> dict[str, str]:
        return {"job": ctx.job_id}

    async with (
        CuttableLink(cloud.endpoint.port) as link,
        make_device(cloud, "run-8", port=link.port) as dev,
    ):
        runner = JobRunner(dev, {"ok": ok}, journal_path=tmp_path / "j.json")
        async with running(runner) as outcomes:
            await create(cloud, "on", "run-8", {"operation": "ok"})
            assert (await next_outcome(outcomes)).status is JobStatus.SUCCEEDED
            await link.go_offline()
            await create(cloud, "off", "run-8", {"operation": "ok"})  # notify-next is lost
            link.go_online()
            outcome = await next_outcome(outcomes)
    assert outcome == JobOutcome("off", JobStatus.SUCCEEDED, {"job": "off"})


async def test_an_unreported_outcome_is_resent_from_the_journal(
    cloud: LocalIoTCore, tmp_path: Path
) -> None:
    journal = tmp_path / "j.json"
    async with (
        CuttableLink(cloud.endpoint.port) as link,
        make_device(cloud, "run-9", port=link.port) as dev,
        JobsClient(dev, timeout_s=0.5) as jobs,
    ):
        calls: list[str] = []
        phases: list[str | None] = []

        async def flaky(ctx: JobContext) -> dict[str, str]:
            calls.append(ctx.job_id)
            await link.go_offline()  # the link dies as the handler finishes
            return {"done": "1"}

        async def reconnect_later() -> None:
            await eventually(lambda: journal_phase(journal), lambda p: p == "reporting")
            await asyncio.sleep(0.7)  # the report times out meanwhile
            phases.append(await journal_phase(journal))
            link.go_online()

        runner = JobRunner(dev, {"flaky": flaky}, journal_path=journal, jobs=jobs)
        async with running(runner) as outcomes, asyncio.TaskGroup() as tg:
            tg.create_task(reconnect_later())
            await create(cloud, "rs", "run-9", {"operation": "flaky"})
            outcome = await next_outcome(outcomes)
    assert outcome == JobOutcome("rs", JobStatus.SUCCEEDED, {"done": "1"}, resumed=True)
    assert calls == ["rs"]  # reported from the journal, not recomputed
    assert phases == ["reporting"]
    assert (await execution(cloud, "rs", "run-9"))["status"] == "SUCCEEDED"
