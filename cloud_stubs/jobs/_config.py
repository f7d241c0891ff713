"""Enums and job configurations (timeout, retry, rollout, abort) of the Jobs engine.

Each configuration validates itself on construction (raising
:class:`~cloud_stubs.jobs._errors.InvalidRequestError`) and converts from/to the AWS
API JSON shape with ``from_api``/``to_api`` (also the persistence format).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from cloud_stubs.jobs._errors import InvalidRequestError

JsonObject = dict[str, Any]
"""A JSON object as produced by :func:`json.loads`."""

MAX_TIMEOUT_MINUTES: Final = 10080
"""Upper bound of ``inProgressTimeoutInMinutes`` and ``stepTimeoutInMinutes`` (spec §3.7)."""

MAX_ROLLOUT_RATE: Final = 1000
"""Upper bound of rollout rates per minute (spec §3.8)."""


class JobStatus(StrEnum):
    """Status of a job (spec §3.8)."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"
    DELETION_IN_PROGRESS = "DELETION_IN_PROGRESS"


class ExecutionStatus(StrEnum):
    """Status of a job execution (spec §3.5)."""

    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        """Whether the status is final (anything but QUEUED and IN_PROGRESS)."""
        return self not in {ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS}


class TargetSelection(StrEnum):
    """SNAPSHOT jobs complete; CONTINUOUS jobs accept later targets (spec §3.8)."""

    SNAPSHOT = "SNAPSHOT"
    CONTINUOUS = "CONTINUOUS"


class FailureType(StrEnum):
    """Failure types of retry (FAILED/TIMED_OUT/ALL) and abort (all four) criteria."""

    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    ALL = "ALL"

    def matches(self, status: ExecutionStatus) -> bool:
        """Whether an execution ending in ``status`` counts as this failure type."""
        if self is FailureType.ALL:
            return status in {
                ExecutionStatus.FAILED,
                ExecutionStatus.REJECTED,
                ExecutionStatus.TIMED_OUT,
            }
        return status.value == self.value


