"""Create or reuse everything a state directory needs before a broker can start."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from certs import CertificateAuthority, CertsError, IssuedCert, inspect_certificate
from cloud_stubs._errors import CloudStubError, StateDirError
from cloud_stubs._paths import SERVICE_CLIENT_PREFIX, StatePaths
from cloud_stubs._policy import DEFAULT_DATA_PREFIXES, Role, default_statements, render_statements
from cloud_stubs._registry import CertStatus, Registry

__all__ = [
    "ThingIdentity",
    "ensure_ca",
    "ensure_state",
    "ensure_things",
    "issue_thing",
    "issue_things",
    "load_ca",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThingIdentity:
    """Files a device needs to connect: its certificate and key, and the CA to trust."""

    thing_name: str
    certificate_id: str
    cert_file: Path
    key_file: Path
    ca_file: Path

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly form."""
        return {
            "thing_name": self.thing_name,
            "certificate_id": self.certificate_id,
            "cert_file": str(self.cert_file),
            "key_file": str(self.key_file),
            "ca_file": str(self.ca_file),
        }


def load_ca(paths: StatePaths) -> CertificateAuthority:
    """Load the stub's CA, with a clear error if the state directory has none."""
    if not paths.ca_cert.exists():
        raise StateDirError(
            f"{paths.root} has no CA yet: run 'cloud-stubs up --state-dir {paths.root}' "
            "or 'cloud-stubs init --state-dir ...' first"
        )
    try:
        return CertificateAuthority.load(paths.ca_cert, paths.ca_key)
    except CertsError as exc:
        raise StateDirError(str(exc)) from exc


def ensure_ca(paths: StatePaths) -> CertificateAuthority:
    """Load the CA, creating it on first use."""
    if paths.ca_cert.exists():
        return load_ca(paths)
    ca = CertificateAuthority.create(common_name="cloud-stubs local IoT Core CA")
    paths.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    ca.save(paths.ca_cert, paths.ca_key)
    _log.info("created CA %s", paths.ca_cert)
    return ca


def _cert_still_good(path: Path) -> bool:
    try:
        return not inspect_certificate(path).expired
    except CertsError:
        return False


