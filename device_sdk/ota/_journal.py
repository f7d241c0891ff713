"""The persisted OTA state machine record (ota.md §11.2).

Two files per device in ``state_dir``:

* ``ota-state.json``: the current :class:`OtaRecord`, replaced atomically and durably
  (temporary file, fsync, rename, fsync of the directory) on every transition and on
  download checkpoints;
* ``ota-journal.jsonl``: append-only history (one JSON line per transition, fault and
  checkpoint), fsynced, for diagnostics and the sweep's invariants.
"""

from __future__ import annotations

import enum
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pydantic

from device_sdk.shadow._files import read_json, remove_durably, write_atomic

__all__ = ["TERMINAL_STATES", "OtaJournal", "OtaRecord", "OtaState"]


class OtaState(enum.StrEnum):
    """States of one update (ota.md §11.2)."""

    RECEIVED = "RECEIVED"
    VALIDATED = "VALIDATED"
    DOWNLOADING = "DOWNLOADING"
    DOWNLOADED = "DOWNLOADED"
    VERIFIED = "VERIFIED"
    INSTALLING = "INSTALLING"
    INSTALLED = "INSTALLED"
    REBOOTING = "REBOOTING"
    TRIAL_BOOT = "TRIAL_BOOT"
    HEALTH_CHECK = "HEALTH_CHECK"
    COMMITTING = "COMMITTING"
    COMMITTED = "COMMITTED"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"
    REJECTED = "REJECTED"
    CANCELED = "CANCELED"
    FAILED = "FAILED"


TERMINAL_STATES = frozenset(
    {OtaState.COMMITTED, OtaState.REJECTED, OtaState.CANCELED, OtaState.FAILED}
)


class OtaRecord(pydantic.BaseModel):
    """The update in flight (or the last one, once terminal).

    Attributes:
        job_id: The job.
        execution_number: Its execution number.
        transaction_id: Unique per update attempt (RAUC-style), stable across restarts.
        boot_id: Identifies the process run that wrote the record last.
        seq: Transition counter.
        state: Current state.
        attempt: Download attempts so far.
        boot_attempts: Trial boots so far.
        reentries: Times a non-terminal state was re-entered after a restart (loop guard).
        offset: Bytes of the image safely on disk.
        total: Image size.
        previous_version: Version running when the update started.
        target_version: Version being installed.
        reason_code: Why it ended (failure branches).
        detail: Longer reason.
        faults_fired: Injected faults that fired, in order.
        range_restarts: Downloads restarted from 0 because a server ignored Range.
        url_refreshes: Fresh URLs fetched after a 403.
        hash_retries: Downloads restarted because the image did not match its SHA-256.
        download_path: Where the image is downloaded.
        reboot_from: ``boot_id`` of the boot that asked for the reboot (``REBOOTING``).
    """

    model_config = pydantic.ConfigDict(extra="ignore")

    format: int = 1
    job_id: str
    execution_number: int | None = None
    transaction_id: str = pydantic.Field(default_factory=lambda: uuid.uuid4().hex)
    boot_id: str = ""
    seq: int = 0
    state: OtaState = OtaState.RECEIVED
    attempt: int = 0
    boot_attempts: int = 0
    reentries: int = 0
    offset: int = 0
    total: int = 0
    previous_version: str | None = None
    target_version: str | None = None
    reason_code: str | None = None
    detail: str | None = None
    faults_fired: list[str] = pydantic.Field(default_factory=list)
    range_restarts: int = 0
    hash_retries: int = 0
    download_path: str | None = None
    reboot_from: str | None = None
    url_refreshes: int = 0
    ts_monotonic: float = 0.0
    ts_wall: float = 0.0

    @property
    def terminal(self) -> bool:
        """Whether the update has ended."""
        return self.state in TERMINAL_STATES


class OtaJournal:
    """The current-state file and the append-only history under ``state_dir``.

    Thread-safe (the downloader checkpoints from its worker thread); blocking file I/O, so
    async callers use ``asyncio.to_thread`` for large writes (records are small: the agent
    writes them inline).
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        #: Added to ``time.time()`` for ``ts_wall`` (the ``clock.skew`` fault).
        self.clock_offset_s = 0.0
        self.state_file = self.dir / "ota-state.json"
        self.history_file = self.dir / "ota-journal.jsonl"
        self._lock = threading.Lock()

    def load(self) -> OtaRecord | None:
        """The current record, or ``None`` (a torn or unreadable file is treated as none)."""
        try:
            data = read_json(self.state_file)
        except (OSError, ValueError):
            return None
        if data is None:
            return None
        try:
            return OtaRecord.model_validate(data)
        except pydantic.ValidationError:
            return None

    def save(self, record: OtaRecord, *, event: str = "state", **extra: Any) -> None:
        """Persist ``record`` (atomically) and append an ``event`` line to the history."""
        record.ts_monotonic = time.monotonic()
        record.ts_wall = time.time() + self.clock_offset_s
        content = json.dumps(record.model_dump(mode="json"), sort_keys=True).encode()
        line = {
            "event": event,
            "job_id": record.job_id,
            "execution_number": record.execution_number,
            "transaction_id": record.transaction_id,
            "boot_id": record.boot_id,
            "seq": record.seq,
            "state": record.state.value,
            "attempt": record.attempt,
            "offset": record.offset,
            "ts_monotonic": record.ts_monotonic,
            "ts_wall": record.ts_wall,
            **extra,
        }
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.state_file, content)
            with self.history_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line, sort_keys=True, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def history(self) -> list[dict[str, Any]]:
        """Every history line (torn last line skipped)."""
        try:
            lines = self.history_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def clear(self) -> None:
        """Forget the current record (the history stays)."""
        with self._lock:
            remove_durably(self.state_file)
