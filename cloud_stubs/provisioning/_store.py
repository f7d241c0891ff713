"""Provisioning templates and certificate ownership tokens (SQLite, in the registry file)."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from cloud_stubs._errors import NotFoundError, RegistryError
from cloud_stubs._paths import StatePaths
from cloud_stubs.provisioning._template import TemplateError, validate_template

__all__ = ["TOKEN_TTL_SECONDS", "ProvisioningStore", "StoredTemplate"]

#: Ownership tokens are valid for one hour and single use (§4.2).
TOKEN_TTL_SECONDS = 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS provisioning_templates (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    hook TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ownership_tokens (
    token TEXT PRIMARY KEY,
    certificate_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class StoredTemplate:
    """A provisioning template as registered."""

    name: str
    body: dict[str, Any]
    hook: str | None
    enabled: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "template_name": self.name,
            "hook": self.hook,
            "enabled": self.enabled,
            "template_body": self.body,
        }


class ProvisioningStore:
    """Templates and ownership tokens next to the registry."""

    def __init__(self, paths: StatePaths) -> None:
        """Open the tables in ``DIR/registry.sqlite`` (created if needed)."""
        paths.root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(paths.registry_db, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def put_template(self, name: str, body: object, *, hook: str | None = None) -> StoredTemplate:
        """Create or replace a template after validating it."""
        if not name or len(name) > 36 or not all(c.isalnum() or c in "_-" for c in name):  # noqa: PLR2004
            raise RegistryError(
                f"invalid template name {name!r}: 1-36 characters from a-z A-Z 0-9 _ -"
            )
        if hook is not None and ":" not in hook:
            raise RegistryError(f"hook {hook!r} must be 'module:function'")
        try:
            valid = validate_template(body)
        except TemplateError as exc:
            raise RegistryError(f"template {name}: {exc}") from exc
        self._db.execute(
            "INSERT OR REPLACE INTO provisioning_templates(name, body, hook, created_at)"
            " VALUES (?, ?, ?, ?)",
            (name, json.dumps(valid), hook, int(time.time())),
        )
        return self.get_template(name)

    def get_template(self, name: str) -> StoredTemplate:
        """Return a template or raise :class:`NotFoundError`."""
        row = self._db.execute(
            "SELECT * FROM provisioning_templates WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"provisioning template {name!r} does not exist")
        return StoredTemplate(
            row["name"], json.loads(row["body"]), row["hook"], bool(row["enabled"])
        )

    def list_templates(self) -> list[StoredTemplate]:
        """All templates."""
        names = [
            r[0] for r in self._db.execute("SELECT name FROM provisioning_templates ORDER BY name")
        ]
        return [self.get_template(n) for n in names]

    def new_token(self, certificate_id: str, *, now: float | None = None) -> str:
        """Create a single-use ownership token for a freshly issued certificate."""
        token = secrets.token_urlsafe(48)
        expires = (now if now is not None else time.time()) + TOKEN_TTL_SECONDS
        self._db.execute(
            "INSERT INTO ownership_tokens(token, certificate_id, expires_at) VALUES (?, ?, ?)",
            (token, certificate_id, expires),
        )
        return token

    def peek_token(self, token: str, *, now: float | None = None) -> str | None:
        """Return the certificate id of a valid, unused, unexpired token, else None."""
        row = self._db.execute(
            "SELECT certificate_id, expires_at, used FROM ownership_tokens WHERE token = ?",
            (token,),
        ).fetchone()
        t = now if now is not None else time.time()
        if row is None or row["used"] or row["expires_at"] < t:
            return None
        return str(row["certificate_id"])

    def consume_token(self, token: str) -> None:
        """Mark a token used."""
        self._db.execute("UPDATE ownership_tokens SET used = 1 WHERE token = ?", (token,))

    def expired_unused_certificates(self, *, now: float | None = None) -> list[str]:
        """Certificates whose token expired unused (IoT Core deletes those)."""
        t = now if now is not None else time.time()
        rows = self._db.execute(
            "SELECT certificate_id FROM ownership_tokens WHERE used = 0 AND expires_at < ?", (t,)
        ).fetchall()
        self._db.execute("DELETE FROM ownership_tokens WHERE used = 0 AND expires_at < ?", (t,))
        return [r[0] for r in rows]
