"""Commands and executions in ``DIR/commands.sqlite`` (WAL; every change is written at once).

The database is the source of truth: the running service and the CLI (when the stub is not
running) read and write it directly, so nothing is cached in memory.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from cloud_stubs._paths import StatePaths
from cloud_stubs.commands._model import Command, Execution, ExecutionStatus

__all__ = ["CommandsStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    content_type TEXT NOT NULL,
    display_name TEXT,
    description TEXT,
    deprecated INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    last_updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    execution_id TEXT PRIMARY KEY,
    command_id TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    result TEXT,
    timeout_s INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_updated_at REAL NOT NULL,
    completed_at REAL,
    deadline REAL NOT NULL,
    terminal INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS executions_open ON executions(status, deadline);
CREATE INDEX IF NOT EXISTS executions_target ON executions(target_kind, target_id);
CREATE INDEX IF NOT EXISTS executions_command ON executions(command_id);
"""

_EXECUTION_COLUMNS = (
    "execution_id, command_id, target_kind, target_id, status, status_reason, result, "
    "timeout_s, created_at, last_updated_at, completed_at, deadline, terminal"
)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _command(row: sqlite3.Row) -> Command:
    return Command(
        command_id=row["command_id"],
        payload=bytes(row["payload"]),
        content_type=row["content_type"],
        created_at=row["created_at"],
        last_updated_at=row["last_updated_at"],
        display_name=row["display_name"],
        description=row["description"],
        deprecated=bool(row["deprecated"]),
    )


def _execution(row: sqlite3.Row) -> Execution:
    return Execution(
        execution_id=row["execution_id"],
        command_id=row["command_id"],
        target_kind=row["target_kind"],
        target_id=row["target_id"],
        status=ExecutionStatus(row["status"]),
        timeout_s=row["timeout_s"],
        created_at=row["created_at"],
        last_updated_at=row["last_updated_at"],
        deadline=row["deadline"],
        status_reason=json.loads(row["status_reason"]) if row["status_reason"] else None,
        result=json.loads(row["result"]) if row["result"] else None,
        completed_at=row["completed_at"],
        terminal=bool(row["terminal"]),
    )


class CommandsStore:
    """CRUD for commands and executions."""

    def __init__(self, paths: StatePaths) -> None:
        """Open (create) ``DIR/commands.sqlite``."""
        paths.root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(paths.root / "commands.sqlite", timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- commands -------------------------------------------------------------------------

    def insert_command(self, command: Command) -> bool:
        """Store a new command; False if the id is taken."""
        try:
            self._db.execute(
                "INSERT INTO commands(command_id, payload, content_type, display_name, "
                "description, deprecated, created_at, last_updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    command.command_id,
                    command.payload,
                    command.content_type,
                    command.display_name,
                    command.description,
                    int(command.deprecated),
                    command.created_at,
                    command.last_updated_at,
                ),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def update_command(self, command: Command) -> None:
        """Store a changed command's mutable fields."""
        self._db.execute(
            "UPDATE commands SET display_name = ?, description = ?, deprecated = ?, "
            "last_updated_at = ? WHERE command_id = ?",
            (
                command.display_name,
                command.description,
                int(command.deprecated),
                command.last_updated_at,
                command.command_id,
            ),
        )

    def get_command(self, command_id: str) -> Command | None:
        """A command, or None."""
        row = self._db.execute(
            "SELECT * FROM commands WHERE command_id = ?", (command_id,)
        ).fetchone()
        return _command(row) if row else None

    def list_commands(self) -> list[Command]:
        """Every command, oldest first."""
        rows = self._db.execute("SELECT * FROM commands ORDER BY created_at, command_id")
        return [_command(r) for r in rows]

    def delete_command(self, command_id: str) -> bool:
        """Delete a command; False if there was none."""
        cur = self._db.execute("DELETE FROM commands WHERE command_id = ?", (command_id,))
        return cur.rowcount > 0

    # -- executions -----------------------------------------------------------------------

    def put_execution(self, execution: Execution) -> None:
        """Insert or replace an execution."""
        e = execution
        self._db.execute(
            f"INSERT OR REPLACE INTO executions({_EXECUTION_COLUMNS}) "  # noqa: S608 - constant
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.execution_id,
                e.command_id,
                e.target_kind,
                e.target_id,
                str(e.status),
                _dump(e.status_reason),
                _dump(e.result),
                e.timeout_s,
                e.created_at,
                e.last_updated_at,
                e.completed_at,
                e.deadline,
                int(e.terminal),
            ),
        )

    def get_execution(self, execution_id: str) -> Execution | None:
        """An execution, or None."""
        row = self._db.execute(
            "SELECT * FROM executions WHERE execution_id = ?", (execution_id,)
        ).fetchone()
        return _execution(row) if row else None

    def list_executions(
        self,
        *,
        command_id: str | None = None,
        target: tuple[str, str] | None = None,
        status: ExecutionStatus | None = None,
        ascending: bool = False,
    ) -> list[Execution]:
        """Executions matching every given filter, newest first by default."""
        where, args = [], []
        if command_id is not None:
            where.append("command_id = ?")
            args.append(command_id)
        if target is not None:
            where.append("target_kind = ? AND target_id = ?")
            args += list(target)
        if status is not None:
            where.append("status = ?")
            args.append(str(status))
        sql = "SELECT * FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at " + ("ASC" if ascending else "DESC")
        return [_execution(r) for r in self._db.execute(sql, args)]

    def due_executions(self, now: float) -> list[Execution]:
        """Open executions (CREATED or IN_PROGRESS) whose deadline has passed."""
        rows = self._db.execute(
            "SELECT * FROM executions WHERE status IN ('CREATED', 'IN_PROGRESS') "
            "AND deadline <= ? ORDER BY deadline",
            (now,),
        )
        return [_execution(r) for r in rows]

    def next_deadline(self) -> float | None:
        """The earliest deadline of an open execution."""
        row = self._db.execute(
            "SELECT MIN(deadline) FROM executions WHERE status IN ('CREATED', 'IN_PROGRESS')"
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def delete_execution(self, execution_id: str) -> bool:
        """Delete an execution; False if there was none."""
        cur = self._db.execute("DELETE FROM executions WHERE execution_id = ?", (execution_id,))
        return cur.rowcount > 0
