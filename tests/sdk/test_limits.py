"""IoT Core client-side limits, the token bucket and the reconnect policy (pure logic)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_sdk import (
    AuthorizationError,
    ConnectError,
    ConnectionLostError,
    LimitExceededError,
    Limits,
    NegativeAckError,
    ReconnectPolicy,
    TokenBucket,
    topic_matches,
)
from device_sdk._limits import counted_topic, validate_payload, validate_publish_topic
from tests.sdk._fakes import FakeClock

L = Limits()


@pytest.mark.parametrize(
    ("topic", "limit"),
    [
        ("", "topic_empty"),
        ("a/+/b", "wildcard_in_topic"),
        ("a/#", "wildcard_in_topic"),
        ("a/b/c/d/e/f/g/h/i", "topic_levels"),
        ("x" * 257, "topic_bytes"),
        ("é" * 129, "topic_bytes"),  # 258 UTF-8 bytes
        ("a\x00b", "topic_nul"),
    ],
)
def test_invalid_publish_topics(topic: str, limit: str):
    with pytest.raises(LimitExceededError) as info:
        L.validate_publish_topic(topic)
    assert info.value.limit == limit


@pytest.mark.parametrize(
    "topic",
    [
        "a/b/c/d/e/f/g/h",  # 8 levels, 7 slashes
        "x" * 256,
        "$aws/rules/my_rule/a/b/c/d/e/f/g/h",  # the rules prefix is not counted
        "$aws/rules/my_rule/" + "x" * 256,
        "$aws/things/robot-1/shadow/update",
    ],
)
def test_valid_publish_topics(topic: str):
    validate_publish_topic(topic)


def test_counted_topic_strips_uncounted_prefixes():
    assert counted_topic("$aws/rules/r/a/b") == "a/b"
    assert counted_topic("$aws/rules/r") == ""
    assert counted_topic("$share/g/a/+") == "a/+"
    assert counted_topic("a/b") == "a/b"


@pytest.mark.parametrize("flt", ["a/+/b", "a/#", "#", "+", "$share/grp/a/b/c/d/e/f/g/#", "+/+"])
def test_valid_filters(flt: str):
    L.validate_topic_filter(flt)


@pytest.mark.parametrize(
    "flt", ["a/#/b", "a/b#", "a+/b", "$share//a", "$share/g", "$share/g+/a", "a/b/c/d/e/f/g/h/i"]
)
def test_invalid_filters(flt: str):
    with pytest.raises(LimitExceededError):
        L.validate_topic_filter(flt)


def test_payload_limit_is_128_kib():
    validate_payload(b"x" * 131072)
    with pytest.raises(LimitExceededError) as info:
        validate_payload(b"x" * 131073)
    assert (info.value.value, info.value.maximum) == (131073, 131072)


def test_subscription_limit():
    L.validate_subscription_count(50)
    with pytest.raises(LimitExceededError, match="50"):
        L.validate_subscription_count(51)


@given(st.lists(st.text(alphabet="abc/+#é", max_size=12), min_size=1, max_size=12))
def test_publish_topic_rule_property(levels: list[str]):
    topic = "/".join(levels)
    ok = (
        bool(topic)
        and "+" not in topic
        and "#" not in topic
        and len(topic.encode()) <= 256
        and topic.count("/") <= 7
    )
    try:
        L.validate_publish_topic(topic)
    except LimitExceededError:
        assert not ok
    else:
        assert ok


@pytest.mark.parametrize(
    ("flt", "topic", "expected"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "$aws/things/x", False),
        ("+/things/x", "$aws/things/x", False),
        ("$aws/things/+/shadow/#", "$aws/things/t1/shadow/get/accepted", True),
        ("$share/g/a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_matches(flt: str, topic: str, expected: bool):
    assert topic_matches(flt, topic) is expected


async def test_token_bucket_waits_instead_of_dropping():
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock)
    for _ in range(100):
        await bucket.acquire()
    assert clock.slept == []
    for _ in range(50):
        await bucket.acquire()
    assert sum(clock.slept) == pytest.approx(0.5)
    assert bucket.waited_s == pytest.approx(0.5)


async def test_token_bucket_is_fair_under_concurrency():
    clock = FakeClock()
    bucket = TokenBucket(10, capacity=1, clock=clock)
    order: list[int] = []

    async def worker(i: int) -> None:
        await bucket.acquire()
        order.append(i)

    async with asyncio.TaskGroup() as tg:
        for i in range(20):
            tg.create_task(worker(i))
    assert order == list(range(20))
    assert clock.now() - 1000.0 == pytest.approx(1.9)


def test_token_bucket_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)


def test_backoff_window_doubles_up_to_the_cap():
    p = ReconnectPolicy(base_s=0.5, cap_s=8, min_interval_s=0)
    assert [p.window(a) for a in range(6)] == [0.5, 1, 2, 4, 8, 8]
    assert p.window(10_000) == 8


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=2**32))
def test_backoff_delay_is_full_jitter_within_bounds(attempt: int, seed: int):
    p = ReconnectPolicy(base_s=1, cap_s=60, min_interval_s=1)
    d = p.delay(attempt, random.Random(seed))
    assert 1 <= d <= p.window(attempt)


def test_backoff_jitter_spreads_a_fleet():
    p = ReconnectPolicy(base_s=1, cap_s=60, min_interval_s=0)
    rng = random.Random(7)
    delays = [p.delay(5, rng) for _ in range(1000)]
    assert min(delays) < 3
    assert max(delays) > 29
    assert len({round(d, 3) for d in delays}) > 900


def test_backoff_stop_conditions():
    p = ReconnectPolicy(max_attempts=3)
    assert p.should_retry(ConnectError("x"), 0)
    assert p.should_retry(ConnectionLostError("x"), 1)
    assert not p.should_retry(ConnectError("x"), 2)
    assert not p.should_retry(AuthorizationError("denied"), 0)
    assert not p.should_retry(NegativeAckError("n", packet="PUBACK", reason_code=0x87), 0)
    assert not p.should_retry(ValueError("bug"), 0)


def test_backoff_validation():
    with pytest.raises(ValueError, match="base_s"):
        ReconnectPolicy(base_s=2, cap_s=1)
