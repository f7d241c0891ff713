"""Jobs control plane: create, cancel, delete, continuous targets, persistence (spec §3.8)."""

import json
from typing import Any

import pytest

from cloud_stubs.jobs import (
    AbortConfig,
    AbortCriteria,
    ExecutionStatus,
    ExponentialRate,
    FailureType,
    InvalidRequestError,
    InvalidStateTransitionError,
    JobsOutcome,
    JobsState,
    JobStatus,
    MessageKind,
    ResourceAlreadyExistsError,
    ResourceNotFoundError,
    RetryConfig,
    RetryCriteria,
    RolloutConfig,
    TargetSelection,
    TimeoutConfig,
    VersionConflictError,
    add_thing_to_job,
    cancel_job,
    cancel_job_execution,
    create_job,
    delete_job,
    describe_job,
    describe_job_execution,
    get_job_document,
    handle_jobs_request,
    list_jobs,
    next_deadline,
    parse_jobs_topic,
    remove_thing_from_job,
    tick,
)

NOW = 1_700_000_000
DOC = {"op": "x"}


def device(state: JobsState, thing: str, suffix: str, body: Any = b"", now: int = NOW):
    parsed = parse_jobs_topic(f"$aws/things/{thing}/jobs/{suffix}")
    assert parsed is not None
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return handle_jobs_request(state, parsed, payload, now)


def status(state: JobsState, job_id: str, thing: str) -> ExecutionStatus | None:
    latest = state.latest(job_id, thing)
    return latest.status if latest else None


def job_status(state: JobsState, job_id: str = "j") -> JobStatus:
    return state.jobs[job_id].status


def notified_things(outcome: JobsOutcome, kind: str = "notify") -> list[str]:
    return [
        m.topic.split("/")[2]
        for m in outcome.messages
        if m.kind is MessageKind.NOTIFICATION and m.topic.endswith(f"/jobs/{kind}")
    ]


def event_topics(outcome: JobsOutcome) -> list[str]:
    return [m.topic for m in outcome.messages if m.kind is MessageKind.EVENT]


# --------------------------------------------------------------------------- create


def test_create_job_queues_every_target_once() -> None:
    state = JobsState()
    outcome = create_job(state, "j", targets=["A", "B", "A"], document=DOC, now=NOW)
    assert outcome.changed
    assert notified_things(outcome) == ["A", "B"]
    assert notified_things(outcome, "notify-next") == ["A", "B"]
    assert state.jobs["j"].targets == ["A", "B"]
    assert describe_job(state, "j")["jobProcessDetails"]["numberOfQueuedThings"] == 2
    assert get_job_document(state, "j") == DOC


@pytest.mark.parametrize(
    ("job_id", "kwargs"),
    [
        ("bad id", {}),
        ("x" * 65, {}),
        ("", {}),
        ("j", {"targets": []}),
        ("j", {"targets": "A"}),
        ("j", {"targets": ["bad/thing"]}),
        ("j", {"document": [1]}),
        ("j", {"document": {"a": "x" * 40_000}}),
        ("j", {"document": {"a": float("nan")}}),
        (
            "j",
            {"retry_config": RetryConfig((RetryCriteria(FailureType.TIMED_OUT, 1),))},
        ),
    ],
)
def test_create_job_validation(job_id: str, kwargs: dict[str, Any]) -> None:
    state = JobsState()
    arguments: dict[str, Any] = {"targets": ["A"], "document": DOC, "now": NOW, **kwargs}
    with pytest.raises(InvalidRequestError):
        create_job(state, job_id, **arguments)
    assert state.jobs == {}
    assert state.executions == {}


def test_create_job_duplicate() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A"], document=DOC, now=NOW)
    with pytest.raises(ResourceAlreadyExistsError):
        create_job(state, "j", targets=["B"], document=DOC, now=NOW)


