"""Deterministic fault injection (ota.md §11.6).

A :class:`FaultPlan` is a list of :class:`FaultRule` plus a seed, armed from a local JSON
file (``FaultPlan.from_file``)::

    {"seed": 7, "faults": [
        {"point": "state.INSTALLING", "action": "crash"},
        {"point": "download.at_bytes:65536", "action": "hang:30", "nth": 1},
        {"point": "report.drop:DOWNLOADING", "action": "drop"},
        {"point": "health.fail:*", "action": "raise:HEALTH_CHECK_FAILED", "probability": 0.2}]}

Fault points the agent passes (``FAULT_POINTS``): ``state.<STATE>`` at every state boundary
(before the state's work runs), ``download.at_bytes:<n>`` (the first time the download
crosses ``n`` bytes), ``download.interrupted`` (after a dropped connection, before resuming),
``download.before_request``, ``url.refresh``, ``verify.before``, ``install.before_write``,
``install.before_fsync``, ``bootflag.before_set``, ``bootflag.after_set``, ``reboot.before``,
``trial.before_health``, ``health.fail:<check>``, ``commit.before_flag``,
``commit.after_flag_before_report``, ``rollback.before``, ``report.drop:<STATE>``.

Effect points (``EFFECT_POINTS``) do their own thing when a rule there fires with ``inject``
(other actions act as everywhere):

* ``report.duplicate``: an ``IN_PROGRESS`` report is sent twice (the cloud must stay
  consistent);
* ``report.version_mismatch``: ``statusDetails.running_version`` names a version that does
  not run (the sweep's invariant 2 catches it when it reaches the terminal report);
* ``mqtt.disconnect``: passed at every state boundary; drops the MQTT connection through the
  agent's ``disconnect`` hook (``nth`` picks the boundary);
* ``clock.skew:<s>``: passed when the agent starts; shifts its wall clock (journal
  ``ts_wall``) by ``<s>`` seconds;
* ``disk.enospc``: passed before every write of the download and before the install;
  raises ``OSError(ENOSPC)``: FAILED(``DISK_ERROR``), nothing activated.

Actions: ``raise[:<REASON_CODE>]`` (the update fails with that code), ``crash`` (``os._exit``,
or the injector's ``crash`` hook in tests), ``hang[:<s>]``, ``delay:<s>``,
``corrupt[:<offset>]`` (flip a byte of the downloaded image), ``drop`` (drop a status report),
``inject`` (an effect point's effect).

Triggers: ``nth`` (fire on the n-th hit only, default 1), ``once`` (at most once, persisted
across restarts: default true), ``probability`` with the plan's ``seed`` (same plan + seed =
same sequence). Point patterns may end in ``*``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pydantic

from device_sdk.ota._errors import OtaFailedError, ReasonCode

__all__ = [
    "CRASH_EXIT_CODE",
    "EFFECT_POINTS",
    "FAULT_POINTS",
    "FaultInjector",
    "FaultPlan",
    "FaultRule",
    "Fired",
    "SimulatedCrash",
]

_log = logging.getLogger(__name__)

#: Exit status of the ``crash`` action (``os._exit``).
CRASH_EXIT_CODE = 86

#: Every fault point the agent passes (``<n>``, ``<STATE>`` and ``<check>`` are parameters).
FAULT_POINTS: tuple[str, ...] = (
    "state.<STATE>",
    "download.before_request",
    "download.at_bytes:<n>",
    "download.interrupted",
    "url.refresh",
    "verify.before",
    "install.before_write",
    "install.before_fsync",
    "bootflag.before_set",
    "bootflag.after_set",
    "reboot.before",
    "trial.before_health",
    "health.fail:<check>",
    "commit.before_flag",
    "commit.after_flag_before_report",
    "rollback.before",
    "report.drop:<STATE>",
    "report.duplicate",
    "report.version_mismatch",
    "mqtt.disconnect",
    "clock.skew:<s>",
    "disk.enospc",
)
#: Points whose effect is their own (carried out when a rule there fires with ``inject``).
EFFECT_POINTS: tuple[str, ...] = (
    "report.duplicate",
    "report.version_mismatch",
    "mqtt.disconnect",
    "clock.skew:<s>",
    "disk.enospc",
)


class FaultRule(pydantic.BaseModel):
    """One armed fault."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    point: str = pydantic.Field(min_length=1)
    action: str = pydantic.Field(pattern=r"^(raise|crash|hang|delay|corrupt|drop|inject)(:.*)?$")
    nth: int = pydantic.Field(default=1, ge=1)
    once: bool = True
    probability: float | None = pydantic.Field(default=None, ge=0.0, le=1.0)

    @property
    def kind(self) -> str:
        """The action's name."""
        return self.action.split(":", 1)[0]

    @property
    def arg(self) -> str | None:
        """The action's argument, if any."""
        parts = self.action.split(":", 1)
        return parts[1] if len(parts) == 2 else None  # noqa: PLR2004

    def matches(self, point: str) -> bool:
        """Whether this rule is armed at ``point``."""
        return fnmatch.fnmatchcase(point, self.point)


