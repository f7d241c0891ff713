"""The agent's configuration: a TOML file validated once with pydantic.

Every problem is reported as one line that names the key, the bad value and the fix, e.g.::

    telemetry.system.interval_s = 0: must be >= 1; fix: set a number of seconds >= 1

Relative paths are resolved against the directory of the configuration file. See
``docs/edge_agent.md`` for the reference and ``examples/agent.toml`` for a complete file.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_agent._errors import ConfigError

__all__ = [
    "AgentConfig",
    "CommandSourceConfig",
    "CommandsConfig",
    "EndpointConfig",
    "HealthConfig",
    "IdentityConfig",
    "JobsConfig",
    "LoggingConfig",
    "OtaConfig",
    "OtaHealthCheckConfig",
    "PluginSourceConfig",
    "ProvisioningConfig",
    "RunCommandConfig",
    "SettingsShadowConfig",
    "SystemSourceConfig",
    "TelemetryConfig",
    "TransportConfig",
    "load_config",
    "parse_config",
]

_SHOW_MAX = 60
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
Seconds = Annotated[float, Field(gt=0, le=86_400)]
CommandName = Literal["run-command", "reboot", "report-status"]
JobHandlerName = Literal["download-file", "run-command", "reboot", "steps", "handler"]
Interval = Annotated[float, Field(ge=1, le=86_400)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointConfig(_Model):
    """Where to connect: ``file`` (an ``endpoint.json``) or ``host`` (+ ``port``, ``ca_file``)."""

    file: Path | None = None
    host: str | None = None
    port: int = Field(default=8883, ge=1, le=65535)
    ca_file: Path | None = None
    alpn: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.file is None) == (self.host is None):
            raise ValueError(
                "give exactly one of endpoint.file (an endpoint.json) or endpoint.host "
                '(e.g. host = "xxxx-ats.iot.eu-west-1.amazonaws.com")'
            )
        return self


class IdentityConfig(_Model):
    """The device certificate and key (written here by first-boot provisioning)."""

    cert_file: Path
    key_file: Path
    thing_name: str | None = Field(default=None, min_length=1, max_length=128)


class ProvisioningConfig(_Model):
    """Fleet provisioning by claim, used when the identity files do not exist yet."""

    claim_cert_file: Path
    claim_key_file: Path
    template_name: str = Field(min_length=1, max_length=36)
    parameters: dict[str, str] = Field(default_factory=dict)
    timeout_s: Seconds = 30.0


class TransportConfig(_Model):
    """How to reach IoT Core: directly over MQTT, or through the Greengrass nucleus (IPC)."""

    mode: Literal["mqtt", "greengrass"] = "mqtt"
    thing_name: str | None = Field(default=None, min_length=1, max_length=128)
    kind: Literal["auto", "crt", "paho", "native"] = "auto"
    mqtt_version: Literal[3, 5] = 5
    keepalive_s: int = Field(default=60, ge=30, le=1200)
    connect_timeout_s: Seconds = 10.0
    reconnect_base_s: Seconds = 1.0
    reconnect_cap_s: Seconds = 120.0
    outbox_max_messages: int = Field(default=10_000, ge=1, le=10_000_000)
    outbox_synchronous: Literal["full", "normal"] = "normal"
    drain_timeout_s: float = Field(default=2.0, ge=0, le=4)

    @model_validator(mode="after")
    def _cap(self) -> Self:
        if self.reconnect_cap_s < self.reconnect_base_s:
            raise ValueError(
                f"transport.reconnect_cap_s = {self.reconnect_cap_s:g} is below "
                f"reconnect_base_s = {self.reconnect_base_s:g}; fix: raise reconnect_cap_s"
            )
        return self


class SystemSourceConfig(_Model):
    """The built-in system metrics source."""

    enabled: bool = True
    interval_s: Interval = 60.0
    disk_paths: list[str] = Field(default_factory=lambda: ["/"])


class CommandSourceConfig(_Model):
    """A program whose output (JSON object, or ``key=value`` lines) becomes telemetry."""

    name: str
    argv: list[str] = Field(min_length=1)
    interval_s: Interval = 60.0
    timeout_s: Seconds = 10.0
    format: Literal["json", "kv"] = "json"
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)


class PluginSourceConfig(_Model):
    """A Python source registered in the ``edge_agent.sources`` entry-point group."""

    name: str
    entry_point: str = Field(min_length=1)
    interval_s: Interval = 60.0
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)


class TelemetryConfig(_Model):
    """Telemetry sources; each publishes to ``dt/<thing>/telemetry/<source name>``."""

    system: SystemSourceConfig = Field(default_factory=SystemSourceConfig)
    command: list[CommandSourceConfig] = Field(default_factory=list)
    plugin: list[PluginSourceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen = {"system"}
        for name in [c.name for c in self.command] + [p.name for p in self.plugin]:
            if name in seen:
                raise ValueError(
                    f"telemetry source name {name!r} is used twice; fix: give every "
                    "[[telemetry.command]] / [[telemetry.plugin]] its own name "
                    "('system' is reserved)"
                )
            seen.add(name)
        return self

    def source_names(self) -> list[str]:
        """Names of the configured sources (enabled or not)."""
        return ["system", *(c.name for c in self.command), *(p.name for p in self.plugin)]


class SettingsShadowConfig(_Model):
    """The named shadow through which an operator changes the agent's settings."""

    enabled: bool = True
    name: str = Field(default="edge-agent-config", pattern=r"^[A-Za-z0-9:_-]{1,64}$")
    report_interval_s: Interval = 300.0


