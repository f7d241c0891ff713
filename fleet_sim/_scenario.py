"""Scenario files: YAML validated with pydantic, with errors that name the field and the fix.

Validation runs in two stages. pydantic checks the structure and value ranges; then
:func:`check_scenario` checks what needs the models (model names, ``params``, payload template
fields, name patterns, quotas). Both stages report :class:`~fleet_sim.Issue` values with the
field's dotted path, its line in the file, and how to fix it.

Durations are numbers of seconds or strings with a unit: ``500ms``, ``30s``, ``5m``, ``2h``,
``1h30m``. Telemetry intervals and shadow intervals are *simulated* seconds (divided by
``time_scale`` on the wall clock); ``duration`` is wall-clock seconds. Relative paths are
relative to the current working directory.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml

from fleet_sim._errors import Issue, ScenarioError

__all__ = [
    "CommandSpec",
    "DeploymentSpec",
    "Duration",
    "FixableError",
    "GroupSpec",
    "OtaFailuresSpec",
    "OtaSpec",
    "OutboxSpec",
    "PayloadSpec",
    "RampSpec",
    "Scenario",
    "ShadowSpec",
    "TargetSpec",
    "TelemetrySpec",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
]

#: AWS IoT Core's default account-wide connect quota (connects per second).
IOT_CORE_CONNECT_QUOTA = 500.0
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
DURATION_FIX = "use seconds (30) or a number with a unit: 500ms, 30s, 5m, 2h, 1h30m"


class FixableError(ValueError):
    """A validation error that knows how to be fixed (carried through pydantic's ``ctx``)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"1h30m"``.

    Raises:
        FixableError: Not a duration.
    """
    if isinstance(value, bool):
        raise FixableError(f"{value!r} is not a duration", DURATION_FIX)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        pos, total = 0, 0.0
        while pos < len(text):
            m = _DURATION.match(text, pos)
            if m is None:
                break
            total += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos == len(text) and pos > 0:
            return total
    raise FixableError(f"{value!r} is not a duration", DURATION_FIX)


Duration = Annotated[float, pydantic.BeforeValidator(parse_duration), pydantic.Field(gt=0)]
"""Seconds, given as a number or a string with units."""


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_default=True)


class TelemetrySpec(_Strict):
    """When and where a device publishes telemetry."""

    interval: Duration = 1.0
    """Simulated seconds between messages (a model may change it, e.g. through the shadow)."""
    jitter: float = pydantic.Field(default=0.1, ge=0, le=1)
    """Each interval is multiplied by a uniform factor in ``[1 - jitter, 1 + jitter]``."""
    topic: str = "dt/{thing}/telemetry"
    """Topic template; ``{thing}`` and ``{group}`` are replaced."""
    qos: Literal[0, 1] = 1
    """QoS 1 goes through the device's durable outbox; QoS 0 is sent only while connected."""
    events: bool = True
    """Publish model events on ``dt/{thing}/events``."""

    @pydantic.field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if "{thing}" not in value:
            raise FixableError(
                "the topic must contain {thing}",
                "use e.g. dt/{thing}/telemetry (devices may only publish to their own topics)",
            )
        try:
            rendered = value.format(thing="t", group="g")
        except (KeyError, IndexError, ValueError) as exc:
            raise FixableError(
                f"bad placeholder in topic: {exc}", "only {thing} and {group} can be used"
            ) from None
        if "+" in rendered or "#" in rendered or not rendered:
            raise FixableError("the topic contains a wildcard", "remove '+' and '#'")
        return value


class PayloadSpec(_Strict):
    """What a telemetry message contains besides ``device_id``, ``seq`` and ``ts``."""

    template: dict[str, Any] | None = None
    """JSON object; a string value ``"${field}"`` is replaced by the model's telemetry field
    (``${thing}``, ``${group}``, ``${index}`` also work); ``${x}`` inside longer strings is
    replaced as text. Without a template the model's telemetry is sent as is."""
    generator: str | None = None
    """``"module:function"`` called as ``function(telemetry, context) -> dict``."""
    pad_to_bytes: int = pydantic.Field(default=0, ge=0, le=128 * 1024)
    """Pad messages to about this size (adds a ``pad`` field)."""

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> PayloadSpec:
        if self.template is not None and self.generator is not None:
            raise FixableError("template and generator are mutually exclusive", "keep one of them")
        return self


class ShadowSpec(_Strict):
    """How a device uses its classic shadow."""

    enabled: bool = True
    report: Literal["on_change", "periodic"] = "on_change"
    """``on_change``: report when the model's reported state changed, at most once per
    ``interval``; ``periodic``: report every ``interval``."""
    interval: Duration = 30.0
    """Simulated seconds (see ``report``)."""
    sync_on_connect: bool = True
    """Read the shadow after connecting and apply its desired state."""
    desired_per_minute: float = pydantic.Field(default=0.0, ge=0)
    """Local stub only: the operator changes this many devices' desired state per minute."""


class CommandSpec(_Strict):
    """Whether devices take commands, and how many the operator sends."""

    enabled: bool = True
    """Subscribe to ``cmd/{thing}/request/+`` and answer on ``cmd/{thing}/response/<name>``."""
    send_per_minute: float = pydantic.Field(default=0.0, ge=0)
    """Local stub only: the operator sends this many commands per minute to the group."""


class OtaFailuresSpec(_Strict):
    """Fractions of a group's devices whose OTA update fails at a step (exact, seeded).

    ``round(fraction * count)`` devices of the group (rounding half up) are chosen by the
    scenario seed and their names, the same in every shard and every run with that seed.
    """

    health_check: float = pydantic.Field(default=0.0, ge=0, le=1)
    """The trial boot's health check fails: rollback, execution FAILED."""
    download: float = pydantic.Field(default=0.0, ge=0, le=1)
    """Every download request fails: FAILED (DOWNLOAD_FAILED), nothing installed."""
    install: float = pydantic.Field(default=0.0, ge=0, le=1)
    """Writing the image fails: FAILED (INSTALL_FAILED), nothing activated."""
    verify_boot: float = pydantic.Field(default=0.0, ge=0, le=1)
    """The new version does not come up after the reboot: rollback, FAILED (BOOT_FAILED)."""


_VERSION = r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$"


class OtaSpec(_Strict):
    """How a group's devices take part in OTA updates (``device_sdk.ota`` jobs)."""

    enabled: bool = True
    """Run ``ota`` jobs (a JobRunner and an OtaAgent are created when a job arrives)."""
    installer: Literal["simulated"] = "simulated"
    """``simulated``: ``device_sdk.ota.SimulatedInstaller`` (versions in memory)."""
    device_type: str | None = pydantic.Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    """Device type matched against the job document (default: the model's device type)."""
    version: str | None = pydantic.Field(default=None, pattern=_VERSION)
    """Firmware version the devices start with (default: the model's reported
    ``firmware_version``, else ``1.0.0``)."""
    failures: OtaFailuresSpec = OtaFailuresSpec()
    """Injected failures (fractions of the group's devices)."""
    reboot_s: float = pydantic.Field(default=2.0, ge=0, le=3600)
    """Simulated reboot time (simulated seconds: divided by ``time_scale``)."""
    trusted_keys: list[Path] | None = pydantic.Field(default=None, min_length=1)
    """PEM files of the pinned code-signing keys (default on a local stub: the stub's key)."""

    @pydantic.field_validator("reboot_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return 0.0 if value in (0, "0") else parse_duration(value)


class GroupSpec(_Strict):
    """A set of devices of one model."""

    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    model: str
    count: int = pydantic.Field(ge=0, le=1_000_000)
    name_pattern: str = "{group}-{index:05d}"
    """Thing names; ``{index}`` (1-based in the group), ``{group}``, ``{n}`` (0-based in the
    scenario) and format specs such as ``{index:04d}`` work."""
    telemetry: TelemetrySpec = TelemetrySpec()
    payload: PayloadSpec = PayloadSpec()
    shadow: ShadowSpec = ShadowSpec()
    commands: CommandSpec = CommandSpec()
    params: dict[str, Any] = pydantic.Field(default_factory=dict)
    """Model parameters (validated by the model)."""
    ota: OtaSpec | None = None
    """OTA participation (``None``: the devices ignore jobs)."""


class RampSpec(_Strict):
    """How fast devices connect."""

    connects_per_second: float = pydantic.Field(default=100.0, gt=0, le=100_000)
    """Across all shards. AWS IoT Core allows ~500/s per account by default."""
    max_in_progress: int = pydantic.Field(default=256, ge=1, le=100_000)
    """Connection attempts in progress at once (per shard)."""
    allow_above_quota: bool = False
    """Allow more than 500 connects/s against AWS IoT Core."""

    @pydantic.model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return {"connects_per_second": data}
        return data


class TargetSpec(_Strict):
    """Where devices connect: a local stub (``state_dir``) or AWS IoT Core (``endpoint``)."""

    state_dir: Path | None = None
    """Local stub state directory (``cloud-stubs up --state-dir``)."""
    start_stub: bool = True
    """Start a stub in-process when none is running in ``state_dir``."""
    broker: Literal["auto", "mosquitto", "embedded"] = "auto"
    """Broker of a stub started by the simulator."""
    endpoint: str | None = None
    """AWS IoT Core device data endpoint (``xxxx-ats.iot.<region>.amazonaws.com``)."""
    port: int = pydantic.Field(default=8883, ge=1, le=65535)
    ca_file: Path | None = None
    """CA that signs the endpoint's certificate (AmazonRootCA1.pem for AWS)."""
    cert_dir: Path | None = None
    """Per-device identities: ``<cert_dir>/<thing>/cert.pem`` and ``key.pem``."""
    transport: Literal["auto", "crt", "paho", "native"] = "auto"
    """``auto`` = ``native``: device_sdk's own low-memory transport (MQTT 5, or 3.1.1 on the
    embedded broker); ``crt``: awscrt MQTT 5; ``paho``: aiomqtt."""

    @pydantic.model_validator(mode="after")
    def _one_kind(self) -> TargetSpec:
        if self.state_dir is not None and self.endpoint is not None:
            raise FixableError(
                "state_dir (local stub) and endpoint (AWS IoT Core) are mutually exclusive",
                "keep one of them",
            )
        if self.endpoint is not None and self.cert_dir is None:
            raise FixableError(
                "an AWS IoT Core endpoint needs the devices' certificates",
                "add cert_dir: a directory with <thing>/cert.pem and <thing>/key.pem",
            )
        return self

    @property
    def is_stub(self) -> bool:
        """Whether the target is a local stub."""
        return self.endpoint is None

    @property
    def stub_dir(self) -> Path:
        """The stub's state directory (default ``./.iot-state``)."""
        return self.state_dir if self.state_dir is not None else Path(".iot-state")


class OutboxSpec(_Strict):
    """The devices' durable outbox (one SQLite file per shard process)."""

    path: Path | None = None
    """File (``{shard}`` is replaced); default: a temporary file removed after the run."""
    synchronous: Literal["normal", "full"] = "normal"
    max_messages: int = pydantic.Field(default=1000, ge=1, le=1_000_000)
    """Per device; the oldest are dropped beyond it."""


class DeploymentSpec(_Strict):
    """An OTA deployment the operator starts on a local stub (``cloud-stubs deployments``)."""

    at: float = pydantic.Field(default=0.0, ge=0)
    """Wall seconds after every device connected (or the ramp should have ended)."""
    version: str = pydantic.Field(pattern=_VERSION)
    """Firmware version to roll out."""
    groups: list[str] = pydantic.Field(min_length=1)
    """Scenario groups whose devices are targeted (in this order, then by index)."""
    firmware: Path | None = None
    """Image file to upload (default: ``image_size`` seeded random bytes)."""
    image_size: int = pydantic.Field(default=64 * 1024, ge=1, le=512 * 1024 * 1024)
    """Size of the generated image."""
    device_type: str | None = pydantic.Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    """Device type of the image (default: the first group's OTA device type)."""
    batch_size: int = pydantic.Field(default=10, ge=1, le=100_000)
    success_threshold: float = pydantic.Field(default=1.0, ge=0, le=1)
    timeout_minutes: int | None = pydantic.Field(default=None, ge=1, le=10080)
    """In-progress timeout of each batch job (the cloud-side dead-man switch)."""
    batch_timeout: Duration | None = None
    """Decide a batch on what succeeded after this many seconds."""


class Scenario(_Strict):
    """A fleet simulation: devices, their behaviour, the target and the load profile."""

    name: str = pydantic.Field(min_length=1, max_length=128)
    description: str = ""
    seed: int = 0
    """Seeds every device (with its name): same seed, same behaviour, in any shard."""
    duration: Duration = 60.0
    """Wall-clock seconds from the first connect to the stop."""
    time_scale: float = pydantic.Field(default=1.0, gt=0, le=100_000)
    """Simulated seconds per wall-clock second (device behaviour and telemetry cadence)."""
    ramp_up: RampSpec = RampSpec()
    target: TargetSpec = TargetSpec()
    outbox: OutboxSpec = OutboxSpec()
    groups: list[GroupSpec] = pydantic.Field(min_length=1)
    deployments: list[DeploymentSpec] = pydantic.Field(default_factory=list)
    """OTA deployments the operator creates during the run (local stub only)."""

    @property
    def device_count(self) -> int:
        """Devices over all groups."""
        return sum(g.count for g in self.groups)


def _ota_issues(scenario: Scenario) -> list[Issue]:
    """OTA settings beyond pydantic: key files exist; AWS IoT Core needs pinned keys."""
    issues = []
    for i, group in enumerate(scenario.groups):
        ota = group.ota
        if ota is None or not ota.enabled:
            continue
        if ota.trusted_keys is None and not scenario.target.is_stub:
            issues.append(
                Issue(
                    f"groups[{i}].ota",
                    "OTA against AWS IoT Core needs the code-signing keys to trust",
                    "add trusted_keys: a list of PEM public key files (the stub's key is "
                    "only the default for local stub targets)",
                )
            )
        for j, path in enumerate(ota.trusted_keys or []):
            if not path.is_file():
                issues.append(
                    Issue(
                        f"groups[{i}].ota.trusted_keys[{j}]",
                        f"{path} does not exist",
                        "export the key with 'cloud-stubs firmware public-key --out FILE' "
                        "or fix the path (relative to the current directory)",
                    )
                )
    names = {g.name: g for g in scenario.groups}
    for k, dep in enumerate(scenario.deployments):
        where = f"deployments[{k}]"
        if not scenario.target.is_stub:
            issues.append(
                Issue(
                    where,
                    "deployments are created on a local stub only",
                    "remove it, or use a stub target (target.state_dir)",
                )
            )
        for j, name in enumerate(dep.groups):
            named = names.get(name)
            if named is None:
                issues.append(
                    Issue(
                        f"{where}.groups[{j}]",
                        f"no group {name!r}",
                        f"use one of: {', '.join(names)}",
                    )
                )
            elif named.ota is None or not named.ota.enabled:
                issues.append(
                    Issue(
                        f"{where}.groups[{j}]",
                        f"group {name!r} does not take part in OTA",
                        f"add 'ota: {{enabled: true}}' to group {name!r}",
                    )
                )
        if dep.firmware is not None and not dep.firmware.is_file():
            issues.append(
                Issue(f"{where}.firmware", f"{dep.firmware} does not exist", "fix the path")
            )
    return issues


# -- loading and error reporting ------------------------------------------------------------


def _node_line(root: yaml.Node | None, loc: tuple[str | int, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its closest existing parent)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    nxt = value
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def format_loc(loc: tuple[str | int, ...]) -> str:
    """``("groups", 1, "count")`` -> ``groups[1].count``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _model_at(loc: tuple[str | int, ...]) -> type[pydantic.BaseModel] | None:
    """The pydantic model class whose field list applies at ``loc``."""
    cls: type[pydantic.BaseModel] = Scenario
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        nested = [
            c for c in candidates if isinstance(c, type) and issubclass(c, pydantic.BaseModel)
        ]
        if not nested:
            return None
        cls = nested[0]
    return cls


def _did_you_mean(word: str, options: list[str]) -> str:
    import difflib  # noqa: PLC0415 - only on errors

    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def issue_from_pydantic(error: Any, root: yaml.Node | None) -> Issue:
    """Turn one pydantic error dict into an :class:`Issue` with a fix."""
    loc: tuple[str | int, ...] = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    msg = str(error.get("msg", "invalid"))
    fix = "see the scenario reference in fleet_sim's documentation"
    where = format_loc(loc)
    if kind == "missing":
        fix = f"add '{loc[-1]}:'" if loc else "add the missing field"
        msg = "required field is missing"
    elif kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model is not None else []
        fix = f"{_did_you_mean(str(loc[-1]), allowed)}remove it"
        if allowed:
            fix += f"; allowed here: {', '.join(allowed)}"
        msg = f"unknown field '{loc[-1]}'"
    elif kind == "literal_error":
        fix = f"use {ctx.get('expected', 'one of the listed values')}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(ctx.values()), "?")
        words = {
            "greater_than": "greater than",
            "greater_than_equal": "at least",
            "less_than": "less than",
            "less_than_equal": "at most",
        }
        fix = f"use a value {words[kind]} {bound}"
    elif kind in ("int_parsing", "int_type", "int_from_float"):
        fix = "use a whole number"
    elif kind in ("float_parsing", "float_type"):
        fix = "use a number"
    elif kind in ("bool_parsing", "bool_type"):
        fix = "use true or false"
    elif kind in ("string_type", "string_pattern_mismatch", "string_too_short", "string_too_long"):
        fix = f"match the pattern {ctx['pattern']}" if "pattern" in ctx else "use a (short) string"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        fix = "use a mapping (key: value lines)"
    elif kind in ("list_type", "too_short"):
        fix = "use a list ('- item' lines) with at least one entry"
    elif kind == "value_error":
        exc = ctx.get("error")
        msg = str(exc) if exc is not None else msg.removeprefix("Value error, ")
        if isinstance(exc, FixableError):
            fix = exc.fix
    return Issue(where, msg, fix, _node_line(root, loc))


def parse_scenario(text: str, *, source: str | None = None, check: bool = True) -> Scenario:
    """Parse and validate scenario YAML.

    Args:
        text: The YAML document.
        source: File name used in error messages.
        check: Also run :func:`check_scenario` (models, params, templates, names).

    Raises:
        ScenarioError: The scenario is invalid; every issue names the field and the fix.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(
            [Issue("", f"not valid YAML: {problem}", "check indentation and quoting", line)],
            source=source,
        ) from None
    if not isinstance(data, dict):
        raise ScenarioError(
            [Issue("", "the file must be a YAML mapping", "start with 'name: my-scenario'", 1)],
            source=source,
        )
    try:
        scenario = Scenario.model_validate(data)
    except pydantic.ValidationError as exc:
        issues = [issue_from_pydantic(e, root) for e in exc.errors()]
        raise ScenarioError(issues, source=source) from None
    if check:
        from fleet_sim._checks import check_scenario  # noqa: PLC0415 - needs the models

        issues = check_scenario(scenario) + _ota_issues(scenario)
        if issues:
            located = [
                Issue(i.location, i.message, i.fix, _node_line(root, _parse_loc(i.location)))
                for i in issues
            ]
            raise ScenarioError(located, source=source)
    return scenario


def _parse_loc(text: str) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", text):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)


def load_scenario(path: str | Path, *, check: bool = True) -> Scenario:
    """Read and validate a scenario file.

    Raises:
        ScenarioError: The file is missing or the scenario is invalid.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(
            [Issue("", f"cannot read {file}: {exc.strerror or exc}", "check the path")],
            source=str(file),
        ) from None
    return parse_scenario(text, source=str(file), check=check)


def scale_counts(scenario: Scenario, total: int) -> Scenario:
    """The scenario with its group counts scaled to ``total`` devices (largest remainder)."""
    current = scenario.device_count
    if total < 0:
        raise ValueError("the number of devices must not be negative")
    if current == 0:
        raise ValueError("the scenario has no devices to scale")
    shares = [g.count * total / current for g in scenario.groups]
    counts = [math.floor(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    groups = [
        g.model_copy(update={"count": c}) for g, c in zip(scenario.groups, counts, strict=True)
    ]
    return scenario.model_copy(update={"groups": groups})