class FaultPlan(pydantic.BaseModel):
    """A seed and a list of rules."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    faults: list[FaultRule] = pydantic.Field(default_factory=list)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> FaultPlan:
        """Load a plan from a JSON file (missing file: empty plan)."""
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        return cls.model_validate_json(raw)

    @classmethod
    def single(cls, point: str, action: str, **options: Any) -> FaultPlan:
        """A plan with one rule."""
        return cls(faults=[FaultRule(point=point, action=action, **options)])

    @classmethod
    def from_strings(cls, specs: list[str], *, seed: int = 0) -> FaultPlan:
        """Rules written as ``"<point>=<action>"`` (the job document's ``test.faults``)."""
        rules = []
        for spec in specs:
            point, sep, action = spec.partition("=")
            if not sep:
                raise ValueError(f"fault {spec!r}: expected '<point>=<action>'")
            rules.append(FaultRule(point=point, action=action))
        return cls(seed=seed, faults=rules)


@dataclass(frozen=True, slots=True)
class Fired:
    """A fault that fired: where, what, and the rule's argument."""

    point: str
    action: str
    kind: str
    arg: str | None

    def __str__(self) -> str:
        return f"{self.point}={self.action}"


class SimulatedCrash(BaseException):
    """Raised by the in-process ``crash`` hook: unwinds without any cleanup handler catching it."""


def _exit() -> NoReturn:
    os._exit(CRASH_EXIT_CODE)


class FaultInjector:
    """Decides whether a fault fires at a point and carries out its action.

    Args:
        plan: The armed plan (``None``: nothing armed).
        counters_file: Where hit/fire counters persist (``once`` across restarts).
        on_fire: Called with each fired fault (the agent journals and reports it).
        crash: What ``crash`` does (default ``os._exit(86)``); tests pass a function that
            raises :class:`SimulatedCrash`.
    """

    def __init__(
        self,
        plan: FaultPlan | None = None,
        *,
        counters_file: str | os.PathLike[str] | None = None,
        on_fire: Callable[[Fired], None] | None = None,
        crash: Callable[[], NoReturn] = _exit,
    ) -> None:
        self.plan = plan or FaultPlan()
        self._file = Path(counters_file) if counters_file is not None else None
        self.on_fire = on_fire
        self._crash = crash
        self._rng = random.Random(self.plan.seed)  # noqa: S311 - reproducible, not secret
        self._lock = threading.Lock()
        self._hits: dict[str, int] = {}
        self._fired: dict[str, int] = {}
        self._load()

    def _load(self) -> None:
        if self._file is None:
            return
        try:
            data = json.loads(self._file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        self._hits = {str(k): int(v) for k, v in data.get("hits", {}).items()}
        self._fired = {str(k): int(v) for k, v in data.get("fired", {}).items()}

    def _save(self) -> None:
        if self._file is None:
            return
        self._file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._file.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump({"hits": self._hits, "fired": self._fired}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self._file)

    @property
    def armed(self) -> bool:
        """Whether any rule is armed."""
        return bool(self.plan.faults)

    def armed_at(self, point: str) -> bool:
        """Whether a rule matches ``point`` (cheap: lets hot paths skip :meth:`check`)."""
        return any(rule.matches(point) for rule in self.plan.faults)

    def points(self, prefix: str) -> list[str]:
        """The armed rules' points that start with ``prefix`` (e.g. ``clock.skew:``)."""
        return [rule.point for rule in self.plan.faults if rule.point.startswith(prefix)]

    def check(self, point: str) -> Fired | None:
        """Count a hit at ``point``; the fault that fires there, if any (no action taken)."""
        if not self.plan.faults:
            return None
        with self._lock:
            for index, rule in enumerate(self.plan.faults):
                if not rule.matches(point):
                    continue
                key = str(index)
                hits = self._hits.get(key, 0) + 1
                self._hits[key] = hits
                fired = False
                if not (rule.once and self._fired.get(key, 0) > 0):
                    if rule.probability is not None:
                        fired = self._rng.random() < rule.probability
                    else:
                        fired = hits == rule.nth or (not rule.once and hits >= rule.nth)
                if fired:
                    self._fired[key] = self._fired.get(key, 0) + 1
                    self._save()
                    hit = Fired(point, rule.action, rule.kind, rule.arg)
                    _log.warning("fault fired: %s", hit)
                    if self.on_fire is not None:
                        self.on_fire(hit)
                    return hit
            self._save()
        return None

    def _raise(self, fired: Fired) -> NoReturn:
        code = fired.arg or ReasonCode.FAULT_INJECTED
        try:
            reason = ReasonCode(code)
        except ValueError:
            reason = ReasonCode.FAULT_INJECTED
        raise OtaFailedError(reason, f"injected fault {fired}")

    async def hit(self, point: str) -> Fired | None:
        """Pass ``point``: carry out raise/crash/hang/delay; return corrupt/drop for the caller."""
        fired = self.check(point)
        if fired is None:
            return None
        if fired.kind == "raise":
            self._raise(fired)
        if fired.kind == "crash":
            self._crash()
        if fired.kind in ("hang", "delay"):
            await asyncio.sleep(float(fired.arg or 3600))
            return fired
        return fired

    def hit_sync(self, point: str, stop: threading.Event | None = None) -> Fired | None:
        """:meth:`hit` for worker threads (``hang`` ends early when ``stop`` is set)."""
        fired = self.check(point)
        if fired is None:
            return None
        if fired.kind == "raise":
            self._raise(fired)
        if fired.kind == "crash":
            self._crash()
        if fired.kind in ("hang", "delay"):
            deadline = time.monotonic() + float(fired.arg or 3600)
            while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
                time.sleep(0.05)
        return fired
