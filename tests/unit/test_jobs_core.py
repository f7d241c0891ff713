"""Example-based tests of the jobs device API against docs/iot_core_protocol.md §3.1-§3.6."""

import json
from typing import Any

import pytest

from cloud_stubs.jobs import (
    FailureType,
    JobsOutcome,
    JobsState,
    MessageKind,
    RetryConfig,
    RetryCriteria,
    TimeoutConfig,
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


def by_topic(outcome: JobsOutcome) -> dict[str, dict[str, Any]]:
    result = {m.topic: m.payload for m in outcome.messages}
    assert len(result) == len(outcome.messages)
    return result


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


def notifications(outcome: JobsOutcome, thing: str = "T") -> list[str]:
    prefix = f"$aws/things/{thing}/jobs/"
    return [
        m.topic.removeprefix(prefix)
        for m in outcome.messages
        if m.kind is MessageKind.NOTIFICATION and m.topic.startswith(prefix)
    ]


@pytest.fixture
def state() -> JobsState:
    return JobsState()


def with_jobs(state: JobsState, *job_ids: str, thing: str = "T", **kwargs: Any) -> JobsState:
    for offset, job_id in enumerate(job_ids):
        create_job(state, job_id, targets=[thing], document=DOC, now=NOW - 100 + offset, **kwargs)
    return state


# --------------------------------------------------------------------------- §3.4 sequence


def test_sdk_expected_sequence(state: JobsState) -> None:
    outcome = create_job(state, "job-1", targets=["T"], document={"test": "do-something"}, now=NOW)
    assert notifications(outcome) == ["notify-next", "notify"]
    messages = by_topic(outcome)
    assert messages["$aws/things/T/jobs/notify-next"] == {
        "timestamp": NOW,
        "execution": {
            "jobId": "job-1",
            "thingName": "T",
            "status": "QUEUED",
            "queuedAt": NOW,
            "lastUpdatedAt": NOW,
            "versionNumber": 1,
            "executionNumber": 1,
            "jobDocument": {"test": "do-something"},
        },
    }
    assert messages["$aws/things/T/jobs/notify"] == {
        "timestamp": NOW,
        "jobs": {
            "QUEUED": [
                {
                    "jobId": "job-1",
                    "queuedAt": NOW,
                    "lastUpdatedAt": NOW,
                    "versionNumber": 1,
                    "executionNumber": 1,
                }
            ]
        },
    }

    outcome = request(state, "start-next", {"clientToken": "c1"}, now=NOW + 1)
    assert notifications(outcome) == []
    body = accepted(outcome)
    assert body["clientToken"] == "c1"
    assert body["execution"]["status"] == "IN_PROGRESS"
    assert body["execution"]["versionNumber"] == 2
    assert body["execution"]["startedAt"] == NOW + 1

    body = accepted(request(state, "job-1/get", {"clientToken": "c2"}, now=NOW + 2))
    assert body["execution"]["status"] == "IN_PROGRESS"

    outcome = request(state, "job-1/update", {"status": "SUCCEEDED", "clientToken": "c3"}, NOW + 3)
    assert accepted(outcome) == {"timestamp": NOW + 3, "clientToken": "c3"}
    assert notifications(outcome) == ["notify-next", "notify"]
    messages = by_topic(outcome)
    assert messages["$aws/things/T/jobs/notify-next"] == {"timestamp": NOW + 3}
    assert messages["$aws/things/T/jobs/notify"] == {"timestamp": NOW + 3, "jobs": {}}

    assert accepted(request(state, "get", now=NOW + 4)) == {
        "inProgressJobs": [],
        "queuedJobs": [],
        "timestamp": NOW + 4,
    }


# --------------------------------------------------------------------------- GetPending


def test_get_pending_empty_arrays_and_token(state: JobsState) -> None:
    assert accepted(request(state, "get", {"clientToken": "x"})) == {
        "inProgressJobs": [],
        "queuedJobs": [],
        "timestamp": NOW,
        "clientToken": "x",
    }


def test_get_pending_order(state: JobsState) -> None:
    with_jobs(state, "j1", "j2", "j3")
    request(state, "j3/update", {"status": "IN_PROGRESS"})
    body = accepted(request(state, "get"))
    assert [j["jobId"] for j in body["inProgressJobs"]] == ["j3"]
    assert [j["jobId"] for j in body["queuedJobs"]] == ["j1", "j2"]
    assert body["inProgressJobs"][0] == {
        "jobId": "j3",
        "queuedAt": NOW - 98,
        "startedAt": NOW,
        "lastUpdatedAt": NOW,
        "versionNumber": 2,
        "executionNumber": 1,
    }


def test_ties_in_queued_at_follow_creation_order(state: JobsState) -> None:
    for job_id in ("zz", "aa", "mm"):
        create_job(state, job_id, targets=["T"], document=DOC, now=NOW)
    body = accepted(request(state, "get"))
    assert [j["jobId"] for j in body["queuedJobs"]] == ["zz", "aa", "mm"]


# --------------------------------------------------------------------------- StartNext


def test_start_next_with_nothing_pending_omits_execution(state: JobsState) -> None:
    assert accepted(request(state, "start-next")) == {"timestamp": NOW}


def test_start_next_sets_details_and_step_timer(state: JobsState) -> None:
    with_jobs(state, "j1", "j2", timeout_config=TimeoutConfig(60))
    body = accepted(
        request(state, "start-next", {"statusDetails": {"step": "dl"}, "stepTimeoutInMinutes": 5})
    )
    assert body["execution"] == {
        "jobId": "j1",
        "thingName": "T",
        "status": "IN_PROGRESS",
        "statusDetails": {"step": "dl"},
        "queuedAt": NOW - 100,
        "startedAt": NOW,
        "lastUpdatedAt": NOW,
        "versionNumber": 2,
        "executionNumber": 1,
        "approximateSecondsBeforeTimedOut": 300,
        "jobDocument": DOC,
    }


def test_start_next_returns_in_progress_unchanged(state: JobsState) -> None:
    with_jobs(state, "j1", "j2")
    request(state, "j2/update", {"status": "IN_PROGRESS", "statusDetails": {"a": "b"}})
    outcome = request(state, "start-next", {"statusDetails": {"other": "x"}}, now=NOW + 5)
    execution = accepted(outcome)["execution"]
    assert execution["jobId"] == "j2"
    assert execution["statusDetails"] == {"a": "b"}
    assert execution["versionNumber"] == 2
    assert execution["lastUpdatedAt"] == NOW
    assert notifications(outcome) == []


@pytest.mark.parametrize(
    "body",
    [
        {"stepTimeoutInMinutes": 0},
        {"stepTimeoutInMinutes": 10081},
        {"stepTimeoutInMinutes": -1},
        {"stepTimeoutInMinutes": "5"},
        {"stepTimeoutInMinutes": True},
        {"stepTimeoutInMinutes": 1.5},
        {"statusDetails": {"k": 1}},
        {"statusDetails": []},
        {"clientToken": 7},
    ],
)
def test_start_next_invalid_requests(state: JobsState, body: dict[str, Any]) -> None:
    with_jobs(state, "j1")
    before = state.to_json()
    payload = rejected(request(state, "start-next", body), "InvalidRequest")
    assert "clientToken" not in payload
    assert state.to_json() == before


# --------------------------------------------------------------------------- Describe


def test_describe_defaults_and_options(state: JobsState) -> None:
    with_jobs(state, "j1")
    body = accepted(request(state, "j1/get", {"clientToken": "t"}))
    assert body["execution"]["jobDocument"] == DOC
    assert body["clientToken"] == "t"
    body = accepted(request(state, "j1/get", {"includeJobDocument": False}))
    assert "jobDocument" not in body["execution"]
    assert "statusDetails" not in body["execution"]
    assert "startedAt" not in body["execution"]


def test_describe_next(state: JobsState) -> None:
    assert accepted(request(state, "$next/get")) == {"timestamp": NOW}
    with_jobs(state, "j1", "j2")
    before = state.to_json()
    outcome = request(state, "$next/get", {"clientToken": "n"})
    assert accepted(outcome)["execution"]["jobId"] == "j1"
    assert accepted(outcome)["execution"]["status"] == "QUEUED"
    assert state.to_json() == before
    assert not outcome.changed


def test_describe_by_execution_number_and_terminal(state: JobsState) -> None:
    with_jobs(state, "j1", retry_config=RetryConfig((RetryCriteria(FailureType.FAILED, 1),)))
    request(state, "j1/update", {"status": "FAILED"})
    assert accepted(request(state, "j1/get"))["execution"]["executionNumber"] == 2
    old = accepted(request(state, "j1/get", {"executionNumber": 1}))["execution"]
    assert old["status"] == "FAILED"
    assert old["executionNumber"] == 1
    rejected(request(state, "j1/get", {"executionNumber": 3}), "ResourceNotFound")


@pytest.mark.parametrize(
    "body",
    [{"includeJobDocument": "yes"}, {"executionNumber": 0}, {"executionNumber": "x"}, b"[1]"],
)
def test_describe_invalid_requests(state: JobsState, body: Any) -> None:
    with_jobs(state, "j1")
    rejected(request(state, "j1/get", body), "InvalidRequest")


def test_describe_unknown_job_or_thing(state: JobsState) -> None:
    with_jobs(state, "j1")
    payload = rejected(request(state, "nope/get", {"clientToken": "t"}), "ResourceNotFound")
    assert payload["clientToken"] == "t"
    assert "executionState" not in payload
    rejected(request(state, "j1/get", thing="Other"), "ResourceNotFound")


# --------------------------------------------------------------------------- Update


def test_update_full_response(state: JobsState) -> None:
    with_jobs(state, "j1")
    body = {
        "status": "IN_PROGRESS",
        "statusDetails": {"progress": "50%"},
        "expectedVersion": "1",
        "executionNumber": 1,
        "includeJobExecutionState": True,
        "includeJobDocument": True,
        "clientToken": "u",
    }
    assert accepted(request(state, "j1/update", body)) == {
        "executionState": {
            "status": "IN_PROGRESS",
            "statusDetails": {"progress": "50%"},
            "versionNumber": 2,
        },
        "jobDocument": DOC,
        "timestamp": NOW,
        "clientToken": "u",
    }


def test_update_in_progress_repeatedly_and_details_rules(state: JobsState) -> None:
    with_jobs(state, "j1")
    request(state, "j1/update", {"status": "IN_PROGRESS", "statusDetails": {"a": "1"}})
    request(state, "j1/update", {"status": "IN_PROGRESS", "expectedVersion": 2}, now=NOW + 1)
    state_body = accepted(
        request(state, "j1/update", {"status": "IN_PROGRESS", "includeJobExecutionState": True})
    )["executionState"]
    assert state_body == {"status": "IN_PROGRESS", "statusDetails": {"a": "1"}, "versionNumber": 4}
    execution = accepted(request(state, "j1/get"))["execution"]
    assert execution["startedAt"] == NOW
    state_body = accepted(
        request(
            state,
            "j1/update",
            {"status": "IN_PROGRESS", "statusDetails": {}, "includeJobExecutionState": True},
        )
    )["executionState"]
    assert state_body == {"status": "IN_PROGRESS", "versionNumber": 5}


def test_queued_can_go_terminal_directly(state: JobsState) -> None:
    with_jobs(state, "j1")
    outcome = request(state, "j1/update", {"status": "REJECTED", "includeJobExecutionState": True})
    assert accepted(outcome)["executionState"] == {"status": "REJECTED", "versionNumber": 2}
    assert "startedAt" not in accepted(request(state, "j1/get"))["execution"]


def test_version_mismatch_carries_execution_state(state: JobsState) -> None:
    with_jobs(state, "j1")
    payload = rejected(
        request(
            state, "j1/update", {"status": "SUCCEEDED", "expectedVersion": 5, "clientToken": "v"}
        ),
        "VersionMismatch",
    )
    assert payload["executionState"] == {"status": "QUEUED", "versionNumber": 1}
    assert payload["clientToken"] == "v"


def test_terminal_state_is_final(state: JobsState) -> None:
    with_jobs(state, "j1")
    request(state, "j1/update", {"status": "SUCCEEDED", "statusDetails": {"r": "ok"}})
    before = state.to_json()
    for status in ("IN_PROGRESS", "SUCCEEDED", "FAILED"):
        payload = rejected(
            request(state, "j1/update", {"status": status}), "InvalidStateTransition"
        )
        assert payload["executionState"] == {
            "status": "SUCCEEDED",
            "statusDetails": {"r": "ok"},
            "versionNumber": 2,
        }
    assert state.to_json() == before


def test_terminal_checked_before_version(state: JobsState) -> None:
    with_jobs(state, "j1")
    request(state, "j1/update", {"status": "FAILED"})
    rejected(
        request(state, "j1/update", {"status": "FAILED", "expectedVersion": 1}),
        "InvalidStateTransition",
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": None},
        {"status": "DONE"},
        {"status": "succeeded"},
        {"status": 3},
        {"status": "QUEUED"},
        {"status": "CANCELED"},
        {"status": "TIMED_OUT"},
        {"status": "REMOVED"},
        {"status": "SUCCEEDED", "expectedVersion": "v1"},
        {"status": "SUCCEEDED", "expectedVersion": 1.0},
        {"status": "SUCCEEDED", "expectedVersion": True},
        {"status": "SUCCEEDED", "executionNumber": 0},
        {"status": "SUCCEEDED", "includeJobExecutionState": 1},
        {"status": "SUCCEEDED", "includeJobDocument": "true"},
        {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 0},
        {"status": "IN_PROGRESS", "stepTimeoutInMinutes": -2},
        {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 10081},
        {"status": "SUCCEEDED", "statusDetails": "x"},
        {"status": "SUCCEEDED", "statusDetails": {"k": 1}},
        {"status": "SUCCEEDED", "statusDetails": {"k": ""}},
        {"status": "SUCCEEDED", "statusDetails": {"k": "x" * 1025}},
        {"status": "SUCCEEDED", "statusDetails": {"k": "a\nb"}},
        {"status": "SUCCEEDED", "statusDetails": {"k": "a\u200bb"}},
        {"status": "SUCCEEDED", "statusDetails": {"bad key": "v"}},
        {"status": "SUCCEEDED", "statusDetails": {"": "v"}},
        {"status": "SUCCEEDED", "statusDetails": {"k" * 129: "v"}},
        {"status": "SUCCEEDED", "statusDetails": {f"k{i}": "v" for i in range(11)}},
        {"status": "SUCCEEDED", "statusDetails": {"k": {"nested": "x"}}},
    ],
)
def test_update_invalid_requests(state: JobsState, body: dict[str, Any]) -> None:
    with_jobs(state, "j1")
    before = state.to_json()
    rejected(request(state, "j1/update", body), "InvalidRequest")
    assert state.to_json() == before


