"""Deployments in ``DIR/deployments.sqlite``: one JSON document per deployment, versioned.

Writers: the CLI inserts deployments and requests cancels; the engine inside the running stub
saves every state change. Saves are optimistic (``expected_version``), so a CLI change racing
the engine never gets overwritten: the loser re-reads and retries.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Final, Self

from cloud_stubs._paths import StatePaths
from cloud_stubs.deployments._errors import DeploymentConflictError, DeploymentNotFoundError
from cloud_stubs.deployments._machine import jobs_to_observe
from cloud_stubs.deployments._model import Deployment
from cloud_stubs.firmware import OtaPaths

__all__ = ["DeploymentStore", "StoredDeployment"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    needs_engine INTEGER NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL,
    cancel_reason TEXT
);
CREATE INDEX IF NOT EXISTS deployments_engine ON deployments(needs_engine);
"""


@dataclass(frozen=True, slots=True)
class StoredDeployment:
    """A deployment as stored, with its version and a pending cancel request."""

    deployment: Deployment
    version: int
    cancel_reason: str | None = None


def _needs_engine(dep: Deployment) -> bool:
    return not dep.status.is_terminal or bool(jobs_to_observe(dep))


class DeploymentStore:
    """The deployments of a state directory."""

    def __init__(self, paths: StatePaths) -> None:
        """Open (create) the database."""
        paths.root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            OtaPaths.of(paths).deployments_db, timeout=30, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def insert(self, deployment: Deployment) -> StoredDeployment:
        """Store a new deployment (version 1)."""
        self._db.execute(
            "INSERT INTO deployments(id, created_at, status, needs_engine, version, doc)"
            " VALUES (?, ?, ?, ?, 1, ?)",
            (
                deployment.deployment_id,
                deployment.created_at,
                deployment.status.value,
                int(_needs_engine(deployment)),
                json.dumps(deployment.to_json()),
            ),
        )
        return StoredDeployment(deployment, 1)

    def load(self, deployment_id: str) -> StoredDeployment:
        """A deployment with its version.

        Raises:
            DeploymentNotFoundError: No such deployment.
        """
        row = self._db.execute(
            "SELECT doc, version, cancel_reason FROM deployments WHERE id = ?", (deployment_id,)
        ).fetchone()
        if row is None:
            raise DeploymentNotFoundError(f"deployment {deployment_id!r} does not exist")
        return StoredDeployment(Deployment.from_json(json.loads(row[0])), int(row[1]), row[2])

    def get(self, deployment_id: str) -> Deployment:
        """A deployment.

        Raises:
            DeploymentNotFoundError: No such deployment.
        """
        return self.load(deployment_id).deployment

    def save(self, deployment: Deployment, *, expected_version: int) -> int:
        """Replace a deployment if nobody changed it since ``expected_version``.

        Returns:
            The new version.

        Raises:
            DeploymentConflictError: It was changed in between.
        """
        cur = self._db.execute(
            "UPDATE deployments SET doc = ?, status = ?, needs_engine = ?, version = version + 1"
            " WHERE id = ? AND version = ?",
            (
                json.dumps(deployment.to_json()),
                deployment.status.value,
                int(_needs_engine(deployment)),
                deployment.deployment_id,
                expected_version,
            ),
        )
        if cur.rowcount != 1:
            raise DeploymentConflictError(
                f"deployment {deployment.deployment_id} changed concurrently"
            )
        return expected_version + 1

    def request_cancel(self, deployment_id: str, reason: str) -> None:
        """Record a cancel request (the engine applies it on its next poll).

        Raises:
            DeploymentNotFoundError: No such deployment.
        """
        cur = self._db.execute(
            "UPDATE deployments SET cancel_reason = ? WHERE id = ?", (reason, deployment_id)
        )
        if cur.rowcount != 1:
            raise DeploymentNotFoundError(f"deployment {deployment_id!r} does not exist")

    def list_deployments(self) -> list[Deployment]:
        """All deployments, oldest first."""
        rows = self._db.execute("SELECT doc FROM deployments ORDER BY created_at, id")
        return [Deployment.from_json(json.loads(r[0])) for r in rows]

    def engine_work(self) -> list[str]:
        """Ids of deployments the engine must look at: unfinished or with unsettled batches."""
        rows = self._db.execute(
            "SELECT id FROM deployments WHERE needs_engine = 1 ORDER BY created_at, id"
        )
        return [r[0] for r in rows]
