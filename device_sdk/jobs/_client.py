"""``JobsClient``: the Jobs device API over MQTT, and its notification streams.

Every request goes through a :class:`~device_sdk.RequestChannel` (``clientToken``
correlation, no durable outbox). Rejections map onto the SDK's exception tree::

    …/rejected {"code": "VersionMismatch", ...}  -> VersionConflictError
    …/rejected {"code": "<ErrorCode>", ...}      -> RejectedError (code is the string)
    no answer in time                            -> RequestTimeoutError

A request channel subscribes to ``<request topic>/accepted|rejected`` for its lifetime.
The fixed topics (``get``, ``start-next``, ``$next/get``) use one long-lived channel; the
per-job topics (``<jobId>/get``, ``<jobId>/update``) use a small pool of per-job channels,
the least recently used idle one being closed (unsubscribed) when the pool is full, so a
long-running device never piles up subscriptions (IoT Core allows 50 per connection).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from device_sdk._exceptions import ClosedError, RejectedError, VersionConflictError
from device_sdk._request import RequestChannel
from device_sdk.jobs._model import (
    JobExecution,
    JobsChangedEvent,
    JobStatus,
    JobUpdateResult,
    NextJobEvent,
    PendingJobs,
)
from device_sdk.jobs._topics import NEXT_JOB, JobsTopics, validate_job_id
from device_sdk.shadow._stream import EventStream

if TYPE_CHECKING:
    from device_sdk._client import DeviceClient
    from device_sdk._request import Response

__all__ = ["JobErrorCode", "JobsClient", "rejected_error"]


class JobErrorCode:
    """The Jobs service's error codes (``RejectedError.code``), spec §3.6."""

    INVALID_TOPIC = "InvalidTopic"
    INVALID_JSON = "InvalidJson"
    INVALID_REQUEST = "InvalidRequest"
    INVALID_STATE_TRANSITION = "InvalidStateTransition"
    RESOURCE_NOT_FOUND = "ResourceNotFound"
    VERSION_MISMATCH = "VersionMismatch"
    INTERNAL_ERROR = "InternalError"
    REQUEST_THROTTLED = "RequestThrottled"
    TERMINAL_STATE_REACHED = "TerminalStateReached"


def rejected_error(response: Response) -> RejectedError:
    """The exception for a jobs ``…/rejected`` answer (VersionMismatch -> VersionConflictError)."""
    body = response.body
    code = str(body.get("code", ""))
    message = str(body.get("message", ""))
    token = body.get("clientToken")
    token = token if isinstance(token, str) else None
    if code == JobErrorCode.VERSION_MISMATCH:
        return VersionConflictError(code, message, token)
    return RejectedError(code, message, token)


@dataclasses.dataclass
class _Lease:
    stack: contextlib.AsyncExitStack
    channel: RequestChannel
    users: int = 0


class _JobChannels:
    """Per-job request channels, at most ``size`` idle ones kept (LRU)."""

    def __init__(self, device: DeviceClient, timeout_s: float, size: int) -> None:
        self._device = device
        self._timeout = timeout_s
        self._size = size
        self._leases: collections.OrderedDict[str, _Lease] = collections.OrderedDict()
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lease(self, job_id: str) -> AsyncIterator[RequestChannel]:
        async with self._lock:
            entry = self._leases.get(job_id)
            if entry is None:
                stack = contextlib.AsyncExitStack()
                channel = await stack.enter_async_context(
                    RequestChannel(self._device, timeout_s=self._timeout)
                )
                entry = self._leases[job_id] = _Lease(stack, channel)
            self._leases.move_to_end(job_id)
            entry.users += 1
        try:
            yield entry.channel
        finally:
            entry.users -= 1
            await self._trim()

    async def _trim(self) -> None:
        while len(self._leases) > self._size:
            idle = next((k for k, v in self._leases.items() if v.users == 0), None)
            if idle is None:
                return
            await self._leases.pop(idle).stack.aclose()

    async def aclose(self) -> None:
        leases = list(self._leases.values())
        self._leases.clear()
        for entry in leases:
            await entry.stack.aclose()


