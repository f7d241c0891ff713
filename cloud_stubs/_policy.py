"""IoT-policy evaluation shared by both brokers.

The stub grants rights the way AWS IoT Core evaluates policies (``iot_core_protocol.md`` §6):

* Statements have an effect (``Allow``/``Deny``), a role (the kind of principal: ``device``,
  ``claim`` or ``service``), an action (``connect``, ``publish``, ``subscribe``, ``receive``)
  and a resource pattern. An explicit ``Deny`` wins; anything not allowed is denied.
* Patterns are IoT policy resource globs: ``*`` matches any run of characters *including* ``/``,
  ``?`` exactly one character, and everything else is literal, so MQTT's ``+`` and ``#`` are
  literal characters: ``$aws/things/T/shadow/get/+`` in a subscribe statement allows exactly the
  filter the awsiotsdk V2 clients send.
* ``connect`` is matched against the client id, ``publish``/``receive`` against the concrete
  topic and ``subscribe`` against the topic *filter* string.
* Variables: ``${iot:Connection.Thing.ThingName}``, ``${iot:ClientId}`` and
  ``${iot:Certificate.Subject.CommonName}``. A statement whose variable cannot be resolved (a
  certificate with no attached thing) does not match.

The statements are written to ``DIR/broker/policies.tsv``; the mosquitto plugin (C) and the
embedded broker (Python, this module) evaluate the same file, so both brokers enforce the same
rules. File format, one statement per line (``#`` comments)::

    effect<TAB>role<TAB>action<TAB>pattern
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_DATA_PREFIXES",
    "Action",
    "Effect",
    "PolicyEngine",
    "Principal",
    "Role",
    "Statement",
    "default_statements",
    "parse_statements",
    "render_statements",
]

THING = "${iot:Connection.Thing.ThingName}"
CLIENT_ID = "${iot:ClientId}"
COMMON_NAME = "${iot:Certificate.Subject.CommonName}"

#: Topic prefixes (with ``<thing>`` for the thing name) a device may use for its own data.
DEFAULT_DATA_PREFIXES: tuple[str, ...] = ("dt/<thing>", "cmd/<thing>")


class Effect(enum.StrEnum):
    """Statement effect."""

    ALLOW = "Allow"
    DENY = "Deny"


class Role(enum.StrEnum):
    """Kind of principal a certificate is registered as."""

    DEVICE = "device"
    CLAIM = "claim"
    SERVICE = "service"


class Action(enum.StrEnum):
    """IoT policy actions the brokers check."""

    CONNECT = "connect"
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    RECEIVE = "receive"


@dataclass(frozen=True)
class Statement:
    """One policy statement."""

    effect: Effect
    role: Role
    action: Action
    pattern: str


@dataclass(frozen=True)
class Principal:
    """Who is asking: the role of the certificate, its thing, client id and CN."""

    role: Role
    thing_name: str | None
    client_id: str
    common_name: str | None = None


def _device_statements(data_prefixes: Sequence[str]) -> list[Statement]:
    allow, role = Effect.ALLOW, Role.DEVICE
    out = [Statement(allow, role, Action.CONNECT, THING)]
    base = f"$aws/things/{THING}"
    # Publish only on request topics (§6.2), both classic and named shadows.
    for op in ("get", "update", "delete"):
        out.append(Statement(allow, role, Action.PUBLISH, f"{base}/shadow/{op}"))
        out.append(Statement(allow, role, Action.PUBLISH, f"{base}/shadow/name/*/{op}"))
    out += [
        Statement(allow, role, Action.PUBLISH, f"{base}/jobs/get"),
        Statement(allow, role, Action.PUBLISH, f"{base}/jobs/start-next"),
        Statement(allow, role, Action.PUBLISH, f"{base}/jobs/*/get"),
        Statement(allow, role, Action.PUBLISH, f"{base}/jobs/*/update"),
    ]
    for action in (Action.SUBSCRIBE, Action.RECEIVE):
        out.append(Statement(allow, role, action, f"{base}/shadow/*"))
        out.append(Statement(allow, role, action, f"{base}/jobs/*"))
    # AWS IoT Device Management Commands (§9.9), thing targets.
    cmd = f"$aws/commands/things/{THING}/executions"
    out += [
        Statement(allow, role, Action.SUBSCRIBE, f"{cmd}/*"),
        Statement(allow, role, Action.RECEIVE, f"{cmd}/*"),
        Statement(allow, role, Action.PUBLISH, f"{cmd}/*/response/json"),
        Statement(allow, role, Action.PUBLISH, f"{cmd}/*/response/cbor"),
    ]
    for prefix in data_prefixes:
        p = prefix.replace("<thing>", THING).rstrip("/")
        for action in (Action.PUBLISH, Action.SUBSCRIBE, Action.RECEIVE):
            out.append(Statement(allow, role, action, f"{p}/*"))
    return out


def _claim_statements() -> list[Statement]:
    allow, role = Effect.ALLOW, Role.CLAIM
    out = [Statement(allow, role, Action.CONNECT, "*")]
    for topic in (
        "$aws/certificates/create/*",
        "$aws/certificates/create-from-csr/*",
        "$aws/provisioning-templates/*/provision/*",
    ):
        for action in (Action.PUBLISH, Action.SUBSCRIBE, Action.RECEIVE):
            out.append(Statement(allow, role, action, topic))
    return out


def _service_statements() -> list[Statement]:
    return [Statement(Effect.ALLOW, Role.SERVICE, action, "*") for action in Action]


def default_statements(data_prefixes: Sequence[str] = DEFAULT_DATA_PREFIXES) -> list[Statement]:
    """Return the stub's default policy: least-privilege device, claim and service roles."""
    bad = [p for p in data_prefixes if "<thing>" not in p]
    if bad:
        raise ValueError(f"data topic prefixes must contain <thing>: {', '.join(bad)}")
    return _device_statements(data_prefixes) + _claim_statements() + _service_statements()