@pytest.mark.parametrize(
    ("factory", "data"),
    [
        (TimeoutConfig.from_api, {"inProgressTimeoutInMinutes": 0}),
        (TimeoutConfig.from_api, {"inProgressTimeoutInMinutes": 10081}),
        (TimeoutConfig.from_api, {}),
        (TimeoutConfig.from_api, 5),
        (RetryConfig.from_api, {"criteriaList": []}),
        (
            RetryConfig.from_api,
            {"criteriaList": [{"failureType": "REJECTED", "numberOfRetries": 1}]},
        ),
        (
            RetryConfig.from_api,
            {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 11}]},
        ),
        (
            RetryConfig.from_api,
            {
                "criteriaList": [
                    {"failureType": "FAILED", "numberOfRetries": 6},
                    {"failureType": "TIMED_OUT", "numberOfRetries": 5},
                ]
            },
        ),
        (RolloutConfig.from_api, {}),
        (RolloutConfig.from_api, {"maximumPerMinute": 1001}),
        (
            RolloutConfig.from_api,
            {
                "exponentialRate": {
                    "baseRatePerMinute": 5,
                    "incrementFactor": 6,
                    "rateIncreaseCriteria": {"numberOfNotifiedThings": 1},
                }
            },
        ),
        (
            RolloutConfig.from_api,
            {
                "exponentialRate": {
                    "baseRatePerMinute": 5,
                    "incrementFactor": 2,
                    "rateIncreaseCriteria": {},
                }
            },
        ),
        (AbortConfig.from_api, {"criteriaList": []}),
        (
            AbortConfig.from_api,
            {
                "criteriaList": [
                    {
                        "failureType": "FAILED",
                        "action": "CANCEL",
                        "thresholdPercentage": 101,
                        "minNumberOfExecutedThings": 1,
                    }
                ]
            },
        ),
        (
            AbortConfig.from_api,
            {
                "criteriaList": [
                    {
                        "failureType": "FAILED",
                        "action": "STOP",
                        "thresholdPercentage": 1,
                        "minNumberOfExecutedThings": 1,
                    }
                ]
            },
        ),
        (
            AbortConfig.from_api,
            {
                "criteriaList": [
                    {
                        "failureType": "NOPE",
                        "thresholdPercentage": 1,
                        "minNumberOfExecutedThings": 1,
                    }
                ]
            },
        ),
    ],
)
def test_config_validation(factory: Any, data: Any) -> None:
    with pytest.raises(InvalidRequestError):
        factory(data)


def test_config_api_round_trip() -> None:
    configs: list[Any] = [
        TimeoutConfig(30),
        RetryConfig((RetryCriteria(FailureType.FAILED, 2), RetryCriteria(FailureType.ALL, 3))),
        RolloutConfig(10, ExponentialRate(2, 1.5, number_of_succeeded_things=4)),
        RolloutConfig(exponential_rate=ExponentialRate(2, 2.0, number_of_notified_things=3)),
        AbortConfig((AbortCriteria(FailureType.ALL, 12.5, 3),)),
    ]
    for config in configs:
        assert type(config).from_api(config.to_api()) == config


# --------------------------------------------------------------------------- completion


def test_job_completes_when_all_executions_terminal() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A", "B"], document=DOC, now=NOW)
    outcome = device(state, "A", "j/update", {"status": "SUCCEEDED"})
    assert job_status(state) is JobStatus.IN_PROGRESS
    assert "$aws/events/job/j/completed" not in event_topics(outcome)
    outcome = device(state, "B", "j/update", {"status": "FAILED"}, now=NOW + 5)
    assert job_status(state) is JobStatus.COMPLETED
    assert "$aws/events/job/j/completed" in event_topics(outcome)
    described = describe_job(state, "j")
    assert described["completedAt"] == NOW + 5
    assert described["jobProcessDetails"]["numberOfSucceededThings"] == 1
    assert described["jobProcessDetails"]["numberOfFailedThings"] == 1
    assert [j["jobId"] for j in list_jobs(state, status=JobStatus.COMPLETED)] == ["j"]
    assert list_jobs(state, status=JobStatus.CANCELED) == []


