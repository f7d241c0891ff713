"""Jobs service: MQTT shell over the pure jobs core, state persisted in SQLite.

Device requests arrive on ``$aws/things/+/jobs/...``. Operators (the CLI, tests, the OTA
deployment engine) use the control plane either in-process (:meth:`JobsService.control`) or over
MQTT with the stub's privileged identity on ``cloud-stubs/control/jobs/<op>`` (requests carry a
``clientToken``; replies go to ``cloud-stubs/control/jobs/<op>/reply``). Devices cannot reach the
control topics: the device policy grants nothing there.

State is the whole :class:`~cloud_stubs.jobs.JobsState` as JSON in ``DIR/jobs.sqlite``, written
at most 100 ms after any change and on shutdown, so a crash loses at most that window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from cloud_stubs._paths import StatePaths
from cloud_stubs._registry import Registry
from cloud_stubs.firmware import DocumentRenderer
from cloud_stubs.jobs import (
    AbortConfig,
    JobsError,
    JobsOutcome,
    JobsState,
    MessageKind,
    RetryConfig,
    RolloutConfig,
    TargetSelection,
    TimeoutConfig,
    cancel_job,
    cancel_job_execution,
    create_job,
    delete_job,
    describe_job,
    describe_job_execution,
    handle_jobs_request,
    list_job_executions_for_job,
    list_job_executions_for_thing,
    list_jobs,
    next_deadline,
    parse_jobs_topic,
    tick,
)
from cloud_stubs.services._runtime import Outgoing, Request

__all__ = ["CONTROL_PREFIX", "JobsService", "JobsStore", "run_control"]

_log = logging.getLogger(__name__)

CONTROL_PREFIX = "cloud-stubs/control/jobs"
_FLUSH_DELAY = 0.1


class JobsStore:
    """The jobs state as one JSON document in ``DIR/jobs.sqlite``."""

    def __init__(self, paths: StatePaths) -> None:
        """Open (create) the database."""
        paths.root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(paths.root / "jobs.sqlite", timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY, doc TEXT)")

    def load(self) -> JobsState:
        """The stored state (empty on first use)."""
        row = self._db.execute("SELECT doc FROM state WHERE id = 1").fetchone()
        return JobsState.from_json(row[0]) if row else JobsState()

    def save(self, state: JobsState) -> None:
        """Persist the state."""
        self._db.execute("INSERT OR REPLACE INTO state(id, doc) VALUES (1, ?)", (state.to_json(),))

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def _outgoing(
    outcome: JobsOutcome,
    requester: str | None,
    render: DocumentRenderer | None = None,
    now: float = 0.0,
) -> list[Outgoing]:
    out = []
    for m in outcome.messages:
        body = m.payload
        if render is not None and m.kind is not MessageKind.EVENT:
            body = render(m.topic, body, now)  # presigned-URL placeholders -> fresh URLs
        payload = json.dumps(body, separators=(",", ":")).encode()
        deliver_to = requester if m.kind is MessageKind.RESPONSE else None
        out.append(Outgoing(m.topic, payload, deliver_to=deliver_to))
    return out


def run_control(
    state: JobsState, registry: Registry, op: str, args: dict[str, Any], now: int
) -> tuple[Any, JobsOutcome | None]:
    """Apply one control-plane operation; return (result, outcome with messages or None).

    Raises :class:`~cloud_stubs.jobs.JobsError` (or ``KeyError``/``ValueError`` for bad args).
    """
    if "__not_an_object__" in args:
        raise TypeError("request must be a JSON object")
    if op == "create":
        things = list(args.get("things") or [])
        for group in args.get("groups") or []:
            things += registry.group_members(group)
        outcome = create_job(
            state,
            args["job_id"],
            targets=things,
            document=args["document"],
            now=now,
            description=args.get("description"),
            target_selection=TargetSelection(args.get("target_selection", "SNAPSHOT")),
            timeout_config=TimeoutConfig.from_api(args["timeout"]) if args.get("timeout") else None,
            rollout_config=RolloutConfig.from_api(args["rollout"]) if args.get("rollout") else None,
            abort_config=AbortConfig.from_api(args["abort"]) if args.get("abort") else None,
            retry_config=RetryConfig.from_api(args["retry"]) if args.get("retry") else None,
        )
        return describe_job(state, args["job_id"]), outcome
    if op == "cancel":
        outcome = cancel_job(
            state,
            args["job_id"],
            now=now,
            force=bool(args.get("force")),
            reason_code=args.get("reason_code"),
            comment=args.get("comment"),
        )
        return describe_job(state, args["job_id"]), outcome
    if op == "cancel-execution":
        outcome = cancel_job_execution(
            state, args["job_id"], args["thing"], now=now, force=bool(args.get("force"))
        )
        return {"cancelled": True}, outcome
    if op == "delete":
        outcome = delete_job(state, args["job_id"], now=now, force=bool(args.get("force")))
        return {"deleted": args["job_id"]}, outcome
    if op == "describe":
        return describe_job(state, args["job_id"]), None
    if op == "list":
        return list_jobs(state), None
    if op == "list-executions":
        if args.get("thing"):
            return list_job_executions_for_thing(state, args["thing"], now=now), None
        return list_job_executions_for_job(state, args["job_id"], now=now), None
    if op == "describe-execution":
        return describe_job_execution(state, args["job_id"], args["thing"], now=now), None
    raise ValueError(f"unknown jobs control operation {op!r}")


class JobsService:
    """The Jobs device API, timers and control plane for every thing."""

    name = "jobs"

    def __init__(self, paths: StatePaths, *, clock: Callable[[], float] = time.time) -> None:
        """Load the persisted state."""
        self._store = JobsStore(paths)
        self._registry = Registry(paths)
        self.state = self._store.load()
        self._clock = clock
        self._flush_handle: asyncio.TimerHandle | None = None
        self._render = DocumentRenderer(paths)

    @property
    def filters(self) -> Sequence[str]:
        """Device request topics and the control topics."""
        return ("$aws/things/+/jobs/#", f"{CONTROL_PREFIX}/+")

    def accepts(self, topic: str) -> bool:
        """Jobs request topics (not our own responses and notifications), control topics."""
        if topic.startswith(CONTROL_PREFIX + "/"):
            return topic.count("/") == CONTROL_PREFIX.count("/") + 1
        if not topic.startswith("$aws/things/"):
            return False
        if parse_jobs_topic(topic) is not None:
            return True
        # Unknown topics under .../jobs/ are answered InvalidTopic by the core, but never
        # our own outputs (responses, notifications) that the wildcard also matches.
        return (
            "/jobs/" in topic
            and not topic.endswith(("/accepted", "/rejected", "/notify", "/notify-next"))
            and "/notify-namespace-" not in topic
        )

    def close(self) -> None:
        """Flush and close."""
        self._flush()
        self._store.close()
        self._registry.close()

    def _changed(self) -> None:
        if self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._flush()
                return
            self._flush_handle = loop.call_later(_FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._store.save(self.state)

    async def handle(self, request: Request) -> list[Outgoing]:
        """A device jobs request or a control request."""
        now = int(self._clock())
        if request.topic.startswith(CONTROL_PREFIX + "/"):
            return self._control_request(request, now)
        parsed = parse_jobs_topic(request.topic)
        if parsed is None:
            from cloud_stubs.jobs import reject_invalid_topic  # noqa: PLC0415

            outcome = reject_invalid_topic(request.topic, request.payload, now)
        else:
            outcome = handle_jobs_request(self.state, parsed, request.payload, now)
        if outcome.changed:
            self._changed()
        return _outgoing(outcome, request.client_id, self._render, now)

    def control(self, op: str, args: dict[str, Any]) -> tuple[Any, list[Outgoing]]:
        """In-process control plane: (result, messages to publish)."""
        now = int(self._clock())
        result, outcome = run_control(self.state, self._registry, op, args, now)
        if outcome is None:
            return result, []
        if outcome.changed:
            self._changed()
        return result, _outgoing(outcome, None, self._render, now)

    def _control_request(self, request: Request, now: int) -> list[Outgoing]:  # noqa: ARG002
        op = request.topic.rsplit("/", 1)[1]
        reply_topic = f"{CONTROL_PREFIX}/{op}/reply"
        token = None
        try:
            body = json.loads(request.payload or b"{}")
            if not isinstance(body, dict):
                body = {"__not_an_object__": True}
            token = body.get("clientToken")
            result, msgs = self.control(op, body)
            reply: dict[str, Any] = {"ok": True, "result": result}
        except (JobsError, KeyError, ValueError, TypeError) as exc:
            msgs = []
            reply = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
        reply["clientToken"] = token
        return [Outgoing(reply_topic, json.dumps(reply).encode()), *msgs]

    async def tick(self, now: float) -> list[Outgoing]:
        """Run due timers (timeouts, retries, rollout windows, abort, completion)."""
        due = next_deadline(self.state)
        if due is None or due > now:
            return []
        outcome = tick(self.state, int(now))
        if outcome.changed:
            self._changed()
        return _outgoing(outcome, None, self._render, now)
