"""Fault injection for the firmware file server (pure: parsing and the per-request plan).

A fault is a *rule*: a :class:`FaultSpec` (what to break), an optional scope (one firmware,
one thing) and how many more requests it may break (``remaining``; ``None`` = every request).
Rules live in ``firmware.sqlite``, so the CLI can arm them against a running stub. For each
request the server takes the matching rules in the order they were armed and
:func:`plan_faults` decides which of them change this response; only those are used up.

Spec strings (``cloud-stubs firmware fault add SPEC``):

=====================  ==================================================================
``expired_403``        answer 403 "Request has expired" although the URL is valid
``status:<code>``      answer with HTTP status ``code`` (400-599), e.g. ``status:503``
``ignore_range``       ignore the Range header: 200 with the whole file (only fires on a
                       request that has a satisfiable Range)
``drop_after:<n>``     close the connection abruptly after ``n`` body bytes (only fires when
                       the body is longer than ``n``)
``corrupt:<offset>``   flip every bit of the byte at absolute file offset ``offset`` (only
                       fires when the response carries that byte)
``throttle:<bps>``     send the body at most ``bps`` bytes per second
``delay:<seconds>``    wait before answering (decimal seconds, at most 600)
=====================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from cloud_stubs.firmware._errors import FirmwareError

__all__ = ["FaultKind", "FaultPlan", "FaultRule", "FaultSpec", "plan_faults"]

_MAX_DELAY_S: Final = 600.0


class FaultKind(StrEnum):
    """What a fault breaks (see the module docstring)."""

    EXPIRED_403 = "expired_403"
    STATUS = "status"
    IGNORE_RANGE = "ignore_range"
    DROP_AFTER = "drop_after"
    CORRUPT = "corrupt"
    THROTTLE = "throttle"
    DELAY = "delay"


_NEEDS_ARG: Final = {
    FaultKind.STATUS,
    FaultKind.DROP_AFTER,
    FaultKind.CORRUPT,
    FaultKind.THROTTLE,
    FaultKind.DELAY,
}


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault: its kind and numeric argument (``0`` for kinds without one)."""

    kind: FaultKind
    arg: float = 0

    def __post_init__(self) -> None:
        kind, arg = self.kind, self.arg
        if kind is FaultKind.STATUS and not (arg == int(arg) and 400 <= arg <= 599):  # noqa: PLR2004
            raise FirmwareError(f"fault status:<code> needs a code 400-599, not {arg:g}")
        if kind in {FaultKind.DROP_AFTER, FaultKind.CORRUPT} and not (arg == int(arg) and arg >= 0):
            raise FirmwareError(f"fault {kind}:<n> needs an integer >= 0, not {arg:g}")
        if kind is FaultKind.THROTTLE and not (arg == int(arg) and arg >= 1):
            raise FirmwareError(f"fault throttle:<bps> needs an integer >= 1, not {arg:g}")
        if kind is FaultKind.DELAY and not 0 <= arg <= _MAX_DELAY_S:
            raise FirmwareError(f"fault delay:<seconds> needs 0-{_MAX_DELAY_S:g}, not {arg:g}")

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """Parse ``kind`` or ``kind:<number>``.

        Raises:
            FirmwareError: Unknown kind, missing/extra or out-of-range argument.
        """
        name, sep, raw = text.strip().partition(":")
        try:
            kind = FaultKind(name)
        except ValueError:
            known = ", ".join(k.value for k in FaultKind)
            raise FirmwareError(f"unknown fault {name!r}; known: {known}") from None
        if (kind in _NEEDS_ARG) != bool(sep):
            form = f"{kind}:<number>" if kind in _NEEDS_ARG else str(kind)
            raise FirmwareError(f"fault {text!r}: write it as {form}")
        if not sep:
            return cls(kind)
        try:
            arg = float(raw)
        except ValueError:
            raise FirmwareError(f"fault {text!r}: {raw!r} is not a number") from None
        return cls(kind, arg)

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg:g}" if self.kind in _NEEDS_ARG else str(self.kind)