def test_continuous_job_never_completes() -> None:
    state = JobsState()
    create_job(
        state,
        "j",
        targets=["A"],
        document=DOC,
        now=NOW,
        target_selection=TargetSelection.CONTINUOUS,
    )
    device(state, "A", "j/update", {"status": "SUCCEEDED"})
    assert job_status(state) is JobStatus.IN_PROGRESS


# --------------------------------------------------------------------------- cancel / delete


def test_cancel_job_without_force_leaves_in_progress() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A", "B"], document=DOC, now=NOW)
    device(state, "A", "start-next")
    outcome = cancel_job(state, "j", now=NOW + 1, comment="c", reason_code="R")
    assert status(state, "j", "A") is ExecutionStatus.IN_PROGRESS
    assert status(state, "j", "B") is ExecutionStatus.CANCELED
    assert notified_things(outcome) == ["B"]
    assert notified_things(outcome, "notify-next") == ["B"]
    assert "$aws/events/job/j/canceled" in event_topics(outcome)
    assert "$aws/events/jobExecution/j/canceled" in event_topics(outcome)
    job = describe_job(state, "j")
    assert (job["status"], job["comment"], job["reasonCode"], job["forceCanceled"]) == (
        "CANCELED",
        "c",
        "R",
        False,
    )
    # The device may still finish its IN_PROGRESS execution.
    outcome = device(state, "A", "j/update", {"status": "SUCCEEDED"}, now=NOW + 2)
    assert outcome.accepted
    assert job_status(state) is JobStatus.CANCELED


def test_cancel_job_force() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A"], document=DOC, now=NOW)
    device(state, "A", "start-next")
    cancel_job(state, "j", now=NOW + 1)
    outcome = cancel_job(state, "j", now=NOW + 2, force=True)
    assert status(state, "j", "A") is ExecutionStatus.CANCELED
    assert state.latest("j", "A").force_canceled  # type: ignore[union-attr]
    assert notified_things(outcome) == ["A"]
    assert "$aws/events/job/j/canceled" not in event_topics(outcome)
    rejected = device(state, "A", "j/update", {"status": "SUCCEEDED"})
    assert rejected.messages[0].payload["code"] == "InvalidStateTransition"


def test_cancel_job_errors() -> None:
    state = JobsState()
    with pytest.raises(ResourceNotFoundError):
        cancel_job(state, "nope", now=NOW)
    create_job(state, "j", targets=["A"], document=DOC, now=NOW)
    device(state, "A", "j/update", {"status": "SUCCEEDED"})
    with pytest.raises(InvalidStateTransitionError):
        cancel_job(state, "j", now=NOW)


def test_cancel_job_execution() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A", "B"], document=DOC, now=NOW)
    device(state, "A", "start-next")
    with pytest.raises(InvalidStateTransitionError):
        cancel_job_execution(state, "j", "A", now=NOW)
    with pytest.raises(VersionConflictError):
        cancel_job_execution(state, "j", "A", now=NOW, force=True, expected_version=1)
    with pytest.raises(InvalidRequestError):
        cancel_job_execution(state, "j", "A", now=NOW, force=True, status_details={"k": ""})
    with pytest.raises(ResourceNotFoundError):
        cancel_job_execution(state, "j", "C", now=NOW)
    outcome = cancel_job_execution(
        state, "j", "A", now=NOW + 1, force=True, expected_version=2, status_details={"why": "x"}
    )
    assert notified_things(outcome) == ["A"]
    execution = describe_job_execution(state, "j", "A", now=NOW + 1)
    assert execution["status"] == "CANCELED"
    assert execution["statusDetails"] == {"detailsMap": {"why": "x"}}
    assert execution["versionNumber"] == 3
    assert execution["forceCanceled"] is True
    with pytest.raises(InvalidStateTransitionError):
        cancel_job_execution(state, "j", "A", now=NOW, force=True)
    cancel_job_execution(state, "j", "B", now=NOW + 2)
    assert job_status(state) is JobStatus.COMPLETED


