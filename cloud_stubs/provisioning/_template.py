"""Fleet-provisioning templates, evaluated as AWS does (pure, no I/O).

Templates are AWS's provisioning-template JSON (``iot_core_protocol.md`` §4.3)::

    {"Parameters": {"SerialNumber": {"Type": "String"},
                    "Site": {"Type": "String", "Default": "lab"}},
     "Mappings": {...},
     "Resources": {
        "thing": {"Type": "AWS::IoT::Thing",
                  "Properties": {
                      "ThingName": {"Fn::Join": ["", ["robot-", {"Ref": "SerialNumber"}]]},
                                 "AttributePayload": {"site": {"Ref": "Site"}},
                                 "ThingGroups": ["fleet"]}},
        "certificate": {"Type": "AWS::IoT::Certificate",
                        "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                                       "Status": "ACTIVE"}},
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "DevicePolicy"}}},
     "DeviceConfiguration": {"FallbackUrl": "https://example.com"}}

so a template that works on AWS works here unchanged. Supported intrinsics: ``Ref``,
``Fn::Join``, ``Fn::Select``, ``Fn::Split``, ``Fn::FindInMap``, ``Fn::Sub``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TemplateError", "TemplateResult", "evaluate_template", "validate_template"]

_CERT_ID_REF = "AWS::IoT::Certificate::Id"
_SUB_RE = re.compile(r"\$\{([^}]+)\}")
_THING_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")


class TemplateError(ValueError):
    """The template or its parameters are invalid; ``str()`` says what and where."""


@dataclass(frozen=True)
class TemplateResult:
    """What RegisterThing must do, after evaluating a template."""

    thing_name: str | None
    attributes: dict[str, str] = field(default_factory=dict)
    thing_groups: tuple[str, ...] = ()
    thing_type: str | None = None
    certificate_status: str = "ACTIVE"
    policy_name: str | None = None
    policy_document: str | None = None
    device_configuration: dict[str, str] = field(default_factory=dict)


def validate_template(template: object) -> dict[str, Any]:
    """Check a template's structure; return it as a dict or raise :class:`TemplateError`."""
    if not isinstance(template, dict):
        raise TemplateError("template must be a JSON object")
    resources = template.get("Resources")
    if not isinstance(resources, dict) or not resources:
        raise TemplateError("template needs a non-empty 'Resources' object")
    params = template.get("Parameters", {})
    if not isinstance(params, dict):
        raise TemplateError("'Parameters' must be an object")
    for name, spec in params.items():
        if not isinstance(spec, dict):
            raise TemplateError(f"parameter {name!r} must be an object with a 'Type'")
    kinds = {"AWS::IoT::Thing", "AWS::IoT::Certificate", "AWS::IoT::Policy"}
    for name, res in resources.items():
        if not isinstance(res, dict) or res.get("Type") not in kinds:
            raise TemplateError(
                f"resource {name!r}: 'Type' must be one of {', '.join(sorted(kinds))}"
            )
        props = res.get("Properties", {})
        if not isinstance(props, dict):
            raise TemplateError(f"resource {name!r}: 'Properties' must be an object")
        if res["Type"] == "AWS::IoT::Policy" and ("PolicyName" in props) == (
            "PolicyDocument" in props
        ):
            raise TemplateError(
                f"resource {name!r}: give exactly one of PolicyName or PolicyDocument"
            )
    config = template.get("DeviceConfiguration", {})
    if not isinstance(config, dict) or any(isinstance(v, dict | list) for v in config.values()):
        raise TemplateError("'DeviceConfiguration' must be a flat object")
    return template


