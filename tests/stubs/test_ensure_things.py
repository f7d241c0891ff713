"""``cloud_stubs.ensure_things``: idempotent bulk identities for simulators and scripts."""

from __future__ import annotations

from pathlib import Path

from cloud_stubs import CertStatus, Registry, StatePaths, ensure_things


def _active_cert_ids(paths: StatePaths, name: str) -> set[str]:
    registry = Registry(paths)
    try:
        return {
            c.certificate_id
            for c in registry.certificates_for(name)
            if c.status is CertStatus.ACTIVE
        }
    finally:
        registry.close()


def test_issues_only_what_is_missing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    names = ["bot-1", "bot-2", "bot-3"]

    assert ensure_things(state, names) == 3
    paths = StatePaths.at(state)
    for name in names:
        assert (paths.thing_dir(name) / "cert.pem").is_file()
        assert (paths.thing_dir(name) / "key.pem").is_file()
    before = {name: _active_cert_ids(paths, name) for name in names}
    assert all(len(ids) == 1 for ids in before.values())

    # Second call: nothing new, same certificates.
    assert ensure_things(state, [*names, "bot-4"]) == 1
    assert {name: _active_cert_ids(paths, name) for name in names} == before


def test_revoked_or_missing_files_get_a_new_certificate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert ensure_things(state, ["a", "b"]) == 2
    paths = StatePaths.at(state)
    registry = Registry(paths)
    try:
        (old_a,) = _active_cert_ids(paths, "a")
        registry.set_certificate_status(old_a, CertStatus.REVOKED)
    finally:
        registry.close()
    (paths.thing_dir("b") / "key.pem").unlink()

    assert ensure_things(state, ["a", "b"]) == 2
    new_a = _active_cert_ids(paths, "a")
    assert new_a
    assert old_a not in new_a
    assert (paths.thing_dir("b") / "key.pem").is_file()
