"""Who a TLS peer is and what it may do, for the embedded broker.

The identity of a connection is its client certificate: the certificate id is the SHA-256 of
its DER encoding, looked up in the registry snapshot (:mod:`cloud_stubs._snapshot`). Rights come
from the same policy statements the mosquitto plugin evaluates (:mod:`cloud_stubs._policy`).
Both files are re-read when they change: the broker checks them (one ``stat`` each) before every
decision, so registry and policy changes apply to the next operation.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cloud_stubs._paths import StatePaths
from cloud_stubs._policy import Action, PolicyEngine, Principal
from cloud_stubs._snapshot import SnapshotRow, read_snapshot

__all__ = ["Authority", "ConnectDecision", "PeerIdentity", "peer_identity"]

_log = logging.getLogger(__name__)

#: Policy decisions remembered until the policy file changes (the cache is then dropped).
_MAX_CACHED_DECISIONS = 100_000


@dataclass(frozen=True)
class PeerIdentity:
    """The client certificate a TLS peer presented."""

    certificate_id: str
    common_name: str | None


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerIdentity | None:
    """Read the verified client certificate of a TLS connection (None without one)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    common_name: str | None = None
    info = ssl_object.getpeercert()
    if info:
        for rdn in info.get("subject", ()):
            for attribute in rdn:
                if attribute[0] == "commonName":
                    common_name = str(attribute[1])
    return PeerIdentity(hashlib.sha256(der).hexdigest(), common_name)


@dataclass(frozen=True)
class ConnectDecision:
    """Outcome of a CONNECT: the principal when accepted, otherwise why not."""

    principal: Principal | None
    reason: str

    @property
    def accepted(self) -> bool:
        """True when the connection may proceed."""
        return self.principal is not None


def _file_key(path: Path) -> tuple[int, int, int]:
    """What identifies a version of a file rewritten by rename: mtime, size and inode."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0, 0, 0)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class _PolicyFile:
    """``policies.tsv``, re-parsed when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._key: tuple[int, int, int] | None = None
        self.engine = PolicyEngine(())
        #: Decisions of the current engine, keyed by (principal, action, resource).
        self.decisions: dict[tuple[Principal, Action, str], bool] = {}

    def refresh(self, *, force: bool = False) -> None:
        key = _file_key(self._path)
        if key == self._key and not force:
            return
        self._key = key
        self.decisions.clear()
        if key == (0, 0, 0):
            _log.warning("%s is missing: every request is denied", self._path)
            self.engine = PolicyEngine(())
            return
        try:
            self.engine = PolicyEngine.from_file(self._path)
        except (OSError, ValueError) as exc:
            _log.error("keeping the previous policies: cannot load %s: %s", self._path, exc)


class _SnapshotFile:
    """``registry.tsv`` (:func:`cloud_stubs._snapshot.read_snapshot`), re-read when it changes.

    Like :class:`cloud_stubs._snapshot.SnapshotReader`, with the inode in the change key so two
    atomic rewrites of equal size within one mtime tick are still told apart.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._key: tuple[int, int, int] | None = None
        self.rows: dict[str, SnapshotRow] = {}

    def refresh(self, *, force: bool = False) -> bool:
        key = _file_key(self._path)
        if key == self._key and not force:
            return False
        self._key = key
        self.rows = read_snapshot(self._path)
        return True


class Authority:
    """Registry snapshot plus policies, as one place to ask "may this connection do that?"."""

    def __init__(self, paths: StatePaths) -> None:
        """Remember the files; nothing is read until :meth:`refresh`."""
        self._snapshot = _SnapshotFile(paths.registry_snapshot)
        self._policies = _PolicyFile(paths.policy_file)

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the files that changed (all with ``force``); True when the registry did."""
        self._policies.refresh(force=force)
        return self._snapshot.refresh(force=force)

    def row(self, certificate_id: str) -> SnapshotRow | None:
        """The registry row of a certificate (as of the last refresh)."""
        return self._snapshot.rows.get(certificate_id)

    def is_active(self, certificate_id: str) -> bool:
        """True when the certificate is registered and ACTIVE."""
        row = self._snapshot.rows.get(certificate_id)
        return row is not None and row.active

    def authorize_connect(self, identity: PeerIdentity | None, client_id: str) -> ConnectDecision:
        """IoT Core's CONNECT check: known ACTIVE certificate and ``iot:Connect`` on the id."""
        self.refresh()
        if identity is None:
            return ConnectDecision(None, "no client certificate")
        row = self._snapshot.rows.get(identity.certificate_id)
        if row is None:
            return ConnectDecision(None, f"certificate {identity.certificate_id} is not registered")
        if not row.active:
            return ConnectDecision(None, f"certificate {identity.certificate_id} is {row.status}")
        principal = Principal(row.role, row.thing_name, client_id, identity.common_name)
        if not self._policies.engine.is_allowed(principal, Action.CONNECT, client_id):
            return ConnectDecision(
                None,
                f"policy does not allow {row.role} {row.thing_name} to connect as {client_id!r}",
            )
        return ConnectDecision(principal, "")

    def is_allowed(self, principal: Principal, action: Action, resource: str) -> bool:
        """Evaluate the current policies (see :class:`cloud_stubs._policy.PolicyEngine`)."""
        decisions = self._policies.decisions
        key = (principal, action, resource)
        allowed = decisions.get(key)
        if allowed is None:
            if len(decisions) >= _MAX_CACHED_DECISIONS:
                decisions.clear()
            allowed = decisions[key] = self._policies.engine.is_allowed(principal, action, resource)
        return allowed
