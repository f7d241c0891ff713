"""Registry (SQLite) and the broker snapshot it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_stubs import CertStatus, NotFoundError, RegistryError, StatePaths
from cloud_stubs._policy import Role
from cloud_stubs._snapshot import SnapshotReader, read_snapshot
from cloud_stubs._state import ensure_state, issue_thing, issue_things, load_ca


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    return StatePaths.at(tmp_path / "state")


def test_first_run_creates_ca_server_service_and_reuses_them(paths: StatePaths) -> None:
    reg = ensure_state(paths)
    ca_pem = paths.ca_cert.read_bytes()
    server_pem = paths.server_cert.read_bytes()
    assert paths.ca_key.stat().st_mode & 0o777 == 0o600
    assert paths.server_key.stat().st_mode & 0o777 == 0o600
    rows = read_snapshot(paths.registry_snapshot)
    assert [r.role for r in rows.values()] == [Role.SERVICE]
    reg.close()
    reg = ensure_state(paths)
    assert paths.ca_cert.read_bytes() == ca_pem
    assert paths.server_cert.read_bytes() == server_pem
    assert len(read_snapshot(paths.registry_snapshot)) == 1
    reg.close()


def test_issue_thing_registers_active_cert_and_is_idempotent(paths: StatePaths) -> None:
    reg = ensure_state(paths)
    ca = load_ca(paths)
    first = issue_thing(reg, ca, "robot-1")
    assert first.key_file.stat().st_mode & 0o777 == 0o600
    row = read_snapshot(paths.registry_snapshot)[first.certificate_id]
    assert (row.status, row.role, row.thing_name) == ("ACTIVE", Role.DEVICE, "robot-1")
    again = issue_thing(reg, ca, "robot-1")
    assert again.certificate_id == first.certificate_id
    reg.set_certificate_status(first.certificate_id, CertStatus.INACTIVE)
    fresh = issue_thing(reg, ca, "robot-1")
    assert fresh.certificate_id != first.certificate_id
    reg.close()


def test_status_changes_reach_the_snapshot_reader(paths: StatePaths) -> None:
    reg = ensure_state(paths)
    ident = issue_thing(reg, load_ca(paths), "robot-1")
    reader = SnapshotReader(paths.registry_snapshot)
    row = reader.lookup(ident.certificate_id)
    assert row is not None
    assert row.active
    reg.set_certificate_status(ident.certificate_id[:10], CertStatus.INACTIVE)
    row = reader.lookup(ident.certificate_id)
    assert row is not None
    assert row.status == "INACTIVE"
    reg.set_certificate_status(ident.certificate_id, CertStatus.REVOKED)
    with pytest.raises(RegistryError, match="REVOKED"):
        reg.set_certificate_status(ident.certificate_id, CertStatus.ACTIVE)
    reg.close()


def test_bulk_issue_and_groups(paths: StatePaths) -> None:
    reg = ensure_state(paths)
    names = [f"s-{i}" for i in range(50)]
    idents = issue_things(reg, load_ca(paths), names)
    assert len({i.certificate_id for i in idents}) == 50
    assert len(read_snapshot(paths.registry_snapshot)) == 51
    assert [t.name for t in reg.list_things(prefix="s-")] == sorted(names)
    reg.create_group("lab")
    reg.add_to_group("lab", names[:3])
    assert reg.group_members("lab") == sorted(names[:3])
    with pytest.raises(NotFoundError):
        reg.add_to_group("nope", names[:1])
    with pytest.raises(NotFoundError):
        reg.add_to_group("lab", ["ghost"])
    reg.close()


def test_delete_thing_deactivates_its_certificates(paths: StatePaths) -> None:
    reg = ensure_state(paths)
    ident = issue_thing(reg, load_ca(paths), "gone")
    reg.delete_thing("gone")
    row = read_snapshot(paths.registry_snapshot)[ident.certificate_id]
    assert row.status == "INACTIVE"
    assert row.thing_name is None
    with pytest.raises(NotFoundError):
        reg.get_thing("gone")
    reg.close()


@pytest.mark.parametrize("bad", ["", "has space", "slash/y", "x" * 129, "robot#1"])
def test_invalid_thing_names_are_refused(paths: StatePaths, bad: str) -> None:
    reg = ensure_state(paths)
    with pytest.raises(RegistryError, match="invalid thing name"):
        reg.create_thing(bad)
    reg.close()


def test_certificate_prefix_lookup(paths: StatePaths) -> None:
    reg = ensure_state(paths)
    ident = issue_thing(reg, load_ca(paths), "robot-1")
    assert reg.get_certificate(ident.certificate_id[:8]).certificate_id == ident.certificate_id
    with pytest.raises(NotFoundError):
        reg.get_certificate("0" * 64)
    reg.close()
