"""Messages between the coordinator and shard worker processes (see :mod:`fleet_sim._worker`)."""

from __future__ import annotations

import logging
from typing import Any

from fleet_sim._engine import ShardConfig
from fleet_sim._metrics import RunMetrics

__all__ = ["live_totals", "worker_config"]


def worker_config(cfg: ShardConfig) -> dict[str, Any]:
    """The ``config`` message for a worker running ``cfg``."""
    return {
        "type": "config",
        "scenario": cfg.scenario.model_dump(mode="json"),
        "shard": [cfg.shard.index, cfg.shard.count],
        "target": cfg.target.to_dict(),
        "run_id": cfg.run_id,
        "duration_s": cfg.duration_s,
        "tick_s": cfg.tick_s,
        "drain_timeout_s": cfg.drain_timeout_s,
        "log_level": logging.getLogger("fleet_sim").getEffectiveLevel(),
    }


def live_totals(metrics: RunMetrics) -> dict[str, Any]:
    """The running totals a live view needs (small: sent every second)."""
    c = metrics.counters
    return {
        "devices": metrics.devices,
        "connected": metrics.connected,
        "sent": c["sent"],
        "acked": c["acked"],
        "connects": c["connects"],
        "connect_failures": c["connect_failures"],
        "errors": metrics.error_total,
    }
