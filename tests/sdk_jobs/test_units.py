"""Pure pieces of the jobs layer: details, document checks, journal, models, public surface."""

from __future__ import annotations

import importlib
import logging
import types
from pathlib import Path
from typing import Any

import pytest

import device_sdk
import device_sdk.jobs
import device_sdk.shadow
from device_sdk.jobs import (
    JobExecution,
    JobFailed,
    JobJournal,
    JobPhase,
    JobRejected,
    JobRunner,
    JobStatus,
    JournalEntry,
    NextJobEvent,
    RebootRequested,
    status_details,
)


def test_status_details_are_made_valid() -> None:
    got = status_details(
        {
            "ok": "text",
            "n": 3,
            "nested": {"a": [1, 2]},
            "bad key/with spaces": "v",
            "ctl": "line1\nline2\x7f",
            "none": None,
            "empty": "",
            "long": "x" * 2000,
            "k" * 200: "v",
        }
    )
    assert got["ok"] == "text"
    assert got["n"] == "3"
    assert got["nested"] == '{"a": [1, 2]}'
    assert got["bad_key_with_spaces"] == "v"
    assert got["ctl"] == "line1line2"
    assert "none" not in got
    assert "empty" not in got
    assert len(got["long"]) == 1024
    assert "k" * 128 in got
    assert status_details(None) == {}


def test_outcome_signals() -> None:
    failed = JobFailed("disk full", {"free": 0})
    assert failed.status is JobStatus.FAILED
    assert failed.status_details() == {"free": "0", "reason": "disk full"}
    assert JobRejected("nope").status is JobStatus.REJECTED
    assert isinstance(JobRejected("nope"), JobFailed)
    reboot = RebootRequested({"slot": "B"}, step_timeout_minutes=5)
    assert (reboot.status_details, reboot.step_timeout_minutes) == ({"slot": "B"}, 5)


def _execution(document: Any) -> JobExecution:
    return JobExecution.model_validate(
        {"jobId": "j", "status": "IN_PROGRESS", "versionNumber": 2, "jobDocument": document}
    )


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("a string", "job document is not a JSON object"),
        ([1, 2], "job document is not a JSON object"),
        (None, "job document is not a JSON object"),
        ({}, "job document has no 'operation' string"),
        ({"operation": ""}, "job document has no 'operation' string"),
        ({"operation": 5}, "job document has no 'operation' string"),
        ({"operation": "x"}, "unknown operation 'x'"),
        ({"operation": "ok"}, ""),
    ],
)
def test_document_checks(document: Any, reason: str) -> None:
    async def ok(ctx: Any) -> None:
        return None

    runner = JobRunner.__new__(JobRunner)
    runner._field = "operation"
    runner._select = None
    runner._handlers = {"ok": ok}  # type: ignore[dict-item]
    op, why = runner._operation(_execution(document))
    assert why == reason
    assert (op is None) == bool(reason)


def _selecting(document: Any) -> str | None:
    if "steps" in document:
        return "steps"
    if document.get("boom"):
        raise KeyError("boom")
    kind = document.get("kind")
    return kind if isinstance(kind, str) else None


@pytest.mark.parametrize(
    ("document", "op", "reason"),
    [
        ({"version": "1.0", "steps": []}, "steps", ""),
        ({"kind": "ok"}, "ok", ""),
        ({"operation": "ok"}, None, "job document has no operation this device understands"),
        ({"kind": "x"}, None, "unknown operation 'x'"),
        ({"boom": True}, None, "operation selector failed: KeyError"),
        ("text", None, "job document is not a JSON object"),
    ],
)
def test_operation_selector(document: Any, op: str | None, reason: str) -> None:
    async def ok(ctx: Any) -> None:
        return None

    runner = JobRunner.__new__(JobRunner)
    runner._field = "operation"
    runner._select = _selecting
    runner._handlers = {"ok": ok, "steps": ok}  # type: ignore[dict-item]
    runner._name = "test"
    runner._log = logging.getLogger("test")
    assert runner._operation(_execution(document)) == (op, reason)


def test_wire_models() -> None:
    ex = _execution({"operation": "x"})
    assert ex.status_details == {}
    assert not ex.status.is_terminal
    assert all(JobStatus(s).is_terminal for s in ("SUCCEEDED", "FAILED", "CANCELED", "REMOVED"))
    event = NextJobEvent.model_validate_json(b'{"timestamp": 1700000000}')
    assert event.execution is None
    assert event.timestamp is not None
    assert event.timestamp.tzinfo is not None
    assert event.timestamp.year == 2023


async def test_journal_round_trip(tmp_path: Path) -> None:
    journal = JobJournal(tmp_path / "state" / "journal.json")
    assert await journal.load() is None
    entry = JournalEntry(job_id="j", execution_number=1, operation="op", phase=JobPhase.RUNNING)
    await journal.save(entry)
    assert await journal.load() == entry
    done = entry.model_copy(
        update={"phase": JobPhase.REPORTING, "status": JobStatus.SUCCEEDED, "status_details": {}}
    )
    await journal.save(done)
    assert (await journal.load()) == done
    await journal.clear()
    assert await journal.load() is None
    journal.path.write_text("{broken")
    assert await journal.load() is None  # logged and ignored, never fatal


@pytest.mark.parametrize("module", [device_sdk.shadow, device_sdk.jobs])
def test_public_surface(module: types.ModuleType) -> None:
    names = module.__all__  # its order is checked by ruff (RUF022)
    assert len(set(names)) == len(names)
    public = {
        n
        for n in dir(module)
        if not n.startswith("_") and not isinstance(getattr(module, n), types.ModuleType)
    }
    assert public == set(names)
    for name in names:
        obj = getattr(module, name)
        home = getattr(obj, "__module__", None)
        if isinstance(home, str) and home.startswith("device_sdk"):
            assert home.startswith(f"{module.__name__}._"), (name, home)


def test_top_level_exports() -> None:
    for name in ("ShadowClient", "ShadowSync", "JobsClient", "JobRunner", "JobContext"):
        assert name in device_sdk.__all__
        sub = "shadow" if name.startswith("Shadow") else "jobs"
        assert getattr(device_sdk, name) is getattr(
            importlib.import_module(f"device_sdk.{sub}"), name
        )
