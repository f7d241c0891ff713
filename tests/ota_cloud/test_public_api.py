"""The curated public surface of cloud_stubs.firmware and cloud_stubs.deployments."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

import cloud_stubs.deployments
import cloud_stubs.firmware


@pytest.mark.parametrize("module", [cloud_stubs.firmware, cloud_stubs.deployments])
def test_all_is_unique_complete_and_importable(module: ModuleType) -> None:
    names = module.__all__
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(module, name) is not None, name
    public = {
        n
        for n in dir(module)
        if not n.startswith("_") and not isinstance(getattr(module, n), type(importlib))
    }
    assert public <= set(names), public - set(names)


@pytest.mark.parametrize("module", [cloud_stubs.firmware, cloud_stubs.deployments])
def test_implementation_lives_in_private_modules(module: ModuleType) -> None:
    for name in module.__all__:
        obj = getattr(module, name)
        home = getattr(obj, "__module__", None)
        if home is not None and home.startswith("cloud_stubs."):
            assert home.rsplit(".", 1)[1].startswith("_"), (name, home)