def _int_in(value: Any, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InvalidRequestError(f"{what} must be an integer in [{low}, {high}]: {value!r}")
    return value


def _api(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidRequestError(f"{what} must be an object")
    return data


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """``timeoutConfig``: the in-progress timer of every execution of the job.

    Attributes:
        in_progress_minutes: Minutes from IN_PROGRESS to TIMED_OUT (1-10080).
    """

    in_progress_minutes: int

    def __post_init__(self) -> None:
        _int_in(self.in_progress_minutes, 1, MAX_TIMEOUT_MINUTES, "inProgressTimeoutInMinutes")

    @classmethod
    def from_api(cls, data: Any) -> "TimeoutConfig":
        """Build from the API shape ``{"inProgressTimeoutInMinutes": N}``."""
        minutes: Any = _api(data, "timeoutConfig").get("inProgressTimeoutInMinutes")
        return cls(minutes)

    def to_api(self) -> JsonObject:
        """Return the API shape."""
        return {"inProgressTimeoutInMinutes": self.in_progress_minutes}


@dataclass(frozen=True, slots=True)
class RetryCriteria:
    """One ``jobExecutionsRetryConfig.criteriaList`` entry.

    Attributes:
        failure_type: FAILED, TIMED_OUT or ALL.
        number_of_retries: 0-10.
    """

    failure_type: FailureType
    number_of_retries: int

    def __post_init__(self) -> None:
        if self.failure_type is FailureType.REJECTED:
            raise InvalidRequestError("retry failureType must be FAILED, TIMED_OUT or ALL")
        _int_in(self.number_of_retries, 0, 10, "numberOfRetries")


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """``jobExecutionsRetryConfig`` (spec §3.7).

    [U] Counting: a FAILED (or TIMED_OUT) execution is retried while the retries already
    used for that failure type stay below the matching specific criterion; when only an
    ``ALL`` criterion exists, FAILED and TIMED_OUT retries share its budget. The counting
    lives only in ``_engine._retry_allowed``.

    Attributes:
        criteria: 1-2 criteria.
    """

    criteria: tuple[RetryCriteria, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.criteria) <= 2:  # noqa: PLR2004
            raise InvalidRequestError("retry criteriaList must have 1 or 2 entries")
        if sum(c.number_of_retries for c in self.criteria) > 10:  # noqa: PLR2004
            raise InvalidRequestError("at most 10 retries in total")

    @classmethod
    def from_api(cls, data: Any) -> "RetryConfig":
        """Build from ``{"criteriaList": [{"failureType": …, "numberOfRetries": N}]}``."""
        entries = _api(data, "jobExecutionsRetryConfig").get("criteriaList")
        if not isinstance(entries, list):
            raise InvalidRequestError("criteriaList must be a list")
        try:
            return cls(
                tuple(
                    RetryCriteria(FailureType(e["failureType"]), e["numberOfRetries"])
                    for e in entries
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"invalid retry criteria: {exc}") from exc

    def to_api(self) -> JsonObject:
        """Return the API shape."""
        return {
            "criteriaList": [
                {"failureType": c.failure_type.value, "numberOfRetries": c.number_of_retries}
                for c in self.criteria
            ]
        }


@dataclass(frozen=True, slots=True)
class ExponentialRate:
    """``jobExecutionsRolloutConfig.exponentialRate`` (spec §3.8).

    Exactly one of the two thresholds is set (the ``rateIncreaseCriteria``).

    Attributes:
        base_rate_per_minute: Initial rate, 1-1000.
        increment_factor: Rate multiplier per threshold step, 1.1-5.
        number_of_notified_things: Step size counted in executions created.
        number_of_succeeded_things: Step size counted in SUCCEEDED things.
    """

    base_rate_per_minute: int
    increment_factor: float
    number_of_notified_things: int | None = None
    number_of_succeeded_things: int | None = None

    def __post_init__(self) -> None:
        _int_in(self.base_rate_per_minute, 1, MAX_ROLLOUT_RATE, "baseRatePerMinute")
        factor = self.increment_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise InvalidRequestError("incrementFactor must be a number")
        if not 1.1 <= factor <= 5:  # noqa: PLR2004
            raise InvalidRequestError("incrementFactor must be in [1.1, 5]")
        thresholds = [self.number_of_notified_things, self.number_of_succeeded_things]
        if sum(t is not None for t in thresholds) != 1:
            raise InvalidRequestError("rateIncreaseCriteria needs exactly one threshold")
        _int_in(next(t for t in thresholds if t is not None), 1, 2**31, "rateIncreaseCriteria")

    @property
    def threshold(self) -> int:
        """The criteria step size."""
        value = self.number_of_notified_things or self.number_of_succeeded_things
        return value or 1


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """``jobExecutionsRolloutConfig``.

    [U] When both are given, the exponential rate is capped by ``maximum_per_minute``.

    Attributes:
        maximum_per_minute: Constant rate (1-1000), or the cap of the exponential rate.
        exponential_rate: Growing rate, or ``None``.
    """

    maximum_per_minute: int | None = None
    exponential_rate: ExponentialRate | None = None

    def __post_init__(self) -> None:
        if self.maximum_per_minute is None and self.exponential_rate is None:
            raise InvalidRequestError("rollout needs maximumPerMinute or exponentialRate")
        if self.maximum_per_minute is not None:
            _int_in(self.maximum_per_minute, 1, MAX_ROLLOUT_RATE, "maximumPerMinute")

    @classmethod
    def from_api(cls, data: Any) -> "RolloutConfig":
        """Build from the API shape (``maximumPerMinute`` / ``exponentialRate``)."""
        data = _api(data, "jobExecutionsRolloutConfig")
        exponential = None
        if data.get("exponentialRate") is not None:
            rate = _api(data["exponentialRate"], "exponentialRate")
            criteria = _api(rate.get("rateIncreaseCriteria"), "rateIncreaseCriteria")
            base: Any = rate.get("baseRatePerMinute")
            factor: Any = rate.get("incrementFactor")
            exponential = ExponentialRate(
                base,
                factor,
                criteria.get("numberOfNotifiedThings"),
                criteria.get("numberOfSucceededThings"),
            )
        return cls(data.get("maximumPerMinute"), exponential)

    def to_api(self) -> JsonObject:
        """Return the API shape."""
        result: JsonObject = {}
        if self.maximum_per_minute is not None:
            result["maximumPerMinute"] = self.maximum_per_minute
        rate = self.exponential_rate
        if rate is not None:
            criteria: JsonObject = {}
            if rate.number_of_notified_things is not None:
                criteria["numberOfNotifiedThings"] = rate.number_of_notified_things
            if rate.number_of_succeeded_things is not None:
                criteria["numberOfSucceededThings"] = rate.number_of_succeeded_things
            result["exponentialRate"] = {
                "baseRatePerMinute": rate.base_rate_per_minute,
                "incrementFactor": rate.increment_factor,
                "rateIncreaseCriteria": criteria,
            }
        return result


@dataclass(frozen=True, slots=True)
class AbortCriteria:
    """One ``abortConfig.criteriaList`` entry (the only action is CANCEL).

    Attributes:
        failure_type: FAILED, REJECTED, TIMED_OUT or ALL.
        threshold_percentage: 0-100.
        min_number_of_executed_things: At least 1.
    """

    failure_type: FailureType
    threshold_percentage: float
    min_number_of_executed_things: int

    def __post_init__(self) -> None:
        pct = self.threshold_percentage
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100:  # noqa: PLR2004
            raise InvalidRequestError("thresholdPercentage must be a number in [0, 100]")
        _int_in(self.min_number_of_executed_things, 1, 2**31, "minNumberOfExecutedThings")


@dataclass(frozen=True, slots=True)
class AbortConfig:
    """``abortConfig`` (spec §3.8).

    [U] Evaluation (only in ``_engine.check_abort``): "executed things" are the things
    that have received an execution of the job (the API text says "must receive job
    execution notifications"); a criterion fires when that count reaches
    ``min_number_of_executed_things`` and the things whose last *finished* execution
    ended in a matching failure (``JobsState.outcome_counts``; a failure stays counted
    while its retry is pending) make up at least ``threshold_percentage`` percent of it
    (and at least one). It is evaluated whenever an execution of the job ends, before
    any retry is queued, so an aborting failure is not retried.

    Attributes:
        criteria: At least one criterion.
    """

    criteria: tuple[AbortCriteria, ...]

    def __post_init__(self) -> None:
        if not self.criteria:
            raise InvalidRequestError("abort criteriaList must not be empty")

    @classmethod
    def from_api(cls, data: Any) -> "AbortConfig":
        """Build from ``{"criteriaList": [{"failureType", "action", …}]}``."""
        entries = _api(data, "abortConfig").get("criteriaList")
        if not isinstance(entries, list):
            raise InvalidRequestError("criteriaList must be a list")
        try:
            criteria = []
            for entry in entries:
                if entry.get("action", "CANCEL") != "CANCEL":
                    raise InvalidRequestError("abort action must be CANCEL")
                criteria.append(
                    AbortCriteria(
                        FailureType(entry["failureType"]),
                        entry["thresholdPercentage"],
                        entry["minNumberOfExecutedThings"],
                    )
                )
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidRequestError(f"invalid abort criteria: {exc}") from exc
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from exc
        return cls(tuple(criteria))

    def to_api(self) -> JsonObject:
        """Return the API shape."""
        return {
            "criteriaList": [
                {
                    "failureType": c.failure_type.value,
                    "action": "CANCEL",
                    "thresholdPercentage": c.threshold_percentage,
                    "minNumberOfExecutedThings": c.min_number_of_executed_things,
                }
                for c in self.criteria
            ]
        }
