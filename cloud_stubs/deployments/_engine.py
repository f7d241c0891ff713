"""The deployment engine: the async driver of :mod:`cloud_stubs.deployments._machine`.

It runs inside the stub (:func:`start_ota`), polls ``DIR/deployments.sqlite`` and the jobs
control plane every ``poll_interval_s`` (0.5 s by default), feeds the state machine, persists
its result and only then carries out its actions (create or cancel a batch job). State lives in
SQLite, so a restarted stub continues where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cloud_stubs._paths import StatePaths
from cloud_stubs.deployments._errors import DeploymentConflictError
from cloud_stubs.deployments._machine import (
    CancelJob,
    CancelRequested,
    CreateJob,
    Event,
    JobCreated,
    JobCreateFailed,
    Observed,
    Tick,
    jobs_to_observe,
    step,
)
from cloud_stubs.deployments._model import Deployment, ExecutionView
from cloud_stubs.deployments._store import DeploymentStore
from cloud_stubs.firmware import FirmwareServer
from cloud_stubs.jobs import JobsError, ResourceAlreadyExistsError, ResourceNotFoundError

__all__ = ["DeploymentEngine", "JobsControl", "OtaRuntime", "start_ota"]

_log = logging.getLogger(__name__)


class JobsControl(Protocol):
    """``LocalIoTCore.jobs_control``: run a jobs control-plane operation."""

    def __call__(self, op: str, **args: Any) -> Awaitable[Any]:
        """Run ``op`` (create, cancel, list-executions, ...) with ``args``."""
        ...


class _CoreLike(Protocol):
    paths: StatePaths

    async def jobs_control(self, op: str, **args: Any) -> Any: ...


def _latest_executions(rows: list[dict[str, Any]]) -> list[ExecutionView]:
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        thing = str(row["thingName"])
        if thing not in newest or row["executionNumber"] > newest[thing]["executionNumber"]:
            newest[thing] = row
    views = []
    for thing, row in newest.items():
        details = row.get("statusDetails") or {}
        details_map = details.get("detailsMap", details) if isinstance(details, dict) else {}
        views.append(ExecutionView(thing, str(row["status"]), dict(details_map or {})))
    return views


class DeploymentEngine:
    """Drives every unfinished deployment of a state directory.

    Args:
        paths: The state directory (``deployments.sqlite``).
        jobs_control: The jobs control plane (``LocalIoTCore.jobs_control``).
        poll_interval_s: Seconds between polls.
        clock: Epoch seconds.
        logger: Where to log (default: this module's logger).
    """

    def __init__(
        self,
        paths: StatePaths,
        jobs_control: JobsControl,
        *,
        poll_interval_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        """Configure; call :meth:`run` (or use :meth:`running`) to start."""
        self.paths = paths
        self._jobs = jobs_control
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._log = logger or _log
        self._store: DeploymentStore | None = None
        self.polls = 0

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Poll until cancelled; sets ``ready`` after the first poll."""
        self._store = DeploymentStore(self.paths)
        try:
            while True:
                await self.poll_once()
                if ready is not None:
                    ready.set()
                await asyncio.sleep(self.poll_interval_s)
        finally:
            self._store.close()
            self._store = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DeploymentEngine]:
        """Run in a background task for the duration of the ``async with`` block."""
        ready = asyncio.Event()
        task = asyncio.create_task(self.run(ready=ready), name="cloud_stubs.deployments.engine")
        try:
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                waiter.cancel()
                task.result()  # the reason it could not start
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def poll_once(self) -> None:
        """Look at every deployment that needs the engine once."""
        store = self._store or DeploymentStore(self.paths)
        try:
            for deployment_id in store.engine_work():
                try:
                    await self._process(store, deployment_id)
                except DeploymentConflictError:
                    self._log.debug("deployment %s changed meanwhile; next poll", deployment_id)
                except Exception:  # noqa: BLE001 - one bad deployment must not stop the others
                    self._log.exception("deployment %s: engine error", deployment_id)
        finally:
            if store is not self._store:
                store.close()
            self.polls += 1

    async def _process(self, store: DeploymentStore, deployment_id: str) -> None:
        stored = store.load(deployment_id)
        current: list[Any] = [stored.deployment, stored.version]

        async def apply(event: Event) -> None:
            result = step(current[0], event)
            if result.changed:
                current[1] = store.save(result.deployment, expected_version=current[1])
                current[0] = result.deployment
                self._log_transition(stored.deployment, result.deployment)
            for action in result.actions:
                follow_up = await self._carry_out(action)
                if follow_up is not None:
                    await apply(follow_up)

        if stored.cancel_reason and not stored.deployment.status.is_terminal:
            await apply(CancelRequested(self._clock(), stored.cancel_reason))
        await apply(Tick(self._clock()))
        for job_id in jobs_to_observe(current[0]):
            await apply(await self._observe(job_id))

    def _log_transition(self, before: Deployment, after: Deployment) -> None:
        if before.status is not after.status:
            self._log.info(
                "deployment %s %s -> %s%s",
                after.deployment_id,
                before.status,
                after.status,
                f": {after.reason}" if after.reason else "",
            )

    async def _observe(self, job_id: str) -> Observed:
        try:
            rows = await self._jobs("list-executions", job_id=job_id)
        except ResourceNotFoundError:
            return Observed(self._clock(), job_id, (), job_found=False)
        return Observed(self._clock(), job_id, _latest_executions(list(rows)))

    async def _carry_out(self, action: CreateJob | CancelJob) -> Event | None:
        if isinstance(action, CreateJob):
            try:
                await self._jobs("create", **action.control_args())
            except ResourceAlreadyExistsError:
                pass  # created before a crash: it is ours
            except (JobsError, KeyError, ValueError, TypeError) as exc:
                return JobCreateFailed(self._clock(), action.job_id, str(exc))
            self._log.info("created job %s for %d things", action.job_id, len(action.things))
            return JobCreated(self._clock(), action.job_id)
        try:
            await self._jobs(
                "cancel",
                job_id=action.job_id,
                reason_code=action.reason_code,
                comment=action.comment,
            )
        except JobsError as exc:  # finished or deleted meanwhile: nothing left to cancel
            self._log.debug("cancel %s: %s", action.job_id, exc)
        else:
            self._log.info("canceled job %s (%s)", action.job_id, action.reason_code)
        return None

    async def wait(self, deployment_id: str, *, settled: bool = False) -> Deployment:
        """Wait until a deployment is terminal (and, with ``settled``, its counts final).

        Bound it with ``asyncio.timeout``.
        """
        with DeploymentStore(self.paths) as store:
            while True:
                dep = store.get(deployment_id)
                if dep.status.is_terminal and not (settled and jobs_to_observe(dep)):
                    return dep
                await asyncio.sleep(min(0.1, self.poll_interval_s))