@dataclass(frozen=True, slots=True)
class FaultRule:
    """An armed fault with its scope and budget.

    Attributes:
        rule_id: Id in the store (arming order).
        spec: What it breaks.
        firmware_id: Only requests for this firmware (``None``: any).
        thing: Only URLs rendered for this thing (``None``: any).
        remaining: Requests it may still break (``None``: unlimited).
        fired: Requests it has broken so far.
    """

    rule_id: int
    spec: FaultSpec
    firmware_id: str | None = None
    thing: str | None = None
    remaining: int | None = 1
    fired: int = 0

    def matches(self, firmware_id: str, thing: str | None) -> bool:
        """Whether the rule is live and in scope for a request."""
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.firmware_id is not None and self.firmware_id != firmware_id:
            return False
        return self.thing is None or self.thing == thing

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "id": self.rule_id,
            "spec": str(self.spec),
            "firmware_id": self.firmware_id,
            "thing": self.thing,
            "remaining": self.remaining,
            "fired": self.fired,
        }


@dataclass(slots=True)
class FaultPlan:
    """What the faults do to one response.

    Attributes:
        status: An error status to answer with instead of the file (403 = expired).
        ignore_range: Serve the whole file with 200.
        drop_after: Close the connection after this many body bytes.
        corrupt_offsets: Absolute file offsets whose byte is inverted.
        throttle_bps: Body rate limit.
        delay_s: Wait before answering.
        used: Ids of the rules that fired (to be used up).
    """

    status: int | None = None
    ignore_range: bool = False
    drop_after: int | None = None
    corrupt_offsets: list[int] = field(default_factory=list)
    throttle_bps: int | None = None
    delay_s: float = 0.0
    used: list[int] = field(default_factory=list)


def plan_faults(
    rules: Sequence[FaultRule],
    *,
    has_range: bool,
    size: int,
    start: int,
    length: int,
) -> FaultPlan:
    """Decide which matching rules change a response, given what would be served.

    Args:
        rules: The live rules in scope, in arming order.
        has_range: The request carries a satisfiable single Range.
        size: Size of the whole file.
        start: First file offset the response would carry.
        length: Body length the response would carry.

    Returns:
        The plan; ``used`` lists the rules that fired. An error status (``expired_403`` or
        ``status``) ends the plan: later body faults are not used up on an error response.
    """
    plan = FaultPlan()
    for rule in rules:
        spec = rule.spec
        if spec.kind is FaultKind.DELAY:
            plan.delay_s += spec.arg
        elif spec.kind in {FaultKind.EXPIRED_403, FaultKind.STATUS}:
            plan.status = 403 if spec.kind is FaultKind.EXPIRED_403 else int(spec.arg)
            plan.used.append(rule.rule_id)
            break
        elif spec.kind is FaultKind.IGNORE_RANGE:
            if not has_range or plan.ignore_range:
                continue
            plan.ignore_range = True
            start, length = 0, size
        elif spec.kind is FaultKind.DROP_AFTER:
            if length <= spec.arg or plan.drop_after is not None:
                continue
            plan.drop_after = int(spec.arg)
        elif spec.kind is FaultKind.CORRUPT:
            if not start <= spec.arg < start + length:
                continue
            plan.corrupt_offsets.append(int(spec.arg))
        elif spec.kind is FaultKind.THROTTLE:
            if plan.throttle_bps is not None:
                continue
            plan.throttle_bps = int(spec.arg)
        plan.used.append(rule.rule_id)
    if plan.status is not None:
        # an error answer carries no body: body faults decided before it did not fire
        body_kinds = {FaultKind.DELAY, FaultKind.EXPIRED_403, FaultKind.STATUS}
        kept = {r.rule_id for r in rules if r.spec.kind in body_kinds}
        plan.used = [rid for rid in plan.used if rid in kept]
        plan.ignore_range, plan.drop_after, plan.throttle_bps = False, None, None
        plan.corrupt_offsets = []
    return plan
