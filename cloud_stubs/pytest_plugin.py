"""pytest plugin (entry point ``pytest11``): a running local IoT Core for every test that asks.

Fixtures:

``cloud``
    A started :class:`~cloud_stubs.LocalIoTCore` in a fresh temporary state directory. The test
    runs once per broker backend listed in ``--cloud-brokers`` (default: both ``mosquitto`` and
    ``embedded``), so code is checked against both brokers.
``cloud_mosquitto`` / ``cloud_embedded``
    The same on one backend only.

Requires pytest-asyncio (``asyncio_mode = "auto"`` or mark tests with ``@pytest.mark.asyncio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_stubs._core import LocalIoTCore

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - plugin is inert without pytest-asyncio
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = ["pytest_addoption", "pytest_generate_tests"]

_ALL = ("mosquitto", "embedded")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--cloud-brokers``."""
    group = parser.getgroup("cloud_stubs")
    group.addoption(
        "--cloud-brokers",
        default="mosquitto,embedded",
        help="comma-separated broker backends the `cloud` fixture runs on (mosquitto,embedded)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize the ``cloud`` fixture over the selected broker backends."""
    if "cloud" in metafunc.fixturenames:
        raw = str(metafunc.config.getoption("--cloud-brokers"))
        kinds = [k.strip() for k in raw.split(",") if k.strip()]
        bad = [k for k in kinds if k not in _ALL]
        if bad:
            raise pytest.UsageError(f"--cloud-brokers: unknown backend(s) {bad}; use {_ALL}")
        metafunc.parametrize("cloud_broker", kinds, indirect=True)


@pytest.fixture
def cloud_broker(request: pytest.FixtureRequest) -> str:
    """The broker backend of the current ``cloud`` parametrization."""
    return str(getattr(request, "param", "mosquitto"))


async def _running(state_dir: Path, broker: str) -> AsyncIterator[LocalIoTCore]:
    core = LocalIoTCore(state_dir, broker=broker, port=0)  # type: ignore[arg-type]
    await core.start()
    try:
        yield core
    finally:
        await core.stop()


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def cloud(tmp_path: Path, cloud_broker: str) -> AsyncIterator[LocalIoTCore]:
        """A running local IoT Core on each selected broker backend."""
        async for core in _running(tmp_path / "iot-state", cloud_broker):
            yield core

    @pytest_asyncio.fixture
    async def cloud_mosquitto(tmp_path: Path) -> AsyncIterator[LocalIoTCore]:
        """A running local IoT Core on mosquitto."""
        async for core in _running(tmp_path / "iot-state", "mosquitto"):
            yield core

    @pytest_asyncio.fixture
    async def cloud_embedded(tmp_path: Path) -> AsyncIterator[LocalIoTCore]:
        """A running local IoT Core on the embedded broker."""
        async for core in _running(tmp_path / "iot-state", "embedded"):
            yield core
