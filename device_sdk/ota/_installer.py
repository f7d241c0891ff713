"""Installers: the pluggable backend that writes, activates, commits and rolls back images.

:class:`Installer` is modelled on Mender Update Modules (ota.md §11.4). Every method must be
idempotent: the agent calls it again when it re-enters a state after a crash.

Built-ins:

* :class:`ABSlotInstaller`: two directory slots ``slots/a`` and ``slots/b`` and an ``active``
  symlink switched atomically (new symlink + ``rename``), with a trial flag in
  ``boot.json``. A "fake bootloader" (:meth:`ABSlotInstaller.boot`) falls back to the
  previous slot when a trial slot booted too often without commit.
* :class:`SimulatedInstaller`: versions in memory with seeded failure injection (fleet_sim).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from device_sdk.ota._errors import OtaFailedError, ReasonCode
from device_sdk.shadow._files import read_json, write_json_atomic

__all__ = ["ABSlotInstaller", "Installer", "SimulatedInstaller"]


@runtime_checkable
class Installer(Protocol):
    """What the agent needs from an update backend."""

    def current_version(self) -> str | None:
        """The version running now (committed or on trial)."""
        ...

    def download_path(self, firmware_id: str) -> Path:
        """Where the image of ``firmware_id`` is downloaded to (kept across restarts)."""
        ...

    async def install(self, image: Path, version: str) -> None:
        """Write the verified image to the inactive slot (not active yet)."""
        ...

    def needs_reboot(self) -> bool:
        """Whether activation needs a reboot."""
        ...

    async def activate(self) -> None:
        """Make the installed slot the one booted next, on trial (not committed)."""
        ...

    async def verify_reboot(self, version: str) -> bool:
        """After the (real or simulated) reboot: whether ``version`` runs, on trial."""
        ...

    async def commit(self) -> None:
        """Make the trial slot permanent."""
        ...

    async def rollback(self) -> None:
        """Go back to the previous committed slot (no-op if already there)."""
        ...


class ABSlotInstaller:
    """Two directory slots with an atomically switched ``active`` symlink and a trial flag.

    Layout under ``root``::

        slots/a/{image.bin,version}   slots/b/...
        active -> slots/a             (symlink, replaced by rename)
        boot.json                     {"trial": bool, "previous": "a", "boots": n}
        downloads/<firmware id>.part

    Args:
        root: The directory (created).
        initial_version: Version written to slot ``a`` when the root is new.
        reboot: Whether activation needs a reboot (``needs_reboot``).
        max_trial_boots: The fake bootloader falls back after this many trial boots.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        initial_version: str = "1.0.0",
        reboot: bool = True,
        max_trial_boots: int = 3,
    ) -> None:
        self.root = Path(root)
        self._reboot = reboot
        self.max_trial_boots = max_trial_boots
        if not (self.root / "active").is_symlink():
            slot = self.root / "slots" / "a"
            slot.mkdir(parents=True, exist_ok=True)
            (self.root / "slots" / "b").mkdir(parents=True, exist_ok=True)
            _write(slot / "version", initial_version.encode())
            self._point("a")
            write_json_atomic(self._boot_file, {"trial": False, "previous": None, "boots": 0})

    # -- inspection -----------------------------------------------------------------------

    @property
    def _boot_file(self) -> Path:
        return self.root / "boot.json"

    def _boot(self) -> dict[str, Any]:
        data = read_json(self._boot_file)
        return data if isinstance(data, dict) else {"trial": False, "previous": None, "boots": 0}

    def active_slot(self) -> str:
        """``"a"`` or ``"b"``."""
        return (self.root / "active").readlink().name

    def inactive_slot(self) -> str:
        """The other slot."""
        return "b" if self.active_slot() == "a" else "a"

    def slot_version(self, slot: str) -> str | None:
        """The version in ``slot`` (``None`` if empty)."""
        try:
            return (self.root / "slots" / slot / "version").read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def on_trial(self) -> bool:
        """Whether the active slot is on trial (not committed)."""
        return bool(self._boot().get("trial"))

    def current_version(self) -> str | None:
        """The version of the active slot."""
        return self.slot_version(self.active_slot())

    def committed_version(self) -> str | None:
        """The version the bootloader falls back to (the active one unless on trial)."""
        boot = self._boot()
        if boot.get("trial") and boot.get("previous"):
            return self.slot_version(str(boot["previous"]))
        return self.current_version()

    def download_path(self, firmware_id: str) -> Path:
        """``downloads/<firmware id>.part``."""
        return self.root / "downloads" / f"{firmware_id}.part"

    def needs_reboot(self) -> bool:
        """As configured."""
        return self._reboot

    # -- operations -----------------------------------------------------------------------

    def _point(self, slot: str) -> None:
        tmp = self.root / f".active.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path("slots") / slot)
        tmp.replace(self.root / "active")
        _fsync_dir(self.root)

    def boot(self) -> str:
        """The fake bootloader: count a boot; fall back when a trial slot booted too often.

        Returns:
            The slot that boots.
        """
        boot = self._boot()
        if boot.get("trial"):
            boots = int(boot.get("boots", 0)) + 1
            if boots > self.max_trial_boots and boot.get("previous"):
                self._point(str(boot["previous"]))
                write_json_atomic(self._boot_file, {"trial": False, "previous": None, "boots": 0})
            else:
                write_json_atomic(self._boot_file, {**boot, "boots": boots})
        return self.active_slot()

    async def install(self, image: Path, version: str) -> None:
        """Copy the image into the inactive slot (with fsync) and write its version."""
        await asyncio.to_thread(self._install, image, version)

    def _install(self, image: Path, version: str) -> None:
        if self.on_trial:
            raise OtaFailedError(ReasonCode.INSTALL_FAILED, "a trial slot is active")
        slot = self.root / "slots" / self.inactive_slot()
        slot.mkdir(parents=True, exist_ok=True)
        (slot / "version").unlink(missing_ok=True)  # the slot is invalid while written
        fd, tmp = tempfile.mkstemp(dir=slot, prefix=".image.")
        with os.fdopen(fd, "wb") as out, image.open("rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).replace(slot / "image.bin")
        _write(slot / "version", version.encode())
        _fsync_dir(slot)

    async def activate(self) -> None:
        """Point ``active`` at the installed slot, with the trial flag set first."""
        boot = self._boot()
        if boot.get("trial"):
            return  # already activated (re-entry)
        target = self.inactive_slot()
        if self.slot_version(target) is None:
            raise OtaFailedError(ReasonCode.ACTIVATE_FAILED, f"slot {target} holds no image")
        write_json_atomic(
            self._boot_file, {"trial": True, "previous": self.active_slot(), "boots": 0}
        )
        self._point(target)

    async def verify_reboot(self, version: str) -> bool:
        """Whether the active slot holds ``version`` and is on trial."""
        return self.on_trial and self.current_version() == version

    async def commit(self) -> None:
        """Clear the trial flag (idempotent)."""
        boot = self._boot()
        if boot.get("trial"):
            write_json_atomic(self._boot_file, {"trial": False, "previous": None, "boots": 0})

    async def rollback(self) -> None:
        """Point ``active`` back at the previous slot and clear the trial flag (idempotent)."""
        boot = self._boot()
        if boot.get("trial") and boot.get("previous"):
            self._point(str(boot["previous"]))
        write_json_atomic(self._boot_file, {"trial": False, "previous": None, "boots": 0})


class SimulatedInstaller:
    """An installer without files: versions in memory, failures on demand (for fleet_sim).

    Args:
        version: The running version.
        download_dir: Where images are downloaded.
        failures: Step -> probability that it fails: ``install``, ``activate``,
            ``verify_reboot``, ``commit``, ``rollback``.
        seed: RNG seed (same seed, same failures).
        reboot: What :meth:`needs_reboot` answers.
    """

    def __init__(
        self,
        version: str,
        *,
        download_dir: str | os.PathLike[str],
        failures: Mapping[str, float] | None = None,
        seed: int = 0,
        reboot: bool = False,
    ) -> None:
        self.committed = version
        self.trial: str | None = None
        self.installed: str | None = None
        self.download_dir = Path(download_dir)
        self.failures = dict(failures or {})
        self._rng = random.Random(seed)  # noqa: S311 - reproducible simulation
        self._reboot = reboot
        self.calls: list[str] = []

    def _maybe_fail(self, step: str, code: ReasonCode) -> None:
        self.calls.append(step)
        p = self.failures.get(step, 0.0)
        if p > 0 and self._rng.random() < p:
            raise OtaFailedError(code, f"simulated {step} failure")

    def current_version(self) -> str | None:
        """The trial version if any, else the committed one."""
        return self.trial or self.committed

    def download_path(self, firmware_id: str) -> Path:
        """``<download_dir>/<firmware id>.part``."""
        return self.download_dir / f"{firmware_id}.part"

    async def install(self, image: Path, version: str) -> None:  # noqa: ARG002 - no files
        """Record ``version`` as installed."""
        self._maybe_fail("install", ReasonCode.INSTALL_FAILED)
        self.installed = version

    def needs_reboot(self) -> bool:
        """As configured."""
        return self._reboot

    async def activate(self) -> None:
        """Put the installed version on trial."""
        self._maybe_fail("activate", ReasonCode.ACTIVATE_FAILED)
        if self.trial is None:
            self.trial = self.installed

    async def verify_reboot(self, version: str) -> bool:
        """Whether ``version`` is on trial (fails on demand)."""
        try:
            self._maybe_fail("verify_reboot", ReasonCode.BOOT_FAILED)
        except OtaFailedError:
            return False
        return self.trial == version

    async def commit(self) -> None:
        """Make the trial version permanent."""
        self._maybe_fail("commit", ReasonCode.COMMIT_FAILED)
        if self.trial is not None:
            self.committed, self.trial = self.trial, None

    async def rollback(self) -> None:
        """Drop the trial version."""
        self.calls.append("rollback")
        self.trial = None


def _write(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
