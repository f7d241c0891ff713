"""Mergeable metrics, reports, the sink's sequence accounting and the HTML report."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from device_sdk import LatencyHistogram
from fleet_sim import ReportError, SequenceTracker, load_report, merge_reports, parse_scenario
from fleet_sim._html import render_html
from fleet_sim._live import LiveAggregator
from fleet_sim._metrics import RunMetrics, merge_snapshots
from fleet_sim._report import build_report, write_report

SCENARIO = parse_scenario(
    "name: t\ngroups:\n  - {name: a, model: robot_vacuum, count: 4, telemetry: {interval: 2}}\n"
)


def fake_shard(seed: int, start: float, latencies: list[float]) -> dict[str, Any]:
    rng = random.Random(seed)
    m = RunMetrics(2, start)
    for _ in range(2):
        m.connect_attempt()
        m.connect_ok(rng.uniform(0.01, 0.05))
    m.connect_attempt()
    m.connect_failed("ConnectError")
    for lat in latencies:
        m.counters["sent"] += 1
        m.acked(lat)
    m.error("publish:ConnectionLostError")
    m.commands["start:SUCCEEDED"] += 1
    m.sample()
    m.all_connected_at = start + 1
    return m.snapshot()


def test_snapshots_merge_like_one_process() -> None:
    rng = random.Random(1)
    lat_a = [rng.expovariate(100) for _ in range(500)]
    lat_b = [rng.expovariate(30) for _ in range(700)]
    merged = merge_snapshots([fake_shard(1, 1000.0, lat_a), fake_shard(2, 1000.0, lat_b)])
    assert merged["devices"] == 4
    assert merged["counters"]["acked"] == 1200
    assert merged["counters"]["connects"] == 4
    assert merged["connect_failures"] == {"ConnectError": 2}
    assert merged["errors"] == {"publish:ConnectionLostError": 2}
    assert merged["commands"] == {"start:SUCCEEDED": 2}
    one = LatencyHistogram()
    for v in lat_a + lat_b:
        one.record(v)
    got = LatencyHistogram.from_dict(merged["histograms"]["puback"])
    assert got.counts == one.counts
    assert got.quantile(0.99) == one.quantile(0.99)
    assert merged["process"]["processes"] == 2
    assert len(merged["series"]) == 1  # same second: points add up
    assert merged["series"][0]["acked"] == 1200


def report_for(
    shard: int, count: int, snapshot: dict[str, Any], *, sink: dict[str, Any] | None = None
) -> dict[str, Any]:
    return build_report(
        run_id="r1",
        scenario=SCENARIO,
        target={"kind": "stub", "host": "h", "port": 1, "broker": "mosquitto"},
        shards=[{"index": shard, "count": count, "devices": snapshot["devices"]}],
        snapshot=snapshot,
        started_at=1000.0,
        ended_at=1010.0,
        sink=sink,
    )


def test_report_merge_and_files(tmp_path: Path) -> None:
    a = report_for(0, 2, fake_shard(1, 1000.0, [0.001] * 10))
    b = report_for(1, 2, fake_shard(2, 1000.0, [0.002] * 30))
    write_report(a, tmp_path / "a.json")
    write_report(b, tmp_path / "b.json")
    merged = merge_reports([load_report(tmp_path / "a.json"), load_report(tmp_path / "b.json")])
    s = merged["summary"]
    assert s["devices"] == 4
    assert s["messages"]["acked"] == 40
    assert s["connects"]["failed_by_reason"] == {"ConnectError": 2}
    assert s["messages"]["target_per_s"] == 2.0
    assert [x["index"] for x in merged["shards"]] == [0, 1]
    with pytest.raises(ReportError, match="appears twice"):
        merge_reports([a, a])
    other = report_for(0, 2, fake_shard(3, 1000.0, []))
    other["scenario"] = {**other["scenario"], "seed": 99}
    with pytest.raises(ReportError, match="different scenarios"):
        merge_reports([a, other])
    assert merge_reports([a, a], force=True)["summary"]["messages"]["acked"] == 20


def test_load_report_errors(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ReportError, match="not a fleet_sim report"):
        load_report(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("nope")
    with pytest.raises(ReportError, match="not JSON"):
        load_report(tmp_path / "y.json")


def test_html_report_is_self_contained() -> None:
    sink = {
        "received": 10,
        "unique": 10,
        "duplicates": 0,
        "reordered": 0,
        "gaps": 0,
        "lost": 0,
        "delivery": LatencyHistogram().to_dict(),
    }
    text = render_html(report_for(0, 1, fake_shard(1, 1000.0, [0.001, 0.01]), sink=sink))
    assert text.startswith("<!doctype html>")
    assert text.count("<svg") == 5
    assert "Throughput" in text
    assert "Connected devices" in text
    assert "p99" in text
    assert "<script" not in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_sequence_tracker_counts_loss_duplicates_and_reordering() -> None:
    t = SequenceTracker()
    for seq in (1, 2, 3, 5, 4, 4, 7, 6, 10):
        t.add("d1", seq)
    for seq in (1, 2):
        t.add("d2", seq)
    s = t.summary(expected=10 + 3)
    assert s["received"] == 11
    assert s["duplicates"] == 1
    assert s["reordered"] == 2  # 4 after 5, 6 after 7
    assert s["unique"] == 10  # d1: 1-7 and 10; d2: 1-2
    assert s["gaps"] == 2  # d1: 8, 9
    assert s["lost"] == 3
    assert s["devices"] == 2


def test_sequence_tracker_payloads_and_runs() -> None:
    t = SequenceTracker(run_id="r1")
    assert t.add_payload(b'{"device_id": "d", "seq": 1, "ts": 5, "run": "r1"}') == 5
    assert t.add_payload(b'{"device_id": "d", "seq": 2, "ts": 6, "run": "r0"}') is None
    assert t.add_payload(b"not json") is None
    assert t.add_payload(b'{"device_id": "d"}') is None
    s = t.summary()
    assert (s["unique"], s["foreign"], s["malformed"]) == (1, 1, 2)


def test_live_aggregator_merges_shards() -> None:
    live = LiveAggregator(devices=4, duration_s=10)
    live.start()
    h = LatencyHistogram()
    h.record(0.002)
    for shard in (0, 1):
        live.update(
            shard,
            {"acked": 5, "cpu": 0.2, "rss": 100, "puback": h.to_dict()},
            {"connected": 2, "sent": 7, "acked": 6, "errors": shard},
        )
    state = live.state()
    assert state.connected == 4
    assert live.all_connected.is_set()
    assert state.rate == 10.0
    assert state.sent == 14
    assert state.acked == 12
    assert state.errors == 1
    assert state.cpu_pct == pytest.approx(40.0)
    assert state.p50_s is not None
    assert state.p50_s < 0.003


def test_client_metrics_fold_into_the_run() -> None:
    """DeviceClients record outbox PUBACKs into the shared ClientMetrics; the run sees them."""
    m = RunMetrics(3, 1000.0)
    shared = m.client_metrics
    for lat in (0.002, 0.003, 0.004):
        shared.counters["acked"] = shared.counters.get("acked", 0) + 1
        shared.puback_latency.record(lat)
    m.acked(0.010)  # an awaited publish outside the outbox
    shared.counters["nacked"] = 1
    first = m.sample()
    assert first["acked"] == 4
    assert first["puback"]["count"] == 4
    assert shared.puback_latency.count == 0  # the interval is cleared in place
    shared.counters["acked"] += 2
    shared.puback_latency.record(0.005)
    shared.puback_latency.record(0.006)
    snap = m.snapshot()  # includes the interval not sampled yet
    assert snap["counters"]["acked"] == 6
    assert snap["histograms"]["puback"]["count"] == 6
    assert snap["errors"] == {"nack:outbox": 1}
    second = m.sample()
    assert second["acked"] == 2
    assert second["puback"]["count"] == 2
    assert m.snapshot()["histograms"]["puback"]["count"] == 6
