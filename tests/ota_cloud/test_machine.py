"""The deployment state machine (pure): batches, threshold, halts, cancel, timeouts, JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_stubs.deployments import (
    BatchStatus,
    CancelJob,
    CancelRequested,
    CreateJob,
    Deployment,
    DeploymentSpecError,
    DeploymentStatus,
    ExecutionView,
    JobCreated,
    JobCreateFailed,
    Observed,
    Step,
    Tick,
    jobs_to_observe,
    new_deployment,
    step,
)

DOC = {"operation": "ota", "schema": "ota/1"}
T0 = 1_700_000_000.0


def things(n: int) -> list[str]:
    return [f"robot-{i}" for i in range(1, n + 1)]


def make(n: int = 20, batch: int = 5, threshold: float = 0.95, **kw: object) -> Deployment:
    return new_deployment(
        firmware_id="fw-0123456789ab",
        target_version="2.0.0",
        document=DOC,
        targets=things(n),
        batch_size=batch,
        success_threshold=threshold,
        now=T0,
        deployment_id="dep-test",
        **kw,  # type: ignore[arg-type]
    )


def views(statuses: dict[str, str], details: dict[str, dict[str, str]] | None = None):
    details = details or {}
    return [ExecutionView(t, s, details.get(t, {})) for t, s in statuses.items()]


def start(dep: Deployment, now: float = T0) -> Step:
    """Tick a queued deployment and confirm its first job."""
    s = step(dep, Tick(now))
    assert len(s.actions) == 1
    create = s.actions[0]
    assert isinstance(create, CreateJob)
    s2 = step(s.deployment, JobCreated(now, create.job_id))
    return Step(s2.deployment, s.actions, changed=True)


def observe(dep: Deployment, job_id: str, statuses: dict[str, str], now: float = T0, **kw) -> Step:
    return step(dep, Observed(now, job_id, views(statuses, kw.get("details"))))


def all_in(batch_things: Sequence[str], status: str) -> dict[str, str]:
    return dict.fromkeys(batch_things, status)


def test_splits_targets_into_batches_and_dedups() -> None:
    dep = new_deployment(
        firmware_id="fw-0123456789ab",
        target_version="2",
        document=DOC,
        targets=[*things(12), "robot-3"],
        batch_size=5,
        success_threshold=1,
        now=T0,
    )
    assert [len(b.things) for b in dep.batches] == [5, 5, 2]
    assert dep.targets == tuple(things(12))
    assert dep.status is DeploymentStatus.QUEUED
    assert all(b.status is BatchStatus.PENDING for b in dep.batches)
    assert dep.deployment_id.startswith("dep-")


def test_first_tick_starts_batch_one_with_configs() -> None:
    dep = make(timeout_minutes=30, max_per_minute=100)
    s = step(dep, Tick(T0))
    assert s.changed
    assert s.deployment.status is DeploymentStatus.IN_PROGRESS
    (create,) = s.actions
    assert isinstance(create, CreateJob)
    assert create.job_id == "dep-test-b1"
    assert create.things == tuple(things(5))
    assert create.document == DOC
    args = create.control_args()
    assert args["timeout"] == {"inProgressTimeoutInMinutes": 30}
    assert args["rollout"] == {"maximumPerMinute": 100}
    (criteria,) = args["abort"]["criteriaList"]
    # abort only once failures exceed what 95 % allows (5 % + 0.01), over the whole batch
    assert criteria == {
        "failureType": "ALL",
        "action": "CANCEL",
        "thresholdPercentage": 5.01,
        "minNumberOfExecutedThings": 5,
    }
    assert s.deployment.batches[0].status is BatchStatus.CREATING
    assert s.deployment.batches[1].status is BatchStatus.PENDING


def test_no_abort_config_when_disabled_or_threshold_zero() -> None:
    for dep in (make(abort_on_threshold=False), make(threshold=0)):
        (create,) = step(dep, Tick(T0)).actions
        assert isinstance(create, CreateJob)
        assert "abort" not in create.control_args()


def test_all_batches_succeed_completes() -> None:
    dep = start(make()).deployment
    created = ["dep-test-b1"]
    for index in range(4):
        batch = dep.batches[index]
        assert batch.status is BatchStatus.RUNNING
        assert jobs_to_observe(dep) == [batch.job_id]
        # not all finished yet: nothing happens
        partial = all_in(batch.things, "SUCCEEDED") | {batch.things[-1]: "IN_PROGRESS"}
        s = observe(dep, batch.job_id or "", partial)
        assert s.actions == ()
        assert s.deployment.batches[index].status is BatchStatus.RUNNING
        s = observe(s.deployment, batch.job_id or "", all_in(batch.things, "SUCCEEDED"))
        assert s.deployment.batches[index].status is BatchStatus.SUCCEEDED
        if index < 3:
            (create,) = s.actions
            assert isinstance(create, CreateJob)
            created.append(create.job_id)
            dep = step(s.deployment, JobCreated(T0, create.job_id)).deployment
        else:
            assert s.actions == ()
            dep = s.deployment
    assert dep.status is DeploymentStatus.COMPLETED
    assert dep.reason is None
    assert created == [f"dep-test-b{i}" for i in range(1, 5)]
    assert dep.totals().succeeded == 20
    assert jobs_to_observe(dep) == []


def test_failure_in_batch_one_halts_and_later_batches_never_start() -> None:
    dep = start(make()).deployment
    b1 = dep.batches[0]
    statuses = all_in(b1.things, "SUCCEEDED") | {"robot-3": "FAILED"}
    details = {"robot-3": {"reason_code": "HASH_MISMATCH", "error_type": "SIGNATURE"}}
    s = observe(dep, "dep-test-b1", statuses, details=details)
    dep = s.deployment
    assert dep.status is DeploymentStatus.FAILED
    assert s.actions == ()  # nothing left queued in the batch: no cancel needed
    assert dep.batches[0].status is BatchStatus.FAILED
    assert [b.status for b in dep.batches[1:]] == [BatchStatus.SKIPPED] * 3
    assert all(b.job_id is None for b in dep.batches[1:])
    assert dep.reason is not None
    assert "batch 1/4: 4/5 succeeded" in dep.reason
    assert "robot-3 FAILED (reason_code=HASH_MISMATCH, error_type=SIGNATURE)" in dep.reason
    assert "3 later batch(es) not started" in dep.reason
    # a terminal deployment ignores ticks and never creates another job
    for now in (T0 + 1, T0 + 10_000):
        assert step(dep, Tick(now)).actions == ()
    assert step(dep, CancelRequested(T0 + 2)).deployment == dep


def test_unreachable_threshold_halts_early_and_cancels_what_is_queued() -> None:
    dep = start(make(threshold=0.6)).deployment  # needs 3 of 5
    statuses = {
        "robot-1": "FAILED",
        "robot-2": "REJECTED",
        "robot-3": "TIMED_OUT",
        "robot-4": "IN_PROGRESS",
        "robot-5": "QUEUED",
    }
    s = observe(dep, "dep-test-b1", statuses)
    assert s.deployment.status is DeploymentStatus.FAILED
    (cancel,) = s.actions
    assert isinstance(cancel, CancelJob)
    assert cancel.job_id == "dep-test-b1"
    assert cancel.reason_code == "THRESHOLD_MISSED"
    assert "at most 2/5 can still succeed" in (s.deployment.reason or "")
    counts = s.deployment.batches[0].current_counts
    assert (counts.succeeded, counts.failed, counts.in_progress, counts.pending) == (0, 3, 1, 1)
    assert counts.by_failure == {"FAILED": 1, "REJECTED": 1, "TIMED_OUT": 1}
    # the failed batch is still observed until its executions end (counts keep moving) ...
    assert jobs_to_observe(s.deployment) == ["dep-test-b1"]
    settled = observe(
        s.deployment, "dep-test-b1", statuses | {"robot-4": "SUCCEEDED", "robot-5": "CANCELED"}
    )
    assert settled.actions == ()
    assert settled.deployment.status is DeploymentStatus.FAILED
    assert settled.deployment.batches[0].current_counts.succeeded == 1
    assert settled.deployment.batches[0].settled
    # ... and then no more
    assert jobs_to_observe(settled.deployment) == []


def test_threshold_boundary_is_inclusive() -> None:
    dep = start(make(n=5, batch=5, threshold=0.8)).deployment  # needs 4 of 5
    statuses = all_in(things(5), "SUCCEEDED") | {"robot-5": "FAILED"}
    s = observe(dep, "dep-test-b1", statuses)
    assert s.deployment.status is DeploymentStatus.COMPLETED


def test_last_smaller_batch_uses_its_own_size() -> None:
    dep = start(make(n=6, batch=5, threshold=0.5)).deployment
    s = observe(dep, "dep-test-b1", all_in(things(5), "SUCCEEDED"))
    (create,) = s.actions
    assert isinstance(create, CreateJob)
    assert create.things == ("robot-6",)
    dep = step(s.deployment, JobCreated(T0, create.job_id)).deployment
    assert dep.required_successes(dep.batches[1]) == 1
    s = observe(dep, create.job_id, {"robot-6": "FAILED"})
    assert s.deployment.status is DeploymentStatus.FAILED


def test_things_without_execution_yet_are_pending() -> None:
    dep = start(make(max_per_minute=1)).deployment
    s = observe(dep, "dep-test-b1", {"robot-1": "SUCCEEDED"})
    counts = s.deployment.batches[0].current_counts
    assert (counts.total, counts.succeeded, counts.pending, counts.not_started) == (5, 1, 4, 4)
    assert s.deployment.batches[0].status is BatchStatus.RUNNING


def test_observations_of_other_things_are_ignored() -> None:
    dep = start(make()).deployment
    s = observe(dep, "dep-test-b1", {"intruder": "FAILED", "robot-1": "IN_PROGRESS"})
    assert s.deployment.batches[0].current_counts.failed == 0


def test_batch_timeout_decides_on_successes_so_far() -> None:
    dep = start(make(n=10, batch=5, threshold=0.6, batch_timeout_s=60)).deployment
    statuses = {"robot-1": "SUCCEEDED", "robot-2": "SUCCEEDED", "robot-3": "SUCCEEDED"}
    statuses |= {"robot-4": "IN_PROGRESS", "robot-5": "QUEUED"}
    dep = observe(dep, "dep-test-b1", statuses).deployment
    assert step(dep, Tick(T0 + 59)).actions == ()
    s = step(dep, Tick(T0 + 60))
    assert s.deployment.batches[0].status is BatchStatus.SUCCEEDED
    cancel, create = s.actions
    assert isinstance(cancel, CancelJob)
    assert (cancel.job_id, cancel.reason_code) == ("dep-test-b1", "BATCH_TIMEOUT")
    assert isinstance(create, CreateJob)
    assert create.job_id == "dep-test-b2"
    dep = step(s.deployment, JobCreated(T0 + 60, "dep-test-b2")).deployment
    dep = observe(dep, "dep-test-b2", {"robot-6": "SUCCEEDED"}, now=T0 + 61).deployment
    s = step(dep, Tick(T0 + 120))
    assert s.deployment.status is DeploymentStatus.FAILED
    assert "batch 2/2 timed out after 60 s with 1/5 succeeded" in (s.deployment.reason or "")
    (cancel,) = s.actions
    assert isinstance(cancel, CancelJob)


def test_cancel_running_deployment() -> None:
    dep = start(make()).deployment
    s = step(dep, CancelRequested(T0 + 5, "operator said so"))
    assert s.deployment.status is DeploymentStatus.CANCELED
    assert s.deployment.reason == "operator said so"
    (cancel,) = s.actions
    assert isinstance(cancel, CancelJob)
    assert (cancel.job_id, cancel.reason_code) == ("dep-test-b1", "DEPLOYMENT_CANCELED")
    assert s.deployment.batches[0].status is BatchStatus.CANCELED
    assert [b.status for b in s.deployment.batches[1:]] == [BatchStatus.SKIPPED] * 3


def test_cancel_queued_deployment_creates_nothing() -> None:
    s = step(make(), CancelRequested(T0))
    assert s.actions == ()
    assert s.deployment.status is DeploymentStatus.CANCELED
    assert step(s.deployment, Tick(T0 + 1)).actions == ()


def test_create_failure_fails_the_deployment() -> None:
    s = step(make(), Tick(T0))
    s = step(s.deployment, JobCreateFailed(T0, "dep-test-b1", "document too large"))
    assert s.deployment.status is DeploymentStatus.FAILED
    assert "could not create job dep-test-b1: document too large" in (s.deployment.reason or "")
    assert jobs_to_observe(s.deployment) == []


def test_interrupted_creation_is_reissued_on_tick() -> None:
    first = step(make(), Tick(T0))
    # the process died before the job creation was confirmed: the next tick repeats it
    again = step(first.deployment, Tick(T0 + 1))
    assert again.actions == first.actions
    assert not again.changed
    # an observation of the existing job also confirms it
    s = step(first.deployment, Observed(T0 + 1, "dep-test-b1", views({"robot-1": "QUEUED"})))
    assert s.deployment.batches[0].status is BatchStatus.RUNNING


def test_vanished_job_fails_the_batch() -> None:
    dep = start(make()).deployment
    s = step(dep, Observed(T0 + 1, "dep-test-b1", (), job_found=False))
    assert s.deployment.status is DeploymentStatus.FAILED
    assert "disappeared" in (s.deployment.reason or "")
    assert jobs_to_observe(s.deployment) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": []}, "at least one target"),
        ({"batch_size": 0}, "batch size"),
        ({"batch_size": 10_001}, "batch size"),
        ({"success_threshold": 1.5}, "success threshold"),
        ({"success_threshold": -0.1}, "success threshold"),
        ({"timeout_minutes": 0}, "timeout"),
        ({"batch_timeout_s": 0}, "batch timeout"),
        ({"max_per_minute": 1001}, "rollout rate"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "firmware_id": "fw-0123456789ab",
        "target_version": "1",
        "document": DOC,
        "targets": things(3),
        "batch_size": 2,
        "success_threshold": 0.5,
        "now": T0,
    }
    with pytest.raises(DeploymentSpecError, match=message):
        new_deployment(**(args | kwargs))  # type: ignore[arg-type]


def test_json_round_trip_mid_flight() -> None:
    dep = start(make()).deployment
    dep = observe(dep, "dep-test-b1", {"robot-1": "FAILED", "robot-2": "SUCCEEDED"}).deployment
    again = Deployment.from_json(json.loads(json.dumps(dep.to_json())))
    assert again == dep


FINAL = st.sampled_from(["SUCCEEDED", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"])


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 23),
    batch=st.integers(1, 7),
    threshold=st.sampled_from([0.0, 0.5, 0.8, 0.95, 1.0]),
    outcomes=st.lists(FINAL, min_size=23, max_size=23),
)
def test_property_batches_start_only_after_a_passing_batch(
    n: int, batch: int, threshold: float, outcomes: list[str]
) -> None:
    """Drive whole deployments: a batch starts only after the previous one passed, and the
    outcome is COMPLETED exactly when every batch met the threshold."""
    dep = make(n=n, batch=batch, threshold=threshold)
    outcome = dict(zip(things(n), outcomes, strict=False))
    s = step(dep, Tick(T0))
    created: list[str] = []
    for _ in range(n + 2):
        for action in s.actions:
            if isinstance(action, CreateJob):
                created.append(action.job_id)
                s = step(s.deployment, JobCreated(T0, action.job_id))
        dep = s.deployment
        running = [b for b in dep.batches if b.status is BatchStatus.RUNNING]
        if not running:
            break
        (current,) = running
        earlier = [b for b in dep.batches if b.index < current.index]
        assert all(b.status is BatchStatus.SUCCEEDED for b in earlier)
        s = observe(dep, current.job_id or "", {t: outcome[t] for t in current.things})
    dep = s.deployment
    assert dep.status.is_terminal
    passed = [
        sum(outcome[t] == "SUCCEEDED" for t in b.things) >= dep.required_successes(b)
        for b in dep.batches
    ]
    expect_batches = passed.index(False) + 1 if False in passed else len(passed)
    assert len(created) == expect_batches
    assert (dep.status is DeploymentStatus.COMPLETED) == all(passed)
    for b in dep.batches[expect_batches:]:
        assert b.status is BatchStatus.SKIPPED
        assert b.job_id is None