def test_update_valid_edge_values(state: JobsState) -> None:
    with_jobs(state, "j1")
    details = {f"k:_-{i}": "ü" * 1024 for i in range(10)}
    details["K" * 128] = details.pop("k:_-9")
    body = {"status": "IN_PROGRESS", "statusDetails": details, "stepTimeoutInMinutes": 10080}
    accepted(request(state, "j1/update", body))
    accepted(request(state, "j1/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": -1}))


def test_update_unknown_execution(state: JobsState) -> None:
    with_jobs(state, "j1")
    rejected(request(state, "j2/update", {"status": "SUCCEEDED"}), "ResourceNotFound")
    rejected(request(state, "j1/update", {"status": "SUCCEEDED"}, thing="U"), "ResourceNotFound")
    rejected(
        request(state, "j1/update", {"status": "SUCCEEDED", "executionNumber": 2}),
        "ResourceNotFound",
    )
    rejected(request(state, "$next/update", {"status": "SUCCEEDED"}), "ResourceNotFound")


# --------------------------------------------------------------------------- notifications


def test_non_head_becoming_in_progress_sends_notify_next_only(state: JobsState) -> None:
    with_jobs(state, "j1", "j2")
    outcome = request(state, "j2/update", {"status": "IN_PROGRESS"})
    assert notifications(outcome) == ["notify-next"]
    assert by_topic(outcome)["$aws/things/T/jobs/notify-next"]["execution"]["jobId"] == "j2"


