"""device_sdk.commands without a broker: topics, parsing, decisions, encoding."""

from __future__ import annotations

import json

import pytest

from device_sdk import Message
from device_sdk.commands import (
    CommandExecution,
    CommandFailedError,
    CommandScheme,
    CommandStatus,
    PayloadFormat,
    ReasonCode,
    aws_response_body,
    command_topics,
    decide,
    encode_result,
    parse_aws_request,
    parse_command_topic,
    parse_simple_request,
    simple_command_topics,
    simple_response_body,
    status_reason,
)


def test_topics() -> None:
    t = command_topics("robot-1")
    assert [t.request_filter(f) for f in PayloadFormat] == [
        "$aws/commands/things/robot-1/executions/+/request/json",
        "$aws/commands/things/robot-1/executions/+/request/cbor",
        "$aws/commands/things/robot-1/executions/+/request",
    ]
    assert t.response("e1") == "$aws/commands/things/robot-1/executions/e1/response/json"
    assert t.reply_filters() == (
        "$aws/commands/things/robot-1/executions/+/response/accepted/json",
        "$aws/commands/things/robot-1/executions/+/response/rejected/json",
    )
    assert t.reply_filters(None)[0].endswith("/+/response/accepted")
    with pytest.raises(ValueError, match="device id"):
        command_topics("a/b")
    with pytest.raises(ValueError, match="execution id"):
        t.response("x/y")
    s = simple_command_topics("robot-1")
    assert s.request_filter == "cmd/robot-1/request/+"
    assert s.response("reboot") == "cmd/robot-1/response/reboot"
    assert s.command_name("cmd/robot-1/request/reboot") == "reboot"
    assert s.command_name("cmd/robot-2/request/reboot") is None
    assert s.command_name("cmd/robot-1/request/") is None


def test_parse_command_topic() -> None:
    parsed = parse_command_topic("$aws/commands/clients/c-9/executions/ex/response/accepted/json")
    assert parsed is not None
    assert (parsed.kind, parsed.device_id, parsed.execution_id) == ("clients", "c-9", "ex")
    assert parsed.rest == ("response", "accepted", "json")
    for bad in (
        "$aws/commands/things/t/executions/ex",
        "$aws/commands/devices/t/executions/ex/request",
        "$aws/things/t/jobs/x/y/z",
        "$aws/commands/things/t/other/ex/request",
    ):
        assert parse_command_topic(bad) is None


def test_parse_aws_request_by_stream() -> None:
    base = "$aws/commands/things/t1/executions/e1/request"
    json_ex = parse_aws_request(Message(base + "/json", b"{}"), "t1")
    assert json_ex is not None
    assert (json_ex.execution_id, json_ex.content_type) == ("e1", "application/json")
    generic = parse_aws_request(Message(base, b"\x00"), "t1")
    assert generic is not None
    assert generic.content_type is None
    assert generic.timeout is None
    assert parse_aws_request(Message(base + "/xml", b""), "t1") is None
    assert parse_aws_request(Message(base + "/json", b""), "other") is None
    assert (
        parse_aws_request(Message(base.replace("request", "response") + "/json", b""), "t1") is None
    )


def test_parse_simple_request() -> None:
    topic = "cmd/t/request/go"
    ok, _, _ = parse_simple_request(topic, "go", b'{"correlationId": "c", "args": {"a": 1}}')
    assert ok is not None
    assert (ok.execution_id, ok.name, ok.args, ok.scheme) == ("c", "go", {"a": 1}, "simple")
    none_args, _, _ = parse_simple_request(topic, "go", b'{"correlationId": "c", "args": null}')
    assert none_args is not None
    assert none_args.args == {}
    assert parse_simple_request(topic, "go", b"nope")[1:] == (None, "payload is not UTF-8 JSON")
    assert parse_simple_request(topic, "go", b"[1]")[1] is None
    assert parse_simple_request(topic, "go", b'{"correlationId": 5}')[1] is None
    assert parse_simple_request(topic, "go", b'{"correlationId": "' + b"c" * 129 + b'"}')[1] is None
    _, cid, problem = parse_simple_request(topic, "go", b'{"correlationId": "c", "args": 1}')
    assert (cid, problem) == ("c", "args must be a JSON object")


