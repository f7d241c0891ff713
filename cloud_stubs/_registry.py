"""The thing and certificate registry of the local IoT Core (SQLite, WAL).

Works whether or not ``cloud-stubs up`` is running: every change is a short transaction on
``DIR/registry.sqlite`` followed by an atomic rewrite of the broker snapshot
(:mod:`cloud_stubs._snapshot`), which running brokers pick up without a restart.

Certificate ids are AWS IoT's format: the lowercase hex SHA-256 of the certificate's DER.
Statuses follow IoT Core: ``ACTIVE``, ``INACTIVE``, ``REVOKED``, ``PENDING_ACTIVATION``.
"""

from __future__ import annotations

import enum
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from certs import certificate_id
from cloud_stubs._errors import NotFoundError, RegistryError
from cloud_stubs._paths import StatePaths
from cloud_stubs._policy import Role
from cloud_stubs._snapshot import SnapshotRow, write_snapshot

__all__ = ["CertRecord", "CertStatus", "Registry", "ThingRecord", "validate_thing_name"]

_THING_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_GROUP_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS things (
    name TEXT PRIMARY KEY,
    attributes TEXT NOT NULL DEFAULT '{}',
    thing_type TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    certificate_id TEXT PRIMARY KEY,
    pem TEXT NOT NULL,
    status TEXT NOT NULL,
    role TEXT NOT NULL,
    thing_name TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_thing ON certificates(thing_name);
CREATE TABLE IF NOT EXISTS thing_groups (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_members (
    group_name TEXT NOT NULL REFERENCES thing_groups(name) ON DELETE CASCADE,
    thing_name TEXT NOT NULL,
    PRIMARY KEY (group_name, thing_name)
);
"""


class CertStatus(enum.StrEnum):
    """Certificate status, as in IoT Core."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"
    PENDING_ACTIVATION = "PENDING_ACTIVATION"


@dataclass(frozen=True)
class ThingRecord:
    """A registered thing."""

    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    thing_type: str | None = None
    version: int = 1
    created_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "thing_name": self.name,
            "attributes": dict(self.attributes),
            "thing_type": self.thing_type,
            "version": self.version,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class CertRecord:
    """A registered certificate."""

    certificate_id: str
    status: CertStatus
    role: Role
    thing_name: str | None
    created_at: int
    pem: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (without the PEM)."""
        return {
            "certificate_id": self.certificate_id,
            "status": str(self.status),
            "role": str(self.role),
            "thing_name": self.thing_name,
            "created_at": self.created_at,
        }


def validate_thing_name(name: str) -> str:
    """Return ``name`` if it is a valid IoT thing name, else raise :class:`RegistryError`."""
    if not _THING_RE.fullmatch(name):
        raise RegistryError(
            f"invalid thing name {name!r}: use 1-128 characters from a-z A-Z 0-9 : _ -"
        )
    return name


class Registry:
    """Things, certificates and static thing groups, stored in ``DIR/registry.sqlite``."""

    def __init__(self, paths: StatePaths) -> None:
        """Open (and create if needed) the registry database of a state directory."""
        self._paths = paths
        paths.root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(paths.registry_db, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    @property
    def paths(self) -> StatePaths:
        """The state directory layout."""
        return self._paths

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- things ---------------------------------------------------------------------------

    def create_thing(
        self, name: str, *, attributes: dict[str, str] | None = None, thing_type: str | None = None
    ) -> ThingRecord:
        """Create a thing; creating an existing thing returns it unchanged (like CreateThing)."""
        validate_thing_name(name)
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO things(name, attributes, thing_type, created_at)"
                " VALUES (?, ?, ?, ?)",
                (name, json.dumps(attributes or {}), thing_type, int(time.time())),
            )
        return self.get_thing(name)

    def create_things(self, names: Iterable[str]) -> None:
        """Create many things in one transaction (existing ones are left alone)."""
        now = int(time.time())
        rows = [(validate_thing_name(n), "{}", None, now) for n in names]
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO things(name, attributes, thing_type, created_at)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )

    def update_thing(
        self, name: str, *, attributes: dict[str, str] | None = None, merge: bool = True
    ) -> ThingRecord:
        """Replace or merge a thing's attributes; bumps its version."""
        thing = self.get_thing(name)
        new = {**thing.attributes, **(attributes or {})} if merge else dict(attributes or {})
        with self._tx() as db:
            db.execute(
                "UPDATE things SET attributes = ?, version = version + 1 WHERE name = ?",
                (json.dumps(new), name),
            )
        return self.get_thing(name)

    def get_thing(self, name: str) -> ThingRecord:
        """Return a thing or raise :class:`NotFoundError`."""
        row = self._db.execute("SELECT * FROM things WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"thing {name!r} does not exist")
        return _thing(row)

    def has_thing(self, name: str) -> bool:
        """True when the thing exists."""
        return (
            self._db.execute("SELECT 1 FROM things WHERE name = ?", (name,)).fetchone() is not None
        )

    def list_things(self, *, prefix: str = "") -> list[ThingRecord]:
        """All things (optionally those whose name starts with ``prefix``), sorted by name."""
        rows = self._db.execute(
            "SELECT * FROM things WHERE name >= ? AND name < ? ORDER BY name",
            (prefix, prefix + "\U0010ffff"),
        ).fetchall()
        return [_thing(r) for r in rows]

    def delete_thing(self, name: str) -> None:
        """Delete a thing; its certificates are detached and set INACTIVE."""
        self.get_thing(name)
        with self._tx() as db:
            db.execute(
                "UPDATE certificates SET status = ?, thing_name = NULL WHERE thing_name = ?",
                (CertStatus.INACTIVE, name),
            )
            db.execute("DELETE FROM group_members WHERE thing_name = ?", (name,))
            db.execute("DELETE FROM things WHERE name = ?", (name,))
        self.write_snapshot()

    # -- certificates -----------------------------------------------------------------------

    def register_certificate(
        self,
        cert_pem: bytes | str,
        *,
        role: Role = Role.DEVICE,
        status: CertStatus = CertStatus.ACTIVE,
        thing_name: str | None = None,
        snapshot: bool = True,
    ) -> CertRecord:
        """Register a certificate (optionally attached to a thing) and return its record."""
        pem = cert_pem.decode() if isinstance(cert_pem, bytes) else cert_pem
        cert_id = certificate_id(pem.encode())
        if thing_name is not None:
            self.get_thing(thing_name)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO certificates"
                "(certificate_id, pem, status, role, thing_name, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (cert_id, pem, str(status), str(role), thing_name, int(time.time())),
            )
        if snapshot:
            self.write_snapshot()
        return self.get_certificate(cert_id)

    def register_certificates(self, items: Iterable[tuple[str, bytes, str | None]]) -> None:
        """Bulk-register ACTIVE device certificates: ``(certificate_id, pem, thing_name)``."""
        now = int(time.time())
        rows = [
            (cid, pem.decode(), str(CertStatus.ACTIVE), str(Role.DEVICE), thing, now)
            for cid, pem, thing in items
        ]
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO certificates"
                "(certificate_id, pem, status, role, thing_name, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        self.write_snapshot()

    def get_certificate(self, cert_id: str) -> CertRecord:
        """Return a certificate record or raise :class:`NotFoundError`.

        ``cert_id`` may be a unique prefix of at least 8 characters, as printed by the CLI.
        """
        rows = self._db.execute(
            "SELECT * FROM certificates WHERE certificate_id >= ? AND certificate_id < ? LIMIT 2",
            (cert_id, cert_id + "g"),
        ).fetchall()
        exact = [r for r in rows if r["certificate_id"] == cert_id]
        if exact:
            return _cert(exact[0])
        if len(cert_id) >= 8 and len(rows) == 1:  # noqa: PLR2004 - minimum prefix length
            return _cert(rows[0])
        if len(rows) > 1:
            raise RegistryError(f"certificate id prefix {cert_id!r} is ambiguous")
        raise NotFoundError(f"certificate {cert_id!r} does not exist")

    def certificates_for(self, thing_name: str) -> list[CertRecord]:
        """Certificates attached to a thing, newest first."""
        rows = self._db.execute(
            "SELECT * FROM certificates WHERE thing_name = ? ORDER BY created_at DESC",
            (thing_name,),
        ).fetchall()
        return [_cert(r) for r in rows]

    def list_certificates(self) -> list[CertRecord]:
        """All certificates."""
        rows = self._db.execute("SELECT * FROM certificates ORDER BY created_at").fetchall()
        return [_cert(r) for r in rows]

    def set_certificate_status(self, cert_id: str, status: CertStatus) -> CertRecord:
        """Change a certificate's status; REVOKED is final, as in IoT Core."""
        rec = self.get_certificate(cert_id)
        if rec.status is CertStatus.REVOKED and status is not CertStatus.REVOKED:
            raise RegistryError(
                f"certificate {rec.certificate_id[:12]} is REVOKED; a revoked certificate "
                "cannot be activated again (issue a new one)"
            )
        with self._tx() as db:
            db.execute(
                "UPDATE certificates SET status = ? WHERE certificate_id = ?",
                (str(status), rec.certificate_id),
            )
        self.write_snapshot()
        return self.get_certificate(rec.certificate_id)

    def attach_certificate(self, cert_id: str, thing_name: str) -> CertRecord:
        """Attach a certificate to a thing (the thing must exist)."""
        rec = self.get_certificate(cert_id)
        self.get_thing(thing_name)
        with self._tx() as db:
            db.execute(
                "UPDATE certificates SET thing_name = ? WHERE certificate_id = ?",
                (thing_name, rec.certificate_id),
            )
        self.write_snapshot()
        return self.get_certificate(rec.certificate_id)

    def delete_certificate(self, cert_id: str) -> None:
        """Remove a certificate from the registry."""
        rec = self.get_certificate(cert_id)
        with self._tx() as db:
            db.execute("DELETE FROM certificates WHERE certificate_id = ?", (rec.certificate_id,))
        self.write_snapshot()

    # -- groups -----------------------------------------------------------------------------

    def create_group(self, name: str) -> None:
        """Create a static thing group (idempotent)."""
        if not _GROUP_RE.fullmatch(name):
            raise RegistryError(f"invalid thing group name {name!r}")
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO thing_groups(name, created_at) VALUES (?, ?)",
                (name, int(time.time())),
            )

    def add_to_group(self, group: str, thing_names: Iterable[str]) -> None:
        """Add things to a static group (both must exist)."""
        self._require_group(group)
        names = list(thing_names)
        for n in names:
            self.get_thing(n)
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO group_members(group_name, thing_name) VALUES (?, ?)",
                [(group, n) for n in names],
            )

    def remove_from_group(self, group: str, thing_name: str) -> None:
        """Remove a thing from a group."""
        self._require_group(group)
        with self._tx() as db:
            db.execute(
                "DELETE FROM group_members WHERE group_name = ? AND thing_name = ?",
                (group, thing_name),
            )

    def group_members(self, group: str) -> list[str]:
        """Names of the things in a group, sorted."""
        self._require_group(group)
        rows = self._db.execute(
            "SELECT thing_name FROM group_members WHERE group_name = ? ORDER BY thing_name",
            (group,),
        ).fetchall()
        return [r[0] for r in rows]

    def list_groups(self) -> list[str]:
        """All group names."""
        return [r[0] for r in self._db.execute("SELECT name FROM thing_groups ORDER BY name")]

    def _require_group(self, group: str) -> None:
        if (
            self._db.execute("SELECT 1 FROM thing_groups WHERE name = ?", (group,)).fetchone()
            is None
        ):
            raise NotFoundError(f"thing group {group!r} does not exist")

    # -- broker snapshot --------------------------------------------------------------------

    def write_snapshot(self) -> None:
        """Rewrite ``broker/registry.tsv`` from the database."""
        rows = [
            SnapshotRow(r["certificate_id"], r["status"], Role(r["role"]), r["thing_name"])
            for r in self._db.execute(
                "SELECT certificate_id, status, role, thing_name FROM certificates"
            )
        ]
        write_snapshot(self._paths.registry_snapshot, rows)


def _thing(row: sqlite3.Row) -> ThingRecord:
    return ThingRecord(
        name=row["name"],
        attributes=json.loads(row["attributes"]),
        thing_type=row["thing_type"],
        version=row["version"],
        created_at=row["created_at"],
    )


def _cert(row: sqlite3.Row) -> CertRecord:
    return CertRecord(
        certificate_id=row["certificate_id"],
        status=CertStatus(row["status"]),
        role=Role(row["role"]),
        thing_name=row["thing_name"],
        created_at=row["created_at"],
        pem=row["pem"],
    )
