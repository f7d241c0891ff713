"""Run reports: the JSON document, its summary, and merging shard reports.

A report holds the merged metrics snapshot (see :mod:`fleet_sim._metrics`), what the sink and
the operator measured, and a ``summary`` computed from them. Shard reports of one run (from
``--shard i/n``, e.g. a Kubernetes Indexed Job) merge into the report one process running the
whole fleet would have written: counters add up and histograms merge bucket by bucket.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from device_sdk import LatencyHistogram
from fleet_sim._errors import ReportError
from fleet_sim._metrics import merge_series, merge_snapshots, series_histogram
from fleet_sim._scenario import Scenario

__all__ = ["FORMAT", "build_report", "load_report", "merge_reports", "summarize", "write_report"]

FORMAT = "fleet_sim.report/1"


def _q(hist: dict[str, Any] | None, q: float) -> float | None:
    if not hist or not hist.get("count"):
        return None
    return round(LatencyHistogram.from_dict(hist).quantile(q), 6)


def _latency(hist: dict[str, Any] | None) -> dict[str, Any]:
    count = int(hist.get("count", 0)) if hist else 0
    return {
        "count": count,
        "p50_s": _q(hist, 0.5),
        "p90_s": _q(hist, 0.9),
        "p99_s": _q(hist, 0.99),
        "max_s": round(float(hist["max"]), 6) if hist and count else None,
    }


def target_rate(scenario: dict[str, Any]) -> float:
    """Telemetry messages per wall second the scenario asks for (before model changes)."""
    scale = float(scenario.get("time_scale", 1.0))
    return float(sum(g["count"] / g["interval_s"] * scale for g in scenario.get("groups", [])))


def _steady(report: dict[str, Any]) -> tuple[list[dict[str, Any]], float | None]:
    m = report["metrics"]
    series = m.get("series", [])
    done = m.get("all_connected_at")
    if done is None or not series:
        return series, None
    start = round(done - report["started_at"])
    # leave out the first second after the ramp and the last (drain) second
    steady = [p for p in series if start + 1 <= p["t"] < series[-1]["t"]]
    return steady, start


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of a report (see the module documentation)."""
    m = report["metrics"]
    c = m.get("counters", {})
    proc = m.get("process", {})
    devices = int(m.get("devices", 0))
    steady, ramp_done_t = _steady(report)
    duration = max(1e-9, (report.get("ended_at") or 0) - report["started_at"])
    first, last = m.get("first_connect"), m.get("last_connect")
    connects = int(c.get("connects", 0))
    connect_rate = connects / (last - first) if first and last and last > first else None
    steady_s = len(steady)
    steady_acked = sum(p["acked"] for p in steady)
    steady_cpu = sum(p.get("cpu", 0.0) for p in steady)
    puback_steady = LatencyHistogram.merged([series_histogram(p) for p in steady])
    cpu = float(proc.get("cpu_s", 0.0))
    rss_connected = proc.get("rss_connected_bytes")
    rss_base = proc.get("rss_baseline_bytes")
    per_device = (
        (rss_connected - rss_base) / devices
        if devices and rss_connected is not None and rss_base is not None
        else None
    )
    most = max((p["connected"] for p in m.get("series", [])), default=0)
    if per_device is None and most and rss_base is not None and proc.get("rss_peak_bytes"):
        per_device = (proc["rss_peak_bytes"] - rss_base) / most  # not all connected: peak
    acked = int(c.get("acked", 0))
    out: dict[str, Any] = {
        "devices": devices,
        "processes": proc.get("processes", 1),
        "duration_s": round(duration, 3),
        "connects": {
            "attempted": int(c.get("connect_attempts", 0)),
            "ok": connects,
            "failed": int(c.get("connect_failures", 0)),
            "failed_by_reason": m.get("connect_failures", {}),
            "per_second": round(connect_rate, 1) if connect_rate else None,
            "all_connected_after_s": ramp_done_t,
            "latency": _latency(m["histograms"].get("connect")),
            "disconnects": int(c.get("disconnects", 0)),
        },
        "messages": {
            "sent": int(c.get("sent", 0)),
            "sent_qos0": int(c.get("sent_qos0", 0)),
            "acked": acked,
            "target_per_s": round(target_rate(report["scenario"]), 1),
            "achieved_per_s": round(steady_acked / steady_s, 1) if steady_s else None,
            "average_per_s": round(acked / duration, 1),
            "events": int(c.get("events", 0)),
            "skipped_ticks": int(c.get("skipped_ticks", 0)),
            "undelivered": int(c.get("undelivered", 0)),
        },
        "puback_latency": _latency(m["histograms"].get("puback")),
        "puback_latency_steady": _latency(puback_steady.to_dict()),
        "shadow": {
            "updates": int(c.get("shadow_updates", 0)),
            "accepted": int(c.get("shadow_update_accepted", 0)),
            "rejected": int(c.get("shadow_update_rejected", 0)),
            "gets": int(c.get("shadow_gets", 0)),
            "deltas": int(c.get("shadow_deltas", 0)),
            "round_trip": _latency(m["histograms"].get("shadow_rtt")),
        },
        "commands": {
            "handled": m.get("commands", {}),
            "handling": _latency(m["histograms"].get("command_handling")),
        },
        "errors": {"total": sum(m.get("errors", {}).values()), "by_kind": m.get("errors", {})},
        "process": {
            "cpu_s": round(cpu, 3),
            "acked_per_cpu_s": round(acked / cpu, 1) if cpu > 0 else None,
            "steady_acked_per_cpu_s": round(steady_acked / steady_cpu, 1) if steady_cpu else None,
            "steady_cpu_share": round(steady_cpu / steady_s, 3) if steady_s else None,
            "rss_peak_bytes": proc.get("rss_peak_bytes"),
            "rss_per_device_bytes": round(per_device) if per_device is not None else None,
        },
    }
    ota = {k.removeprefix("ota_"): int(v) for k, v in c.items() if k.startswith("ota_")}
    if ota:
        out["ota"] = ota
    if report.get("sink"):
        s = report["sink"]
        out["sink"] = {
            k: s.get(k) for k in ("received", "unique", "duplicates", "reordered", "gaps", "lost")
        } | {"delivery_latency": _latency(s.get("delivery"))}
    if report.get("operator"):
        op = report["operator"]
        out["operator"] = {
            "commands_sent": op.get("commands_sent"),
            "desired_sent": op.get("desired_sent"),
            "command_outcomes": op.get("command_outcomes"),
            "command_rtt": _latency(op.get("command_rtt")),
            "deployments": op.get("deployments", []),
        }
    return out


