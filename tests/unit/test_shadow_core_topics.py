"""Shadow topic grammar and name validation (spec §2.1)."""

import pytest

from cloud_stubs.shadow import (
    ShadowOperation,
    ShadowRequestTopic,
    is_valid_shadow_name,
    is_valid_thing_name,
    parse_shadow_topic,
    shadow_prefix,
    shadow_topic,
)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$aws/things/T/shadow/get", ("T", None, ShadowOperation.GET)),
        ("$aws/things/T/shadow/update", ("T", None, ShadowOperation.UPDATE)),
        ("$aws/things/my:thing_1-x/shadow/delete", ("my:thing_1-x", None, ShadowOperation.DELETE)),
        ("$aws/things/T/shadow/name/cfg/get", ("T", "cfg", ShadowOperation.GET)),
        ("$aws/things/T/shadow/name/name/update", ("T", "name", ShadowOperation.UPDATE)),
        ("$aws/things/name/shadow/name/shadow/delete", ("name", "shadow", ShadowOperation.DELETE)),
    ],
)
def test_parse_request_topics(
    topic: str, expected: tuple[str, str | None, ShadowOperation]
) -> None:
    parsed = parse_shadow_topic(topic)
    assert parsed == ShadowRequestTopic(*expected)


@pytest.mark.parametrize(
    "topic",
    [
        "$aws/things/T/shadow/get/accepted",
        "$aws/things/T/shadow/get/rejected",
        "$aws/things/T/shadow/update/accepted",
        "$aws/things/T/shadow/update/delta",
        "$aws/things/T/shadow/update/documents",
        "$aws/things/T/shadow/delete/accepted",
        "$aws/things/T/shadow/name/n/update/delta",
        "$aws/things/T/shadow/list",
        "$aws/things/T/shadow",
        "$aws/things/T/shadow/name/n",
        "$aws/things/T/shadow/name/get",
        "$aws/things/T/shadow/name//get",
        "$aws/things//shadow/get",
        "$aws/things/T/jobs/get",
        "things/T/shadow/get",
        "$aws/things/T/shadow/GET",
        "$aws/things/bad name/shadow/get",
        "$aws/things/T/shadow/name/$reserved/get",
        f"$aws/things/{'x' * 129}/shadow/get",
        f"$aws/things/T/shadow/name/{'x' * 65}/get",
        "",
    ],
)
def test_non_request_topics(topic: str) -> None:
    assert parse_shadow_topic(topic) is None


def test_response_topics() -> None:
    classic = ShadowRequestTopic("T", None, ShadowOperation.UPDATE)
    named = ShadowRequestTopic("T", "cfg", ShadowOperation.GET)
    assert classic.prefix == "$aws/things/T/shadow"
    assert classic.response_topic("update/delta") == "$aws/things/T/shadow/update/delta"
    assert named.response_topic("get/accepted") == "$aws/things/T/shadow/name/cfg/get/accepted"
    assert shadow_prefix("T", "n") == "$aws/things/T/shadow/name/n"
    assert shadow_topic("T", None, "delete/rejected") == "$aws/things/T/shadow/delete/rejected"


def test_name_validation() -> None:
    assert is_valid_thing_name("a")
    assert is_valid_thing_name("x" * 128)
    assert not is_valid_thing_name("x" * 129)
    assert not is_valid_thing_name("")
    assert not is_valid_thing_name("a/b")
    assert not is_valid_thing_name("a+")
    assert not is_valid_thing_name("é")
    assert is_valid_shadow_name("A:b_c-1")
    assert is_valid_shadow_name("x" * 64)
    assert not is_valid_shadow_name("x" * 65)
    assert not is_valid_shadow_name("$aws")
    assert not is_valid_shadow_name("a b")
