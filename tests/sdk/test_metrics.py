"""Mergeable latency histograms."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_sdk import LatencyHistogram

latencies = st.lists(st.floats(min_value=0, max_value=500, allow_nan=False), max_size=200)


@given(latencies, latencies)
def test_merge_equals_recording_everything(a: list[float], b: list[float]):
    ha, hb, hall = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for x in a:
        ha.record(x)
        hall.record(x)
    for x in b:
        hb.record(x)
        hall.record(x)
    merged = LatencyHistogram.merged([ha, hb])
    assert merged.counts == hall.counts
    assert merged.count == len(a) + len(b)
    assert merged.max == hall.max
    if merged.count:
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            assert merged.quantile(q) == hall.quantile(q)


@given(st.floats(min_value=1e-4, max_value=100, allow_nan=False))
def test_bucket_resolution(x: float):
    h = LatencyHistogram()
    h.record(x)
    i = LatencyHistogram.bucket_index(x)
    assert x <= LatencyHistogram.bounds[i] * (1 + 1e-9)
    if i > 0:
        assert x > LatencyHistogram.bounds[i - 1] * (1 - 1e-9)
    # quantiles are upper bounds within ~19 % (4 buckets per octave), clamped to max
    assert x <= h.quantile(0.5) * (1 + 1e-9) <= x * 1.19 + 1e-12


def test_quantiles_and_round_trip():
    h = LatencyHistogram()
    for ms in range(1, 1001):
        h.record(ms / 1000)
    assert h.count == 1000
    assert h.mean == pytest.approx(0.5005)
    assert 0.45 < h.quantile(0.5) < 0.6
    assert 0.95 < h.quantile(0.99) <= 1.0
    back = LatencyHistogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.counts == h.counts
    assert back.quantile(0.9) == h.quantile(0.9)
    assert "p99" in repr(h)


def test_empty_and_edges():
    h = LatencyHistogram()
    assert math.isnan(h.quantile(0.5))
    assert math.isnan(h.mean)
    assert LatencyHistogram.from_dict(h.to_dict()).count == 0
    h.record(-1)
    h.record(1e6)
    assert h.counts[0] == 1
    assert h.counts[-1] == 1
    with pytest.raises(ValueError, match="within"):
        h.quantile(2)