def scenario_info(scenario: Scenario) -> dict[str, Any]:
    """What a report records about the scenario."""
    return {
        "name": scenario.name,
        "seed": scenario.seed,
        "time_scale": scenario.time_scale,
        "duration_s": scenario.duration,
        "groups": [
            {
                "name": g.name,
                "model": g.model,
                "count": g.count,
                "interval_s": g.telemetry.interval,
                "qos": g.telemetry.qos,
            }
            for g in scenario.groups
        ],
    }


def build_report(
    *,
    run_id: str,
    scenario: Scenario,
    target: dict[str, Any],
    shards: list[dict[str, Any]],
    snapshot: dict[str, Any],
    started_at: float,
    ended_at: float,
    sink: dict[str, Any] | None = None,
    operator: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a report and compute its summary."""
    report: dict[str, Any] = {
        "format": FORMAT,
        "run_id": run_id,
        "scenario": scenario_info(scenario),
        "target": target,
        "shards": shards,
        "started_at": started_at,
        "ended_at": ended_at,
        "metrics": snapshot,
        "sink": sink,
        "operator": operator,
    }
    report["summary"] = summarize(report)
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write ``report`` as indented JSON (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    tmp.replace(path)


def load_report(path: Path) -> dict[str, Any]:
    """Read a report written by :func:`write_report`.

    Raises:
        ReportError: Unreadable, not JSON, or another format.
    """
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReportError(f"{path}: not a fleet_sim report (format {FORMAT!r} expected)")
    return data


def _merge_optional(parts: list[dict[str, Any] | None], hist_keys: tuple[str, ...]) -> Any:
    present = [p for p in parts if p]
    if not present:
        return None
    out: dict[str, Any] = {}
    for part in present:
        for key, value in part.items():
            if key in hist_keys:
                h = LatencyHistogram.from_dict(value)
                if key in out:
                    h.merge(LatencyHistogram.from_dict(out[key]))
                out[key] = h.to_dict()
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
            elif isinstance(value, dict):
                merged = dict(out.get(key, {}))
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
                out[key] = merged
    return out


def merge_reports(reports: list[dict[str, Any]], *, force: bool = False) -> dict[str, Any]:
    """Merge shard reports of one run.

    Raises:
        ReportError: The reports come from different scenarios or overlap (unless ``force``).
    """
    if not reports:
        raise ReportError("no reports to merge")
    first = reports[0]
    if not force:
        for r in reports[1:]:
            a, b = first["scenario"], r["scenario"]
            if (a["name"], a["seed"]) != (b["name"], b["seed"]):
                raise ReportError(
                    f"reports of different scenarios ({a['name']!r} seed {a['seed']} vs "
                    f"{b['name']!r} seed {b['seed']}); pass --force to merge anyway"
                )
        seen: set[tuple[int, int]] = set()
        for r in reports:
            for s in r.get("shards", []):
                key = (int(s["index"]), int(s["count"]))
                if key in seen:
                    raise ReportError(
                        f"shard {key[0]}/{key[1]} appears twice; pass --force to merge anyway"
                    )
                seen.add(key)
    snapshot = merge_snapshots([r["metrics"] for r in reports])
    # Shards started separately (e.g. pods) have their own clocks: align on each start.
    base = min(r["started_at"] for r in reports)
    snapshot["series"] = merge_series([r["metrics"].get("series", []) for r in reports])
    merged: dict[str, Any] = {
        "format": FORMAT,
        "run_id": first["run_id"],
        "scenario": first["scenario"],
        "target": first.get("target"),
        "shards": sorted(
            (s for r in reports for s in r.get("shards", [])),
            key=lambda s: (s["count"], s["index"]),
        ),
        "started_at": base,
        "ended_at": max(r.get("ended_at") or base for r in reports),
        "metrics": snapshot,
        "sink": _merge_optional([r.get("sink") for r in reports], ("delivery",)),
        "operator": _merge_optional([r.get("operator") for r in reports], ("command_rtt",)),
        "merged_from": len(reports),
    }
    merged["summary"] = summarize(merged)
    return merged