def test_head_in_progress_update_sends_nothing(state: JobsState) -> None:
    with_jobs(state, "j1", "j2")
    assert notifications(request(state, "j1/update", {"status": "IN_PROGRESS"})) == []


def test_non_head_terminal_sends_notify_only(state: JobsState) -> None:
    with_jobs(state, "j1", "j2")
    outcome = request(state, "j2/update", {"status": "REJECTED"})
    assert notifications(outcome) == ["notify"]
    assert by_topic(outcome)["$aws/things/T/jobs/notify"]["jobs"] == {
        "QUEUED": [
            {
                "jobId": "j1",
                "queuedAt": NOW - 100,
                "lastUpdatedAt": NOW - 100,
                "versionNumber": 1,
                "executionNumber": 1,
            }
        ]
    }


def test_head_terminal_sends_both_with_next_head(state: JobsState) -> None:
    with_jobs(state, "j1", "j2")
    request(state, "start-next")
    outcome = request(state, "j1/update", {"status": "FAILED"})
    assert notifications(outcome) == ["notify-next", "notify"]
    messages = by_topic(outcome)
    assert messages["$aws/things/T/jobs/notify-next"]["execution"]["jobId"] == "j2"
    assert list(messages["$aws/things/T/jobs/notify"]["jobs"]) == ["QUEUED"]


