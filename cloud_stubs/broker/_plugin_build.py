"""Build the stub's mosquitto plugin (``plugin/iotcore_plugin.c``) on demand.

The plugin is compiled with the system C compiler against the ``mosquitto-dev`` and
``libssl-dev`` headers into a per-user cache (``$XDG_CACHE_HOME/iot-toolkit`` or
``~/.cache/iot-toolkit``), named by the SHA-256 of the source, the mosquitto version and the
compiler command, so an upgrade of either rebuilds it and every later start reuses it. The build
writes to a temporary file and renames it into place, so concurrent builds never see half a file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from cloud_stubs._errors import BrokerError

__all__ = [
    "APT_PACKAGES",
    "PluginBuildError",
    "ensure_plugin",
    "find_mosquitto",
    "mosquitto_version",
    "plugin_available",
    "plugin_source",
]

#: Debian/Ubuntu packages needed to build and run the plugin.
APT_PACKAGES = "mosquitto mosquitto-dev libmosquitto-dev libssl-dev gcc"

_CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra")
_LIBS = ("-lcrypto",)
_HEADERS = ("mosquitto_broker.h", "mosquitto_plugin.h", "mosquitto.h", "openssl/ssl.h")
_INCLUDE_DIRS = (Path("/usr/include"), Path("/usr/local/include"))
_VERSION_RE = re.compile(r"mosquitto version (\S+)")


class PluginBuildError(BrokerError, RuntimeError):
    """The mosquitto plugin cannot be built (no compiler, missing headers, compile error)."""


def plugin_source() -> Path:
    """Path of the plugin's C source shipped with the package."""
    return Path(__file__).resolve().parent / "plugin" / "iotcore_plugin.c"


def find_mosquitto() -> str | None:
    """Return the mosquitto broker executable (PATH, then the sbin dirs), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@functools.cache
def mosquitto_version(binary: str | None = None) -> str | None:
    """Return the version the mosquitto executable reports (``"2.0.11"``), or None."""
    exe = binary or find_mosquitto()
    if exe is None:
        return None
    try:
        # `mosquitto -h` prints the version and exits non-zero: that is expected.
        out = subprocess.run(
            [exe, "-h"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION_RE.search(out)
    return match.group(1) if match else None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iot-toolkit"


def _compiler() -> str | None:
    cc = os.environ.get("CC", "gcc")
    return shutil.which(cc)


def _missing_headers() -> list[str]:
    return [h for h in _HEADERS if not any((d / h).is_file() for d in _INCLUDE_DIRS)]


def _plugin_path(source: bytes, cc: str) -> Path:
    digest = hashlib.sha256()
    digest.update(source)
    digest.update(b"\0mosquitto=" + (mosquitto_version() or "unknown").encode())
    digest.update(b"\0cc=" + " ".join((Path(cc).name, *_CFLAGS, *_LIBS)).encode())
    return _cache_dir() / f"iotcore_plugin-{digest.hexdigest()[:32]}.so"


def ensure_plugin() -> Path:
    """Return the compiled plugin, building it into the cache first if needed.

    Raises:
        PluginBuildError: No C compiler, headers missing, or the compiler failed; the message
            names the apt packages to install.
    """
    src = plugin_source()
    try:
        source = src.read_bytes()
    except OSError as exc:
        raise PluginBuildError(f"plugin source {src} is missing: {exc}") from exc
    cc = _compiler()
    if cc is None:
        # A previously built plugin for this source may still be in the cache under any
        # compiler name; without a compiler we only look for the default one.
        cached = _plugin_path(source, "gcc")
        if cached.is_file():
            return cached
        raise PluginBuildError(
            "cannot build the mosquitto plugin: no C compiler (gcc) found; "
            f"install with 'apt-get install {APT_PACKAGES}'"
        )
    target = _plugin_path(source, cc)
    if target.is_file():
        return target
    missing = _missing_headers()
    if missing:
        raise PluginBuildError(
            f"cannot build the mosquitto plugin: missing headers {', '.join(missing)}; "
            f"install with 'apt-get install {APT_PACKAGES}'"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".iotcore_plugin-", suffix=".so")
    except OSError as exc:
        raise PluginBuildError(
            f"cannot write the mosquitto plugin to {target.parent}: {exc} "
            "(set XDG_CACHE_HOME to a writable directory)"
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proc = subprocess.run(
            [cc, *_CFLAGS, "-o", str(tmp), str(src), *_LIBS],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise PluginBuildError(
                f"compiling the mosquitto plugin failed (exit {proc.returncode}); "
                f"are {APT_PACKAGES} installed?\n{tail}"
            )
        tmp.chmod(0o755)
        tmp.replace(target)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PluginBuildError(f"compiling the mosquitto plugin failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def plugin_available() -> bool:
    """True when the plugin is built or can be built now (this builds it if needed)."""
    try:
        ensure_plugin()
    except PluginBuildError:
        return False
    return True
