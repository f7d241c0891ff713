"""Shard assignment and per-device seeds."""

from __future__ import annotations

import sys

import pytest

from fleet_sim import Shard, device_rng, iter_devices, parse_scenario, plan_shard
from fleet_sim._plan import SplitMix

SCENARIO = parse_scenario("""\
name: t
groups:
  - {name: a, model: robot_vacuum, count: 17, name_pattern: "a-{index}"}
  - {name: b, model: environment_sensor, count: 10, name_pattern: "b-{index:03d}"}
""")


def test_shards_partition_the_fleet() -> None:
    everyone = [d.name for d in iter_devices(SCENARIO)]
    assert len(everyone) == 27 == len(set(everyone))
    for count in (1, 2, 3, 4, 27, 40):
        parts = [plan_shard(SCENARIO, Shard(i, count)) for i in range(count)]
        names = sorted(d.name for p in parts for d in p)
        assert names == sorted(everyone)
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_assignment_is_deterministic_and_mixes_groups() -> None:
    first = [d.name for d in plan_shard(SCENARIO, Shard(1, 3))]
    again = [d.name for d in plan_shard(SCENARIO, Shard(1, 3))]
    assert first == again
    assert first[:3] == ["a-2", "a-5", "a-8"]
    assert any(n.startswith("b-") for n in first)


def test_device_seed_depends_only_on_seed_and_name() -> None:
    a = device_rng(5, "a-1").random()
    assert a == device_rng(5, "a-1").random()
    assert a != device_rng(6, "a-1").random()
    assert a != device_rng(5, "a-2").random()
    assert device_rng(5, "a-1", "schedule").random() != a


@pytest.mark.parametrize(("text", "shard"), [("0/1", Shard(0, 1)), (" 3 / 8 ", Shard(3, 8))])
def test_shard_parse(text: str, shard: Shard) -> None:
    assert Shard.parse(text) == shard
    assert str(Shard.parse(text)) == f"{shard.index}/{shard.count}"


@pytest.mark.parametrize("text", ["1", "2/2", "-1/3", "a/b", "1/0"])
def test_bad_shards(text: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        Shard.parse(text)


def test_schedule_generator_is_small_seeded_and_uniform() -> None:
    a, b = SplitMix(1, "x"), SplitMix(1, "x")
    xs = [a.random() for _ in range(20_000)]
    assert xs == [b.random() for _ in range(20_000)]
    assert xs[:5] != [SplitMix(2, "x").random() for _ in range(5)]
    assert min(xs) >= 0.0
    assert max(xs) < 1.0
    assert abs(sum(xs) / len(xs) - 0.5) < 0.01
    assert 2.0 <= SplitMix(3, "y").uniform(2.0, 3.0) < 3.0
    assert sys.getsizeof(a) < 100
