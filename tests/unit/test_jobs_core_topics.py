"""Jobs topic grammar, InvalidTopic and job events (spec §3.1, §3.6, §3.8)."""

import json
from typing import Any

import pytest

from cloud_stubs.jobs import (
    ExecutionStatus,
    JobsOperation,
    JobsOutcome,
    JobsRequestTopic,
    JobsState,
    MessageKind,
    create_job,
    handle_jobs_request,
    parse_jobs_topic,
)

NOW = 1_700_000_000
DOC = {"operation": "install", "nested": {"k": [1, 2]}}


def request(state: JobsState, suffix: str, body: Any = b"", now: int = NOW, thing: str = "T"):
    topic = f"$aws/things/{thing}/jobs/{suffix}"
    parsed = parse_jobs_topic(topic)
    assert parsed is not None
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return handle_jobs_request(state, parsed, payload, now)


def response(outcome: JobsOutcome) -> tuple[str, dict[str, Any]]:
    first = outcome.messages[0]
    assert first.kind is MessageKind.RESPONSE
    assert [m.kind for m in outcome.messages].count(MessageKind.RESPONSE) == 1
    return first.topic, first.payload


def accepted(outcome: JobsOutcome) -> dict[str, Any]:
    topic, payload = response(outcome)
    assert topic.endswith("/accepted"), payload
    assert outcome.accepted
    return payload


def rejected(outcome: JobsOutcome, code: str) -> dict[str, Any]:
    topic, payload = response(outcome)
    assert topic.endswith("/rejected")
    assert not outcome.accepted
    assert not outcome.changed
    assert payload["code"] == code, payload
    assert isinstance(payload["message"], str)
    assert payload["timestamp"] == NOW
    return payload


@pytest.fixture
def state() -> JobsState:
    return JobsState()


def with_jobs(state: JobsState, *job_ids: str, thing: str = "T", **kwargs: Any) -> JobsState:
    for offset, job_id in enumerate(job_ids):
        create_job(state, job_id, targets=[thing], document=DOC, now=NOW - 100 + offset, **kwargs)
    return state


# --------------------------------------------------------------------------- topics


def test_invalid_topic(state: JobsState) -> None:
    for suffix in ("foo", "a/b/c", "j1/delete", "start-next/x"):
        outcome = request(state, suffix, {"clientToken": "q"})
        topic, payload = response(outcome)
        assert topic == f"$aws/things/T/jobs/{suffix}/rejected"
        assert payload["code"] == "InvalidTopic"
        assert payload["clientToken"] == "q"
    outcome = request(state, "foo", b"garbage")
    assert "clientToken" not in response(outcome)[1]


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (
            "$aws/things/T/jobs/get",
            JobsRequestTopic("$aws/things/T/jobs/get", "T", JobsOperation.GET_PENDING),
        ),
        (
            "$aws/things/T/jobs/start-next",
            JobsRequestTopic("$aws/things/T/jobs/start-next", "T", JobsOperation.START_NEXT),
        ),
        (
            "$aws/things/T/jobs/$next/get",
            JobsRequestTopic("$aws/things/T/jobs/$next/get", "T", JobsOperation.DESCRIBE, "$next"),
        ),
        (
            "$aws/things/T/jobs/j-1/update",
            JobsRequestTopic("$aws/things/T/jobs/j-1/update", "T", JobsOperation.UPDATE, "j-1"),
        ),
        (
            "$aws/things/T/jobs/get/get",
            JobsRequestTopic("$aws/things/T/jobs/get/get", "T", JobsOperation.DESCRIBE, "get"),
        ),
        (
            "$aws/things/T/jobs/",
            JobsRequestTopic("$aws/things/T/jobs/", "T", JobsOperation.INVALID_TOPIC),
        ),
    ],
)
def test_parse_jobs_topic(topic: str, expected: JobsRequestTopic) -> None:
    assert parse_jobs_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "$aws/things/T/jobs/notify",
        "$aws/things/T/jobs/notify-next",
        "$aws/things/T/jobs/j1/notify-namespace-ns/",
        "$aws/things/T/jobs/get/accepted",
        "$aws/things/T/jobs/get/rejected",
        "$aws/things/T/jobs/j1/update/accepted",
        "$aws/things/T/jobs/foo/rejected",
        "$aws/things/T/jobs",
        "$aws/things/T/shadow/get",
        "$aws/things/bad name/jobs/get",
        "things/T/jobs/get",
    ],
)
def test_parse_jobs_topic_non_requests(topic: str) -> None:
    assert parse_jobs_topic(topic) is None


def test_request_topic_helpers() -> None:
    parsed = parse_jobs_topic("$aws/things/T/jobs/j1/update")
    assert parsed is not None
    assert parsed.accepted_topic == "$aws/things/T/jobs/j1/update/accepted"
    assert parsed.rejected_topic == "$aws/things/T/jobs/j1/update/rejected"


def test_execution_events(state: JobsState) -> None:
    with_jobs(state, "j1")
    outcome = request(state, "j1/update", {"status": "SUCCEEDED", "statusDetails": {"a": "b"}})
    events = {m.topic: m.payload for m in outcome.messages if m.kind is MessageKind.EVENT}
    assert events["$aws/events/jobExecution/j1/succeeded"] == {
        "eventType": "JOB_EXECUTION",
        "operation": "succeeded",
        "jobId": "j1",
        "thingName": "T",
        "status": "SUCCEEDED",
        "statusDetails": {"a": "b"},
        "timestamp": NOW,
    }
    assert events["$aws/events/job/j1/completed"]["status"] == "COMPLETED"
    assert state.jobs["j1"].status.value == "COMPLETED"
    assert state.latest("j1", "T") is not None
    assert state.latest("j1", "T").status is ExecutionStatus.SUCCEEDED  # type: ignore[union-attr]
