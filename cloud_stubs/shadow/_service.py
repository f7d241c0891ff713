"""Device Shadow service: MQTT shell over the pure core, documents persisted in SQLite.

Documents are cached in memory and written through to ``DIR/shadows.sqlite`` (WAL) on every
accepted change, so a restart of ``cloud-stubs up`` loses nothing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence

from cloud_stubs._paths import StatePaths
from cloud_stubs.services._runtime import Outgoing, Request
from cloud_stubs.shadow._core import ShadowDocument, handle_request
from cloud_stubs.shadow._topics import parse_shadow_topic

__all__ = ["ShadowService", "ShadowStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shadows (
    thing_name TEXT NOT NULL,
    shadow_name TEXT NOT NULL,
    document TEXT NOT NULL,
    PRIMARY KEY (thing_name, shadow_name)
);
"""


class ShadowStore:
    """Shadow documents keyed by (thing, shadow name); classic shadow has name ``""``."""

    def __init__(self, paths: StatePaths) -> None:
        """Open ``DIR/shadows.sqlite``."""
        paths.root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(paths.root / "shadows.sqlite", timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._cache: dict[tuple[str, str], ShadowDocument | None] = {}

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def load(self, thing: str, name: str | None) -> ShadowDocument | None:
        """The stored document (``None`` if never stored)."""
        key = (thing, name or "")
        if key not in self._cache:
            row = self._db.execute(
                "SELECT document FROM shadows WHERE thing_name = ? AND shadow_name = ?", key
            ).fetchone()
            self._cache[key] = ShadowDocument.from_json(row[0]) if row else None
        return self._cache[key]

    def save(self, thing: str, name: str | None, doc: ShadowDocument) -> None:
        """Persist a document."""
        key = (thing, name or "")
        self._db.execute(
            "INSERT OR REPLACE INTO shadows(thing_name, shadow_name, document) VALUES (?, ?, ?)",
            (*key, doc.to_json()),
        )
        self._cache[key] = doc

    def names(self, thing: str) -> list[str]:
        """Named shadows of a thing (classic shadow excluded)."""
        rows = self._db.execute(
            "SELECT shadow_name FROM shadows WHERE thing_name = ? AND shadow_name != ''"
            " ORDER BY shadow_name",
            (thing,),
        ).fetchall()
        return [r[0] for r in rows]


class ShadowService:
    """Classic and named shadows for every thing (registered or not, §2.1)."""

    name = "shadow"

    def __init__(self, paths: StatePaths) -> None:
        """Use the state directory's shadow store."""
        self.store = ShadowStore(paths)

    @property
    def filters(self) -> Sequence[str]:
        """Request topics of classic and named shadows."""
        ops = ("get", "update", "delete")
        return tuple(f"$aws/things/+/shadow/{op}" for op in ops) + tuple(
            f"$aws/things/+/shadow/name/+/{op}" for op in ops
        )

    def accepts(self, topic: str) -> bool:
        """True for shadow request topics."""
        return parse_shadow_topic(topic) is not None

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    async def tick(self, now: float) -> list[Outgoing]:  # noqa: ARG002 - no timers
        """Shadows have no timers."""
        return []

    async def handle(self, request: Request) -> list[Outgoing]:
        """Apply one get/update/delete and return the responses to publish."""
        parsed = parse_shadow_topic(request.topic)
        if parsed is None:
            return []
        doc = self.store.load(parsed.thing_name, parsed.shadow_name)
        outcome = handle_request(
            doc,
            parsed.operation,
            request.payload,
            thing_name=parsed.thing_name,
            shadow_name=parsed.shadow_name,
            now=int(time.time()),
        )
        if outcome.changed:
            self.store.save(parsed.thing_name, parsed.shadow_name, outcome.document)
        return [
            Outgoing(
                parsed.response_topic(m.topic_suffix),
                json.dumps(m.payload, separators=(",", ":")).encode(),
            )
            for m in outcome.messages
        ]
