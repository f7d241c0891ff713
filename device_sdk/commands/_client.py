"""``Commands``: receive commands, run registered handlers, report the outcome.

One object serves both schemes (see :mod:`device_sdk.commands._topics`)::

    commands = Commands(device, allow={"reboot", "set-led"})
    commands.register("reboot", reboot)            # async def reboot(request) -> result
    async with commands:
        await commands.serve()                     # until cancelled

or, handling each execution yourself::

    async with commands:
        async for execution in commands.executions():
            await commands.report(execution, CommandStatus.SUCCEEDED, result={"ok": True})

Background work (one reader per subscription) runs in a task group owned by the
``async with`` block, with task names ``device_sdk[<thing>].commands.*``. Inbound requests
wait in a bounded buffer; when it is full new ones are dropped and counted (the cloud then
times the execution out). Malformed requests are logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from device_sdk._exceptions import (
    AuthorizationError,
    ClosedError,
    DeviceSdkError,
    LimitExceededError,
    NegativeAckError,
    RejectedError,
    RequestTimeoutError,
)
from device_sdk.commands._model import (
    CommandExecution,
    CommandFailedError,
    CommandHandler,
    CommandRejectedError,
    CommandRequest,
    CommandScheme,
    CommandStatus,
    ReasonCode,
    aws_response_body,
    decide,
    parse_aws_request,
    parse_simple_request,
    simple_response_body,
)
from device_sdk.commands._topics import (
    PayloadFormat,
    command_topics,
    parse_command_topic,
    simple_command_topics,
)

if TYPE_CHECKING:
    from device_sdk._client import DeviceClient
    from device_sdk._subscription import Subscription

__all__ = ["Commands", "CommandsStatistics"]

_log = logging.getLogger(__name__)

_SEEN_IDS = 1024
_VERDICTS = ("accepted", "rejected")
_CLOSED = object()
_STATUS_COUNTERS = {
    CommandStatus.SUCCEEDED: "succeeded",
    CommandStatus.FAILED: "failed",
    CommandStatus.REJECTED: "rejected",
    CommandStatus.TIMED_OUT: "timed_out",
}


@dataclasses.dataclass(frozen=True, slots=True)
class CommandsStatistics:
    """Counters of a :class:`Commands` object.

    Attributes:
        received: Requests accepted into the buffer.
        dropped: Requests dropped because the buffer was full.
        duplicates: Redelivered requests of an execution already received (ignored).
        malformed: Requests that could not be parsed (logged).
        succeeded: Executions the dispatcher reported SUCCEEDED.
        failed: ... FAILED.
        rejected: ... REJECTED (unknown or not allowed commands, bad payloads, handlers).
        timed_out: ... TIMED_OUT (handler exceeded its timeout).
        report_failures: Status reports that were refused or not acknowledged.
        buffered: Requests waiting now.
        max_buffer: Buffer capacity.
    """

    received: int
    dropped: int
    duplicates: int
    malformed: int
    succeeded: int
    failed: int
    rejected: int
    timed_out: int
    report_failures: int
    buffered: int
    max_buffer: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    handler: CommandHandler
    timeout_s: float


class Commands:
    """Commands for one device, over AWS IoT Commands and/or the simple ``cmd/`` scheme.

    Args:
        device: A :class:`~device_sdk.DeviceClient` (entered before this object).
        aws: Subscribe to the AWS IoT Commands request streams of the thing.
        simple: Subscribe to ``<simple_prefix>/<thing>/request/+``.
        simple_prefix: Topic prefix of the simple scheme.
        formats: Which AWS request streams to subscribe to (JSON, CBOR, generic; all three
            by default, like AWS's reference clients).
        allow: Allow-list of command names; ``None`` allows every registered handler.
            Anything not registered, or registered but not allowed, is REJECTED.
        name_field: JSON field of an AWS command payload holding the command name.
        handler_timeout_s: Default time a handler may run (also capped by the execution's
            remaining time when the transport reports it); then TIMED_OUT is reported.
        report_in_progress: Report IN_PROGRESS (AWS) before running a handler.
        wait_for_reply: Wait for the service's accepted/rejected reply to each AWS status
            report (subscribes to the reply topics); ``report`` then raises on rejection.
            See :attr:`confirms_reports` for when the reply topics cannot be subscribed.
        reply_timeout_s: How long to wait for that reply.
        max_buffer: Inbound requests buffered at most.
        max_concurrency: Handlers :meth:`serve` runs at the same time.
        logger: Logger (defaults to this module's).
    """

    def __init__(
        self,
        device: DeviceClient,
        *,
        aws: bool = True,
        simple: bool = True,
        simple_prefix: str = "cmd",
        formats: Collection[PayloadFormat] = (
            PayloadFormat.JSON,
            PayloadFormat.CBOR,
            PayloadFormat.GENERIC,
        ),
        allow: Collection[str] | None = None,
        name_field: str = "name",
        handler_timeout_s: float = 30.0,
        report_in_progress: bool = True,
        wait_for_reply: bool = True,
        reply_timeout_s: float = 10.0,
        max_buffer: int = 100,
        max_concurrency: int = 4,
        logger: logging.Logger | None = None,
    ) -> None:
        if not aws and not simple:
            raise ValueError("enable at least one of aws and simple")
        if max_buffer < 1 or max_concurrency < 1:
            raise ValueError("max_buffer and max_concurrency must be positive")
        if handler_timeout_s <= 0 or reply_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self._device = device
        self._thing = device.thing_name
        self._aws_topics = command_topics(self._thing)
        self._simple_topics = simple_command_topics(self._thing, simple_prefix)
        self._aws = aws
        self._simple = simple
        self._formats = tuple(dict.fromkeys(PayloadFormat(f) for f in formats))
        if aws and not self._formats:
            raise ValueError("formats must not be empty")
        self._allow = frozenset(allow) if allow is not None else None
        self._name_field = name_field
        self._default_timeout = handler_timeout_s
        self._report_in_progress = report_in_progress
        self._wait_for_reply = wait_for_reply
        self._confirm = False
        self._reply_timeout = reply_timeout_s
        self._max_buffer = max_buffer
        self._max_concurrency = max_concurrency
        self._log = logger or _log
        self._name = f"device_sdk[{self._thing}].commands"
        self._handlers: dict[str, _Entry] = {}
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._request_readers = 0
        self._replies: dict[str, asyncio.Future[tuple[bool, dict[str, Any]]]] = {}
        self._report_locks: dict[str, asyncio.Lock] = {}
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._counters = dict.fromkeys(
            (
                "received",
                "dropped",
                "duplicates",
                "malformed",
                "succeeded",
                "failed",
                "rejected",
                "timed_out",
                "report_failures",
            ),
            0,
        )

    # -- registry ---------------------------------------------------------------------------

    def register(
        self, name: str, handler: CommandHandler, *, timeout_s: float | None = None
    ) -> None:
        """Run ``handler`` for command ``name`` (replacing an earlier registration).

        Raises:
            ValueError: ``name`` is empty or contains ``/``, ``+``, ``#``; or bad timeout.
        """
        if not name or any(c in name for c in "/+#"):
            raise ValueError(f"invalid command name {name!r}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._handlers[name] = _Entry(handler, timeout_s or self._default_timeout)

    def unregister(self, name: str) -> None:
        """Forget the handler of ``name`` (later requests for it are REJECTED)."""
        self._handlers.pop(name, None)

    @property
    def handler_names(self) -> frozenset[str]:
        """Names with a registered handler."""
        return frozenset(self._handlers)

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Subscribe to the request (and reply) topics and start the readers."""
        if self._stack is not None:
            raise RuntimeError("Commands is already entered")
        self._queue = asyncio.Queue()
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            subs: list[tuple[Subscription, str]] = []
            if self._aws:
                for fmt in self._formats:
                    flt = self._aws_topics.request_filter(fmt)
                    subs.append((await self._subscribe(stack, flt), "aws_requests"))
                self._confirm = self._wait_for_reply
                if self._confirm:
                    replies = await self._subscribe_replies(stack)
                    subs += [(sub, "aws_replies") for sub in replies]
            if self._simple:
                flt = self._simple_topics.request_filter
                subs.append((await self._subscribe(stack, flt), "simple_requests"))
            tg = asyncio.TaskGroup()
            await tg.__aenter__()
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._tg = stack, tg
        self._request_readers = sum(1 for _, kind in subs if kind.endswith("_requests"))
        for sub, kind in subs:
            self._readers.append(
                tg.create_task(self._reader(kind, sub), name=f"{self._name}.{kind}")
            )
        return self

    async def _reader(self, kind: str, sub: Subscription) -> None:
        """Run one reader; when the last request reader ends, end :meth:`executions`."""
        try:
            if kind == "aws_requests":
                await self._read_aws_requests(sub)
            elif kind == "aws_replies":
                await self._read_aws_replies(sub)
            else:
                await self._read_simple_requests(sub)
        except DeviceSdkError as exc:
            self._log.error("%s: subscription %r ended: %s", self._name, sub.topic_filter, exc)
        finally:
            if kind.endswith("_requests"):
                self._request_readers -= 1
                if self._request_readers == 0:
                    self._queue.put_nowait(_CLOSED)

    async def _subscribe_replies(self, stack: contextlib.AsyncExitStack) -> list[Subscription]:
        """Subscribe to the accepted/rejected replies, or give up on confirming reports.

        First AWS's reply filters (``…/+/response/accepted/json``, 9 levels). Where those are
        refused (the client's limits or the broker allow 8 levels only, as IoT Core does for
        customer topics), the suffix-less ``…/+/response/accepted`` variants, on which a
        broker that enforces 8 levels everywhere (this project's stub) answers. Where both
        are refused, reports are sent unconfirmed (:attr:`confirms_reports` is False).
        """
        problem: DeviceSdkError | None = None
        for fmt in ("json", None):
            inner = contextlib.AsyncExitStack()
            try:
                subs = [
                    await self._subscribe(inner, f) for f in self._aws_topics.reply_filters(fmt)
                ]
            except (LimitExceededError, AuthorizationError, NegativeAckError) as exc:
                await inner.aclose()
                problem = exc
                continue
            stack.push_async_exit(inner)
            return subs
        self._confirm = False
        self._log.warning("%s: status reports will not be confirmed: %s", self._name, problem)
        return []

    @property
    def confirms_reports(self) -> bool:
        """Whether :meth:`report` waits for the service's accepted/rejected reply (AWS)."""
        return self._confirm

    async def _subscribe(self, stack: contextlib.AsyncExitStack, flt: str) -> Subscription:
        sub = self._device.subscribe(flt, max_buffer=self._max_buffer)
        return await stack.enter_async_context(sub)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the readers, fail waiting reports, unsubscribe."""
        for task in self._readers:
            task.cancel()
        self._readers.clear()
        tg, self._tg = self._tg, None
        stack, self._stack = self._stack, None
        try:
            if tg is not None:
                await tg.__aexit__(None, None, None)
        finally:
            if self._request_readers:
                self._queue.put_nowait(_CLOSED)
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(ClosedError("Commands closed"))
                    fut.exception()
            self._replies.clear()
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)

    # -- inbound ----------------------------------------------------------------------------

    def _first_time(self, execution_id: str) -> bool:
        """AWS execution ids are unique: a second delivery is a QoS 1 redelivery."""
        key = execution_id
        if key in self._seen:
            self._counters["duplicates"] += 1
            return False
        self._seen[key] = None
        if len(self._seen) > _SEEN_IDS:
            self._seen.popitem(last=False)
        return True

    def _enqueue(self, execution: CommandExecution) -> None:
        if self._queue.qsize() >= self._max_buffer:
            self._counters["dropped"] += 1
            self._log.warning(
                "%s: buffer full, dropped %s command %s",
                self._name,
                execution.scheme,
                execution.execution_id,
            )
            return
        self._counters["received"] += 1
        self._queue.put_nowait(execution)

    async def _read_aws_requests(self, sub: Subscription) -> None:
        async for message in sub:
            execution = parse_aws_request(message, self._thing)
            if execution is None:
                self._counters["malformed"] += 1
                self._log.warning("%s: ignoring message on %s", self._name, message.topic)
                continue
            if self._first_time(execution.execution_id):
                self._enqueue(execution)

    async def _read_aws_replies(self, sub: Subscription) -> None:
        async for message in sub:
            parsed = parse_command_topic(message.topic)
            rest = parsed.rest if parsed is not None else ()
            if parsed is None or len(rest) not in (2, 3) or rest[1] not in _VERDICTS:
                continue
            try:
                body = json.loads(message.payload)
            except (ValueError, UnicodeDecodeError):
                body = {}
            if not isinstance(body, dict):
                body = {}
            fut = self._replies.get(parsed.execution_id)
            if fut is not None and not fut.done():
                fut.set_result((rest[1] == "accepted", body))

    async def _read_simple_requests(self, sub: Subscription) -> None:
        async for message in sub:
            name = self._simple_topics.command_name(message.topic)
            if name is None:
                continue
            execution, cid, problem = parse_simple_request(message.topic, name, message.payload)
            if execution is None:
                self._counters["malformed"] += 1
                self._log.warning(
                    "%s: malformed request on %s: %s", self._name, message.topic, problem
                )
                if cid is not None:
                    try:
                        await self._send_simple(
                            name,
                            cid,
                            CommandStatus.REJECTED,
                            str(ReasonCode.INVALID_PAYLOAD),
                            problem,
                        )
                    except (DeviceSdkError, TimeoutError) as exc:
                        self._counters["report_failures"] += 1
                        self._log.warning("%s: cannot answer %s: %s", self._name, cid, exc)
                continue
            self._enqueue(execution)

    async def executions(self) -> AsyncIterator[CommandExecution]:
        """Commands as they arrive (both schemes), until this object closes.

        Use either this or :meth:`serve`, not both: they share one buffer.
        """
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                self._queue.put_nowait(_CLOSED)  # wake other iterators too
                return
            yield item

    # -- outbound ---------------------------------------------------------------------------

    async def report(
        self,
        execution: CommandExecution,
        status: CommandStatus,
        *,
        reason_code: str | None = None,
        reason_description: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        """Report an execution's status (AWS: UpdateCommandExecution; simple: the response).

        AWS: with ``wait_for_reply`` (default) this returns once the service accepted the
        update; updates of one execution are serialized, as the service expects.

        Raises:
            ValueError: ``reason_code`` is not ``[A-Z0-9_-]{1,64}``, or a bad ``result``.
            RejectedError: The service refused the update (``code`` is its ``error`` string,
                e.g. ``"TerminalStateReached"``).
            RequestTimeoutError: No accepted/rejected reply in time.
            DeviceSdkError: The publish failed (connection lost, refused).
        """
        if execution.scheme is CommandScheme.SIMPLE:
            await self._send_simple(
                execution.name or "",
                execution.execution_id,
                status,
                reason_code,
                reason_description,
                result,
            )
            return
        body = aws_response_body(
            status, reason_code=reason_code, reason_description=reason_description, result=result
        )
        ex = execution.execution_id
        topic = self._aws_topics.response(ex)
        if not self._confirm:
            await self._device.send_now(topic, body, 1)
            return
        lock = self._report_locks.setdefault(ex, asyncio.Lock())
        async with lock:
            fut: asyncio.Future[tuple[bool, dict[str, Any]]]
            fut = asyncio.get_running_loop().create_future()
            self._replies[ex] = fut
            try:
                async with asyncio.timeout(self._reply_timeout):
                    await self._device.send_now(topic, body, 1, wait_s=self._reply_timeout)
                    accepted, reply = await fut
            except TimeoutError as exc:
                raise RequestTimeoutError(
                    f"no reply to the {status} update of execution {ex} "
                    f"within {self._reply_timeout:g} s",
                    timeout=self._reply_timeout,
                ) from exc
            finally:
                if self._replies.get(ex) is fut:
                    del self._replies[ex]
            if status is not CommandStatus.IN_PROGRESS:
                self._report_locks.pop(ex, None)
        if not accepted:
            raise RejectedError(
                str(reply.get("error", "unknown")), str(reply.get("errorMessage", ""))
            )

    async def _send_simple(
        self,
        name: str,
        correlation_id: str | None,
        status: CommandStatus,
        reason_code: str | None,
        reason_description: str | None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        payload = simple_response_body(
            correlation_id,
            status,
            reason_code=reason_code,
            reason_description=reason_description,
            result=result,
        )
        await self._device.send_now(self._simple_topics.response(name), payload, 1)

    async def _report_quietly(
        self,
        execution: CommandExecution,
        status: CommandStatus,
        reason_code: str | None = None,
        reason_description: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> bool:
        try:
            await self.report(
                execution,
                status,
                reason_code=reason_code,
                reason_description=reason_description,
                result=result,
            )
        except (DeviceSdkError, TimeoutError) as exc:
            self._counters["report_failures"] += 1
            self._log.warning(
                "%s: %s report for %s failed: %s", self._name, status, execution.execution_id, exc
            )
            return False
        return True

    # -- dispatch ---------------------------------------------------------------------------

    async def dispatch(self, execution: CommandExecution) -> CommandStatus:
        """Run the registered handler for one execution and report the outcome.

        Unknown, not allowed or malformed commands are REJECTED with a reason code
        (:class:`~device_sdk.commands.ReasonCode`). Report failures are logged, not raised.

        Returns:
            The final status reported.
        """
        decision = decide(
            execution,
            handlers=self._handlers.keys(),
            allow=self._allow,
            name_field=self._name_field,
        )
        if decision.name is None or decision.reject_code is not None:
            self._log.info(
                "%s: rejecting %s: %s",
                self._name,
                execution.execution_id,
                decision.reject_description,
            )
            return await self._finish(
                execution,
                CommandStatus.REJECTED,
                decision.reject_code,
                decision.reject_description,
            )
        entry = self._handlers[decision.name]
        if self._report_in_progress and execution.scheme is CommandScheme.AWS:
            await self._report_quietly(execution, CommandStatus.IN_PROGRESS)
        timeout = entry.timeout_s
        if execution.timeout is not None:
            timeout = max(0.001, min(timeout, float(execution.timeout)))
        request = CommandRequest(decision.name, decision.args, execution)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                result = await entry.handler(request)
        except TimeoutError:
            if not deadline.expired():
                raise
            return await self._finish(
                execution,
                CommandStatus.TIMED_OUT,
                str(ReasonCode.HANDLER_TIMEOUT),
                f"handler {decision.name!r} did not finish within {timeout:g} s",
            )
        except CommandRejectedError as exc:
            return await self._finish(
                execution, CommandStatus.REJECTED, exc.reason_code, exc.description
            )
        except CommandFailedError as exc:
            return await self._finish(
                execution, CommandStatus.FAILED, exc.reason_code, exc.description
            )
        except Exception as exc:  # noqa: BLE001 - a handler bug is reported, not fatal
            self._log.exception("%s: handler %r failed", self._name, decision.name)
            return await self._finish(
                execution,
                CommandStatus.FAILED,
                str(ReasonCode.HANDLER_ERROR),
                f"{type(exc).__name__}: {exc}",
            )
        return await self._finish(execution, CommandStatus.SUCCEEDED, result=result)

    async def _finish(
        self,
        execution: CommandExecution,
        status: CommandStatus,
        reason_code: str | None = None,
        reason_description: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> CommandStatus:
        try:
            ok = await self._report_quietly(
                execution, status, reason_code, reason_description, result
            )
        except (ValueError, TypeError) as exc:  # the handler returned an unusable result
            self._log.warning(
                "%s: result of %s is invalid: %s", self._name, execution.execution_id, exc
            )
            status = CommandStatus.FAILED
            ok = await self._report_quietly(
                execution, status, str(ReasonCode.INVALID_RESULT), str(exc)
            )
        if ok:
            self._counters[_STATUS_COUNTERS[status]] += 1
        return status

    async def serve(self) -> None:
        """Dispatch every incoming command until cancelled (or the client fails for good).

        Handlers run concurrently (at most ``max_concurrency``) in a task group owned by
        this call; leaving it (cancellation) cancels running handlers.
        """
        if self._stack is None:
            raise ClosedError("use 'async with Commands(device)' before serve()")
        slots = asyncio.Semaphore(self._max_concurrency)
        async with asyncio.TaskGroup() as tg:
            async for execution in self.executions():
                await slots.acquire()
                tg.create_task(
                    self._dispatch_one(execution, slots),
                    name=f"{self._name}.handler[{execution.execution_id}]",
                )

    async def _dispatch_one(self, execution: CommandExecution, slots: asyncio.Semaphore) -> None:
        try:
            await self.dispatch(execution)
        finally:
            slots.release()

    # -- introspection ----------------------------------------------------------------------

    def statistics(self) -> CommandsStatistics:
        """A snapshot of the counters."""
        c = self._counters
        return CommandsStatistics(
            received=c["received"],
            dropped=c["dropped"],
            duplicates=c["duplicates"],
            malformed=c["malformed"],
            succeeded=c["succeeded"],
            failed=c["failed"],
            rejected=c["rejected"],
            timed_out=c["timed_out"],
            report_failures=c["report_failures"],
            buffered=self._queue.qsize(),
            max_buffer=self._max_buffer,
        )
