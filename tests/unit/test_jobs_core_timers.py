"""Jobs timers, retries, rollout and abort (spec §3.7, §3.8)."""

import json
from typing import Any

from cloud_stubs.jobs import (
    AbortConfig,
    AbortCriteria,
    ExecutionStatus,
    ExponentialRate,
    FailureType,
    JobsOutcome,
    JobsState,
    JobStatus,
    MessageKind,
    RetryConfig,
    RetryCriteria,
    RolloutConfig,
    TimeoutConfig,
    cancel_job,
    create_job,
    handle_jobs_request,
    list_job_executions_for_job,
    list_job_executions_for_thing,
    next_deadline,
    parse_jobs_topic,
    rollout_rate,
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


# --------------------------------------------------------------------------- timers


def test_in_progress_timeout() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A"], document=DOC, now=NOW, timeout_config=TimeoutConfig(10))
    assert next_deadline(state) is None
    device(state, "A", "start-next", now=NOW + 5)
    assert next_deadline(state) == NOW + 605
    body = device(state, "A", "j/get", now=NOW + 105).messages[0].payload
    assert body["execution"]["approximateSecondsBeforeTimedOut"] == 500
    assert tick(state, NOW + 604).messages == ()
    outcome = tick(state, NOW + 605)
    assert status(state, "j", "A") is ExecutionStatus.TIMED_OUT
    assert notified_things(outcome) == ["A"]
    assert notified_things(outcome, "notify-next") == ["A"]
    assert "$aws/events/jobExecution/j/timed_out" in event_topics(outcome)
    assert job_status(state) is JobStatus.COMPLETED
    assert next_deadline(state) is None


def test_queued_executions_do_not_time_out() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A"], document=DOC, now=NOW, timeout_config=TimeoutConfig(1))
    tick(state, NOW + 10_000)
    assert status(state, "j", "A") is ExecutionStatus.QUEUED


def test_step_timeout_capped_by_in_progress_and_cancelable() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A"], document=DOC, now=NOW, timeout_config=TimeoutConfig(10))
    device(state, "A", "start-next", {"stepTimeoutInMinutes": 2})
    assert next_deadline(state) == NOW + 120
    device(state, "A", "j/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 60}, NOW + 60)
    assert next_deadline(state) == NOW + 600
    device(state, "A", "j/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 1}, NOW + 70)
    assert next_deadline(state) == NOW + 130
    device(state, "A", "j/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": -1}, NOW + 80)
    assert next_deadline(state) == NOW + 600
    tick(state, NOW + 599)
    assert status(state, "j", "A") is ExecutionStatus.IN_PROGRESS


def test_step_timeout_without_job_timeout() -> None:
    state = JobsState()
    create_job(state, "j", targets=["A"], document=DOC, now=NOW)
    device(state, "A", "j/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 3})
    tick(state, NOW + 179)
    assert status(state, "j", "A") is ExecutionStatus.IN_PROGRESS
    tick(state, NOW + 181)
    assert status(state, "j", "A") is ExecutionStatus.TIMED_OUT


# --------------------------------------------------------------------------- retries


def test_retry_failed_requeues_new_execution() -> None:
    state = JobsState()
    create_job(
        state,
        "j",
        targets=["A"],
        document=DOC,
        now=NOW,
        retry_config=RetryConfig((RetryCriteria(FailureType.FAILED, 2),)),
    )
    for attempt in (1, 2):
        outcome = device(state, "A", "j/update", {"status": "FAILED"}, now=NOW + attempt)
        latest = state.latest("j", "A")
        assert latest is not None
        assert (latest.status, latest.execution_number, latest.version_number) == (
            ExecutionStatus.QUEUED,
            attempt + 1,
            1,
        )
        assert latest.queued_at == NOW + attempt
        assert notified_things(outcome) == ["A"]
        assert notified_things(outcome, "notify-next") == ["A"]
    device(state, "A", "j/update", {"status": "FAILED"}, now=NOW + 3)
    assert status(state, "j", "A") is ExecutionStatus.FAILED
    assert len(state.executions_of("j", "A")) == 3
    assert job_status(state) is JobStatus.COMPLETED
    listed = list_job_executions_for_job(state, "j", now=NOW)
    assert [e["executionNumber"] for e in listed] == [1, 2, 3]
    assert (
        len(list_job_executions_for_thing(state, "A", now=NOW, status=ExecutionStatus.FAILED)) == 3
    )


def test_rejected_is_not_retried() -> None:
    state = JobsState()
    create_job(
        state,
        "j",
        targets=["A"],
        document=DOC,
        now=NOW,
        retry_config=RetryConfig((RetryCriteria(FailureType.ALL, 5),)),
    )
    device(state, "A", "j/update", {"status": "REJECTED"})
    assert len(state.executions_of("j", "A")) == 1


def test_retry_timed_out_and_shared_all_budget() -> None:
    state = JobsState()
    create_job(
        state,
        "j",
        targets=["A"],
        document=DOC,
        now=NOW,
        timeout_config=TimeoutConfig(1),
        retry_config=RetryConfig((RetryCriteria(FailureType.ALL, 2),)),
    )
    device(state, "A", "start-next")
    tick(state, NOW + 60)
    assert state.latest("j", "A").execution_number == 2  # type: ignore[union-attr]
    device(state, "A", "j/update", {"status": "FAILED"}, now=NOW + 61)
    assert state.latest("j", "A").execution_number == 3  # type: ignore[union-attr]
    device(state, "A", "j/update", {"status": "FAILED"}, now=NOW + 62)
    assert status(state, "j", "A") is ExecutionStatus.FAILED
    assert state.jobs["j"].retries_used == {"A": {"TIMED_OUT": 1, "FAILED": 1}}


def test_specific_retry_criteria_have_separate_budgets() -> None:
    state = JobsState()
    create_job(
        state,
        "j",
        targets=["A"],
        document=DOC,
        now=NOW,
        timeout_config=TimeoutConfig(1),
        retry_config=RetryConfig(
            (RetryCriteria(FailureType.FAILED, 1), RetryCriteria(FailureType.TIMED_OUT, 1))
        ),
    )
    device(state, "A", "j/update", {"status": "FAILED"})
    device(state, "A", "start-next", now=NOW + 1)
    tick(state, NOW + 61)
    assert state.latest("j", "A").execution_number == 3  # type: ignore[union-attr]
    device(state, "A", "j/update", {"status": "FAILED"}, now=NOW + 62)
    assert status(state, "j", "A") is ExecutionStatus.FAILED


# --------------------------------------------------------------------------- rollout


def things(count: int) -> list[str]:
    return [f"T{i}" for i in range(count)]


def queued_count(state: JobsState, job_id: str = "j") -> int:
    return sum(state.latest_counts(job_id).values())


def test_rollout_maximum_per_minute() -> None:
    state = JobsState()
    outcome = create_job(
        state, "j", targets=things(5), document=DOC, now=NOW, rollout_config=RolloutConfig(2)
    )
    assert notified_things(outcome) == ["T0", "T1"]
    assert next_deadline(state) == NOW + 60
    assert tick(state, NOW + 59).messages == ()
    assert notified_things(tick(state, NOW + 60)) == ["T2", "T3"]
    assert queued_count(state) == 4
    assert notified_things(tick(state, NOW + 200)) == ["T4"]
    assert next_deadline(state) is None
    assert state.jobs["j"].window_start == NOW + 180


def test_job_does_not_complete_while_rollout_pending() -> None:
    state = JobsState()
    create_job(
        state, "j", targets=things(2), document=DOC, now=NOW, rollout_config=RolloutConfig(1)
    )
    device(state, "T0", "j/update", {"status": "SUCCEEDED"})
    assert job_status(state) is JobStatus.IN_PROGRESS
    tick(state, NOW + 60)
    device(state, "T1", "j/update", {"status": "SUCCEEDED"}, now=NOW + 61)
    assert job_status(state) is JobStatus.COMPLETED


def test_rollout_exponential_notified() -> None:
    state = JobsState()
    rollout = RolloutConfig(exponential_rate=ExponentialRate(1, 2.0, number_of_notified_things=2))
    create_job(state, "j", targets=things(20), document=DOC, now=NOW, rollout_config=rollout)
    released = [queued_count(state)]
    for minute in range(1, 5):
        tick(state, NOW + 60 * minute)
        released.append(queued_count(state))
    # Rate per window from the things notified before it: 1, 1, 2, 4, then 16 (capped by
    # the 12 targets left).
    assert released == [1, 2, 4, 8, 20]


def test_rollout_exponential_succeeded_and_cap() -> None:
    state = JobsState()
    rollout = RolloutConfig(3, ExponentialRate(1, 5.0, number_of_succeeded_things=1))
    create_job(state, "j", targets=things(10), document=DOC, now=NOW, rollout_config=rollout)
    assert queued_count(state) == 1
    tick(state, NOW + 60)
    assert queued_count(state) == 2
    device(state, "T0", "j/update", {"status": "SUCCEEDED"}, now=NOW + 61)
    # The rate grew inside the window: the shell learns it from next_deadline.
    assert next_deadline(state) == NOW + 60
    tick(state, NOW + 62)
    assert queued_count(state) == 4
    assert rollout_rate(state.jobs["j"], 4, 1) == 3


def test_rollout_rate_function() -> None:
    job_state = JobsState()
    create_job(
        job_state,
        "j",
        targets=["A"],
        document=DOC,
        now=NOW,
        rollout_config=RolloutConfig(
            exponential_rate=ExponentialRate(50, 2.0, number_of_notified_things=1000)
        ),
    )
    job = job_state.jobs["j"]
    assert [rollout_rate(job, n, 0) for n in (0, 999, 1000, 2500, 3000, 10**9)] == [
        50,
        50,
        100,
        200,
        400,
        1000,
    ]


def test_cancel_stops_rollout() -> None:
    state = JobsState()
    create_job(
        state, "j", targets=things(4), document=DOC, now=NOW, rollout_config=RolloutConfig(1)
    )
    cancel_job(state, "j", now=NOW + 1)
    assert tick(state, NOW + 600).messages == ()
    assert queued_count(state) == 1
    assert status(state, "j", "T0") is ExecutionStatus.CANCELED


# --------------------------------------------------------------------------- abort


def test_abort_cancels_queued_and_leaves_in_progress() -> None:
    state = JobsState()
    abort = AbortConfig((AbortCriteria(FailureType.FAILED, 50, 3),))
    create_job(
        state,
        "j",
        targets=things(6),
        document=DOC,
        now=NOW,
        rollout_config=RolloutConfig(4),
        abort_config=abort,
        retry_config=RetryConfig((RetryCriteria(FailureType.FAILED, 3),)),
    )
    device(state, "T1", "start-next")
    device(state, "T2", "j/update", {"status": "FAILED"})  # 1 of 4 failed: retried
    assert job_status(state) is JobStatus.IN_PROGRESS
    assert state.latest("j", "T2").execution_number == 2  # type: ignore[union-attr]
    assert state.outcome_counts("j") == {ExecutionStatus.FAILED: 1}
    device(state, "T2", "j/update", {"status": "SUCCEEDED"})  # the retry fixes T2
    assert state.outcome_counts("j") == {ExecutionStatus.SUCCEEDED: 1}
    device(state, "T0", "j/update", {"status": "FAILED"})  # 1 of 4 again: retried
    assert job_status(state) is JobStatus.IN_PROGRESS
    outcome = device(state, "T3", "j/update", {"status": "FAILED"})  # 2 of 4 = 50 %
    assert job_status(state) is JobStatus.CANCELED
    assert state.jobs["j"].comment is not None
    assert status(state, "j", "T1") is ExecutionStatus.IN_PROGRESS
    assert status(state, "j", "T0") is ExecutionStatus.CANCELED  # its queued retry
    assert status(state, "j", "T3") is ExecutionStatus.FAILED  # not retried after abort
    assert state.jobs["j"].unreleased == []
    assert "$aws/events/job/j/canceled" in event_topics(outcome)
    assert tick(state, NOW + 600).messages == ()


def test_abort_respects_min_executed_things() -> None:
    state = JobsState()
    abort = AbortConfig((AbortCriteria(FailureType.ALL, 10, 3),))
    create_job(state, "j", targets=things(2), document=DOC, now=NOW, abort_config=abort)
    device(state, "T0", "j/update", {"status": "REJECTED"})
    assert job_status(state) is JobStatus.IN_PROGRESS


def test_abort_on_timeouts() -> None:
    state = JobsState()
    abort = AbortConfig((AbortCriteria(FailureType.TIMED_OUT, 100, 1),))
    create_job(
        state,
        "j",
        targets=things(2),
        document=DOC,
        now=NOW,
        timeout_config=TimeoutConfig(1),
        abort_config=abort,
    )
    device(state, "T0", "start-next")
    device(state, "T1", "j/update", {"status": "SUCCEEDED"})
    tick(state, NOW + 60)
    assert job_status(state) is JobStatus.COMPLETED
    state = JobsState()
    create_job(
        state,
        "j",
        targets=things(2),
        document=DOC,
        now=NOW,
        timeout_config=TimeoutConfig(1),
        abort_config=AbortConfig((AbortCriteria(FailureType.TIMED_OUT, 50, 2),)),
    )
    device(state, "T0", "start-next")
    tick(state, NOW + 60)
    assert job_status(state) is JobStatus.CANCELED
    assert status(state, "j", "T1") is ExecutionStatus.CANCELED