class RunCommandConfig(_Model):
    """Limits of ``run-command`` (as a command and as a job step)."""

    allowed_programs: list[str] = Field(default_factory=list)
    timeout_s: Seconds = 30.0
    max_output_bytes: int = Field(default=4096, ge=64, le=100_000)
    user: str | None = None


class CommandsConfig(_Model):
    """Commands accepted on ``cmd/<thing>/...``; anything not in ``allow`` is rejected."""

    enabled: bool = True
    schemes: list[Literal["simple", "aws"]] = Field(
        default_factory=lambda: list[Literal["simple", "aws"]](["simple"]), min_length=1
    )
    allow: list[CommandName] = Field(default_factory=lambda: list[CommandName](["report-status"]))
    run_command: RunCommandConfig = Field(default_factory=RunCommandConfig)


class JobsConfig(_Model):
    """AWS IoT Jobs with AWS IoT Device Client style documents."""

    enabled: bool = True
    handlers: list[JobHandlerName] = Field(
        default_factory=lambda: list[JobHandlerName](
            ["download-file", "run-command", "reboot", "steps", "handler"]
        )
    )
    reboot_command: list[str] = Field(default_factory=lambda: ["systemctl", "reboot"], min_length=1)
    download_dir: Path | None = None
    max_download_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    step_timeout_s: Seconds = 600.0
    handler_dir: Path | None = None
    allowed_handlers: list[str] = Field(default_factory=list)
    final_step: Literal["on-success", "always"] = "on-success"


class OtaHealthCheckConfig(_Model):
    """A program run during an update's trial boot; exit status 0 passes."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    argv: list[str] = Field(min_length=1)
    timeout_s: Seconds = 30.0
    required: bool = True


class OtaConfig(_Model):
    """Firmware updates through ``device_sdk.ota`` (job documents ``ota/1``).

    ``installer``: ``none`` (no OTA), ``ab-slots`` (two directory slots under ``slot_root``
    with an atomically switched ``active`` symlink, e.g. application bundles on a Pi) or
    ``simulated`` (versions in memory, for benches).
    """

    installer: Literal["none", "ab-slots", "simulated"] = "none"
    device_type: str | None = Field(default=None, min_length=1, max_length=64)
    slot_root: Path | None = None
    initial_version: str = Field(default="1.0.0", min_length=1, max_length=64)
    trusted_keys: dict[str, Path] = Field(default_factory=dict)
    ca_file: Path | None = None
    bandwidth_bps: int | None = Field(default=None, ge=1024)
    reboot: Literal["restart-agent", "system"] = "restart-agent"
    max_trial_boots: int = Field(default=3, ge=1, le=10)
    builtin_report_check: bool = True
    health_check: list[OtaHealthCheckConfig] = Field(default_factory=list)
    request_timeout_s: Seconds = 30.0
    download_timeout_s: Seconds = 3600.0

    @field_validator("trusted_keys")
    @classmethod
    def _key_ids(cls, value: dict[str, Path]) -> dict[str, Path]:
        for key_id in value:
            if not _KEY_ID.match(key_id):
                raise ValueError(
                    f"key id {key_id!r} is not 16 lowercase hex digits; fix: use the id "
                    "printed by `cloud-stubs firmware public-key` (the first 16 hex digits "
                    "of the SHA-256 of the key's DER SubjectPublicKeyInfo)"
                )
        return value

    @property
    def enabled(self) -> bool:
        """Whether OTA jobs are handled."""
        return self.installer != "none"


class HealthConfig(_Model):
    """Local HTTP endpoint with ``/healthz`` and ``/metrics``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9107, ge=0, le=65535)


