"""The settings shadow: an operator changes the agent's settings from the cloud.

A named shadow (``settings_shadow.name``, ``edge-agent-config`` by default) is kept in step by
:class:`device_sdk.shadow.ShadowSync`, persisted in ``<state_dir>/shadow-<name>.json`` so the
last desired settings apply at boot even before the agent is online. ``desired``::

    {"telemetry": {"system": {"interval_s": 30}, "wifi": {"enabled": false}}}

``reported`` carries what is in force plus facts about the device::

    {"agent_version": "0.1.0", "firmware_version": "fw-1.0", "uptime_s": 3600.0,
     "boot": "<id of this agent run>",
     "ota": {"installer": "ab-slots", "on_trial": false, "last_job": "...",
             "last_state": "COMMITTED", "last_reason_code": null},   # with [ota] only
     "telemetry": {"system": {"interval_s": 30, "enabled": true}, ...},
     "settings_errors": null}

so the shadow's delta empties once a change took effect. Invalid entries are ignored and
listed in ``settings_errors``. ``uptime_s`` is refreshed every
``settings_shadow.report_interval_s``. ``firmware_version`` is the active slot's version when
OTA is configured; it and ``ota`` are reported again as soon as an update ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from device_sdk.shadow import ShadowChange, ShadowSync
from edge_agent._tasks import IGNORED, TaskStatus
from edge_agent._version import __version__

if TYPE_CHECKING:
    import pydantic

    from edge_agent._agent import Session

__all__ = ["SettingsShadow", "settings_shadow_subsystem"]

_log = logging.getLogger(__name__)


class SettingsShadow:
    """Applies the shadow's desired settings and reports the ones in force."""

    name = "settings_shadow"

    def __init__(self, session: Session) -> None:
        self._session = session
        self.sync: ShadowSync[pydantic.BaseModel] | None = None

    def _telemetry_patch(self, previous: dict[str, Any]) -> dict[str, Any]:
        scheduler = self._session.scheduler
        patch: dict[str, Any] = dict(scheduler.settings.reported())
        old = previous.get("telemetry")
        if isinstance(old, dict):
            for name in old:
                if name not in patch:
                    patch[name] = None  # a source removed from the configuration
        return patch

    def _apply(self, desired: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
        scheduler = self._session.scheduler
        settings, problems = scheduler.settings.apply_desired(desired)
        for problem in problems:
            _log.warning("settings shadow: %s (ignored)", problem)
        scheduler.update_settings(settings)
        return {
            "telemetry": self._telemetry_patch(previous),
            "settings_errors": problems or None,
        }

    async def _on_change(self, change: ShadowChange[pydantic.BaseModel]) -> dict[str, Any]:
        sync = self.sync
        previous = sync.reported if sync is not None else {}
        self._session.stats.shadow_updates += 1
        return self._apply(change.desired, previous)

    def _facts(self) -> dict[str, Any]:
        session = self._session
        facts: dict[str, Any] = {
            "agent_version": __version__,
            "firmware_version": session.agent.firmware_version(),
            "uptime_s": round(session.agent.uptime_s, 1),
            "boot": session.scheduler.boot_id,
        }
        ota = session.agent.ota
        if ota is not None:
            facts["ota"] = ota.facts()
        return facts

    async def _wait_report(self, seconds: float) -> dict[str, Any]:
        """Wait for the next periodic report, or an OTA change; return what to report."""
        session = self._session
        ota = session.agent.ota
        if ota is None:
            await session.agent.clock.sleep(seconds)
            return {"uptime_s": round(session.agent.uptime_s, 1)}
        sleep = asyncio.ensure_future(session.agent.clock.sleep(seconds))
        changed = asyncio.ensure_future(ota.changed.wait())
        try:
            await asyncio.wait({sleep, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            changed.cancel()
        if ota.changed.is_set():
            ota.changed.clear()
            return self._facts()
        return {"uptime_s": round(session.agent.uptime_s, 1)}

    async def run(self, *, task_status: TaskStatus = IGNORED) -> None:
        """Keep the shadow in sync until cancelled."""
        session = self._session
        config = session.config.settings_shadow
        store = session.config.state_dir / f"shadow-{config.name}.json"
        async with ShadowSync(
            session.device,
            store_path=store,
            name=config.name,
            handler=self._on_change,
            error_field="sync_error",
            logger=_log,
        ) as sync:
            self.sync = sync
            # The persisted desired state applies now, before the first resync.
            patch = self._apply(sync.desired, sync.reported)
            await sync.report({**self._facts(), **patch})
            task_status.started()
            while True:
                await sync.report(await self._wait_report(config.report_interval_s))


def settings_shadow_subsystem(session: Session) -> SettingsShadow | None:
    """The settings-shadow subsystem, unless ``settings_shadow.enabled`` is false."""
    if not session.config.settings_shadow.enabled:
        return None
    return SettingsShadow(session)
