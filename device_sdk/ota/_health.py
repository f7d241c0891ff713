"""Health checks run during the trial boot (greenboot-style ``required`` vs ``wanted``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence

__all__ = ["HealthCheck", "HealthResult", "run_health_checks"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class HealthCheck:
    """One check.

    Attributes:
        name: Name (job documents require checks by name in ``policy.healthChecks``).
        run: ``async () -> bool | None``: ``False`` or an exception fails the check.
        required: A failing required check rolls the update back; a failing ``wanted`` check
            is only reported.
        timeout_s: Time limit of one run (a timeout is a failure).
    """

    name: str
    run: Callable[[], Awaitable[bool | None]]
    required: bool = True
    timeout_s: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class HealthResult:
    """The result of one check."""

    name: str
    ok: bool
    required: bool
    detail: str = ""


async def _one(check: HealthCheck) -> HealthResult:
    try:
        async with asyncio.timeout(check.timeout_s):
            value = await check.run()
    except TimeoutError:
        return HealthResult(check.name, ok=False, required=check.required, detail="timed out")
    except Exception as exc:  # noqa: BLE001 - a crashing check is a failing check
        return HealthResult(check.name, ok=False, required=check.required, detail=repr(exc))
    ok = value is not False
    return HealthResult(check.name, ok=ok, required=check.required, detail="" if ok else "failed")


async def run_health_checks(
    checks: Sequence[HealthCheck], *, required_names: Sequence[str] = ()
) -> list[HealthResult]:
    """Run ``checks`` one after the other; names in ``required_names`` count as required.

    A name in ``required_names`` with no registered check fails (``unknown check``).
    """
    known = {c.name for c in checks}
    results = [
        HealthResult(name, ok=False, required=True, detail="unknown check")
        for name in required_names
        if name not in known
    ]
    for check in checks:
        spec = dataclasses.replace(check, required=True) if check.name in required_names else check
        result = await _one(spec)
        if not result.ok:
            _log.warning("health check %s failed: %s", result.name, result.detail)
        results.append(result)
    return results
