"""State transitions shared by the device API and the control plane of the Jobs engine.

Every change of an execution goes through :func:`change_status` or
:func:`create_execution`, so the cascade is uniform: a terminal change emits the
``$aws/events/jobExecution/…`` event, evaluates the abort configuration, queues a retry
when the retry configuration allows it, and completes the job when nothing is left.
Notifications come from :class:`~cloud_stubs.jobs._views.Effects`.
"""

from typing import Final

from cloud_stubs.jobs._config import (
    MAX_ROLLOUT_RATE,
    ExecutionStatus,
    FailureType,
    JobStatus,
    TargetSelection,
)
from cloud_stubs.jobs._model import Execution, Job, JobsState
from cloud_stubs.jobs._views import Effects, JobsOutcome, execution_event, job_event

STEP_TIMER_CANCEL: Final = -1
"""``stepTimeoutInMinutes`` value that cancels the step timer (UpdateJobExecution)."""

ROLLOUT_WINDOW_SECONDS: Final = 60
"""Rollout rates are per minute; releases happen in one-minute windows."""

ABORT_COMMENT: Final = "Job aborted: abortConfig criteria met"
"""Comment stored on a job canceled by its abort configuration."""


def create_execution(effects: Effects, job: Job, thing_name: str) -> Execution:
    """Queue a new execution of ``job`` on ``thing_name`` (number = previous + 1).

    Args:
        effects: Collector of the operation's messages.
        job: The job.
        thing_name: The thing.

    Returns:
        The new QUEUED execution.
    """
    state, now = effects.state, effects.now
    effects.touch(thing_name)
    previous = state.latest(job.job_id, thing_name)
    execution = Execution(
        job_id=job.job_id,
        thing_name=thing_name,
        execution_number=previous.execution_number + 1 if previous else 1,
        status=ExecutionStatus.QUEUED,
        queued_at=now,
        last_updated_at=now,
        sequence=state.next_sequence(),
    )
    state.add_execution(execution)
    return execution


def change_status(
    effects: Effects,
    job: Job,
    execution: Execution,
    status: ExecutionStatus,
    *,
    details: dict[str, str] | None = None,
    step_minutes: int | None = None,
    force: bool = False,
) -> None:
    """Apply one accepted change to a non-terminal execution (version +1).

    Args:
        effects: Collector of the operation's messages.
        job: The execution's job.
        execution: The execution (its thing's newest for the job).
        status: The new status (may equal the current one, e.g. IN_PROGRESS again).
        details: New ``statusDetails`` (replaces the old map) or ``None`` to keep it.
        step_minutes: New step timer in minutes, :data:`STEP_TIMER_CANCEL`, or ``None``
            to keep the current one. Only applied when the new status is IN_PROGRESS.
        force: Marks a forced cancel.
    """
    now = effects.now
    effects.touch(execution.thing_name)
    previous = execution.status
    effects.state.set_status(execution, status)
    execution.version_number += 1
    execution.last_updated_at = now
    if details is not None:
        execution.status_details = dict(details)
    if status is ExecutionStatus.IN_PROGRESS:
        if execution.started_at is None:
            execution.started_at = now
        if previous is ExecutionStatus.QUEUED and job.timeout is not None:
            execution.in_progress_deadline = now + job.timeout.in_progress_minutes * 60
        if step_minutes == STEP_TIMER_CANCEL:
            execution.step_deadline = None
        elif step_minutes is not None:
            deadline = now + step_minutes * 60
            if execution.in_progress_deadline is not None:
                # A step timer never extends past the in-progress deadline (spec §3.7).
                deadline = min(deadline, execution.in_progress_deadline)
            execution.step_deadline = deadline
    if status.is_terminal:
        execution.step_deadline = None
        execution.in_progress_deadline = None
        execution.force_canceled = force
        _after_terminal(effects, job, execution)


