"""Counters and mergeable latency histograms.

:class:`LatencyHistogram` uses one fixed set of logarithmic buckets (4 per octave from 100 µs
to ~105 s, ~19 % relative resolution), so histograms from different devices, shards or
processes merge by adding counts, and quantiles of the merge are as exact as those of one.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from bisect import bisect_left
from typing import Any, ClassVar, Self

__all__ = ["ClientMetrics", "LatencyHistogram"]

_MIN_S = 1e-4
_PER_OCTAVE = 4
_OCTAVES = 20
_N = _PER_OCTAVE * _OCTAVES
_LAST = _N + 1  # index of the overflow bucket (== len(LatencyHistogram.bounds))


def _log_bucket(seconds: float) -> int:
    """The reference formula: ``ceil(log2(seconds / 100 µs) * 4)`` (with a 1e-9 tolerance)."""
    if seconds <= _MIN_S:
        return 0
    i = math.ceil(math.log2(seconds / _MIN_S) * _PER_OCTAVE - 1e-9)
    return min(i, _LAST)


def _float_at(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<q", bits))[0])


def _bits_of(value: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", value))[0])


def _thresholds() -> tuple[float, ...]:
    """``t[i]`` = the largest float that :func:`_log_bucket` puts in a bucket ``<= i``.

    :func:`_log_bucket` is monotonic in its argument, so ``bisect_left(t, seconds)`` gives the
    same bucket as the formula for every float, found exactly by bisecting over the bit
    patterns of positive floats (which order like the floats themselves).
    """
    out = []
    lo = _bits_of(_MIN_S)  # _log_bucket(lo) == 0
    top = _bits_of(math.inf) - 1  # largest finite float: in the overflow bucket
    for i in range(_LAST):
        a, b = lo, top  # invariant: _log_bucket(a) <= i < _log_bucket(b)
        while b - a > 1:
            mid = (a + b) // 2
            if _log_bucket(_float_at(mid)) <= i:
                a = mid
            else:
                b = mid
        out.append(_float_at(a))
        lo = a
    return tuple(out)


_THRESHOLDS = _thresholds()


class LatencyHistogram:
    """Latency histogram over fixed log buckets; mergeable and serialisable.

    ``bounds[i]`` is the inclusive upper bound of bucket ``i``; the last bucket holds
    everything above ``bounds[-1]``.
    """

    bounds: ClassVar[tuple[float, ...]] = tuple(
        _MIN_S * 2.0 ** (i / _PER_OCTAVE) for i in range(_N + 1)
    )

    __slots__ = ("_counts", "count", "max", "min", "sum")

    def __init__(self) -> None:
        self._counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = 0.0

    @classmethod
    def bucket_index(cls, seconds: float) -> int:
        """Index of the bucket that holds ``seconds``."""
        # A bisect over precomputed thresholds: exactly the buckets of the log formula,
        # several times cheaper. The ends (bucket 0, overflow, NaN, inf) take the formula.
        i = bisect_left(_THRESHOLDS, seconds)
        return i if 0 < i < _LAST else _log_bucket(seconds)

    def record(self, seconds: float) -> None:
        """Add one observation (negative values count as 0)."""
        if seconds < 0.0:  # noqa: PLR1730 - hot path: cheaper than calling min/max
            seconds = 0.0
        i = bisect_left(_THRESHOLDS, seconds)
        self._counts[i if 0 < i < _LAST else _log_bucket(seconds)] += 1
        self.count += 1
        self.sum += seconds
        if seconds < self.min:  # noqa: PLR1730 - hot path: cheaper than calling min/max
            self.min = seconds
        if seconds > self.max:  # noqa: PLR1730 - hot path: cheaper than calling min/max
            self.max = seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s observations to this histogram."""
        for i, c in enumerate(other._counts):
            self._counts[i] += c
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def clear(self) -> None:
        """Forget every observation, in place (holders of a reference keep recording)."""
        counts = self._counts
        for i in range(len(counts)):
            counts[i] = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = 0.0

    @classmethod
    def merged(cls, histograms: list[LatencyHistogram]) -> Self:
        """A new histogram holding the observations of all ``histograms``."""
        out = cls()
        for h in histograms:
            out.merge(h)
        return out

    def copy(self) -> Self:
        """An independent copy."""
        out = type(self)()
        out.merge(self)
        return out

    @property
    def counts(self) -> tuple[int, ...]:
        """Per-bucket counts (``len(bounds) + 1`` entries)."""
        return tuple(self._counts)

    @property
    def mean(self) -> float:
        """Arithmetic mean (exact), or NaN when empty."""
        return self.sum / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile ``q`` (0..1), clamped to the observed max.

        Returns NaN when empty.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be within [0, 1]")
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                bound = self.bounds[i] if i < len(self.bounds) else self.max
                return min(bound, self.max)
        return self.max  # pragma: no cover - unreachable, counts sum to count

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: sparse bucket counts keyed by bucket index."""
        return {
            "count": self.count,
            "sum": self.sum,
            "min": self.min if self.count else None,
            "max": self.max,
            "buckets": {str(i): c for i, c in enumerate(self._counts) if c},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`."""
        out = cls()
        for key, c in data["buckets"].items():
            out._counts[int(key)] = int(c)
        out.count = int(data["count"])
        out.sum = float(data["sum"])
        out.min = math.inf if data["min"] is None else float(data["min"])
        out.max = float(data["max"])
        return out

    def __repr__(self) -> str:
        return (
            f"LatencyHistogram(count={self.count}, p50={self.quantile(0.5):.4g}s, "
            f"p99={self.quantile(0.99):.4g}s, max={self.max:.4g}s)"
            if self.count
            else "LatencyHistogram(count=0)"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ClientMetrics:
    """A snapshot of a :class:`~device_sdk.DeviceClient`'s counters and latencies.

    Attributes:
        counters: Monotonic counters (``published``, ``acked``, ``nacked``, ``received``,
            ``dropped_inbound``, ``connects``, ``connect_failures``, ``disconnects``, ...).
        puback_latency: Transport hand-off to PUBACK, per QoS 1 message.
        end_to_end_latency: Outbox enqueue to PUBACK (includes time spent offline).
    """

    counters: dict[str, int]
    puback_latency: LatencyHistogram
    end_to_end_latency: LatencyHistogram
