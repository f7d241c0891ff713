"""The firmware store: signed images with manifests, download counters and armed faults.

Images are copied to ``DIR/firmware/<id>/image.bin``, hashed and signed with the stub's
code-signing key (:mod:`cloud_stubs.firmware._signing`); the manifest goes to
``DIR/firmware/<id>/manifest.json`` and to ``DIR/firmware/firmware.sqlite``. The same database
holds the file server's per-download counters and the armed faults, so the CLI reads and
changes them while a stub is serving.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

from cloud_stubs._paths import StatePaths
from cloud_stubs.firmware._errors import FirmwareError, FirmwareNotFoundError
from cloud_stubs.firmware._faults import FaultRule, FaultSpec
from cloud_stubs.firmware._paths import OtaPaths
from cloud_stubs.firmware._signing import SIG_ALG, ensure_signing_key

__all__ = ["DownloadCounters", "FirmwareManifest", "FirmwareStore"]

_VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")
_DEVICE_TYPE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_FIRMWARE_ID_RE: Final = re.compile(r"fw-[0-9a-f]{12}")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS firmware (
    id TEXT PRIMARY KEY,
    device_type TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    UNIQUE (device_type, version)
);
CREATE TABLE IF NOT EXISTS downloads (
    firmware_id TEXT NOT NULL,
    thing TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    bytes_served INTEGER NOT NULL DEFAULT 0,
    status_200 INTEGER NOT NULL DEFAULT 0,
    status_206 INTEGER NOT NULL DEFAULT 0,
    status_403 INTEGER NOT NULL DEFAULT 0,
    status_404 INTEGER NOT NULL DEFAULT 0,
    status_416 INTEGER NOT NULL DEFAULT 0,
    other_status INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
    faults_fired INTEGER NOT NULL DEFAULT 0,
    last_request_at REAL,
    PRIMARY KEY (firmware_id, thing)
);
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec TEXT NOT NULL,
    firmware_id TEXT,
    thing TEXT,
    remaining INTEGER,
    fired INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
"""

_STATUS_COLUMNS: Final = {
    200: "status_200",
    206: "status_206",
    403: "status_403",
    404: "status_404",
    416: "status_416",
}


@dataclass(frozen=True, slots=True)
class FirmwareManifest:
    """What the store knows about one image; the artifact fields of the job document.

    Attributes:
        firmware_id: ``fw-`` + 12 hex characters.
        version: The version the image installs.
        device_type: Device type it is built for.
        size: Bytes.
        sha256: Lowercase hex SHA-256 of the image.
        signature: Base64 DER ECDSA P-256 signature over the SHA-256 (``certs.verify_file``).
        key_id: Id of the signing key (``certs.CodeSigningKey.key_id``).
        sig_alg: Always ``ecdsa-p256-sha256``.
        file_name: Name of the uploaded file.
        created_at: Epoch seconds.
    """

    firmware_id: str
    version: str
    device_type: str
    size: int
    sha256: str
    signature: str
    key_id: str
    sig_alg: str
    file_name: str
    created_at: int

    @property
    def signature_der(self) -> bytes:
        """The signature as DER bytes."""
        return base64.b64decode(self.signature)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form (``manifest.json``; camelCase like the job document)."""
        return {
            "firmwareId": self.firmware_id,
            "version": self.version,
            "deviceType": self.device_type,
            "size": self.size,
            "sha256": self.sha256,
            "signature": self.signature,
            "sigAlg": self.sig_alg,
            "keyId": self.key_id,
            "fileName": self.file_name,
            "createdAt": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`."""
        return cls(
            firmware_id=data["firmwareId"],
            version=data["version"],
            device_type=data["deviceType"],
            size=int(data["size"]),
            sha256=data["sha256"],
            signature=data["signature"],
            key_id=data["keyId"],
            sig_alg=data.get("sigAlg", SIG_ALG),
            file_name=data.get("fileName", "image.bin"),
            created_at=int(data["createdAt"]),
        )


@dataclass(frozen=True, slots=True)
class DownloadCounters:
    """What the file server served for one firmware to one thing (``-``: URL without thing).

    Attributes:
        firmware_id: The firmware (as requested; may be unknown for 404s).
        thing: The ``thing`` the URL was rendered for, or ``-``.
        requests: Requests answered (any status, including dropped ones).
        bytes_served: Body bytes written.
        status_200: Full answers.
        status_206: Partial (Range) answers.
        status_403: Refused: bad signature, expired (or ``expired_403`` fault).
        status_404: Unknown firmware.
        status_416: Unsatisfiable or malformed Range.
        other_status: Other statuses (``status:<code>`` faults, 400, 405).
        dropped: Responses whose connection the server cut (``drop_after``) or the client left.
        faults_fired: Fault rules used up by these requests.
        last_request_at: Epoch seconds of the last request, if any.
    """

    firmware_id: str
    thing: str
    requests: int = 0
    bytes_served: int = 0
    status_200: int = 0
    status_206: int = 0
    status_403: int = 0
    status_404: int = 0
    status_416: int = 0
    other_status: int = 0
    dropped: int = 0
    faults_fired: int = 0
    last_request_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "firmware_id": self.firmware_id,
            "thing": self.thing,
            "requests": self.requests,
            "bytes_served": self.bytes_served,
            "status_200": self.status_200,
            "status_206": self.status_206,
            "status_403": self.status_403,
            "status_404": self.status_404,
            "status_416": self.status_416,
            "other_status": self.other_status,
            "dropped": self.dropped,
            "faults_fired": self.faults_fired,
            "last_request_at": self.last_request_at,
        }


