"""Scenario validation: every error names the field, its line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_sim import ScenarioError, load_scenario, parse_duration, parse_scenario
from fleet_sim._scenario import scale_counts

EXAMPLES = Path(__file__).parents[2] / "examples" / "scenarios"

GOOD = """\
name: t
seed: 3
duration: 1m30s
groups:
  - name: robots
    model: robot_vacuum
    count: 3
    telemetry:
      interval: 500ms
"""


def error(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, source="s.yaml")
    return info.value


def test_good_scenario_and_defaults() -> None:
    s = parse_scenario(GOOD)
    assert s.duration == 90.0
    assert s.groups[0].telemetry.interval == 0.5
    assert s.ramp_up.connects_per_second == 100.0  # below IoT Core's 500/s account quota
    assert s.target.is_stub
    assert s.target.stub_dir == Path(".iot-state")
    assert s.device_count == 3


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0.25, 0.25),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("90", 90.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5x", "", "m", True, None, "1h 2"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


def test_unknown_field_names_line_and_suggests() -> None:
    exc = error(GOOD.replace("    telemetry:\n", "    telemetri:\n"))
    issue = exc.issues[0]
    assert issue.location == "groups[0].telemetri"
    assert issue.line == 8
    assert "did you mean 'telemetry'?" in issue.fix
    assert str(exc).startswith("s.yaml: line 8: groups[0].telemetri: unknown field")
    assert "\n" not in str(exc)


def test_missing_field() -> None:
    exc = error(GOOD.replace("    count: 3\n", ""))
    assert exc.issues[0].location == "groups[0].count"
    assert exc.issues[0].fix == "add 'count:'"


def test_bad_duration_names_the_fix() -> None:
    exc = error(GOOD.replace("interval: 500ms", "interval: soon"))
    issue = exc.issues[0]
    assert issue.location == "groups[0].telemetry.interval"
    assert issue.line == 9
    assert "30s" in issue.fix
    assert "5m" in issue.fix


def test_range_and_literal_errors() -> None:
    exc = error(GOOD.replace("count: 3", "count: -1"))
    assert exc.issues[0].fix == "use a value at least 0"
    exc = error(GOOD + "    commands: {enabled: maybe}\n")
    assert exc.issues[0].fix == "use true or false"
    exc = error(GOOD.replace("  interval: 500ms", "  interval: 1\n      qos: 2"))
    assert exc.issues[0].location == "groups[0].telemetry.qos"
    assert "0 or 1" in exc.issues[0].fix


def test_unknown_model_lists_the_available_ones() -> None:
    exc = error(GOOD.replace("robot_vacuum", "robot_vacum"))
    issue = exc.issues[0]
    assert issue.location == "groups[0].model"
    assert issue.line == 6
    assert "robot_vacuum" in issue.fix
    assert "environment_sensor" in issue.fix
    assert "fleet_sim.models" in issue.fix


def test_model_params_are_validated_by_the_model() -> None:
    exc = error(GOOD + "    params: {room_widht: 3}\n")
    assert exc.issues[0].location == "groups[0].params.room_widht"
    assert "room_width" in exc.issues[0].fix
    exc = error(GOOD + "    params: {low_battery_pct: 120}\n")
    assert exc.issues[0].location == "groups[0].params.low_battery_pct"


def test_name_patterns() -> None:
    exc = error(GOOD + '    name_pattern: "robot"\n')
    assert "{index}" in exc.issues[0].fix
    exc = error(GOOD + '    name_pattern: "robot {index}"\n')
    assert "not a valid thing name" in exc.issues[0].message
    two = GOOD + "  - name: more\n    model: robot_vacuum\n    count: 2\n"
    two = two.replace("    count: 3\n", '    count: 3\n    name_pattern: "r-{index}"\n')
    two += '    name_pattern: "r-{index}"\n'
    exc = error(two)
    assert exc.issues[0].location == "groups[1].name_pattern"
    assert "distinct" in exc.issues[0].fix


def test_payload_template_fields_are_checked_against_the_model() -> None:
    ok = parse_scenario(GOOD + '    payload: {template: {b: "${battery}", who: "${thing}"}}\n')
    assert ok.groups[0].payload.template is not None
    exc = error(GOOD + '    payload: {template: {b: "${batery}"}}\n')
    assert exc.issues[0].message == "unknown field ${batery}"
    assert "battery" in exc.issues[0].fix
    exc = error(GOOD + "    payload: {template: {seq: 1}}\n")
    assert "reserved" in exc.issues[0].fix
    exc = error(GOOD + '    payload: {template: {a: 1}, generator: "x:y"}\n')
    assert "mutually exclusive" in exc.issues[0].message


def test_iot_core_target_respects_the_connect_quota() -> None:
    aws = GOOD + "target: {endpoint: abc-ats.iot.eu-west-1.amazonaws.com, cert_dir: c}\n"
    parse_scenario(aws)
    exc = error(aws + "ramp_up: 800\n")
    assert exc.issues[0].location == "ramp_up.connects_per_second"
    assert "allow_above_quota" in exc.issues[0].fix
    parse_scenario(aws + "ramp_up: {connects_per_second: 800, allow_above_quota: true}\n")
    exc = error(GOOD + "target: {endpoint: abc-ats.iot.eu-west-1.amazonaws.com}\n")
    assert "cert_dir" in exc.issues[0].fix


def test_publish_rate_limit_per_connection() -> None:
    exc = error(GOOD.replace("interval: 500ms", "interval: 1ms"))
    assert "100" in exc.issues[0].fix


def test_yaml_syntax_error_has_a_line() -> None:
    exc = error("name: t\ngroups:\n  - name: [oops\n")
    assert exc.issues[0].line is not None
    assert "not valid YAML" in exc.issues[0].message


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    assert "mapping" in error("- 1\n- 2\n").issues[0].message
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.yaml")


def test_all_issues_are_kept() -> None:
    exc = error("name: t\nduration: never\ngroups: []\n")
    assert len(exc.issues) == 2
    assert "(and 1 more)" in str(exc)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES.parents[1])  # generators/models are referenced by relative path
    assert load_scenario(path).device_count > 0


def test_scale_counts_keeps_proportions() -> None:
    s = parse_scenario(GOOD + "  - name: sensors\n    model: environment_sensor\n    count: 7\n")
    scaled = scale_counts(s, 100)
    assert [g.count for g in scaled.groups] == [30, 70]
    assert scale_counts(s, 1).device_count == 1


def test_ota_block_defaults_and_errors(tmp_path: Path) -> None:
    ota = GOOD + "    ota:\n      failures: {health_check: 0.1}\n      reboot_s: 500ms\n"
    spec = parse_scenario(ota).groups[0].ota
    assert spec is not None
    assert (spec.enabled, spec.installer, spec.device_type, spec.version) == (
        True,
        "simulated",
        None,
        None,
    )
    assert (spec.failures.health_check, spec.failures.download, spec.reboot_s) == (0.1, 0.0, 0.5)
    assert parse_scenario(GOOD).groups[0].ota is None
    exc = error(ota.replace("health_check: 0.1", "health_check: 1.5"))
    assert exc.issues[0].location == "groups[0].ota.failures.health_check"
    assert exc.issues[0].fix.startswith("use a value at most 1")
    exc = error(ota.replace("health_check: 0.1", "healthcheck: 0.1"))
    assert exc.issues[0].location == "groups[0].ota.failures.healthcheck"
    assert "did you mean 'health_check'?" in exc.issues[0].fix
    exc = error(ota + "      installer: ab\n")
    assert exc.issues[0].location == "groups[0].ota.installer"
    assert "'simulated'" in exc.issues[0].fix
    exc = error(ota.replace("reboot_s: 500ms", "reboot_s: soon"))
    assert exc.issues[0].location == "groups[0].ota.reboot_s"
    assert "30s" in exc.issues[0].fix
    exc = error(ota + "      trusted_keys: [missing.pem]\n")
    assert exc.issues[0].location == "groups[0].ota.trusted_keys[0]"
    assert "cloud-stubs firmware public-key" in exc.issues[0].fix
    aws = "target: {endpoint: abc-ats.iot.eu-west-1.amazonaws.com, cert_dir: c}\n"
    exc = error(ota + aws)
    assert exc.issues[0].location == "groups[0].ota"
    assert "trusted_keys" in exc.issues[0].fix
    key = tmp_path / "ota.pub"
    key.write_text("PEM")
    parse_scenario(ota + f"      trusted_keys: ['{key}']\n" + aws)


def test_native_transport_is_accepted() -> None:
    s = parse_scenario(GOOD + "target: {transport: native}\n")
    assert s.target.transport == "native"
    exc = error(GOOD + "target: {transport: quic}\n")
    assert "'native'" in exc.issues[0].fix


def test_deployments_name_ota_groups_on_a_stub(tmp_path: Path) -> None:
    ota = GOOD + "    ota: {}\n"
    s = parse_scenario(ota + "deployments:\n  - {version: 2.0.0, groups: [robots]}\n")
    (dep,) = s.deployments
    assert (dep.at, dep.batch_size, dep.success_threshold, dep.image_size) == (
        0.0,
        10,
        1.0,
        65536,
    )
    exc = error(ota + "deployments:\n  - {version: 2.0.0, groups: [robot]}\n")
    assert exc.issues[0].location == "deployments[0].groups[0]"
    assert "robots" in exc.issues[0].fix
    exc = error(GOOD + "deployments:\n  - {version: 2.0.0, groups: [robots]}\n")
    assert "ota: {enabled: true}" in exc.issues[0].fix
    exc = error(ota + "deployments:\n  - {version: 'bad version', groups: [robots]}\n")
    assert exc.issues[0].location == "deployments[0].version"
    aws = "target: {endpoint: abc-ats.iot.eu-west-1.amazonaws.com, cert_dir: c}\n"
    key = tmp_path / "ota.pub"
    key.write_text("PEM")
    exc = error(
        ota.replace("ota: {}", f"ota: {{trusted_keys: ['{key}']}}")
        + "deployments:\n  - {version: 2.0.0, groups: [robots]}\n"
        + aws
    )
    assert [i.location for i in exc.issues] == ["deployments[0]"]
