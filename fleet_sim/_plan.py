"""From a scenario to concrete devices: names, shard assignment and per-device seeds.

Devices are numbered over all groups in file order (``n`` = 0, 1, ...). Shard ``i`` of ``n``
runs the devices with ``n % count == index``, so every shard gets a fair share of each group
and the assignment depends only on the scenario. Each device's random generator is seeded
from the scenario seed and its thing name (SHA-512 of the string, independent of
``PYTHONHASHSEED``), so a device behaves the same whichever shard runs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Iterator

from fleet_sim._scenario import GroupSpec, Scenario

__all__ = [
    "DeviceSpec",
    "Shard",
    "SplitMix",
    "device_rng",
    "iter_devices",
    "plan_shard",
    "thing_name",
]

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclasses.dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based index)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= index < count")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/8"`` -> ``Shard(2, 8)``.

        Raises:
            ValueError: Not ``i/n`` with ``0 <= i < n``.
        """
        m = _SHARD.fullmatch(text)
        usage = f"--shard {text!r}: use INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4"
        if m is None:
            raise ValueError(usage)
        try:
            return cls(int(m.group(1)), int(m.group(2)))
        except ValueError:
            raise ValueError(usage) from None

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, n: int) -> bool:
        """Whether global device number ``n`` belongs to this shard."""
        return n % self.count == self.index


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device of the scenario.

    Attributes:
        n: 0-based number over the whole scenario.
        group: Index of its group in ``scenario.groups``.
        index: 1-based index within the group.
        name: Thing name (also the MQTT client id).
    """

    n: int
    group: int
    index: int
    name: str


def thing_name(group: GroupSpec, index: int, n: int) -> str:
    """The thing name of device ``index`` (1-based) of ``group``; ``n`` is its global number."""
    return group.name_pattern.format(group=group.name, index=index, n=n)


def iter_devices(scenario: Scenario) -> Iterator[DeviceSpec]:
    """Every device of the scenario, in order."""
    n = 0
    for gi, group in enumerate(scenario.groups):
        for index in range(1, group.count + 1):
            yield DeviceSpec(n, gi, index, thing_name(group, index, n))
            n += 1


def plan_shard(scenario: Scenario, shard: Shard) -> list[DeviceSpec]:
    """The devices shard ``shard`` runs."""
    return [d for d in iter_devices(scenario) if shard.owns(d.n)]


def device_rng(seed: int, name: str, stream: str = "model") -> random.Random:
    """The device's generator for ``stream`` (``model``, ``schedule``, ...)."""
    return random.Random(f"{seed}:{name}:{stream}")  # noqa: S311 - simulation, not crypto


_MASK = (1 << 64) - 1


class SplitMix:
    """A tiny seeded generator (SplitMix64) for scheduling jitter.

    ``random.Random`` keeps 2.5 KB of state; thousands of devices need only a few uniform
    draws each for phases, jitter and backoff, so this one keeps a single integer.
    """

    __slots__ = ("_state",)

    def __init__(self, seed: int, name: str, stream: str = "schedule") -> None:
        digest = hashlib.sha256(f"{seed}:{name}:{stream}".encode()).digest()
        self._state = int.from_bytes(digest[:8], "big")

    def random(self) -> float:
        """Uniform in [0, 1)."""
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        return (z >> 11) * (1.0 / (1 << 53))

    def uniform(self, a: float, b: float) -> float:
        """Uniform in [a, b)."""
        return a + (b - a) * self.random()
