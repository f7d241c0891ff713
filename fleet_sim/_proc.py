"""The simulator process itself: CPU and memory readings, and tuning for many connections."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cpu_seconds", "freeze_heap", "rss_bytes", "thaw_heap", "trust_only"]

_log = logging.getLogger(__name__)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: Young-generation threshold while devices run: each message allocates a few dozen
#: short-lived containers; CPython's default (700) runs a collection every few messages.
_GC_GEN0 = 20_000
_saved_thresholds: tuple[int, int, int] | None = None


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    t = os.times()
    return t.user + t.system


def rss_bytes() -> int:
    """Resident set size now (Linux), else the peak."""
    try:
        with open("/proc/self/statm", "rb") as f:  # noqa: PTH123 - hot path, no Path object
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


@contextlib.contextmanager
def trust_only(ca_file: Path) -> Iterator[None]:
    """Within the block, OpenSSL's *default* trust paths of this process are ``ca_file`` only.

    awscrt (s2n) loads the system trust store into every new TLS context before the
    transport replaces it with the endpoint's CA, which costs ~7 ms of CPU and tens of KB per
    device with the Debian bundle. Every connection of the simulator names its CA explicitly,
    so the defaults are never used; pointing them at that CA (and at an empty directory) makes
    building a context ~25x cheaper. Affects only this process; restored on exit.
    """
    empty = Path(tempfile.gettempdir()) / "fleet_sim-empty-certs"
    empty.mkdir(exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    os.environ["SSL_CERT_FILE"] = str(ca_file)
    os.environ["SSL_CERT_DIR"] = str(empty)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def freeze_heap() -> None:
    """Move everything allocated so far out of the garbage collector's sight, collect less often.

    Called once the devices are set up: the long-lived objects (clients, models, tasks) are
    then never traversed again, and young collections run every ``_GC_GEN0`` allocations.
    """
    global _saved_thresholds  # noqa: PLW0603 - process-wide setting, restored by thaw_heap
    gc.collect()
    gc.freeze()
    if _saved_thresholds is None:
        _saved_thresholds = gc.get_threshold()
    _, gen1, gen2 = _saved_thresholds
    gc.set_threshold(_GC_GEN0, gen1, gen2)
    _log.debug("froze %d objects; gc thresholds %s", gc.get_freeze_count(), gc.get_threshold())


def thaw_heap() -> None:
    """Undo :func:`freeze_heap` (after the run, e.g. when running inside a test process)."""
    global _saved_thresholds  # noqa: PLW0603
    gc.unfreeze()
    if _saved_thresholds is not None:
        gc.set_threshold(*_saved_thresholds)
        _saved_thresholds = None