def ensure_state(
    paths: StatePaths, *, data_prefixes: tuple[str, ...] = DEFAULT_DATA_PREFIXES
) -> Registry:
    """Create CA, server and service identities, policy file and registry snapshot if missing.

    Later runs reuse what exists, so devices issued earlier keep working across restarts.
    Returns the opened registry.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    ca = ensure_ca(paths)
    if not (_cert_still_good(paths.server_cert) and paths.server_key.exists()):
        paths.server_cert.parent.mkdir(parents=True, exist_ok=True)
        ca.issue_server_cert(("localhost",), ("127.0.0.1", "::1")).write(
            paths.server_cert, paths.server_key, overwrite=True
        )
    registry = Registry(paths)
    if not (_cert_still_good(paths.service_cert) and paths.service_key.exists()):
        issued = ca.issue_device_cert(SERVICE_CLIENT_PREFIX, days=3650)
        paths.service_cert.parent.mkdir(parents=True, exist_ok=True)
        issued.write(paths.service_cert, paths.service_key, overwrite=True)
        registry.register_certificate(issued.cert_pem, role=Role.SERVICE, snapshot=False)
    paths.broker_dir.mkdir(parents=True, exist_ok=True)
    paths.policy_file.write_text(render_statements(default_statements(data_prefixes)))
    registry.write_snapshot()
    return registry


def issue_thing(
    registry: Registry, ca: CertificateAuthority, name: str, *, role: Role = Role.DEVICE
) -> ThingIdentity:
    """Create (or reuse) a thing and give it an ACTIVE certificate written under DIR/things."""
    paths = registry.paths
    registry.create_thing(name)
    tdir = paths.thing_dir(name)
    cert_file, key_file = tdir / "cert.pem", tdir / "key.pem"
    if cert_file.exists() and key_file.exists():
        active = {
            c.certificate_id
            for c in registry.certificates_for(name)
            if c.status is CertStatus.ACTIVE
        }
        info = inspect_certificate(cert_file)
        if info.fingerprint_sha256 in active and not info.expired:
            return ThingIdentity(name, info.fingerprint_sha256, cert_file, key_file, paths.ca_cert)
    issued = ca.issue_device_cert(name)
    _write_identity(issued, cert_file, key_file)
    registry.register_certificate(issued.cert_pem, role=role, thing_name=name)
    return ThingIdentity(name, issued.certificate_id, cert_file, key_file, paths.ca_cert)


def issue_claim(registry: Registry, ca: CertificateAuthority, name: str) -> ThingIdentity:
    """Issue a claim certificate (role ``claim``) under DIR/claims/<name>; reuse a live one."""
    paths = registry.paths
    cdir = paths.claim_dir(name)
    cert_file, key_file = cdir / "cert.pem", cdir / "key.pem"
    if cert_file.exists() and key_file.exists():
        info = inspect_certificate(cert_file)
        try:
            rec = registry.get_certificate(info.fingerprint_sha256)
        except CloudStubError:
            rec = None
        if rec is not None and rec.status is CertStatus.ACTIVE and not info.expired:
            return ThingIdentity(name, rec.certificate_id, cert_file, key_file, paths.ca_cert)
    issued = ca.issue_claim_cert(name)
    _write_identity(issued, cert_file, key_file)
    registry.register_certificate(issued.cert_pem, role=Role.CLAIM)
    return ThingIdentity(name, issued.certificate_id, cert_file, key_file, paths.ca_cert)


def _write_identity(issued: IssuedCert, cert_file: Path, key_file: Path) -> None:
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    issued.write(cert_file, key_file, overwrite=True)


def issue_things(
    registry: Registry,
    ca: CertificateAuthority,
    names: list[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> list[ThingIdentity]:
    """Create many things with fresh certificates: one transaction and one snapshot write.

    ``progress`` is called with the number of identities finished since the last call.
    """
    paths = registry.paths
    registry.create_things(names)
    out: list[ThingIdentity] = []
    batch: list[tuple[str, bytes, str | None]] = []
    for name, issued in zip(names, ca.issue_device_certs(names), strict=True):
        tdir = paths.thing_dir(name)
        cert_file, key_file = tdir / "cert.pem", tdir / "key.pem"
        _write_identity(issued, cert_file, key_file)
        batch.append((issued.certificate_id, issued.cert_pem, name))
        out.append(ThingIdentity(name, issued.certificate_id, cert_file, key_file, paths.ca_cert))
        if progress is not None:
            progress(1)
    registry.register_certificates(batch)
    return out


def ensure_things(state_dir: Path, names: list[str]) -> int:
    """Make sure every thing in ``names`` is registered with an active certificate on disk.

    Creates the state directory if needed. A thing that already has an active certificate
    whose files are under the state directory keeps it; the others get fresh certificates in
    one batch. Works whether or not a broker is running (brokers re-read the snapshot).

    Returns:
        How many identities were newly issued.
    """
    paths = StatePaths.at(state_dir)
    registry = ensure_state(paths) if not paths.ca_cert.exists() else Registry(paths)
    try:
        active: dict[str, set[str]] = {}
        for cert in registry.list_certificates():
            if cert.status is CertStatus.ACTIVE and cert.thing_name is not None:
                active.setdefault(cert.thing_name, set()).add(cert.pem.strip())
        missing = [name for name in names if not _has_identity(paths, name, active.get(name))]
        if missing:
            issue_things(registry, load_ca(paths), missing)
        return len(missing)
    finally:
        registry.close()


def _has_identity(paths: StatePaths, name: str, active_pems: set[str] | None) -> bool:
    if not active_pems:
        return False
    tdir = paths.thing_dir(name)
    try:
        pem = (tdir / "cert.pem").read_text().strip()
    except OSError:
        return False
    return pem in active_pems and (tdir / "key.pem").is_file()