def test_delete_job() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A", "B"], document=DOC, now=NOW)
    create_job(state, "k", targets=["A"], document=DOC, now=NOW + 1)
    with pytest.raises(InvalidStateTransitionError):
        delete_job(state, "j", now=NOW)
    outcome = delete_job(state, "j", now=NOW + 2, force=True)
    assert sorted(notified_things(outcome)) == ["A", "B"]
    head = next(m.payload for m in outcome.messages if m.topic == "$aws/things/A/jobs/notify-next")
    assert head["execution"]["jobId"] == "k"
    assert "$aws/events/job/j/deleted" in event_topics(outcome)
    assert "j" not in state.jobs
    assert "B" not in state.executions
    with pytest.raises(ResourceNotFoundError):
        describe_job(state, "j")
    assert device(state, "B", "j/get").messages[0].payload["code"] == "ResourceNotFound"
    cancel_job(state, "k", now=NOW + 3)
    delete_job(state, "k", now=NOW + 4)
    assert state.jobs == {}
    assert state.executions == {}
    with pytest.raises(ResourceNotFoundError):
        delete_job(state, "k", now=NOW)


# --------------------------------------------------------------------------- continuous


def test_continuous_targets_join_and_leave() -> None:
    state = JobsState()
    create_job(
        state,
        "j",
        targets=["A"],
        document=DOC,
        now=NOW,
        target_selection=TargetSelection.CONTINUOUS,
    )
    outcome = add_thing_to_job(state, "j", "B", now=NOW + 1)
    assert notified_things(outcome) == ["B"]
    assert add_thing_to_job(state, "j", "B", now=NOW + 2).messages == ()
    outcome = remove_thing_from_job(state, "j", "B", now=NOW + 3)
    assert status(state, "j", "B") is ExecutionStatus.REMOVED
    assert "$aws/events/jobExecution/j/removed" in event_topics(outcome)
    assert notified_things(outcome) == ["B"]
    add_thing_to_job(state, "j", "B", now=NOW + 4)
    latest = state.latest("j", "B")
    assert latest is not None
    assert (latest.status, latest.execution_number) == (ExecutionStatus.QUEUED, 2)
    assert state.jobs["j"].targets == ["A", "B"]
    with pytest.raises(InvalidRequestError):
        add_thing_to_job(state, "j", "bad name", now=NOW)


def test_snapshot_job_rejects_new_targets() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A"], document=DOC, now=NOW)
    with pytest.raises(InvalidRequestError):
        add_thing_to_job(state, "j", "B", now=NOW)


# --------------------------------------------------------------------------- persistence


def things(count: int) -> list[str]:
    return [f"T{i}" for i in range(count)]


def test_state_json_round_trip_and_resume() -> None:
    state = JobsState()
    create_job(
        state,
        "j",
        targets=things(3),
        document={"a": [1, {"b": None}]},
        now=NOW,
        timeout_config=TimeoutConfig(5),
        rollout_config=RolloutConfig(2, ExponentialRate(1, 1.5, number_of_notified_things=1)),
        abort_config=AbortConfig((AbortCriteria(FailureType.ALL, 99.5, 10),)),
        retry_config=RetryConfig((RetryCriteria(FailureType.FAILED, 1),)),
        description="desc",
    )
    device(state, "T0", "start-next", {"statusDetails": {"a": "b"}, "stepTimeoutInMinutes": 2})
    device(state, "T1", "j/update", {"status": "FAILED"})
    text = state.to_json()
    loaded = JobsState.from_json(text)
    assert loaded.to_json() == text
    for job_id in loaded.jobs:
        assert loaded.latest_counts(job_id) == state.latest_counts(job_id)
    assert next_deadline(loaded) == next_deadline(state)
    a = tick(state, NOW + 600)
    b = tick(loaded, NOW + 600)
    assert a == b
    assert loaded.to_json() == state.to_json()


@pytest.mark.parametrize("text", ["{}", "[]", '{"sequence": 1, "jobs": [{}], "executions": []}'])
def test_state_from_json_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a serialized jobs state"):
        JobsState.from_json(text)
