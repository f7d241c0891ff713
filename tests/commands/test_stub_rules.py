"""The Commands service's rules (§9.4-§9.8), as pure functions: no broker."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from cloud_stubs.commands import (
    NO_RESPONSE_REASON,
    Execution,
    ExecutionStatus,
    UpdateRejected,
    ValidationError,
    apply_update,
    event,
    execution_view,
    message_expiry,
    new_command,
    request_topic,
    time_out,
    validate_update,
)
from cloud_stubs.commands._service import reply_topic

S = ExecutionStatus


def _execution(status: S = S.CREATED, *, terminal: bool = False) -> Execution:
    return Execution(
        execution_id="e1",
        command_id="c1",
        target_kind="things",
        target_id="t1",
        status=status,
        timeout_s=10,
        created_at=100.0,
        last_updated_at=100.0,
        deadline=110.0,
        terminal=terminal,
    )


def _update(body: Mapping[str, object]) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("content_type", "suffix"),
    [
        ("application/json", "/request/json"),
        ("application/cbor", "/request/cbor"),
        ("application/octet-stream", "/request"),
        ("text/plain", "/request"),
        ("application/json; charset=utf-8", "/request"),
    ],
)
def test_request_topic_by_exact_content_type(content_type: str, suffix: str) -> None:
    topic = request_topic("things", "t1", "e1", content_type)
    assert topic == "$aws/commands/things/t1/executions/e1" + suffix


def test_message_expiry_is_whole_seconds_left_at_least_one() -> None:
    assert message_expiry(110.0, 100.2) == 9
    assert message_expiry(110.0, 109.9) == 1
    assert message_expiry(110.0, 120.0) == 1


def test_new_command_validation() -> None:
    cmd = new_command("c-1_x", b"", content_type=None, now=1.0)
    assert cmd.content_type == "application/octet-stream"
    for bad_id in ("", "a/b", "x" * 65, "sp ace"):
        with pytest.raises(ValidationError, match="commandId"):
            new_command(bad_id, b"", content_type=None, now=1.0)
    with pytest.raises(ValidationError, match="bytes"):
        new_command("c", b"x" * (32 * 1024 + 1), content_type=None, now=1.0)
    with pytest.raises(ValidationError, match="contentType"):
        new_command("c", b"", content_type="json", now=1.0)


@pytest.mark.parametrize(
    "body",
    [
        {"status": "IN_PROGRESS"},
        {"status": "FAILED", "statusReason": {"reasonCode": "LOW_BATTERY"}},
        {"status": "FAILED", "statusReason": {"reasonCode": "200", "reasonDescription": "x"}},
        {
            "status": "SUCCEEDED",
            "result": {"a": {"s": "x"}, "b": {"b": False}, "c": {"bin": "AQ=="}},
        },
        {"status": "SUCCEEDED", "executionId": "e1", "deviceId": "t1", "deviceType": "things"},
        {"status": "TIMED_OUT"},
    ],
)
def test_valid_updates(body: dict[str, object]) -> None:
    update = validate_update(_update(body))
    assert update.status == body["status"]


@pytest.mark.parametrize(
    ("payload", "error", "text"),
    [
        (b"\xff", "InvalidJson", "JSON"),
        (b"{", "InvalidJson", "JSON"),
        (b"[]", "InvalidRequest", "object"),
        (b"{}", "InvalidRequest", "status"),
        (b'{"status": "CREATED"}', "InvalidRequest", "status"),
        (b'{"status": "succeeded"}', "InvalidRequest", "status"),
        (b'{"status": "FAILED", "statusReason": "x"}', "InvalidRequest", "statusReason"),
        (b'{"status": "FAILED", "statusReason": {}}', "InvalidRequest", "reasonCode"),
        (
            b'{"status": "FAILED", "statusReason": {"reasonCode": "' + b"A" * 65 + b'"}}',
            "InvalidRequest",
            "reasonCode",
        ),
        (
            b'{"status": "FAILED", "statusReason": {"reasonCode": "A", "reasonDescription": "'
            + b"d" * 1025
            + b'"}}',
            "InvalidRequest",
            "reasonDescription",
        ),
        (b'{"status": "SUCCEEDED", "result": {}}', "InvalidRequest", "At least 1"),
        (b'{"status": "SUCCEEDED", "result": []}', "InvalidRequest", "object"),
        (b'{"status": "SUCCEEDED", "result": {"k": "v"}}', "InvalidRequest", "STRING"),
        (b'{"status": "SUCCEEDED", "result": {"k": {"S": "v"}}}', "InvalidRequest", "lowercase"),
        (b'{"status": "SUCCEEDED", "result": {"k": {"s": ""}}}', "InvalidRequest", "non-empty"),
        (b'{"status": "SUCCEEDED", "result": {"k": {"b": 1}}}', "InvalidRequest", "boolean"),
        (
            b'{"status": "SUCCEEDED", "result": {"k": {"s": "a", "b": true}}}',
            "InvalidRequest",
            "one",
        ),
        (b'{"status": "SUCCEEDED", "result": {"k": {"bin": "*"}}}', "InvalidRequest", "base64"),
        (
            b'{"status": "SUCCEEDED", "result": {"' + b"k" * 33 + b'": {"s": "v"}}}',
            "InvalidRequest",
            "key",
        ),
        (b'{"status": "SUCCEEDED", "result": {"a.b": {"s": "v"}}}', "InvalidRequest", "key"),
    ],
)
def test_invalid_updates(payload: bytes, error: str, text: str) -> None:
    with pytest.raises(UpdateRejected, match=text) as caught:
        validate_update(payload)
    assert caught.value.error == error
    assert caught.value.body("e1") == {
        "executionId": "e1",
        "error": error,
        "errorMessage": caught.value.message,
    }


# §9.6: (current status, cloud-or-device terminal, update) -> error or None
_TABLE = [
    (S.CREATED, False, S.IN_PROGRESS, None),
    (S.CREATED, False, S.SUCCEEDED, None),
    (S.CREATED, False, S.TIMED_OUT, None),
    (S.IN_PROGRESS, False, S.IN_PROGRESS, None),
    (S.IN_PROGRESS, False, S.FAILED, None),
    (S.IN_PROGRESS, False, S.TIMED_OUT, None),
    (S.TIMED_OUT, False, S.IN_PROGRESS, "InvalidStateTransition"),
    (S.TIMED_OUT, False, S.SUCCEEDED, None),
    (S.TIMED_OUT, False, S.TIMED_OUT, None),
    (S.TIMED_OUT, True, S.IN_PROGRESS, "InvalidStateTransition"),
    (S.TIMED_OUT, True, S.SUCCEEDED, "InvalidStateTransition"),
    (S.SUCCEEDED, True, S.IN_PROGRESS, "TerminalStateReached"),
    (S.FAILED, True, S.REJECTED, "TerminalStateReached"),
    (S.REJECTED, True, S.TIMED_OUT, "TerminalStateReached"),
]


@pytest.mark.parametrize(("current", "terminal", "new", "error"), _TABLE)
def test_state_machine(current: S, terminal: bool, new: S, error: str | None) -> None:
    execution = _execution(current, terminal=terminal)
    update = validate_update(_update({"status": str(new)}))
    if error is not None:
        with pytest.raises(UpdateRejected) as caught:
            apply_update(execution, update, 105.0)
        assert caught.value.error == error
        assert execution.status is current
        return
    assert apply_update(execution, update, 105.0) is (new is not current or new != S.IN_PROGRESS)
    assert execution.status is new
    assert execution.terminal is (new is not S.IN_PROGRESS)
    assert (execution.completed_at is not None) is execution.terminal
    assert execution.last_updated_at == 105.0


def test_cloud_timeout_then_device_terminal_update() -> None:
    execution = _execution(S.IN_PROGRESS)
    assert not time_out(execution, 109.9)
    assert time_out(execution, 110.0)
    assert execution.status is S.TIMED_OUT
    assert execution.status_reason == {"reasonCode": NO_RESPONSE_REASON}
    assert not execution.terminal
    assert execution.completed_at is None
    assert not time_out(execution, 200.0)  # only once
    view = execution_view(execution, include_result=True)
    assert view["statusReason"] == {"reasonCode": "$NO_RESPONSE_FROM_DEVICE"}
    assert "completedAt" not in view
    body = {"status": "TIMED_OUT", "statusReason": {"reasonCode": "DEVICE_SLOW"}}
    assert apply_update(execution, validate_update(_update(body)), 120.0)
    final = execution_view(execution, include_result=False)
    assert final["completedAt"] == 120.0  # the device's TIMED_OUT is terminal
    assert final["statusReason"] == {"reasonCode": "DEVICE_SLOW"}


def test_result_is_stored_lowercase_and_shown_uppercase() -> None:
    execution = _execution()
    body = {
        "status": "SUCCEEDED",
        "result": {"n": {"s": "1"}, "ok": {"b": True}, "x": {"bin": "AQ=="}},
    }
    apply_update(execution, validate_update(_update(body)), 101.0)
    assert execution.result == body["result"]
    view = execution_view(execution, include_result=True)
    assert view["result"] == {"n": {"S": "1"}, "ok": {"B": True}, "x": {"BIN": "AQ=="}}
    assert "result" not in execution_view(execution, include_result=False)
    assert view["startedAt"] == view["createdAt"] == 100.0
    assert view["completedAt"] == 101.0


def test_event_shape() -> None:
    execution = _execution()
    topic, body = event(execution, 1717708862.107)
    assert topic == "$aws/events/commandExecution/c1/CREATED"
    assert body == {
        "executionId": "e1",
        "status": "CREATED",
        "eventType": "COMMAND_EXECUTION",
        "commandArn": "arn:aws:iot:local:000000000000:command/c1",
        "targetArn": "arn:aws:iot:local:000000000000:thing/t1",
        "timestamp": 1717708862107,
    }


def test_reply_topic_follows_the_brokers_level_rule() -> None:
    base = "$aws/commands/things/t1/executions/e1/response"
    # The brokers allow 8 levels, so the 9-level AWS reply topic falls back (documented).
    assert reply_topic(base, "accepted", "json") in (f"{base}/accepted/json", f"{base}/accepted")