def _after_terminal(effects: Effects, job: Job, execution: Execution) -> None:
    effects.events.append(execution_event(execution, execution.status.value.lower(), effects.now))
    check_abort(effects, job)
    if job.status is JobStatus.IN_PROGRESS and _retry_allowed(job, execution):
        kind = execution.status.value
        used = job.retries_used.setdefault(execution.thing_name, {})
        used[kind] = used.get(kind, 0) + 1
        create_execution(effects, job, execution.thing_name)
    check_completion(effects, job)


def _retry_allowed(job: Job, execution: Execution) -> bool:
    """Whether a FAILED/TIMED_OUT execution gets another attempt (see ``RetryConfig``)."""
    if job.retry is None or execution.status not in {
        ExecutionStatus.FAILED,
        ExecutionStatus.TIMED_OUT,
    }:
        return False
    kind = execution.status.value
    used = job.retries_used.get(execution.thing_name, {})
    for criteria in job.retry.criteria:
        if criteria.failure_type.value == kind:
            return used.get(kind, 0) < criteria.number_of_retries
    for criteria in job.retry.criteria:
        if criteria.failure_type is FailureType.ALL:
            return sum(used.values()) < criteria.number_of_retries
    return False


def check_abort(effects: Effects, job: Job) -> None:
    """Cancel ``job`` if an abort criterion is met (see ``AbortConfig`` for the rule)."""
    if job.status is not JobStatus.IN_PROGRESS or job.abort is None:
        return
    notified = sum(effects.state.latest_counts(job.job_id).values())
    counts = effects.state.outcome_counts(job.job_id)
    for criteria in job.abort.criteria:
        if notified < criteria.min_number_of_executed_things:
            continue
        failures = sum(n for status, n in counts.items() if criteria.failure_type.matches(status))
        if failures > 0 and failures * 100 >= criteria.threshold_percentage * notified:
            cancel_job_now(effects, job, force=False, comment=ABORT_COMMENT)
            return


def check_completion(effects: Effects, job: Job) -> None:
    """Mark a SNAPSHOT job COMPLETED once every target's newest execution is terminal."""
    if (
        job.status is not JobStatus.IN_PROGRESS
        or job.target_selection is not TargetSelection.SNAPSHOT
        or job.unreleased
    ):
        return
    counts = effects.state.latest_counts(job.job_id)
    if not any(counts.values()) or any(
        counts.get(status, 0) for status in (ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS)
    ):
        return
    job.status = JobStatus.COMPLETED
    job.completed_at = job.last_updated_at = effects.now
    effects.changed = True
    effects.events.append(job_event(effects.state, job, "completed", effects.now))


def cancel_job_now(
    effects: Effects,
    job: Job,
    *,
    force: bool,
    reason_code: str | None = None,
    comment: str | None = None,
) -> None:
    """Cancel a job: stop the rollout, cancel QUEUED (and with ``force`` IN_PROGRESS).

    Args:
        effects: Collector of the operation's messages.
        job: The job (IN_PROGRESS, or CANCELED to force-cancel what is left).
        force: Also cancel IN_PROGRESS executions.
        reason_code: Stored reason code, if given.
        comment: Stored comment, if given.
    """
    now = effects.now
    newly_canceled = job.status is not JobStatus.CANCELED
    job.status = JobStatus.CANCELED
    job.force_canceled = job.force_canceled or force
    job.last_updated_at = now
    if newly_canceled:
        job.completed_at = now
    if reason_code is not None:
        job.reason_code = reason_code
    if comment is not None:
        job.comment = comment
    job.unreleased.clear()
    effects.changed = True
    for thing_name in job.targets:
        execution = effects.state.latest(job.job_id, thing_name)
        if execution is None:
            continue
        if execution.status is ExecutionStatus.QUEUED or (
            force and execution.status is ExecutionStatus.IN_PROGRESS
        ):
            change_status(effects, job, execution, ExecutionStatus.CANCELED, force=force)
    if newly_canceled:
        effects.events.append(job_event(effects.state, job, "canceled", now))