class LoggingConfig(_Model):
    """Log level and format (``text`` for a terminal, ``json`` lines for journald/collectors)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class AgentConfig(_Model):
    """The whole configuration file."""

    state_dir: Path
    firmware_version: str | None = None
    firmware_version_file: Path | None = None
    endpoint: EndpointConfig | None = None
    identity: IdentityConfig | None = None
    provisioning: ProvisioningConfig | None = None
    transport: TransportConfig = Field(default_factory=TransportConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    settings_shadow: SettingsShadowConfig = Field(default_factory=SettingsShadowConfig)
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    ota: OtaConfig = Field(default_factory=OtaConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    source_file: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _connection(self) -> Self:
        if self.transport.mode == "mqtt":
            if self.endpoint is None:
                raise ValueError(
                    "[endpoint] is missing; fix: add [endpoint] with file = "
                    '"endpoint.json" or host = "xxxx-ats.iot.<region>.amazonaws.com"'
                )
            if self.identity is None:
                raise ValueError(
                    '[identity] is missing; fix: add [identity] with cert_file = "device.pem" '
                    'and key_file = "device.key"'
                )
        if self.provisioning is not None and self.identity is None:
            raise ValueError(
                "[provisioning] needs [identity] to know where to store the issued certificate"
            )
        if self.ota.enabled and not self.jobs.enabled:
            raise ValueError(
                f'ota.installer = "{self.ota.installer}" needs jobs.enabled = true (updates '
                'arrive as jobs); fix: enable [jobs] or set ota.installer = "none"'
            )
        _check_ota(self.ota)
        return self

    @property
    def outbox_file(self) -> Path:
        """The durable outbox."""
        return self.state_dir / "outbox.db"

    @property
    def lock_file(self) -> Path:
        """The single-instance lock."""
        return self.state_dir / "agent.lock"

    @property
    def ota_dir(self) -> Path:
        """The OTA journal, fault counters and image downloads."""
        return self.state_dir / "ota"

    @property
    def downloads_dir(self) -> Path:
        """Where ``download-file`` puts relative paths."""
        return self.jobs.download_dir or self.state_dir / "downloads"

    def read_firmware_version(self) -> str:
        """``firmware_version``, else ``firmware_version_file``'s first line, else ``unknown``."""
        if self.firmware_version:
            return self.firmware_version
        if self.firmware_version_file is not None:
            try:
                text = self.firmware_version_file.read_text(errors="replace").strip()
            except OSError:
                return "unknown"
            return text.splitlines()[0][:128] if text else "unknown"
        return "unknown"


def _check_ota(ota: OtaConfig) -> None:
    """Cross-field checks of ``[ota]``, including that each trusted key file matches its id."""
    if not ota.enabled:
        return
    need = f'(needed by installer = "{ota.installer}")'
    if ota.device_type is None:
        raise ValueError(
            f'ota.device_type is missing {need}; fix: add device_type = "robot-pi" to [ota] '
            "(the deviceType of the firmware you upload)"
        )
    if ota.installer == "ab-slots" and ota.slot_root is None:
        raise ValueError(
            f'ota.slot_root is missing {need}; fix: add slot_root = "/var/lib/edge-agent/slots" '
            "to [ota] (a directory the agent may write)"
        )
    if not ota.trusted_keys:
        raise ValueError(
            f"ota.trusted_keys is empty {need}; fix: add [ota.trusted_keys] with "
            '"<key id>" = "ota-signing.pub.pem" (`cloud-stubs firmware public-key`)'
        )
    if len({c.name for c in ota.health_check}) != len(ota.health_check):
        raise ValueError(
            "ota.health_check names are not unique; fix: give every [[ota.health_check]] "
            "its own name"
        )
    for key_id, path in ota.trusted_keys.items():
        shown = json.dumps(str(path))  # in full: a cut path does not help
        where = f"ota.trusted_keys.{key_id} = {shown}"
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ValueError(
                f"{where}: cannot read it ({exc.strerror}); fix: point it at the PEM public key"
            ) from None
        try:
            from device_sdk.ota import key_id_of  # noqa: PLC0415 - only with OTA configured

            actual = key_id_of(pem)
        except Exception:  # noqa: BLE001 - any parse failure means the same to the user
            raise ValueError(
                f"{where}: not a PEM public key; fix: use the code-signing public key "
                "(-----BEGIN PUBLIC KEY-----)"
            ) from None
        if actual != key_id:
            raise ValueError(
                f"{where}: that key's id is {actual}, not {key_id}; fix: write "
                f'"{actual}" = {shown} or use the right file'
            )


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '-' or '_' (it becomes a topic "
            'level); fix: rename it, e.g. "wifi_stats"'
        )
    if value == "system":
        raise ValueError("'system' is the built-in source's name; fix: pick another name")
    return value


