"""Property-based tests of the jobs engine: a stateful model and a bounded fuzz."""

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cloud_stubs.jobs import (
    ExecutionStatus,
    FailureType,
    InvalidStateTransitionError,
    JobsOutcome,
    JobsState,
    JobStatus,
    MessageKind,
    RetryConfig,
    RetryCriteria,
    TimeoutConfig,
    cancel_job,
    cancel_job_execution,
    create_job,
    handle_jobs_request,
    parse_jobs_topic,
    tick,
)

THINGS = ["A", "B"]
# Mostly the statuses a device may set, sometimes the others (rejected with InvalidRequest).
STATUS_TEXT = st.one_of(
    st.sampled_from(["IN_PROGRESS", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"]),
    st.sampled_from([s.value for s in ExecutionStatus] + ["BOGUS"]),
)
Key = tuple[str, int]


def independent_pending(state: JobsState, thing: str) -> list[Key]:
    """The pending list recomputed from scratch (IN_PROGRESS first, then queue order)."""
    rows = []
    for found in state.executions.get(thing, {}).values():
        for execution in found:
            if execution.status in {ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS}:
                rows.append(
                    (
                        execution.status != ExecutionStatus.IN_PROGRESS,
                        execution.queued_at,
                        execution.sequence,
                        (execution.job_id, execution.execution_number),
                    )
                )
    return [row[-1] for row in sorted(rows)]


class JobsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = JobsState()
        self.now = 1_700_000_000
        self.jobs: list[str] = []
        self.final: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.last_notify: dict[str, set[Key]] = {}
        self.last_next: dict[str, Key | None] = {}

    # ---------------------------------------------------------------- helpers

    def record(self, outcome: JobsOutcome) -> JobsOutcome:
        kinds = [m.kind for m in outcome.messages]
        assert kinds == sorted(
            kinds, key=[MessageKind.RESPONSE, MessageKind.NOTIFICATION, MessageKind.EVENT].index
        )
        for message in outcome.messages:
            json.dumps(message.payload, allow_nan=False)
            assert message.payload["timestamp"] == self.now
            parts = message.topic.split("/")
            if message.kind is not MessageKind.NOTIFICATION:
                continue
            thing = parts[2]
            if parts[-1] == "notify":
                jobs = message.payload["jobs"]
                assert set(jobs) <= {"IN_PROGRESS", "QUEUED"}
                self.last_notify[thing] = {
                    (s["jobId"], s["executionNumber"]) for group in jobs.values() for s in group
                }
            else:
                assert parts[-1] == "notify-next"
                execution = message.payload.get("execution")
                self.last_next[thing] = (
                    (execution["jobId"], execution["executionNumber"]) if execution else None
                )
        return outcome

    def device(self, thing: str, suffix: str, body: dict[str, Any]) -> JobsOutcome:
        parsed = parse_jobs_topic(f"$aws/things/{thing}/jobs/{suffix}")
        assert parsed is not None
        before = self.state.to_json()
        outcome = self.record(
            handle_jobs_request(self.state, parsed, json.dumps(body).encode(), self.now)
        )
        first = outcome.messages[0]
        assert first.kind is MessageKind.RESPONSE
        assert first.topic.endswith("/accepted") == outcome.accepted
        if body.get("clientToken") is not None:
            assert first.payload["clientToken"] == body["clientToken"]
        if not outcome.accepted:
            assert len(outcome.messages) == 1
            assert self.state.to_json() == before
        return outcome

    # ---------------------------------------------------------------- rules

    @initialize()
    def two_jobs(self) -> None:
        """Start with two pending jobs on A, so head changes are reachable quickly."""
        self.create(["A", "B"], None, 0)
        self.create(["A"], None, 0)

    @precondition(lambda self: len(self.jobs) < 5)
    @rule(
        things=st.lists(st.sampled_from(THINGS), min_size=1, max_size=3),
        timeout=st.none() | st.integers(1, 3),
        retries=st.integers(0, 2),
    )
    def create(self, things: list[str], timeout: int | None, retries: int) -> None:
        job_id = f"j{len(self.jobs)}"
        self.jobs.append(job_id)
        self.record(
            create_job(
                self.state,
                job_id,
                targets=things,
                document={"n": len(self.jobs)},
                now=self.now,
                timeout_config=TimeoutConfig(timeout) if timeout else None,
                retry_config=(
                    RetryConfig((RetryCriteria(FailureType.FAILED, retries),)) if retries else None
                ),
            )
        )

    @rule(thing=st.sampled_from(THINGS), step=st.none() | st.integers(1, 3))
    def start_next(self, thing: str, step: int | None) -> None:
        pending = independent_pending(self.state, thing)
        body: dict[str, Any] = {"clientToken": "s"}
        if step is not None:
            body["stepTimeoutInMinutes"] = step
        outcome = self.device(thing, "start-next", body)
        execution: dict[str, Any] | None = outcome.messages[0].payload.get("execution")
        if not pending:
            assert execution is None
            return
        assert execution is not None
        assert (execution["jobId"], execution["executionNumber"]) == pending[0]
        assert execution["status"] == "IN_PROGRESS"

    @precondition(lambda self: bool(self.jobs))
    @rule(
        data=st.data(),
        thing=st.sampled_from(THINGS),
        status=STATUS_TEXT,
        version=st.sampled_from(["none", "right", "wrong"]),
        step=st.none() | st.sampled_from([-1, 1, 2]),
    )
    def update(
        self, data: st.DataObject, thing: str, status: str, version: str, step: int | None
    ) -> None:
        job_id = data.draw(st.sampled_from(self.jobs))
        latest = self.state.latest(job_id, thing)
        before = (latest.status, latest.version_number) if latest else None
        body: dict[str, Any] = {"status": status, "includeJobExecutionState": True}
        if latest is not None and version != "none":
            offset = 0 if version == "right" else 1
            body["expectedVersion"] = latest.version_number + offset
        if step is not None:
            body["stepTimeoutInMinutes"] = step
        outcome = self.device(thing, f"{job_id}/update", body)
        response = outcome.messages[0].payload
        if outcome.accepted:
            assert latest is not None
            assert before is not None
            assert not before[0].is_terminal
            assert latest.version_number == before[1] + 1
            assert response["executionState"]["versionNumber"] == before[1] + 1
            assert latest.status.value == status
        else:
            expected = "InvalidRequest"
            if status in {"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"}:
                if latest is None:
                    expected = "ResourceNotFound"
                elif latest.status.is_terminal:
                    expected = "InvalidStateTransition"
                else:
                    expected = "VersionMismatch"
            assert response["code"] == expected

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), thing=st.sampled_from(THINGS))
    def describe(self, data: st.DataObject, thing: str) -> None:
        job_id = data.draw(st.sampled_from([*self.jobs, "$next"]))
        outcome = self.device(thing, f"{job_id}/get", {})
        assert not outcome.changed
        if job_id == "$next":
            pending = independent_pending(self.state, thing)
            execution = outcome.messages[0].payload.get("execution")
            assert (execution is None) == (not pending)
        else:
            assert outcome.accepted == (self.state.latest(job_id, thing) is not None)

    @rule(thing=st.sampled_from(THINGS))
    def get_pending(self, thing: str) -> None:
        body = self.device(thing, "get", {}).messages[0].payload
        listed = [(s["jobId"], s["executionNumber"]) for s in body["inProgressJobs"]]
        listed += [(s["jobId"], s["executionNumber"]) for s in body["queuedJobs"]]
        assert listed == independent_pending(self.state, thing)

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), force=st.booleans())
    def cancel(self, data: st.DataObject, force: bool) -> None:
        job_id = data.draw(st.sampled_from(self.jobs))
        try:
            self.record(cancel_job(self.state, job_id, now=self.now, force=force))
        except InvalidStateTransitionError:
            assert self.state.jobs[job_id].status is JobStatus.COMPLETED

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), thing=st.sampled_from(THINGS), force=st.booleans())
    def cancel_execution(self, data: st.DataObject, thing: str, force: bool) -> None:
        job_id = data.draw(st.sampled_from(self.jobs))
        latest = self.state.latest(job_id, thing)
        try:
            self.record(cancel_job_execution(self.state, job_id, thing, now=self.now, force=force))
        except InvalidStateTransitionError:
            assert latest is not None
            assert latest.status.is_terminal or (
                latest.status is ExecutionStatus.IN_PROGRESS and not force
            )
        except Exception:  # noqa: BLE001 - only "not found" is acceptable here
            assert latest is None
        else:
            assert latest is not None
            assert latest.status is ExecutionStatus.CANCELED

    @rule(seconds=st.integers(0, 200))
    def advance(self, seconds: int) -> None:
        self.now += seconds
        self.record(tick(self.state, self.now))

    # ---------------------------------------------------------------- invariants

    @invariant()
    def terminal_executions_never_change(self) -> None:
        for by_job in self.state.executions.values():
            for found in by_job.values():
                assert all(e.status.is_terminal for e in found[:-1])
                for execution in found:
                    key = (execution.job_id, execution.thing_name, execution.execution_number)
                    if key in self.final:
                        assert execution.to_dict() == self.final[key]
                    elif execution.status.is_terminal:
                        self.final[key] = execution.to_dict()

    @invariant()
    def notifications_match_pending_lists(self) -> None:
        for thing in THINGS:
            pending = independent_pending(self.state, thing)
            assert self.last_notify.get(thing, set()) == set(pending)
            assert self.last_next.get(thing) == (pending[0] if pending else None)

    @invariant()
    def counts_and_job_status_are_consistent(self) -> None:
        for job_id, job in self.state.jobs.items():
            latest = [self.state.latest(job_id, t) for t in job.targets]
            statuses = [e.status for e in latest if e is not None]
            expected = {s: statuses.count(s) for s in set(statuses)}
            assert self.state.latest_counts(job_id) == expected
            if job.status is JobStatus.IN_PROGRESS:
                assert any(not s.is_terminal for s in statuses) or job.unreleased
            if job.status is JobStatus.COMPLETED:
                assert all(s.is_terminal for s in statuses)

    @invariant()
    def state_round_trips(self) -> None:
        text = self.state.to_json()
        loaded = JobsState.from_json(text)
        assert loaded.to_json() == text
        for job_id in self.state.jobs:
            assert loaded.outcome_counts(job_id) == self.state.outcome_counts(job_id)


JobsMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestJobsMachine = JobsMachine.TestCase


# --------------------------------------------------------------------------- fuzz

JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
FIELDS = st.sampled_from(
    [
        "status",
        "statusDetails",
        "expectedVersion",
        "executionNumber",
        "includeJobExecutionState",
        "includeJobDocument",
        "stepTimeoutInMinutes",
        "clientToken",
    ]
)
PAYLOADS = st.one_of(
    st.binary(max_size=64),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(FIELDS, JSONISH, max_size=4).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"status": st.sampled_from(["IN_PROGRESS", "SUCCEEDED", "FAILED"])},
        optional={
            "statusDetails": JSONISH,
            "stepTimeoutInMinutes": JSONISH,
            "expectedVersion": JSONISH,
        },
    ).map(lambda v: json.dumps(v).encode()),
)
SUFFIXES = st.sampled_from(
    ["get", "start-next", "j1/get", "j1/update", "$next/get", "nope/update", "x", "j1/x/y"]
)


def fresh_state() -> JobsState:
    state = JobsState()
    create_job(
        state, "j1", targets=["T"], document={"a": 1}, now=1, timeout_config=TimeoutConfig(1)
    )
    create_job(state, "j2", targets=["T"], document={"b": 2}, now=2)
    return state


@settings(max_examples=300, deadline=None)
@given(suffix=SUFFIXES, payload=PAYLOADS, started=st.booleans())
def test_fuzz_never_raises(suffix: str, payload: bytes, started: bool) -> None:
    state = fresh_state()
    if started:
        parsed = parse_jobs_topic("$aws/things/T/jobs/start-next")
        assert parsed is not None
        handle_jobs_request(state, parsed, b"", 3)
    parsed = parse_jobs_topic(f"$aws/things/T/jobs/{suffix}")
    assert parsed is not None
    outcome = handle_jobs_request(state, parsed, payload, 10)
    responses = [m for m in outcome.messages if m.kind is MessageKind.RESPONSE]
    assert len(responses) == 1
    assert outcome.messages[0] is responses[0]
    assert responses[0].topic in {f"{parsed.topic}/accepted", f"{parsed.topic}/rejected"}
    assert outcome.accepted == responses[0].topic.endswith("/accepted")
    for message in outcome.messages:
        json.dumps(message.payload, allow_nan=False)
    if not outcome.accepted:
        assert isinstance(responses[0].payload["code"], str)
    JobsState.from_json(state.to_json())


def test_fuzz_pathological_payloads() -> None:
    cases = [
        b"[" * 100_000,
        b'{"status":' * 50_000,
        b'{"status":"SUCCEEDED","statusDetails":{"k":"' + b"x" * 100_000 + b'"}}',
        b'{"status":"IN_PROGRESS","expectedVersion":' + b"9" * 5000 + b"}",
        b'{"status":"IN_PROGRESS","expectedVersion":"' + b"9" * 5000 + b'"}',
        b'{"status":"IN_PROGRESS","stepTimeoutInMinutes":1e999}',
        b'{"status":"IN_PROGRESS","statusDetails":{"k":"\\ud800"}}',
        b'{"clientToken":"\\udc00"}',
        b"\xef\xbb\xbf{}",
        b"\x00",
    ]
    for payload in cases:
        for suffix in ("get", "start-next", "j1/get", "j1/update", "bad"):
            state = fresh_state()
            parsed = parse_jobs_topic(f"$aws/things/T/jobs/{suffix}")
            assert parsed is not None
            outcome = handle_jobs_request(state, parsed, payload, 10)
            assert outcome.messages[0].kind is MessageKind.RESPONSE
            for message in outcome.messages:
                json.dumps(message.payload)