def _aws(payload: bytes, content_type: str | None = "application/json") -> CommandExecution:
    return CommandExecution("e1", payload, content_type)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"name": "go", "args": {"x": 1}}', None),
        (b'{"name": "go"}', None),
        (b'{"name": "go", "args": null}', None),
        (b'{"name": "dance"}', ReasonCode.UNKNOWN_COMMAND),
        (b'{"name": "stop"}', ReasonCode.COMMAND_NOT_ALLOWED),
        (b'{"cmd": "go"}', ReasonCode.INVALID_PAYLOAD),
        (b'{"name": ""}', ReasonCode.INVALID_PAYLOAD),
        (b'{"name": 3}', ReasonCode.INVALID_PAYLOAD),
        (b'{"name": "go", "args": [1]}', ReasonCode.INVALID_PAYLOAD),
        (b'"go"', ReasonCode.INVALID_PAYLOAD),
        (b"\xff", ReasonCode.INVALID_PAYLOAD),
    ],
)
def test_decide_aws(payload: bytes, code: ReasonCode | None) -> None:
    decision = decide(_aws(payload), handlers={"go", "stop"}, allow={"go"}, name_field="name")
    assert decision.reject_code == (str(code) if code else None)
    if code is None:
        assert decision.name == "go"
        assert isinstance(decision.args, dict)
    else:
        assert decision.reject_description


def test_decide_cbor_custom_field_and_no_allow_list() -> None:
    cbor = decide(_aws(b"\xa0", "application/cbor"), handlers={"go"}, allow=None, name_field="n")
    assert cbor.reject_code == "UNSUPPORTED_CONTENT_TYPE"
    custom = decide(_aws(b'{"op": "go"}'), handlers={"go"}, allow=None, name_field="op")
    assert (custom.name, custom.reject_code) == ("go", None)
    generic = decide(_aws(b'{"name": "go"}', None), handlers={"go"}, allow=None, name_field="name")
    assert generic.reject_code is None
    simple = CommandExecution("c", b"", scheme=CommandScheme.SIMPLE, name="go", args={"a": 1})
    assert decide(simple, handlers={"go"}, allow=set(), name_field="name").reject_code == (
        "COMMAND_NOT_ALLOWED"
    )


def test_encode_result() -> None:
    assert encode_result({"s": "x", "b": False, "bin": b"\x01", "n": 1.5, "o": {"k": [1]}}) == {
        "s": {"s": "x"},
        "b": {"b": False},
        "bin": {"bin": "AQ=="},
        "n": {"s": "1.5"},
        "o": {"s": '{"k":[1]}'},
    }
    for bad in ({"a.b": "x"}, {"k" * 33: "x"}, {"k": ""}, {"k": b""}):
        with pytest.raises(ValueError, match="result"):
            encode_result(bad)


def test_response_bodies() -> None:
    assert aws_response_body(CommandStatus.IN_PROGRESS) == {"status": "IN_PROGRESS"}
    body = aws_response_body(
        CommandStatus.FAILED, reason_code="E1", reason_description="a\nb" + "x" * 2000
    )
    assert body["statusReason"]["reasonDescription"].startswith("a b")
    assert len(body["statusReason"]["reasonDescription"]) == 1024
    with pytest.raises(ValueError, match="reason code"):
        aws_response_body(CommandStatus.FAILED, reason_code="bad code")
    with pytest.raises(ValueError, match="needs a reason code"):
        aws_response_body(CommandStatus.FAILED, reason_description="why")
    assert status_reason("OK") == {"reasonCode": "OK"}
    ok = json.loads(simple_response_body("c", CommandStatus.SUCCEEDED, result={"b": b"\x01"}))
    assert ok == {"correlationId": "c", "status": "SUCCEEDED", "result": {"b": "AQ=="}}
    no = json.loads(simple_response_body("c", CommandStatus.FAILED, reason_code="E"))
    assert no == {
        "correlationId": "c",
        "status": "FAILED",
        "reason": {"code": "E", "description": ""},
    }


def test_handler_errors_validate_their_reason_code() -> None:
    err = CommandFailedError("LOW_BATTERY", "5%")
    assert (err.reason_code, err.description, str(err)) == ("LOW_BATTERY", "5%", "LOW_BATTERY: 5%")
    with pytest.raises(ValueError, match="reason code"):
        CommandFailedError("low battery")
