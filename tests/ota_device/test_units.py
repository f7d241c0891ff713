"""Pure and file-level tests of device_sdk.ota: document checks, versions, faults, slots."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from certs import CodeSigningKey
from device_sdk.ota import (
    EFFECT_POINTS,
    FAULT_POINTS,
    ABSlotInstaller,
    FaultInjector,
    FaultPlan,
    FaultRule,
    OtaFailedError,
    OtaJournal,
    OtaRecord,
    OtaRejectedError,
    OtaState,
    ReasonCode,
    check_document,
    compare_versions,
    key_id_of,
)

KEY = CodeSigningKey.generate()
PEM = KEY.public_key_pem()
IMAGE = b"firmware" * 1000
DIGEST = hashlib.sha256(IMAGE).digest()


def document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operation": "ota",
        "schema": "ota/1",
        "firmwareId": "fw-0123456789ab",
        "targetVersion": "2.0.0",
        "deviceType": "robot-pi",
        "artifact": {
            "url": "https://127.0.0.1:1/firmware/fw-0123456789ab?x",
            "size": len(IMAGE),
            "sha256": DIGEST.hex(),
            "signature": base64.b64encode(KEY.sign_digest(DIGEST)).decode(),
            "sigAlg": "ecdsa-p256-sha256",
            "keyId": KEY.key_id,
        },
        "policy": {
            "reboot": "auto",
            "allowDowngrade": False,
            "trialTimeoutS": 300,
            "maxBootAttempts": 3,
            "healthChecks": [],
        },
    }
    for path, value in changes.items():
        target = doc
        *parents, last = path.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    return doc


def check(doc: dict[str, Any], current: str | None = "1.0.0") -> None:
    check_document(
        doc, device_type="robot-pi", current_version=current, trusted_keys={KEY.key_id: PEM}
    )


def test_key_id_matches_the_signing_key() -> None:
    assert key_id_of(PEM) == KEY.key_id


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0.0", "1.0.0", 0),
        ("1.0", "1.0.0", 0),
        ("1.10.0", "1.9.9", 1),
        ("2.0.0", "10.0.0", -1),
        ("1.0.0rc1", "1.0.0", -1),
        ("1.0.0+build5", "1.0.0", 0),
        ("1.2.3-beta", "1.2.3-alpha", 1),
    ],
)
def test_compare_versions(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_a_good_document_passes() -> None:
    check(document())
    check(document(targetVersion="0.5.0", **{"policy.allowDowngrade": True}))
    check(document(), current=None)  # unknown running version: no anti-rollback check


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"schema": "ota/2"}, ReasonCode.DOCUMENT_INVALID),
        ({"operation": "install"}, ReasonCode.DOCUMENT_INVALID),
        ({"artifact.size": "8000"}, ReasonCode.DOCUMENT_INVALID),  # strict: no coercion
        ({"artifact.sha256": "XYZ"}, ReasonCode.DOCUMENT_INVALID),
        ({"artifact.sigAlg": "rsa"}, ReasonCode.DOCUMENT_INVALID),
        (
            {"artifact.url": "${aws:iot:s3-presigned-url:cloud-stubs://firmware/fw-1}"},
            ReasonCode.DOCUMENT_INVALID,
        ),
        ({"policy.maxBootAttempts": 0}, ReasonCode.DOCUMENT_INVALID),
        ({"deviceType": "toaster"}, ReasonCode.DEVICE_TYPE_MISMATCH),
        ({"targetVersion": "0.9.9"}, ReasonCode.DOWNGRADE_NOT_ALLOWED),
        ({"policy.minCurrentVersion": "1.5"}, ReasonCode.CURRENT_VERSION_TOO_OLD),
        ({"artifact.keyId": "00000000deadbeef"}, ReasonCode.UNKNOWN_KEY_ID),
        ({"artifact.signature": "not base64!"}, ReasonCode.SIGNATURE_INVALID),
        ({"artifact.sha256": "0" * 64}, ReasonCode.SIGNATURE_INVALID),
    ],
)
def test_bad_documents_are_rejected(changes: dict[str, Any], reason: ReasonCode) -> None:
    with pytest.raises(OtaRejectedError) as info:
        check(document(**changes))
    assert info.value.reason_code is reason


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    check(document(extra={"x": 1}, **{"policy.newKnob": True}))


def test_fault_triggers_nth_once_persisted_and_seeded(tmp_path: Path) -> None:
    counters = tmp_path / "faults.json"
    plan = FaultPlan.single("state.*", "drop", nth=2)
    inj = FaultInjector(plan, counters_file=counters)
    assert inj.check("state.RECEIVED") is None
    fired = inj.check("state.VALIDATED")
    assert fired is not None
    assert str(fired) == "state.VALIDATED=drop"
    assert inj.check("state.DOWNLOADING") is None  # once
    again = FaultInjector(plan, counters_file=counters)  # a restart: still fired once
    assert again.check("state.VALIDATED") is None

    def fires(seed: int) -> list[bool]:
        rule = FaultRule(point="x", action="drop", once=False, probability=0.5)
        i = FaultInjector(FaultPlan(seed=seed, faults=[rule]))
        return [i.check("x") is not None for _ in range(40)]

    assert fires(3) == fires(3)
    assert fires(3) != fires(4)
    assert 5 < sum(fires(3)) < 35


async def test_fault_raise_action_carries_its_reason_code() -> None:
    inj = FaultInjector(FaultPlan.from_strings(["install.before_write=raise:DISK_ERROR"]))
    with pytest.raises(OtaFailedError) as info:
        await inj.hit("install.before_write")
    assert info.value.reason_code is ReasonCode.DISK_ERROR
    fired: list[str] = []
    assert FaultPlan.from_file(Path("/nonexistent/faults.json")).faults == []  # not armed
    inj2 = FaultInjector(
        FaultPlan.single("p", "delay:0.01"), on_fire=lambda f: fired.append(str(f))
    )
    assert await inj2.hit("p") is not None
    assert fired == ["p=delay:0.01"]


def test_effect_points_are_armed_with_inject() -> None:
    plan = FaultPlan.from_strings(["clock.skew:30=inject", "disk.enospc=inject"])
    inj = FaultInjector(plan)
    assert [r.kind for r in plan.faults] == ["inject", "inject"]
    assert inj.armed_at("disk.enospc")
    assert not inj.armed_at("report.duplicate")
    assert inj.points("clock.skew:") == ["clock.skew:30"]
    assert set(EFFECT_POINTS) <= set(FAULT_POINTS)
    fired = inj.check("disk.enospc")
    assert fired is not None
    assert (fired.kind, str(fired)) == ("inject", "disk.enospc=inject")


def test_fault_plan_from_json_file(tmp_path: Path) -> None:
    f = tmp_path / "faults.json"
    f.write_text('{"seed": 7, "faults": [{"point": "reboot.before", "action": "crash"}]}')
    plan = FaultPlan.from_file(f)
    assert plan.seed == 7
    assert plan.faults[0].kind == "crash"
    f.write_text('{"faults": [{"point": "x", "action": "explode"}]}')
    with pytest.raises(ValueError, match="action"):
        FaultPlan.from_file(f)


async def test_ab_slots_activate_commit_rollback_and_bootloader_fallback(tmp_path: Path) -> None:
    inst = ABSlotInstaller(tmp_path / "slots", initial_version="1.0.0", max_trial_boots=2)
    image = tmp_path / "img"
    image.write_bytes(IMAGE)
    await inst.install(image, "2.0.0")
    assert (inst.active_slot(), inst.current_version(), inst.slot_version("b")) == (
        "a",
        "1.0.0",
        "2.0.0",
    )
    await inst.activate()
    await inst.activate()  # idempotent
    assert (inst.active_slot(), inst.on_trial, inst.committed_version()) == ("b", True, "1.0.0")
    assert (tmp_path / "slots" / "active").is_symlink()
    assert await inst.verify_reboot("2.0.0")
    await inst.rollback()
    await inst.rollback()
    assert (inst.active_slot(), inst.on_trial, inst.current_version()) == ("a", False, "1.0.0")

    await inst.install(image, "2.0.0")
    await inst.activate()
    await inst.commit()
    assert (inst.active_slot(), inst.on_trial, inst.committed_version()) == ("b", False, "2.0.0")
    assert (tmp_path / "slots" / "slots" / "b" / "image.bin").read_bytes() == IMAGE

    await inst.install(image, "3.0.0")  # into slot a
    await inst.activate()
    assert inst.boot() == "a"
    assert inst.boot() == "a"
    assert inst.boot() == "b"  # third trial boot: the fake bootloader falls back
    assert (inst.on_trial, inst.current_version()) == (False, "2.0.0")
    reopened = ABSlotInstaller(tmp_path / "slots", initial_version="9.9.9")
    assert reopened.current_version() == "2.0.0"


def test_journal_is_atomic_and_keeps_history(tmp_path: Path) -> None:
    journal = OtaJournal(tmp_path)
    rec = OtaRecord(job_id="j", execution_number=1)
    journal.save(rec)
    rec.state = OtaState.DOWNLOADING
    rec.offset = 10
    journal.save(rec, event="checkpoint")
    loaded = journal.load()
    assert loaded is not None
    assert (loaded.state, loaded.offset, loaded.transaction_id) == (
        OtaState.DOWNLOADING,
        10,
        rec.transaction_id,
    )
    assert [h["event"] for h in journal.history()] == ["state", "checkpoint"]
    assert not list(tmp_path.glob(".*tmp"))
    journal.state_file.write_text('{"job_id": "j", "sta')  # torn (cannot happen, but)
    assert journal.load() is None
    journal.clear()
    assert journal.load() is None
