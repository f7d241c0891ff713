"""Second-stage scenario checks: models, params, names, payloads and quotas."""

from __future__ import annotations

import re

import pydantic

from fleet_sim._errors import Issue
from fleet_sim._model import DeviceModel, ModelContext, available_models, load_model
from fleet_sim._payload import RESERVED_FIELDS, import_generator, template_fields
from fleet_sim._plan import device_rng, iter_devices, thing_name
from fleet_sim._scenario import (
    IOT_CORE_CONNECT_QUOTA,
    GroupSpec,
    Scenario,
    format_loc,
    issue_from_pydantic,
)

__all__ = ["check_scenario", "model_params"]

_THING = re.compile(r"[A-Za-z0-9:_-]{1,128}")
_MAX_PUBLISH_PER_S = 100.0
_MAX_NAME_CHECK = 2_000_000


def model_params(model: type[DeviceModel], params: dict[str, object]) -> pydantic.BaseModel:
    """Validate a group's ``params`` with the model's ``Params`` class."""
    return model.Params.model_validate(params)


def _params_issues(i: int, model: type[DeviceModel], group: GroupSpec) -> list[Issue]:
    try:
        model_params(model, group.params)
    except pydantic.ValidationError as exc:
        out = []
        for err in exc.errors():
            issue = issue_from_pydantic(err, None)
            loc = ("groups", i, "params", *tuple(err.get("loc", ())))
            fix = issue.fix
            if err.get("type") == "extra_forbidden":
                fix = (
                    f"remove it; {model.kind} takes: {', '.join(sorted(model.Params.model_fields))}"
                )
            out.append(Issue(format_loc(loc), issue.message, fix))
        return out
    return []


def _name_issues(i: int, group: GroupSpec) -> list[Issue]:
    where = f"groups[{i}].name_pattern"
    pattern = group.name_pattern
    if "{index" not in pattern and "{n" not in pattern:
        return [
            Issue(
                where,
                f"{pattern!r} gives every device the same name",
                "add {index}, e.g. robot-{index:04d}",
            )
        ]
    try:
        names = {thing_name(group, 1, 0), thing_name(group, max(group.count, 1), 10**6)}
    except (KeyError, IndexError, ValueError) as exc:
        return [
            Issue(where, f"cannot format {pattern!r}: {exc}", "use {group}, {index} and {n} only")
        ]
    bad = sorted(n for n in names if _THING.fullmatch(n) is None)
    if bad:
        return [
            Issue(
                where,
                f"{bad[0]!r} is not a valid thing name",
                "use 1-128 characters of letters, digits, ':', '_' and '-'",
            )
        ]
    return []


def _sample_telemetry(model: type[DeviceModel], group: GroupSpec, seed: int) -> set[str] | None:
    try:
        params = model_params(model, group.params)
        name = thing_name(group, 1, 0)
        ctx = ModelContext(name, group.name, 1, device_rng(seed, name), params, 0.0, 1.0)
        instance = model(ctx)
        instance.advance(1.0)
        sample = instance.telemetry()
    except Exception:  # noqa: BLE001 - reported elsewhere or at run time
        return None
    return set(sample) if sample is not None else None


def _payload_issues(i: int, model: type[DeviceModel], group: GroupSpec, seed: int) -> list[Issue]:
    spec = group.payload
    out: list[Issue] = []
    if spec.generator is not None:
        try:
            import_generator(spec.generator)
        except ValueError as exc:
            out.append(
                Issue(
                    f"groups[{i}].payload.generator",
                    str(exc),
                    "give an importable 'package.module:function'",
                )
            )
    if spec.template is not None:
        clash = sorted(set(spec.template) & set(RESERVED_FIELDS))
        if clash:
            out.append(
                Issue(
                    f"groups[{i}].payload.template.{clash[0]}",
                    f"'{clash[0]}' is added to every message by the simulator",
                    f"remove it (reserved: {', '.join(RESERVED_FIELDS)})",
                )
            )
        known = _sample_telemetry(model, group, seed)
        if known is not None:
            known |= {"thing", "group", "index"}
            unknown = sorted(template_fields(spec.template) - known)
            if unknown:
                out.append(
                    Issue(
                        f"groups[{i}].payload.template",
                        f"unknown field ${{{unknown[0]}}}",
                        f"use one of: {', '.join(sorted(known))}",
                    )
                )
    return out


def check_scenario(scenario: Scenario) -> list[Issue]:
    """Every problem pydantic's structural validation cannot see."""
    issues: list[Issue] = []
    known_models = sorted(available_models())
    for i, group in enumerate(scenario.groups):
        try:
            model = load_model(group.model)
        except LookupError:
            issues.append(
                Issue(
                    f"groups[{i}].model",
                    f"unknown model {group.model!r}",
                    f"use one of: {', '.join(known_models)} (custom models register under "
                    "the 'fleet_sim.models' entry-point group)",
                )
            )
            model = None
        except (ImportError, TypeError, AttributeError) as exc:
            issues.append(
                Issue(
                    f"groups[{i}].model",
                    f"model {group.model!r} cannot be loaded: {exc}",
                    "fix or reinstall the package that provides it",
                )
            )
            model = None
        if model is not None:
            issues += _params_issues(i, model, group)
            issues += _payload_issues(i, model, group, scenario.seed)
        issues += _name_issues(i, group)
        wall = group.telemetry.interval / scenario.time_scale
        if wall < 1.0 / _MAX_PUBLISH_PER_S:
            issues.append(
                Issue(
                    f"groups[{i}].telemetry.interval",
                    f"{group.telemetry.interval:g} s at time_scale {scenario.time_scale:g} is "
                    f"more than {_MAX_PUBLISH_PER_S:g} publishes/s per connection",
                    "raise the interval or lower time_scale (IoT Core allows 100/s per device)",
                )
            )
    names_seen = {g.name for g in scenario.groups}
    if len(names_seen) != len(scenario.groups):
        issues.append(
            Issue("groups", "two groups have the same name", "give every group its own name")
        )
    if scenario.device_count == 0:
        issues.append(Issue("groups", "the scenario has no devices", "set a count above 0"))
    elif not issues and scenario.device_count <= _MAX_NAME_CHECK:
        seen: dict[str, int] = {}
        for dev in iter_devices(scenario):
            first = seen.get(dev.name)
            if first is None:
                seen[dev.name] = dev.group
            else:
                issues.append(
                    Issue(
                        f"groups[{dev.group}].name_pattern",
                        f"thing name {dev.name!r} is also used by group "
                        f"{scenario.groups[first].name!r}",
                        "give every group a distinct pattern, e.g. include {group}",
                    )
                )
                break
    ramp = scenario.ramp_up
    if (
        not scenario.target.is_stub
        and ramp.connects_per_second > IOT_CORE_CONNECT_QUOTA
        and not ramp.allow_above_quota
    ):
        issues.append(
            Issue(
                "ramp_up.connects_per_second",
                f"{ramp.connects_per_second:g}/s exceeds AWS IoT Core's default quota of "
                f"{IOT_CORE_CONNECT_QUOTA:g} connects/s per account",
                "lower it, or set ramp_up.allow_above_quota: true if your quota was raised",
            )
        )
    return issues
