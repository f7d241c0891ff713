"""Jobs device-API topic grammar (spec §3.1).

Request topics under ``$aws/things/{thing}/jobs/``:

* ``get`` → GetPendingJobExecutions
* ``start-next`` → StartNextPendingJobExecution
* ``{jobId}/get`` → DescribeJobExecution (``jobId`` may be ``$next``)
* ``{jobId}/update`` → UpdateJobExecution

The service's own topics (anything ending in ``/accepted`` or ``/rejected``,
``notify``, ``notify-next`` and the ``notify-namespace-…`` variants) are not requests.
Any other topic under the prefix is an *invalid topic* request, answered on
``<topic>/rejected`` with ``InvalidTopic``.
"""

from dataclasses import dataclass
from enum import StrEnum

from cloud_stubs.jobs._model import is_valid_thing_name

NEXT_JOB_ID = "$next"
"""The pseudo job id of DescribeJobExecution that selects the next pending execution."""


class JobsOperation(StrEnum):
    """A jobs device-API operation."""

    GET_PENDING = "GetPendingJobExecutions"
    START_NEXT = "StartNextPendingJobExecution"
    DESCRIBE = "DescribeJobExecution"
    UPDATE = "UpdateJobExecution"
    INVALID_TOPIC = "InvalidTopic"


@dataclass(frozen=True, slots=True)
class JobsRequestTopic:
    """A parsed jobs request topic.

    Attributes:
        topic: The request topic as received; responses go to ``topic + "/accepted"``
            or ``topic + "/rejected"``.
        thing_name: The thing (validated).
        operation: The operation (``INVALID_TOPIC`` for unknown topics under the prefix).
        job_id: The job id (or ``$next``) for DESCRIBE/UPDATE, otherwise ``None``.
    """

    topic: str
    thing_name: str
    operation: JobsOperation
    job_id: str | None = None

    @property
    def accepted_topic(self) -> str:
        """Topic of the accepted response."""
        return f"{self.topic}/accepted"

    @property
    def rejected_topic(self) -> str:
        """Topic of the rejected response."""
        return f"{self.topic}/rejected"


def _is_service_topic(rest: list[str]) -> bool:
    last = rest[-1]
    return (
        last in {"accepted", "rejected"}
        or rest in (["notify"], ["notify-next"])
        or any(part.startswith("notify-namespace-") for part in rest)
    )


def parse_jobs_topic(topic: str) -> JobsRequestTopic | None:
    """Parse a topic published by a device.

    Args:
        topic: An MQTT topic name.

    Returns:
        The request, or ``None`` when the topic is not under
        ``$aws/things/{valid thing}/jobs/`` or is one of the service's own topics.
    """
    parts = topic.split("/")
    if len(parts) < 5 or parts[:2] != ["$aws", "things"] or parts[3] != "jobs":  # noqa: PLR2004
        return None
    thing_name, rest = parts[2], parts[4:]
    if not is_valid_thing_name(thing_name) or _is_service_topic(rest):
        return None
    if rest == ["get"]:
        return JobsRequestTopic(topic, thing_name, JobsOperation.GET_PENDING)
    if rest == ["start-next"]:
        return JobsRequestTopic(topic, thing_name, JobsOperation.START_NEXT)
    if len(rest) == 2 and rest[0] and rest[1] in {"get", "update"}:  # noqa: PLR2004
        operation = JobsOperation.DESCRIBE if rest[1] == "get" else JobsOperation.UPDATE
        return JobsRequestTopic(topic, thing_name, operation, rest[0])
    return JobsRequestTopic(topic, thing_name, JobsOperation.INVALID_TOPIC)