def test_notify_lists_in_progress_before_queued_and_caps_at_ten(state: JobsState) -> None:
    with_jobs(state, *[f"j{i:02}" for i in range(12)])
    request(state, "j05/update", {"status": "IN_PROGRESS"})
    outcome = request(state, "j11/update", {"status": "SUCCEEDED"})
    jobs = by_topic(outcome)["$aws/things/T/jobs/notify"]["jobs"]
    assert list(jobs) == ["IN_PROGRESS", "QUEUED"]
    assert [j["jobId"] for j in jobs["IN_PROGRESS"]] == ["j05"]
    assert len(jobs["QUEUED"]) == 9


# --------------------------------------------------------------------------- payload errors


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe", b'{"a": NaN}', b"[" * 50_000])
@pytest.mark.parametrize("suffix", ["get", "start-next", "j1/get", "j1/update"])
def test_invalid_json(state: JobsState, payload: bytes, suffix: str) -> None:
    with_jobs(state, "j1")
    body = rejected(request(state, suffix, payload), "InvalidJson")
    assert "clientToken" not in body


@pytest.mark.parametrize("suffix", ["get", "start-next", "j1/get"])
def test_empty_payload_is_fine(state: JobsState, suffix: str) -> None:
    with_jobs(state, "j1")
    accepted(request(state, suffix, b""))


@pytest.mark.parametrize("payload", [b"[]", b"5", b'"x"', b"null", b'{"clientToken": 5}'])
def test_non_object_payload_is_invalid_request(state: JobsState, payload: bytes) -> None:
    rejected(request(state, "get", payload), "InvalidRequest")