class JobsClient:
    """The Jobs device API of the device's thing.

    Use as ``async with JobsClient(device) as jobs:``::

        execution = await jobs.start_next(step_timeout_minutes=10)
        if execution is not None:
            await jobs.update(execution.job_id, JobStatus.SUCCEEDED,
                              expected_version=execution.version_number)

    Args:
        device: A :class:`~device_sdk.DeviceClient` (entered before this client is used).
        channel: A shared, entered :class:`~device_sdk.RequestChannel` for the fixed topics;
            by default the client opens its own.
        timeout_s: Request timeout of the channels this client opens.
        job_channels: Per-job channels kept open (see the module docstring).
    """

    def __init__(
        self,
        device: DeviceClient,
        channel: RequestChannel | None = None,
        *,
        timeout_s: float = 10.0,
        job_channels: int = 2,
    ) -> None:
        if job_channels < 1:
            raise ValueError("job_channels must be positive")
        self._device = device
        self.topics = JobsTopics(device.thing_name)
        self._shared_channel = channel
        self._channel: RequestChannel | None = channel
        self._timeout = timeout_s
        self._pool_size = job_channels
        self._pool: _JobChannels | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._log = logging.getLogger(__name__)

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("JobsClient is already entered")
        stack = contextlib.AsyncExitStack()
        if self._shared_channel is None:
            self._channel = await stack.enter_async_context(
                RequestChannel(self._device, timeout_s=self._timeout)
            )
        pool = _JobChannels(self._device, self._timeout, self._pool_size)
        stack.push_async_callback(pool.aclose)
        self._pool, self._stack = pool, stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._pool = None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)
        self._channel = self._shared_channel

    # -- requests -------------------------------------------------------------------------

    async def _request(self, topic: str, body: dict[str, Any], job_id: str | None) -> Response:
        if self._channel is None or self._pool is None:
            raise ClosedError("use 'async with JobsClient(device)'")
        if job_id is None or job_id == NEXT_JOB:
            response = await self._channel.request(topic, body)
        else:
            async with self._pool.lease(job_id) as channel:
                response = await channel.request(topic, body)
        if not response.accepted:
            raise rejected_error(response)
        return response

    async def get_pending(self) -> PendingJobs:
        """IN_PROGRESS and QUEUED executions of this thing (GetPendingJobExecutions).

        Raises:
            RejectedError: The service refused the request.
            RequestTimeoutError: No answer in time.
        """
        response = await self._request(self.topics.get_pending, {}, None)
        return PendingJobs.model_validate(response.body)

    async def start_next(
        self,
        *,
        status_details: Mapping[str, str] | None = None,
        step_timeout_minutes: int | None = None,
    ) -> JobExecution | None:
        """Start the next pending execution (StartNextPendingJobExecution).

        An execution that is already IN_PROGRESS is returned unchanged.

        Args:
            status_details: Details to set when a QUEUED execution starts.
            step_timeout_minutes: Step timer (1-10080): the execution becomes TIMED_OUT
                unless updated within it.

        Returns:
            The execution with its document, or ``None`` when nothing is pending.

        Raises:
            RejectedError: The service refused the request.
            RequestTimeoutError: No answer in time (the execution may have started).
        """
        body: dict[str, Any] = {}
        if status_details is not None:
            body["statusDetails"] = dict(status_details)
        if step_timeout_minutes is not None:
            body["stepTimeoutInMinutes"] = step_timeout_minutes
        response = await self._request(self.topics.start_next, body, None)
        raw = response.body.get("execution")
        return None if raw is None else JobExecution.model_validate(raw)

    async def describe(
        self,
        job_id: str = NEXT_JOB,
        *,
        include_job_document: bool = True,
        execution_number: int | None = None,
    ) -> JobExecution | None:
        """One execution (DescribeJobExecution); ``"$next"`` is the next pending one.

        Returns:
            The execution, or ``None`` for ``$next`` when nothing is pending.

        Raises:
            RejectedError: ``code == "ResourceNotFound"`` for an unknown job, or another code
                (``"TerminalStateReached"`` where the service refuses terminal executions).
            RequestTimeoutError: No answer in time.
        """
        body: dict[str, Any] = {"includeJobDocument": include_job_document}
        if execution_number is not None:
            body["executionNumber"] = execution_number
        response = await self._request(self.topics.describe(job_id), body, job_id)
        raw = response.body.get("execution")
        return None if raw is None else JobExecution.model_validate(raw)

    async def update(
        self,
        job_id: str,
        status: JobStatus,
        *,
        status_details: Mapping[str, str] | None = None,
        expected_version: int | None = None,
        execution_number: int | None = None,
        step_timeout_minutes: int | None = None,
        include_job_execution_state: bool = False,
        include_job_document: bool = False,
    ) -> JobUpdateResult:
        """Report an execution's status (UpdateJobExecution).

        Args:
            job_id: The job.
            status: IN_PROGRESS, SUCCEEDED, FAILED or REJECTED.
            status_details: String map replacing the execution's details.
            expected_version: Apply only at this ``version_number`` (optimistic lock).
            execution_number: A specific execution (default: the latest).
            step_timeout_minutes: New step timer (``-1`` cancels it).
            include_job_execution_state: Return the new state (with its version).
            include_job_document: Return the job document.

        Raises:
            VersionConflictError: ``expected_version`` is stale (``VersionMismatch``).
            RejectedError: Another code, e.g. ``"InvalidStateTransition"`` (terminal).
            RequestTimeoutError: No answer in time (the update may have been applied).
        """
        validate_job_id(job_id)
        body: dict[str, Any] = {"status": str(JobStatus(status))}
        if status_details is not None:
            body["statusDetails"] = dict(status_details)
        if expected_version is not None:
            body["expectedVersion"] = expected_version
        if execution_number is not None:
            body["executionNumber"] = execution_number
        if step_timeout_minutes is not None:
            body["stepTimeoutInMinutes"] = step_timeout_minutes
        if include_job_execution_state:
            body["includeJobExecutionState"] = True
        if include_job_document:
            body["includeJobDocument"] = True
        response = await self._request(self.topics.update(job_id), body, job_id)
        return JobUpdateResult.model_validate(response.body)

    # -- notifications --------------------------------------------------------------------

    def notify_next(self, *, max_buffer: int = 100) -> EventStream[NextJobEvent]:
        """``notify-next`` events; enter with ``async with``, then ``async for``."""
        return EventStream(
            self._device,
            self.topics.notify_next,
            NextJobEvent.model_validate_json,
            max_buffer=max_buffer,
            logger=self._log,
        )

    def notify(self, *, max_buffer: int = 100) -> EventStream[JobsChangedEvent]:
        """``notify`` events (pending list changes); ``async with``, then ``async for``."""
        return EventStream(
            self._device,
            self.topics.notify,
            JobsChangedEvent.model_validate_json,
            max_buffer=max_buffer,
            logger=self._log,
        )