def _check_name(value: str, pattern: re.Pattern[str], what: str, example: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise FirmwareError(
            f"invalid {what} {value!r}: 1-64 characters, letters, digits and {example}"
        )
    return value


class FirmwareStore:
    """Signed firmware images, their manifests, download counters and faults of a state dir."""

    def __init__(self, paths: StatePaths | OtaPaths) -> None:
        """Open (create) the store's database."""
        self.paths = paths if isinstance(paths, OtaPaths) else OtaPaths.of(paths)
        self.paths.firmware_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.paths.firmware_db, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
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

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- images -----------------------------------------------------------------------------

    def upload(self, file: Path, *, version: str, device_type: str) -> FirmwareManifest:
        """Copy, hash and sign an image; store it with its manifest.

        Args:
            file: The image to upload.
            version: 1-64 characters ``[A-Za-z0-9._+~-]``, starting with a letter or digit.
            device_type: 1-64 characters ``[A-Za-z0-9._:-]``, starting with a letter or digit.

        Returns:
            The new manifest.

        Raises:
            FirmwareError: Bad version or device type, the file is not a readable regular
                file, or that device type already has that version.
        """
        _check_name(version, _VERSION_RE, "version", ". _ + ~ -")
        _check_name(device_type, _DEVICE_TYPE_RE, "device type", ". _ : -")
        file = Path(file)
        if not file.is_file():
            raise FirmwareError(f"{file}: not a file")
        existing = self._by_version(device_type, version)
        if existing is not None:
            raise FirmwareError(
                f"{device_type} {version} is already uploaded as {existing.firmware_id}"
            )
        key = ensure_signing_key(self.paths)
        firmware_id = f"fw-{secrets.token_hex(6)}"
        target_dir = self.paths.image_dir(firmware_id)
        target_dir.mkdir(parents=True)
        try:
            partial = target_dir / "image.bin.partial"
            try:
                shutil.copyfile(file, partial)
            except OSError as exc:
                raise FirmwareError(f"{file}: {exc.strerror or exc}") from None
            sha256_hex, signature = key.sign_file(partial)  # what we serve is what we signed
            partial.replace(self.paths.image_file(firmware_id))
            manifest = FirmwareManifest(
                firmware_id=firmware_id,
                version=version,
                device_type=device_type,
                size=self.paths.image_file(firmware_id).stat().st_size,
                sha256=sha256_hex,
                signature=base64.b64encode(signature).decode(),
                key_id=key.key_id,
                sig_alg=SIG_ALG,
                file_name=file.name,
                created_at=int(time.time()),
            )
            text = json.dumps(manifest.to_dict(), indent=2) + "\n"
            (target_dir / "manifest.json").write_text(text)
            try:
                with self._tx() as db:
                    db.execute(
                        "INSERT INTO firmware(id, device_type, version, created_at, manifest)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (firmware_id, device_type, version, manifest.created_at, text),
                    )
            except sqlite3.IntegrityError:
                raise FirmwareError(f"{device_type} {version} is already uploaded") from None
        except BaseException:
            shutil.rmtree(target_dir, ignore_errors=True)
            raise
        return manifest

    def _by_version(self, device_type: str, version: str) -> FirmwareManifest | None:
        row = self._db.execute(
            "SELECT manifest FROM firmware WHERE device_type = ? AND version = ?",
            (device_type, version),
        ).fetchone()
        return None if row is None else FirmwareManifest.from_dict(json.loads(row[0]))

    def get(self, firmware_id: str) -> FirmwareManifest:
        """The manifest of a firmware.

        Raises:
            FirmwareNotFoundError: No such firmware.
        """
        row = self._db.execute(
            "SELECT manifest FROM firmware WHERE id = ?", (firmware_id,)
        ).fetchone()
        if row is None:
            raise FirmwareNotFoundError(f"firmware {firmware_id!r} does not exist")
        return FirmwareManifest.from_dict(json.loads(row[0]))

    def find(self, firmware_id: str) -> FirmwareManifest | None:
        """The manifest of a firmware, or ``None``."""
        if not _FIRMWARE_ID_RE.fullmatch(firmware_id):
            return None
        try:
            return self.get(firmware_id)
        except FirmwareNotFoundError:
            return None

    def list_firmware(self) -> list[FirmwareManifest]:
        """All firmware, oldest first."""
        rows = self._db.execute("SELECT manifest FROM firmware ORDER BY created_at, id")
        return [FirmwareManifest.from_dict(json.loads(r[0])) for r in rows]

    def image_path(self, firmware_id: str) -> Path:
        """Path of a stored image (which exists).

        Raises:
            FirmwareNotFoundError: No such firmware.
        """
        self.get(firmware_id)
        return self.paths.image_file(firmware_id)

    # -- download counters ------------------------------------------------------------------

    def record_download(
        self,
        firmware_id: str,
        thing: str | None,
        *,
        status: int,
        bytes_served: int,
        dropped: bool = False,
        faults_fired: int = 0,
        at: float | None = None,
    ) -> None:
        """Count one answered request."""
        column = _STATUS_COLUMNS.get(status, "other_status")
        self._db.execute(
            "INSERT INTO downloads(firmware_id, thing) VALUES (?, ?)"
            " ON CONFLICT (firmware_id, thing) DO NOTHING",
            (firmware_id, thing or "-"),
        )
        self._db.execute(
            f"UPDATE downloads SET requests = requests + 1, bytes_served = bytes_served + ?,"  # noqa: S608 - column from a fixed table
            f" {column} = {column} + 1, dropped = dropped + ?, faults_fired = faults_fired + ?,"
            " last_request_at = ? WHERE firmware_id = ? AND thing = ?",
            (
                bytes_served,
                int(dropped),
                faults_fired,
                time.time() if at is None else at,
                firmware_id,
                thing or "-",
            ),
        )

    def downloads(
        self, firmware_id: str | None = None, thing: str | None = None
    ) -> list[DownloadCounters]:
        """Counters per (firmware, thing), optionally filtered."""
        sql, args = "SELECT * FROM downloads WHERE 1 = 1", list[str]()
        if firmware_id is not None:
            sql, args = sql + " AND firmware_id = ?", [*args, firmware_id]
        if thing is not None:
            sql, args = sql + " AND thing = ?", [*args, thing]
        rows = self._db.execute(sql + " ORDER BY firmware_id, thing", args).fetchall()
        return [DownloadCounters(**dict(r)) for r in rows]

    def download_totals(self, firmware_id: str) -> DownloadCounters:
        """Counters of a firmware summed over all things (``thing`` = ``*``)."""
        total: dict[str, Any] = {"firmware_id": firmware_id, "thing": "*"}
        last: float | None = None
        for c in self.downloads(firmware_id):
            for k, v in c.to_dict().items():
                if isinstance(v, int) and k not in total:
                    total[k] = 0
                if isinstance(v, int):
                    total[k] += v
            if c.last_request_at is not None:
                last = max(last or 0.0, c.last_request_at)
        total["last_request_at"] = last
        return DownloadCounters(**total)

    def reset_downloads(self, firmware_id: str | None = None) -> None:
        """Forget counters (of one firmware, or all)."""
        if firmware_id is None:
            self._db.execute("DELETE FROM downloads")
        else:
            self._db.execute("DELETE FROM downloads WHERE firmware_id = ?", (firmware_id,))

    # -- faults -----------------------------------------------------------------------------

    def add_fault(
        self,
        spec: FaultSpec | str,
        *,
        firmware_id: str | None = None,
        thing: str | None = None,
        times: int | None = 1,
    ) -> FaultRule:
        """Arm a fault for the next ``times`` matching requests (``None``: until cleared).

        Raises:
            FirmwareError: Bad spec or ``times`` < 1.
        """
        parsed = spec if isinstance(spec, FaultSpec) else FaultSpec.parse(spec)
        if times is not None and times < 1:
            raise FirmwareError("a fault needs --times >= 1 (or no limit)")
        cur = self._db.execute(
            "INSERT INTO faults(spec, firmware_id, thing, remaining, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (str(parsed), firmware_id, thing, times, time.time()),
        )
        return FaultRule(int(cur.lastrowid or 0), parsed, firmware_id, thing, times, 0)

    def faults(self, *, live_only: bool = False) -> list[FaultRule]:
        """Armed faults in arming order (``live_only``: those that can still fire)."""
        rows = self._db.execute("SELECT * FROM faults ORDER BY id").fetchall()
        rules = [
            FaultRule(
                r["id"],
                FaultSpec.parse(r["spec"]),
                r["firmware_id"],
                r["thing"],
                r["remaining"],
                r["fired"],
            )
            for r in rows
        ]
        if live_only:
            rules = [r for r in rules if r.remaining is None or r.remaining > 0]
        return rules

    def matching_faults(self, firmware_id: str, thing: str | None) -> list[FaultRule]:
        """Live faults in scope for a request."""
        return [r for r in self.faults(live_only=True) if r.matches(firmware_id, thing)]

    def use_faults(self, rule_ids: Iterable[int]) -> None:
        """Count a firing of each rule and use up one of its remaining requests."""
        ids = list(rule_ids)
        if not ids:
            return
        with self._tx() as db:
            db.executemany(
                "UPDATE faults SET fired = fired + 1,"
                " remaining = CASE WHEN remaining IS NULL THEN NULL ELSE remaining - 1 END"
                " WHERE id = ?",
                [(i,) for i in ids],
            )

    def clear_faults(self) -> int:
        """Disarm every fault; return how many there were."""
        cur = self._db.execute("DELETE FROM faults")
        return cur.rowcount
