"""``[ota]`` validation: every problem names the key, the bad value and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from certs import CodeSigningKey
from edge_agent import ConfigError, parse_config
from tests.edge_agent.test_process import cli

BASE: dict[str, Any] = {
    "state_dir": "state",
    "endpoint": {"host": "example-ats.iot.eu-west-1.amazonaws.com"},
    "identity": {"cert_file": "d.pem", "key_file": "d.key"},
}


@pytest.fixture(scope="module")
def key() -> CodeSigningKey:
    return CodeSigningKey.generate()


def ota(tmp_path: Path, key: CodeSigningKey, **patch: Any) -> dict[str, Any]:
    (tmp_path / "ota.pub.pem").write_bytes(key.public_key_pem())
    section: dict[str, Any] = {
        "installer": "ab-slots",
        "device_type": "robot-pi",
        "slot_root": "slots",
        "trusted_keys": {key.key_id: "ota.pub.pem"},
    }
    section.update(patch)
    return {**BASE, "ota": {k: v for k, v in section.items() if v is not None}}


def problems(data: dict[str, Any], base: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=base)
    return info.value.problems


def test_valid_ota_section_resolves_paths(tmp_path: Path, key: CodeSigningKey) -> None:
    config = parse_config(ota(tmp_path, key, bandwidth_bps=65536), base_dir=tmp_path)
    assert config.ota.enabled
    assert config.ota.slot_root == tmp_path / "slots"
    assert config.ota.trusted_keys == {key.key_id: tmp_path / "ota.pub.pem"}
    assert config.ota.reboot == "restart-agent"
    assert config.ota_dir == tmp_path / "state" / "ota"


def test_default_is_no_ota(tmp_path: Path) -> None:
    config = parse_config(BASE, base_dir=tmp_path)
    assert not config.ota.enabled


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"installer": "rauc"}, "ota.installer = \"rauc\": input should be 'none', 'ab-slots'"),
        ({"device_type": None}, 'ota.device_type is missing (needed by installer = "ab-slots")'),
        ({"slot_root": None}, "ota.slot_root is missing"),
        ({"trusted_keys": {}}, "ota.trusted_keys is empty"),
        ({"trusted_keys": {"KEY": "ota.pub.pem"}}, "key id 'KEY' is not 16 lowercase hex"),
        ({"trusted_keys": {"0123456789abcdef": "ota.pub.pem"}}, "not 0123456789abcdef"),
        ({"trusted_keys": {"0123456789abcdef": "missing.pem"}}, "cannot read it"),
        ({"bandwidth_bps": 10}, "ota.bandwidth_bps = 10"),
        ({"reboot": "now"}, 'ota.reboot = "now"'),
        (
            {"health_check": [{"name": "a", "argv": ["x"]}, {"name": "a", "argv": ["y"]}]},
            "names are not unique",
        ),
        ({"health_check": [{"name": "a", "argv": []}]}, "ota.health_check[0].argv = []"),
    ],
)
def test_ota_problems_name_key_value_and_fix(
    tmp_path: Path, key: CodeSigningKey, patch: dict[str, Any], expected: str
) -> None:
    found = problems(ota(tmp_path, key, **patch), tmp_path)
    assert len(found) == 1, found
    assert expected in found[0], found
    assert "fix:" in found[0], found


def test_ota_needs_jobs(tmp_path: Path, key: CodeSigningKey) -> None:
    data = {**ota(tmp_path, key), "jobs": {"enabled": False}}
    found = problems(data, tmp_path)
    assert 'ota.installer = "ab-slots" needs jobs.enabled = true' in found[0]
    assert "fix:" in found[0]


def test_a_key_file_that_is_not_a_key(tmp_path: Path, key: CodeSigningKey) -> None:
    data = ota(tmp_path, key)
    (tmp_path / "ota.pub.pem").write_text("hello")
    found = problems(data, tmp_path)
    assert "not a PEM public key" in found[0]
    assert f"ota.trusted_keys.{key.key_id} = " in found[0]


def test_check_config_reports_ota_and_its_problems(tmp_path: Path, key: CodeSigningKey) -> None:
    (tmp_path / "ota.pub.pem").write_bytes(key.public_key_pem())
    text = f"""
state_dir = "state"
[endpoint]
host = "example-ats.iot.eu-west-1.amazonaws.com"
[identity]
cert_file = "d.pem"
key_file = "d.key"
[ota]
installer = "ab-slots"
device_type = "robot-pi"
slot_root = "slots"
[ota.trusted_keys]
"{key.key_id}" = "ota.pub.pem"
"""
    config = tmp_path / "agent.toml"
    config.write_text(text)
    ok = cli("check-config", "--config", str(config))
    assert ok.returncode == 0, ok.stderr
    assert "; ota: ab-slots)" in ok.stdout
    config.write_text(text.replace(key.key_id, "0123456789abcdef"))
    bad = cli("check-config", "--config", str(config))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert (
        f"ota.trusted_keys.0123456789abcdef = {json.dumps(str(tmp_path / 'ota.pub.pem'))}"
        in (lines[0])
    )
    assert f"that key's id is {key.key_id}" in lines[0]
    assert "fix:" in lines[0]
