"""The fast LatencyHistogram paths give exactly what the reference log formula gives."""

from __future__ import annotations

import math
import random

import pytest

from device_sdk import LatencyHistogram

_MIN_S = 1e-4


def reference_bucket(seconds: float) -> int:
    """The original formula (before the bisect)."""
    if seconds <= _MIN_S:
        return 0
    i = math.ceil(math.log2(seconds / _MIN_S) * 4 - 1e-9)
    return min(i, len(LatencyHistogram.bounds))


class ReferenceHistogram:
    """The original ``record`` arithmetic."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LatencyHistogram.bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.counts[reference_bucket(seconds)] += 1
        self.count += 1
        self.sum += seconds
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)


def edge_values() -> list[float]:
    out = [0.0, -0.0, -1.0, _MIN_S, 1e-300, 5e-324, 1e300, 1e304]
    for b in LatencyHistogram.bounds:
        x = b
        for _ in range(40):  # walk a few ulps and then ~1e-9 relative either side
            out.append(x)
            x = math.nextafter(x, math.inf)
        x = b
        for _ in range(40):
            out.append(x)
            x = math.nextafter(x, 0.0)
        for rel in (1e-12, 1e-10, 1.7e-10, 1.8e-10, 1e-9, 1e-6):
            out += [b * (1 + rel), b * (1 - rel)]
    return out


def random_values(n: int) -> list[float]:
    rng = random.Random(42)
    out = [rng.lognormvariate(-4.0, 3.0) for _ in range(n // 2)]
    out += [rng.uniform(0.0, 120.0) for _ in range(n // 4)]
    out += [10 ** rng.uniform(-6.0, 3.0) for _ in range(n - len(out))]
    return out


def test_bucket_index_matches_the_log_formula() -> None:
    values = random_values(100_000) + edge_values()
    mismatches = [v for v in values if LatencyHistogram.bucket_index(v) != reference_bucket(v)]
    assert mismatches == []


def test_bucket_index_keeps_the_formulas_errors() -> None:
    for bad in (math.nan, math.inf):
        with pytest.raises((ValueError, OverflowError)):
            reference_bucket(bad)
        with pytest.raises((ValueError, OverflowError)):
            LatencyHistogram.bucket_index(bad)
    assert LatencyHistogram.bucket_index(-math.inf) == 0
    with pytest.raises(OverflowError):  # seconds / 100 µs overflows, in both
        reference_bucket(1.7e308)
    with pytest.raises(OverflowError):
        LatencyHistogram.bucket_index(1.7e308)


def test_record_matches_the_reference_and_serialises_the_same() -> None:
    values = random_values(20_000) + edge_values() + [-0.5, -0.0]
    h = LatencyHistogram()
    ref = ReferenceHistogram()
    for v in values:
        h.record(v)
        ref.record(v)
    counts = ref.counts
    assert list(h.counts) == counts
    assert (h.count, h.sum, h.min, h.max) == (ref.count, ref.sum, ref.min, ref.max)
    d = h.to_dict()
    assert d["buckets"] == {str(i): c for i, c in enumerate(counts) if c}
    back = LatencyHistogram.from_dict(d)
    assert back.to_dict() == d
    merged = LatencyHistogram.merged([back, h])
    assert merged.counts == tuple(2 * c for c in counts)
    assert merged.to_dict()["count"] == 2 * h.count


def test_clear_empties_in_place() -> None:
    h = LatencyHistogram()
    alias = h
    for v in random_values(100):
        h.record(v)
    h.clear()
    assert alias.count == 0
    assert alias.to_dict() == LatencyHistogram().to_dict()
    h.record(0.002)
    assert alias.count == 1