def _resolve_parameters(template: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, spec in template.get("Parameters", {}).items():
        if name in given:
            out[name] = given[name]
        elif "Default" in spec:
            out[name] = str(spec["Default"])
        else:
            raise TemplateError(f"Parameter {name} is required but was not provided")
    # Parameters not declared are ignored by AWS; keep them usable by Ref anyway? No: AWS
    # rejects Ref to undeclared names when the template is created, so only declared ones.
    return out


class _Evaluator:
    def __init__(self, template: dict[str, Any], params: dict[str, str], cert_id: str) -> None:
        self.mappings: dict[str, Any] = template.get("Mappings", {}) or {}
        self.refs: dict[str, str] = {**params, _CERT_ID_REF: cert_id}

    def value(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            handler = {
                "Ref": self._ref,
                "Fn::Join": self._join,
                "Fn::Select": self._select,
                "Fn::Split": self._split,
                "Fn::FindInMap": self._find_in_map,
                "Fn::Sub": self._sub,
            }.get(key)
            if handler is not None:
                return handler(arg)
        if isinstance(node, dict):
            return {k: self.value(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.value(v) for v in node]
        return node

    def text(self, node: Any, what: str) -> str:
        v = self.value(node)
        if isinstance(v, bool | int | float):
            return json.dumps(v)
        if not isinstance(v, str):
            raise TemplateError(f"{what} must evaluate to a string")
        return v

    def _ref(self, arg: Any) -> str:
        if not isinstance(arg, str) or arg not in self.refs:
            raise TemplateError(f"Ref to unknown parameter {arg!r}")
        return self.refs[arg]

    def _join(self, arg: Any) -> str:
        if not (isinstance(arg, list) and len(arg) == 2 and isinstance(arg[1], list)):  # noqa: PLR2004
            raise TemplateError("Fn::Join takes [delimiter, [values...]]")
        return str(arg[0]).join(self.text(v, "Fn::Join item") for v in arg[1])

    def _select(self, arg: Any) -> Any:
        if not (isinstance(arg, list) and len(arg) == 2):  # noqa: PLR2004
            raise TemplateError("Fn::Select takes [index, list]")
        items = self.value(arg[1])
        try:
            return items[int(self.value(arg[0]))]
        except (IndexError, ValueError, TypeError) as exc:
            raise TemplateError(f"Fn::Select: {exc}") from exc

    def _split(self, arg: Any) -> list[str]:
        if not (isinstance(arg, list) and len(arg) == 2):  # noqa: PLR2004
            raise TemplateError("Fn::Split takes [delimiter, string]")
        return self.text(arg[1], "Fn::Split source").split(str(arg[0]))

    def _find_in_map(self, arg: Any) -> Any:
        if not (isinstance(arg, list) and len(arg) == 3):  # noqa: PLR2004
            raise TemplateError("Fn::FindInMap takes [map, top-level key, second-level key]")
        name, k1, k2 = (self.text(a, "Fn::FindInMap key") for a in arg)
        try:
            return self.mappings[name][k1][k2]
        except (KeyError, TypeError) as exc:
            raise TemplateError(f"Fn::FindInMap: no entry {name}/{k1}/{k2}") from exc

    def _sub(self, arg: Any) -> str:
        if not isinstance(arg, str):
            raise TemplateError("Fn::Sub takes a string")
        return _SUB_RE.sub(lambda m: self._ref(m.group(1)), arg)


def evaluate_template(
    template: dict[str, Any], parameters: dict[str, str], *, certificate_id: str
) -> TemplateResult:
    """Evaluate ``template`` for one RegisterThing call."""
    params = _resolve_parameters(template, parameters)
    ev = _Evaluator(template, params, certificate_id)
    thing_name: str | None = None
    attributes: dict[str, str] = {}
    groups: tuple[str, ...] = ()
    thing_type: str | None = None
    status = "ACTIVE"
    policy_name: str | None = None
    policy_doc: str | None = None
    for name, res in template["Resources"].items():
        props = res.get("Properties", {})
        kind = res["Type"]
        if kind == "AWS::IoT::Thing":
            thing_name = ev.text(props.get("ThingName"), f"{name}.ThingName")
            if not _THING_RE.fullmatch(thing_name):
                raise TemplateError(f"thing name {thing_name!r} is not a valid thing name")
            attrs = ev.value(props.get("AttributePayload", {})) or {}
            attributes = {
                str(k): ev.text(v, f"{name}.AttributePayload.{k}") for k, v in attrs.items()
            }
            groups = tuple(ev.text(g, f"{name}.ThingGroups") for g in props.get("ThingGroups", []))
            if "ThingTypeName" in props:
                thing_type = ev.text(props["ThingTypeName"], f"{name}.ThingTypeName")
        elif kind == "AWS::IoT::Certificate":
            status = ev.text(props.get("Status", "ACTIVE"), f"{name}.Status").upper()
            if status not in ("ACTIVE", "INACTIVE"):
                raise TemplateError(f"{name}.Status must be ACTIVE or INACTIVE, not {status}")
        elif "PolicyName" in props:
            policy_name = ev.text(props["PolicyName"], f"{name}.PolicyName")
        else:
            doc = ev.value(props["PolicyDocument"])
            policy_doc = doc if isinstance(doc, str) else json.dumps(doc)
    config = {
        str(k): ev.text(v, f"DeviceConfiguration.{k}")
        for k, v in template.get("DeviceConfiguration", {}).items()
    }
    return TemplateResult(
        thing_name=thing_name,
        attributes=attributes,
        thing_groups=groups,
        thing_type=thing_type,
        certificate_status=status,
        policy_name=policy_name,
        policy_document=policy_doc,
        device_configuration=config,
    )