@dataclass(frozen=True)
class OtaRuntime:
    """What :func:`start_ota` runs: the firmware file server and the deployment engine."""

    server: FirmwareServer
    engine: DeploymentEngine


@contextlib.asynccontextmanager
async def start_ota(
    core: _CoreLike,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: bool = True,
    url_ttl_s: int = 3600,
    poll_interval_s: float = 0.5,
) -> AsyncIterator[OtaRuntime]:
    """Run the firmware server and the deployment engine alongside a running stub.

    If ``core`` already runs them (``core.ota`` is an :class:`OtaRuntime`), that runtime is
    yielded and nothing new starts, so tests can ask for OTA whether or not the stub starts it.

    Args:
        core: A started :class:`~cloud_stubs.LocalIoTCore` (its jobs service must run).
        host: File server address.
        port: File server port (0: a free one).
        tls: HTTPS with the stub's server certificate (default) or plain HTTP.
        url_ttl_s: Lifetime of presigned URLs.
        poll_interval_s: Engine poll interval.
    """
    existing = getattr(core, "ota", None)
    if isinstance(existing, OtaRuntime):
        yield existing
        return
    async with FirmwareServer(
        core.paths, host=host, port=port, tls=tls, url_ttl_s=url_ttl_s
    ) as server:
        engine = DeploymentEngine(core.paths, core.jobs_control, poll_interval_s=poll_interval_s)
        async with engine.running():
            yield OtaRuntime(server, engine)
