"""Policy evaluation: IoT Core semantics (`*` spans levels, `+`/`#` literal, deny wins)."""

from __future__ import annotations

import pytest

from cloud_stubs._policy import (
    Action,
    Effect,
    PolicyEngine,
    Principal,
    Role,
    Statement,
    default_statements,
    parse_statements,
    render_statements,
)

ENGINE = PolicyEngine(default_statements())
A = Principal(Role.DEVICE, "robot-a", "robot-a")


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        (Action.CONNECT, "robot-a"),
        (Action.PUBLISH, "$aws/things/robot-a/shadow/update"),
        (Action.PUBLISH, "$aws/things/robot-a/shadow/name/cfg/get"),
        (Action.PUBLISH, "$aws/things/robot-a/jobs/job-1/update"),
        (Action.PUBLISH, "$aws/things/robot-a/jobs/$next/get"),
        (Action.SUBSCRIBE, "$aws/things/robot-a/shadow/get/+"),
        (Action.SUBSCRIBE, "$aws/things/robot-a/shadow/name/cfg/update/delta"),
        (Action.SUBSCRIBE, "$aws/things/robot-a/jobs/notify-next"),
        (Action.RECEIVE, "$aws/things/robot-a/shadow/update/accepted"),
        (Action.PUBLISH, "dt/robot-a/telemetry"),
        (Action.SUBSCRIBE, "cmd/robot-a/#"),
        (Action.RECEIVE, "$aws/commands/things/robot-a/executions/e1/request/json"),
    ],
)
def test_device_allowed_on_own_topics(action: Action, resource: str) -> None:
    assert ENGINE.is_allowed(A, action, resource)


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        (Action.CONNECT, "robot-b"),
        (Action.PUBLISH, "$aws/things/robot-b/shadow/update"),
        (
            Action.PUBLISH,
            "$aws/things/robot-a/shadow/update/accepted",
        ),  # responses are the service's
        (Action.SUBSCRIBE, "$aws/things/robot-b/shadow/get/+"),
        (Action.SUBSCRIBE, "$aws/things/+/shadow/get/+"),
        (Action.SUBSCRIBE, "#"),
        (Action.SUBSCRIBE, "dt/#"),
        (Action.SUBSCRIBE, "dt/+/telemetry"),
        (Action.RECEIVE, "dt/robot-b/telemetry"),
        (Action.PUBLISH, "dt/robot-ab/x"),
        (Action.PUBLISH, "$aws/certificates/create/json"),
        (Action.PUBLISH, "dt/robot-a"),  # `dt/<thing>/*` needs a level below the prefix
    ],
)
def test_device_denied_elsewhere(action: Action, resource: str) -> None:
    assert not ENGINE.is_allowed(A, action, resource)


def test_plus_and_hash_are_literal_in_patterns() -> None:
    engine = PolicyEngine([Statement(Effect.ALLOW, Role.DEVICE, Action.SUBSCRIBE, "a/+/c")])
    assert engine.is_allowed(A, Action.SUBSCRIBE, "a/+/c")
    assert not engine.is_allowed(A, Action.SUBSCRIBE, "a/b/c")


def test_star_spans_levels_and_question_mark_is_one_char() -> None:
    engine = PolicyEngine(
        [
            Statement(Effect.ALLOW, Role.DEVICE, Action.PUBLISH, "x/*"),
            Statement(Effect.ALLOW, Role.DEVICE, Action.PUBLISH, "y/?"),
        ]
    )
    assert engine.is_allowed(A, Action.PUBLISH, "x/1/2/3")
    assert engine.is_allowed(A, Action.PUBLISH, "y/1")
    assert not engine.is_allowed(A, Action.PUBLISH, "y/12")


def test_explicit_deny_wins() -> None:
    engine = PolicyEngine(
        [
            Statement(Effect.ALLOW, Role.DEVICE, Action.PUBLISH, "*"),
            Statement(Effect.DENY, Role.DEVICE, Action.PUBLISH, "secret/*"),
        ]
    )
    assert engine.is_allowed(A, Action.PUBLISH, "open/x")
    assert not engine.is_allowed(A, Action.PUBLISH, "secret/x")


def test_unresolved_thing_variable_never_matches() -> None:
    unattached = Principal(Role.DEVICE, None, "robot-a")
    assert not ENGINE.is_allowed(unattached, Action.CONNECT, "robot-a")
    assert not ENGINE.is_allowed(unattached, Action.PUBLISH, "dt/robot-a/x")


def test_claim_only_provisioning_topics() -> None:
    claim = Principal(Role.CLAIM, None, "anything")
    assert ENGINE.is_allowed(claim, Action.CONNECT, "anything")
    assert ENGINE.is_allowed(claim, Action.PUBLISH, "$aws/certificates/create-from-csr/json")
    assert ENGINE.is_allowed(
        claim, Action.SUBSCRIBE, "$aws/provisioning-templates/tpl/provision/json/accepted"
    )
    assert not ENGINE.is_allowed(claim, Action.PUBLISH, "dt/anything/x")
    assert not ENGINE.is_allowed(claim, Action.SUBSCRIBE, "$aws/things/anything/shadow/get/+")


def test_service_may_do_anything() -> None:
    svc = Principal(Role.SERVICE, None, "cloud-stubs-service-x")
    for action in Action:
        assert ENGINE.is_allowed(svc, action, "$aws/things/any/shadow/update/accepted")


def test_render_parse_roundtrip_and_bad_lines() -> None:
    statements = default_statements(("dt/<thing>", "fleet/<thing>/data"))
    assert parse_statements(render_statements(statements)) == statements
    with pytest.raises(ValueError, match=":2:"):
        parse_statements("# header\nAllow\tdevice\tconnect\n")
    with pytest.raises(ValueError, match="Maybe"):
        parse_statements("Maybe\tdevice\tconnect\t*\n")


def test_data_prefix_must_name_the_thing() -> None:
    with pytest.raises(ValueError, match="<thing>"):
        default_statements(("dt/all",))
