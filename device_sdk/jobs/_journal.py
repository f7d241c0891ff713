"""The job runner's on-disk journal: the one execution in flight and how far it got.

One JSON file, replaced atomically and durably (temporary file, fsync, rename, fsync of the
directory) at every phase change, so after a crash, power cut or a reboot the runner reads
exactly one consistent entry:

``running``           the handler was started (written *before* it runs);
``reboot-requested``  the handler asked for a reboot and the device is about to restart;
``reporting``         the handler finished; ``status``/``status_details`` are the outcome
                      still to be reported.

No file means no execution in flight.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from pathlib import Path

import pydantic

from device_sdk.jobs._model import JobStatus
from device_sdk.shadow._files import dump_json, read_json, remove_durably, write_atomic

__all__ = ["JobJournal", "JobPhase", "JournalEntry"]

_log = logging.getLogger(__name__)


class JobPhase(enum.StrEnum):
    """How far the execution in the journal got."""

    RUNNING = "running"
    REBOOT_REQUESTED = "reboot-requested"
    REPORTING = "reporting"


class JournalEntry(pydantic.BaseModel):
    """The execution in flight.

    Attributes:
        job_id: The job.
        execution_number: Its execution number (``None`` if the service sent none).
        operation: The job document's operation (selects the handler).
        phase: How far it got.
        resumable: Whether the handler may be run again after a restart.
        status: With ``reporting``: the outcome to report.
        status_details: With ``reporting`` or ``reboot-requested``: details to report.
        updated_at: Wall-clock time of the last write (diagnostics).
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    format: int = 1
    job_id: str
    execution_number: int | None = None
    operation: str
    phase: JobPhase
    resumable: bool = False
    status: JobStatus | None = None
    status_details: dict[str, str] = pydantic.Field(default_factory=dict)
    updated_at: float = pydantic.Field(default_factory=time.time)


class JobJournal:
    """The journal file at ``path`` (its directory is created when needed)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()

    async def load(self) -> JournalEntry | None:
        """The entry, or ``None`` when there is none (an unreadable file is logged, ignored)."""
        try:
            data = await asyncio.to_thread(read_json, self.path)
            return None if data is None else JournalEntry.model_validate(data)
        except (OSError, ValueError) as exc:
            _log.warning("ignoring unreadable job journal %s: %s", self.path, exc)
            return None

    async def save(self, entry: JournalEntry) -> None:
        """Replace the entry, durably."""
        content = dump_json(entry.model_dump(mode="json"))
        async with self._lock:
            await asyncio.to_thread(write_atomic, self.path, content)

    async def clear(self) -> None:
        """Remove the entry, durably."""
        async with self._lock:
            await asyncio.to_thread(remove_durably, self.path)
