"""Pure parts of the firmware side: Range, faults, presigned URLs, the ota/1 document."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from cloud_stubs.firmware import (
    ByteRange,
    FaultKind,
    FaultRule,
    FaultSpec,
    FirmwareError,
    FirmwareManifest,
    OtaJobDocument,
    OtaPolicy,
    Presigner,
    RangeNotSatisfiableError,
    UrlVerdict,
    artifact_placeholder,
    build_ota_document,
    parse_range,
    plan_faults,
    render_document,
)

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", ByteRange(0, 100)),
        ("bytes=100-", ByteRange(100, 900)),
        ("bytes=-10", ByteRange(990, 10)),
        ("bytes=-5000", ByteRange(0, 1000)),  # suffix longer than the file: the whole file
        ("bytes=990-5000", ByteRange(990, 10)),  # clipped at the end
        ("bytes=999-999", ByteRange(999, 1)),
        ("BYTES = 5-9", ByteRange(5, 5)),
        ("items=0-5", None),  # other unit: ignored
        ("bytes=0-1,5-6", None),  # multipart: the whole file, like S3
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    "header", ["bytes=1000-", "bytes=5000-6000", "bytes=9-5", "bytes=-0", "bytes=x-", "bytes=--1"]
)
def test_parse_range_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiableError):
        parse_range(header, SIZE)


def test_parse_range_of_empty_file() -> None:
    with pytest.raises(RangeNotSatisfiableError):
        parse_range("bytes=0-", 0)
    assert parse_range(None, 0) is None


def test_content_range() -> None:
    assert ByteRange(10, 5).content_range(SIZE) == "bytes 10-14/1000"


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("expired_403", FaultSpec(FaultKind.EXPIRED_403)),
        ("status:503", FaultSpec(FaultKind.STATUS, 503)),
        ("drop_after:4096", FaultSpec(FaultKind.DROP_AFTER, 4096)),
        ("delay:0.5", FaultSpec(FaultKind.DELAY, 0.5)),
        (" ignore_range ", FaultSpec(FaultKind.IGNORE_RANGE)),
    ],
)
def test_fault_spec_parse_and_str(text: str, spec: FaultSpec) -> None:
    assert FaultSpec.parse(text) == spec
    assert FaultSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("explode", "unknown fault"),
        ("status", "status:<number>"),
        ("ignore_range:3", "write it as ignore_range"),
        ("status:200", "400-599"),
        ("drop_after:-1", ">= 0"),
        ("throttle:0", ">= 1"),
        ("delay:1000", "0-600"),
        ("corrupt:abc", "not a number"),
    ],
)
def test_fault_spec_errors(text: str, message: str) -> None:
    with pytest.raises(FirmwareError, match=message):
        FaultSpec.parse(text)


def rule(rule_id: int, text: str, **kw: Any) -> FaultRule:
    return FaultRule(rule_id, FaultSpec.parse(text), **kw)


def test_plan_body_faults_fire_only_when_they_apply() -> None:
    rules = [rule(1, "ignore_range"), rule(2, "drop_after:500"), rule(3, "corrupt:10")]
    # a full download: ignore_range has nothing to ignore; drop and corrupt apply
    plan = plan_faults(rules, has_range=False, size=SIZE, start=0, length=SIZE)
    assert plan.used == [2, 3]
    assert (plan.ignore_range, plan.drop_after, plan.corrupt_offsets) == (False, 500, [10])
    # a short range past the drop point and away from the corrupt byte
    plan = plan_faults(rules, has_range=True, size=SIZE, start=900, length=100)
    assert plan.used == [1, 2, 3]  # ignore_range widened it to the whole file first
    plan = plan_faults(rules[1:], has_range=True, size=SIZE, start=900, length=100)
    assert plan.used == []


def test_plan_error_status_wins_and_spares_body_faults() -> None:
    rules = [
        rule(1, "drop_after:5"),
        rule(2, "delay:0.1"),
        rule(3, "expired_403"),
        rule(4, "status:500"),
    ]
    plan = plan_faults(rules, has_range=False, size=SIZE, start=0, length=SIZE)
    assert plan.status == 403
    assert plan.used == [2, 3]  # the drop is kept for a later request; status:500 not reached
    assert plan.drop_after is None
    assert plan.delay_s == pytest.approx(0.1)


def test_fault_rule_scope() -> None:
    r = rule(1, "expired_403", firmware_id="fw-a", thing="t1", remaining=1)
    assert r.matches("fw-a", "t1")
    assert not r.matches("fw-b", "t1")
    assert not r.matches("fw-a", "t2")
    assert not rule(2, "expired_403", remaining=0).matches("fw-a", None)
    assert rule(3, "expired_403", remaining=None).matches("fw-x", None)


def test_presigner_round_trip_and_expiry() -> None:
    p = Presigner("https://127.0.0.1:9", b"k" * 32, ttl_s=60)
    url = p.url("fw-0123456789ab", 1000.0, thing="robot-1")
    assert url.startswith(
        "https://127.0.0.1:9/firmware/fw-0123456789ab?thing=robot-1&expires=1060&sig="
    )
    query = dict(kv.split("=") for kv in url.split("?")[1].split("&"))
    path = "/firmware/fw-0123456789ab"
    assert p.check(path, query, 1060) is UrlVerdict.OK
    assert p.check(path, query, 1061) is UrlVerdict.EXPIRED
    assert p.check("/firmware/fw-999999999999", query, 1000) is UrlVerdict.BAD_SIGNATURE
    assert p.check(path, query | {"thing": "robot-2"}, 1000) is UrlVerdict.BAD_SIGNATURE
    assert p.check(path, query | {"expires": "99999"}, 1000) is UrlVerdict.BAD_SIGNATURE
    assert p.check(path, query | {"expires": "soon"}, 1000) is UrlVerdict.BAD_SIGNATURE
    assert p.check(path, {}, 1000) is UrlVerdict.MISSING
    other = Presigner("https://127.0.0.1:9", b"x" * 32, ttl_s=60)
    assert other.check(path, query, 1000) is UrlVerdict.BAD_SIGNATURE


MANIFEST = FirmwareManifest(
    firmware_id="fw-0123456789ab",
    version="2.1.0",
    device_type="robot-pi",
    size=4096,
    sha256="ab" * 32,
    signature="MEUCIQ==",
    key_id="0123456789abcdef",
    sig_alg="ecdsa-p256-sha256",
    file_name="image.bin",
    created_at=1_700_000_000,
)


def test_build_document_exact_shape() -> None:
    doc = build_ota_document(MANIFEST)
    assert doc == {
        "operation": "ota",
        "schema": "ota/1",
        "firmwareId": "fw-0123456789ab",
        "targetVersion": "2.1.0",
        "deviceType": "robot-pi",
        "artifact": {
            "url": "${aws:iot:s3-presigned-url:cloud-stubs://firmware/fw-0123456789ab}",
            "size": 4096,
            "sha256": "ab" * 32,
            "signature": "MEUCIQ==",
            "sigAlg": "ecdsa-p256-sha256",
            "keyId": "0123456789abcdef",
        },
        "policy": {
            "reboot": "auto",
            "allowDowngrade": False,
            "trialTimeoutS": 300,
            "maxBootAttempts": 3,
            "healthChecks": [],
        },
    }
    OtaJobDocument.model_validate_json(json.dumps(doc))


def test_build_document_with_policy_and_test_faults() -> None:
    policy = OtaPolicy.from_json(
        {
            "reboot": "defer",
            "healthChecks": ["mqtt"],
            "bandwidthBps": 1000,
            "minCurrentVersion": "1",
        }
    )
    doc = build_ota_document(MANIFEST, policy=policy, test_faults=["download.at_bytes:10"])
    assert doc["policy"]["reboot"] == "defer"
    assert doc["policy"]["bandwidthBps"] == 1000
    assert doc["policy"]["minCurrentVersion"] == "1"
    assert doc["test"] == {"faults": ["download.at_bytes:10"]}
    model = OtaJobDocument.model_validate_json(json.dumps(doc))
    assert model.policy.health_checks == ["mqtt"]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"reboot": "later"}, "policy.reboot"),
        ({"trialTimeoutS": 0}, "trialTimeoutS"),
        ({"trialTimeoutS": True}, "trialTimeoutS"),
        ({"maxBootAttempts": 11}, "maxBootAttempts"),
        ({"healthChecks": "mqtt"}, "healthChecks"),
        ({"allowDowngrade": "yes"}, "allowDowngrade"),
        ({"bandwidthBps": 0}, "bandwidthBps"),
        ({"color": "red"}, "unknown policy key"),
    ],
)
def test_policy_errors(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(FirmwareError, match=message):
        OtaPolicy.from_json(policy)


def test_document_model_is_strict() -> None:
    doc = build_ota_document(MANIFEST)
    for broken in (
        {**doc, "extra": 1},
        {**doc, "schema": "ota/2"},
        {**doc, "artifact": {**doc["artifact"], "size": "4096"}},
        {**doc, "artifact": {**doc["artifact"], "sha256": "AB" * 32}},
    ):
        with pytest.raises(ValidationError):
            OtaJobDocument.model_validate_json(json.dumps(broken))


def test_render_document_replaces_only_store_placeholders() -> None:
    p = Presigner("https://127.0.0.1:9", b"k" * 32, ttl_s=60)
    doc = build_ota_document(MANIFEST)
    doc["other"] = ["${aws:iot:s3-presigned-url:https://s3.amazonaws.com/b/k}", 5, None]
    out = render_document(doc, 1000.0, presigner=p, thing="robot-1")
    assert out["artifact"]["url"] == p.url("fw-0123456789ab", 1000.0, thing="robot-1")
    assert out["other"] == doc["other"]
    assert doc["artifact"]["url"] == artifact_placeholder("fw-0123456789ab")  # not mutated
    later = render_document(doc, 2000.0, presigner=p, thing="robot-1")
    assert later["artifact"]["url"] != out["artifact"]["url"]  # fresh URL per delivery