def render_statements(statements: Iterable[Statement]) -> str:
    """Serialize statements in the ``policies.tsv`` format."""
    lines = ["# effect\trole\taction\tpattern"]
    lines += [f"{s.effect}\t{s.role}\t{s.action}\t{s.pattern}" for s in statements]
    return "\n".join(lines) + "\n"


def parse_statements(text: str, *, source: str = "policies.tsv") -> list[Statement]:
    """Parse the ``policies.tsv`` format; raise ``ValueError`` naming the bad line."""
    out: list[Statement] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 4:  # noqa: PLR2004 - four columns
            raise ValueError(f"{source}:{lineno}: expected 4 tab-separated fields")
        try:
            out.append(Statement(Effect(parts[0]), Role(parts[1]), Action(parts[2]), parts[3]))
        except ValueError as exc:
            raise ValueError(f"{source}:{lineno}: {exc}") from exc
    return out


@functools.lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _substitute(pattern: str, principal: Principal) -> str | None:
    if "${" not in pattern:
        return pattern
    values = {
        THING: principal.thing_name,
        CLIENT_ID: principal.client_id,
        COMMON_NAME: principal.common_name,
    }
    for var, value in values.items():
        if var in pattern:
            if value is None:
                return None
            pattern = pattern.replace(var, value)
    if "${" in pattern:  # unknown variable: never matches
        return None
    return pattern


class PolicyEngine:
    """Evaluate statements for a principal, IoT Core style (explicit deny wins)."""

    def __init__(self, statements: Iterable[Statement]) -> None:
        """Index the statements by role and action."""
        self._by_key: dict[tuple[Role, Action], list[Statement]] = {}
        for s in statements:
            self._by_key.setdefault((s.role, s.action), []).append(s)

    @classmethod
    def from_file(cls, path: Path) -> PolicyEngine:
        """Load ``policies.tsv``."""
        return cls(parse_statements(path.read_text(encoding="utf-8"), source=str(path)))

    def is_allowed(self, principal: Principal, action: Action, resource: str) -> bool:
        """Return True when some Allow matches ``resource`` and no Deny does."""
        allowed = False
        for s in self._by_key.get((principal.role, action), ()):
            pattern = _substitute(s.pattern, principal)
            if pattern is None or not _glob_regex(pattern).fullmatch(resource):
                continue
            if s.effect is Effect.DENY:
                return False
            allowed = True
        return allowed