def rollout_rate(job: Job, notified: int, succeeded: int) -> int:
    """Return the current per-minute rate of ``job``'s rollout.

    Exponential rates multiply by ``increment_factor`` once per full threshold step of
    notified (or succeeded) things, rounded down, capped by ``maximum_per_minute`` (or
    1000), at least 1.

    Args:
        job: A job with a rollout configuration.
        notified: Things that have received an execution so far.
        succeeded: Things whose newest execution SUCCEEDED.

    Returns:
        Executions allowed per minute.
    """
    rollout = job.rollout
    if rollout is None:
        return MAX_ROLLOUT_RATE
    cap = rollout.maximum_per_minute or MAX_ROLLOUT_RATE
    exponential = rollout.exponential_rate
    if exponential is None:
        return cap
    count = notified if exponential.number_of_notified_things is not None else succeeded
    rate = float(exponential.base_rate_per_minute)
    for _ in range(count // exponential.threshold):
        if rate >= cap:
            break
        rate *= exponential.increment_factor
    return max(1, min(cap, int(rate)))


def _window_rate(state: JobsState, job: Job) -> int:
    """The rate of ``job``'s current window.

    Notified things are counted as of the window start (releases inside the window do
    not raise the window's own rate); succeeded things are counted now, so successes
    can open more room inside the window.
    """
    counts = state.latest_counts(job.job_id)
    notified = sum(counts.values()) - job.window_count
    return rollout_rate(job, notified, counts.get(ExecutionStatus.SUCCEEDED, 0))


def _window(job: Job, now: int) -> None:
    """Advance ``job``'s rollout window to the one containing ``now``."""
    if now >= job.window_start + ROLLOUT_WINDOW_SECONDS:
        job.window_start += ROLLOUT_WINDOW_SECONDS * (
            (now - job.window_start) // ROLLOUT_WINDOW_SECONDS
        )
        job.window_count = 0


def release(effects: Effects, job: Job) -> None:
    """Give executions to waiting targets as far as the rollout allows (spec §3.8)."""
    if job.status is not JobStatus.IN_PROGRESS or not job.unreleased:
        return
    if job.rollout is None:
        count = len(job.unreleased)
    else:
        _window(job, effects.now)
        room = max(0, _window_rate(effects.state, job) - job.window_count)
        count = min(len(job.unreleased), room)
        job.window_count += count
    things = job.unreleased[:count]
    del job.unreleased[:count]
    for thing_name in things:
        create_execution(effects, job, thing_name)


def tick(state: JobsState, now: int) -> JobsOutcome:
    """Run the timers: timeouts (→ TIMED_OUT, retries, abort) and rollout releases.

    Call it at (or after) :func:`next_deadline`; calling it more often is harmless.

    Args:
        state: The state (mutated).
        now: Epoch seconds.

    Returns:
        The messages (notify/notify-next per affected thing, events).
    """
    effects = Effects(state, now)
    expired = [
        execution
        for by_job in state.executions.values()
        for found in by_job.values()
        for execution in found[-1:]
        if execution.status is ExecutionStatus.IN_PROGRESS
        and execution.deadline is not None
        and execution.deadline <= now
    ]
    expired.sort(key=lambda e: (e.deadline, e.sequence))
    for execution in expired:
        job = state.jobs[execution.job_id]
        if execution.status is ExecutionStatus.IN_PROGRESS:
            change_status(effects, job, execution, ExecutionStatus.TIMED_OUT)
    for job in list(state.jobs.values()):
        release(effects, job)
    return effects.outcome()


def next_deadline(state: JobsState) -> int | None:
    """Return when :func:`tick` has work next (may be in the past), or ``None``.

    Args:
        state: The state.

    Returns:
        The earliest timer deadline or rollout window change, in epoch seconds.
    """
    candidates = [
        execution.deadline
        for by_job in state.executions.values()
        for found in by_job.values()
        for execution in found[-1:]
        if execution.status is ExecutionStatus.IN_PROGRESS and execution.deadline is not None
    ]
    for job in state.jobs.values():
        if job.status is JobStatus.IN_PROGRESS and job.unreleased and job.rollout is not None:
            window_end = job.window_start + ROLLOUT_WINDOW_SECONDS
            full = job.window_count >= _window_rate(state, job)
            candidates.append(window_end if full else job.window_start)
    return min((c for c in candidates if c is not None), default=None)
