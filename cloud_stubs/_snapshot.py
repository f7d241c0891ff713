"""The registry snapshot the brokers read: ``DIR/broker/registry.tsv``.

The SQLite registry is the source of truth; every change rewrites this small tab-separated file
atomically (write to a temporary file, then rename). Brokers re-read it when its modification time
or size changes, so certificate activation, deactivation and revocation take effect on a running
broker without a restart. Format, one certificate per line, sorted by certificate id::

    # certificate_id<TAB>status<TAB>role<TAB>thing_name
    <sha256 hex of DER><TAB><status><TAB><role><TAB><thing or ->

where status is ACTIVE, INACTIVE, REVOKED or PENDING_ACTIVATION and role is device, claim
or service.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cloud_stubs._policy import Role

__all__ = ["SnapshotReader", "SnapshotRow", "read_snapshot", "write_snapshot"]

_HEADER = "# certificate_id\tstatus\trole\tthing_name\n"


@dataclass(frozen=True)
class SnapshotRow:
    """One certificate as the brokers see it."""

    certificate_id: str
    status: str
    role: Role
    thing_name: str | None

    @property
    def active(self) -> bool:
        """True when the certificate may connect."""
        return self.status == "ACTIVE"


def write_snapshot(path: Path, rows: list[SnapshotRow]) -> None:
    """Atomically replace the snapshot file with ``rows``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [_HEADER]
    for r in sorted(rows, key=lambda r: r.certificate_id):
        body.append(f"{r.certificate_id}\t{r.status}\t{r.role}\t{r.thing_name or '-'}\n")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".registry-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(body)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_snapshot(path: Path) -> dict[str, SnapshotRow]:
    """Read the snapshot into a dict keyed by certificate id (empty if the file is missing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    out: dict[str, SnapshotRow] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 4:  # noqa: PLR2004 - four columns
            continue
        cert_id, status, role, thing = parts
        try:
            out[cert_id] = SnapshotRow(cert_id, status, Role(role), None if thing == "-" else thing)
        except ValueError:
            continue
    return out


class SnapshotReader:
    """Caches the snapshot and re-reads it when the file's mtime or size changes."""

    def __init__(self, path: Path) -> None:
        """Remember the path; nothing is read until :meth:`rows` is called."""
        self._path = path
        self._key: tuple[int, int] | None = None
        self._rows: dict[str, SnapshotRow] = {}

    def rows(self) -> dict[str, SnapshotRow]:
        """Return the current rows, re-reading the file if it changed."""
        try:
            st = self._path.stat()
            key = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = (0, 0)
        if key != self._key:
            self._rows = read_snapshot(self._path)
            self._key = key
        return self._rows

    def lookup(self, certificate_id: str) -> SnapshotRow | None:
        """Return the row of ``certificate_id`` (fresh), or None."""
        return self.rows().get(certificate_id)