# -- loading and error messages --------------------------------------------------------------

_PATH_KEYS = {
    ("state_dir",),
    ("firmware_version_file",),
    ("endpoint", "file"),
    ("endpoint", "ca_file"),
    ("identity", "cert_file"),
    ("identity", "key_file"),
    ("provisioning", "claim_cert_file"),
    ("provisioning", "claim_key_file"),
    ("jobs", "download_dir"),
    ("jobs", "handler_dir"),
    ("ota", "slot_root"),
    ("ota", "ca_file"),
}


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for key in _PATH_KEYS:
        node: Any = data
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key[-1]), str):
            value = Path(node[key[-1]]).expanduser()
            node[key[-1]] = str(value if value.is_absolute() else base / value)
    ota = data.get("ota")
    keys = ota.get("trusted_keys") if isinstance(ota, dict) else None
    if isinstance(keys, dict):
        for key_id, file in keys.items():
            if isinstance(file, str):
                value = Path(file).expanduser()
                keys[key_id] = str(value if value.is_absolute() else base / value)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (part.startswith(("function-", "constrained-")) or "[" in part):
            out += f".{part}" if out else part
    return out or "(top level)"


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def _fix(err: Any) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    key = _loc(err["loc"])
    fixes = {
        "missing": f"add {key} = ...",
        "extra_forbidden": "remove it or correct the spelling (see docs/edge_agent.md)",
        "greater_than_equal": f"use a value >= {ctx.get('ge')}",
        "greater_than": f"use a value > {ctx.get('gt')}",
        "less_than_equal": f"use a value <= {ctx.get('le')}",
        "less_than": f"use a value < {ctx.get('lt')}",
        "literal_error": f"use one of {ctx.get('expected')}",
        "string_type": "quote it as a string",
        "bool_type": "use true or false",
        "bool_parsing": "use true or false",
        "int_type": "use a whole number",
        "int_parsing": "use a whole number",
        "int_from_float": "use a whole number",
        "float_type": "use a number",
        "float_parsing": "use a number",
        "list_type": 'use a list, e.g. ["a", "b"]',
        "dict_type": "use a table",
        "model_type": "use a table",
        "too_short": f"give at least {ctx.get('min_length')} item(s)/character(s)",
        "too_long": f"give at most {ctx.get('max_length')} item(s)/character(s)",
        "string_too_short": f"give at least {ctx.get('min_length')} character(s)",
        "string_too_long": f"give at most {ctx.get('max_length')} character(s)",
        "string_pattern_mismatch": f"match {ctx.get('pattern')}",
        "path_type": "give a file path as a string",
    }
    return fixes.get(kind, "")


def _problem(err: Any) -> str:
    key = _loc(err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{key} is missing; fix: add {key} = ..."
    fix = _fix(err) or "correct the value (see docs/edge_agent.md)"
    fix_part = "" if "fix:" in msg or not fix else f"; fix: {fix}"
    if err["type"] == "value_error" and err["loc"] and _loc(err["loc"]) != "(top level)":
        return f"{key} = {_show(err.get('input'))}: {msg}{fix_part}"
    if err["type"] == "value_error":
        return f"{msg}{fix_part}"
    return f"{key} = {_show(err.get('input'))}: {msg.lower()}{fix_part}"


def parse_config(
    data: dict[str, Any], *, base_dir: Path, source: Path | None = None
) -> AgentConfig:
    """Validate a configuration already parsed from TOML.

    Raises:
        ConfigError: With one line per problem.
    """
    data = json.loads(json.dumps(data, default=str))  # deep copy; TOML dates become strings
    _resolve_paths(data, base_dir)
    try:
        config = AgentConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = [_problem(e) for e in exc.errors(include_url=False)]
        raise ConfigError(problems, path=str(source) if source else None) from None
    return config.model_copy(update={"source_file": source})


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML configuration file.

    Raises:
        ConfigError: The file is missing, is not TOML, or is invalid (one line per problem).
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            [f"cannot read the configuration file: {exc.strerror}; fix: pass --config PATH"],
            path=str(file),
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"not valid TOML: {exc}"], path=str(file)) from None
    return parse_config(data, base_dir=file.resolve().parent, source=file)
