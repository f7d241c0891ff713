"""Device Shadow service: MQTT shell over the pure core, documents persisted in SQLite.

Documents are cached in memory and stored in ``DIR/shadows.sqlite`` (WAL). Changes are committed
in groups: the service host calls :meth:`ShadowService.persist` after each batch of requests
(whatever arrived together, at most 64) and only then publishes the batch's responses, so an
``accepted`` response is never sent for a change that is not committed, and a restart of
``cloud-stubs up`` loses nothing. A crash (not a clean stop) loses only changes that were not
answered yet; changes applied outside the host (no ``persist()`` call) are committed at most
0.1 s later or on :meth:`ShadowService.close`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Sequence

from cloud_stubs._paths import StatePaths
from cloud_stubs.services._runtime import Outgoing, Request
from cloud_stubs.shadow._core import ShadowDocument, handle_request
from cloud_stubs.shadow._topics import ShadowRequestTopic, parse_shadow_topic

__all__ = ["ShadowService", "ShadowStore"]

_FLUSH_DELAY = 0.1
#: ``json.dumps(obj, separators=(",", ":"))`` without building an encoder per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode
_MAX_PARSED_TOPICS = 100_000

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
        self._dirty: dict[tuple[str, str], ShadowDocument] = {}

    def close(self) -> None:
        """Commit pending changes and close the database."""
        self.flush()
        self._db.close()

    @property
    def pending(self) -> int:
        """Documents saved but not committed yet."""
        return len(self._dirty)

    def flush(self) -> None:
        """Commit every document saved since the last flush, in one transaction."""
        if not self._dirty:
            return
        rows = [(*key, doc.to_json()) for key, doc in self._dirty.items()]
        with self._db:  # BEGIN ... COMMIT (ROLLBACK on error, the documents stay pending)
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO shadows(thing_name, shadow_name, document)"
                " VALUES (?, ?, ?)",
                rows,
            )
        self._dirty.clear()

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
        """Store a document; committed by the next :meth:`flush` (or :meth:`close`)."""
        key = (thing, name or "")
        self._cache[key] = doc
        self._dirty[key] = doc

    def names(self, thing: str) -> list[str]:
        """Named shadows of a thing (classic shadow excluded)."""
        self.flush()
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
        self._parsed: dict[str, ShadowRequestTopic | None] = {}
        self._flush_handle: asyncio.TimerHandle | None = None

    @property
    def filters(self) -> Sequence[str]:
        """Request topics of classic and named shadows."""
        ops = ("get", "update", "delete")
        return tuple(f"$aws/things/+/shadow/{op}" for op in ops) + tuple(
            f"$aws/things/+/shadow/name/+/{op}" for op in ops
        )

    def _parse(self, topic: str) -> ShadowRequestTopic | None:
        try:
            return self._parsed[topic]
        except KeyError:
            pass
        if len(self._parsed) >= _MAX_PARSED_TOPICS:
            self._parsed.clear()
        parsed = self._parsed[topic] = parse_shadow_topic(topic)
        return parsed

    def accepts(self, topic: str) -> bool:
        """True for shadow request topics."""
        return self._parse(topic) is not None

    def persist(self) -> None:
        """Commit the changes of the requests handled so far (the host calls this per batch)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.store.flush()

    def close(self) -> None:
        """Commit pending changes and close the store."""
        self.persist()
        self.store.close()

    async def tick(self, now: float) -> list[Outgoing]:  # noqa: ARG002 - no timers
        """Shadows have no timers."""
        return []

    async def handle(self, request: Request) -> list[Outgoing]:
        """Apply one get/update/delete and return the responses to publish."""
        parsed = self._parse(request.topic)
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
            if self._flush_handle is None:
                # Normally the host's persist() comes first; this covers other callers.
                self._flush_handle = asyncio.get_running_loop().call_later(
                    _FLUSH_DELAY, self.persist
                )
        return [
            Outgoing(
                parsed.response_topic(m.topic_suffix),
                _encode(m.payload).encode(),
            )
            for m in outcome.messages
        ]
