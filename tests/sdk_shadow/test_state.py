"""The sans-I/O core of ShadowSync: merge rules, local-copy transitions, persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_sdk.shadow import ShadowDelta, ShadowDocument
from device_sdk.shadow._files import read_json, remove_durably, write_json_atomic
from device_sdk.shadow._state import LocalShadow, combine_patches, merge_state

KEYS = st.sampled_from(["a", "b", "c"])
LEAVES = st.one_of(st.integers(-3, 3), st.booleans(), st.text(max_size=2))
PATCH_VALUES = st.recursive(
    st.one_of(LEAVES, st.none(), st.lists(LEAVES, max_size=2)),
    lambda inner: st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
PATCHES = st.dictionaries(KEYS, PATCH_VALUES, max_size=3)
STATES = PATCHES.map(lambda p: merge_state({}, p))


def test_merge_rules() -> None:
    stored = {"a": {"x": 1, "y": 2}, "b": [1, 2], "c": "keep"}
    patch = {"a": {"x": None, "z": {"n": None, "m": 1}}, "b": [3], "d": None}
    assert merge_state(stored, patch) == {"a": {"y": 2, "z": {"m": 1}}, "b": [3], "c": "keep"}
    assert merge_state({"a": {"x": 1}}, {"a": {"x": None}}) == {}  # emptied objects pruned
    assert merge_state({"a": 1}, {"a": {"b": None, "c": 2}}) == {"a": {"c": 2}}
    assert stored["a"] == {"x": 1, "y": 2}  # inputs untouched


@given(STATES, PATCHES, PATCHES)
def test_combined_patches_equal_sequential_merges(
    base: dict[str, Any], first: dict[str, Any], second: dict[str, Any]
) -> None:
    combined = combine_patches(first, second)
    if combined is not None:
        assert merge_state(base, combined) == merge_state(merge_state(base, first), second)


@given(STATES, st.lists(PATCHES, max_size=5))
def test_pending_patches_replay_to_the_device_state(
    base: dict[str, Any], patches: list[dict[str, Any]]
) -> None:
    local = LocalShadow(reported=base)
    expected = base
    for patch in patches:
        local.add_pending(patch)
        expected = merge_state(expected, patch)
    assert local.reported == expected
    replayed = base
    for patch in local.pending:
        replayed = merge_state(replayed, patch)
    assert replayed == expected


def test_patches_that_cannot_combine_stay_separate() -> None:
    assert combine_patches({"a": 1}, {"a": {"x": 1}}) is None
    assert combine_patches({"a": None}, {"a": {"x": 1}}) is None
    assert combine_patches({"a": {"x": 1}}, {"a": {"y": None}}) == {"a": {"x": 1, "y": None}}
    local = LocalShadow()
    for patch in ({"a": 1}, {"b": 2}, {"a": {"x": 1}}, {"c": 3}):
        local.add_pending(patch)
    assert local.pending == [{"a": 1, "b": 2}, {"a": {"x": 1}, "c": 3}]


@given(STATES, PATCHES)
def test_merge_never_stores_nulls(base: dict[str, Any], patch: dict[str, Any]) -> None:
    def clean(value: Any) -> bool:
        if isinstance(value, dict):
            return bool(value) and all(v is not None and clean(v) for v in value.values())
        return True

    merged = merge_state(base, patch)
    assert not merged or clean(merged)


def doc(version: int, **state: Any) -> ShadowDocument:
    return ShadowDocument.model_validate({"state": state, "version": version})


def delta(version: int, state: dict[str, Any]) -> ShadowDelta:
    return ShadowDelta.model_validate({"state": state, "version": version})


def test_local_copy_transitions() -> None:
    local = LocalShadow()
    local.add_pending({"fw": "1.0"})
    assert local.apply_document(None) == {}
    assert local.pending == [{"fw": "1.0"}]

    got = local.apply_document(doc(4, desired={"m": 2}, reported={"m": 1}, delta={"m": 2}))
    assert got == {"m": 2}
    assert local.reported == {"m": 1, "fw": "1.0"}  # pending stays applied on top
    assert local.version == 4

    assert local.is_stale(delta(4, {"m": 2}))
    assert local.follows(delta(5, {"m": 3}))
    assert not local.follows(delta(7, {"m": 3}))
    assert local.apply_delta(delta(5, {"m": 3})) == {"m": 3}
    assert (local.desired, local.version) == ({"m": 3}, 5)

    sent = local.take_pending()
    local.add_pending({"m": 3})
    local.restore_pending(sent)
    assert local.pending == [{"fw": "1.0", "m": 3}]
    assert local.take_pending() == {"fw": "1.0", "m": 3}
    assert local.take_pending() == {}


def test_missing_shadow_republishes_reported_state() -> None:
    local = LocalShadow(desired={"a": 1}, reported={"a": 1, "b": 2}, version=9)
    assert local.apply_document(None) == {}
    assert (local.desired, local.version, local.pending) == ({}, 0, [{"a": 1, "b": 2}])


def test_persisted_form_round_trips(tmp_path: Path) -> None:
    local = LocalShadow({"d": 1}, {"r": [1, 2]}, 3, [{"r": [1, 2]}], error_reported=True)
    data = local.to_json(thing_name="t", shadow_name="cfg")
    path = tmp_path / "deep" / "copy.json"
    write_json_atomic(path, data)
    assert json.loads(path.read_text()) == data
    assert LocalShadow.from_json(read_json(path), thing_name="t", shadow_name="cfg") == local
    with pytest.raises(ValueError, match="belongs to"):
        LocalShadow.from_json(data, thing_name="t", shadow_name=None)
    with pytest.raises(ValueError, match="format"):
        LocalShadow.from_json([], thing_name="t", shadow_name="cfg")
    with pytest.raises(ValueError, match="malformed"):
        LocalShadow.from_json({**data, "version": "3"}, thing_name="t", shadow_name="cfg")
    assert [p.name for p in path.parent.iterdir()] == ["copy.json"]  # no temporary left
    remove_durably(path)
    remove_durably(path)
    assert read_json(path) is None
