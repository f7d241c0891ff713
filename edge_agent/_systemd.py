"""systemd's notification protocol (``sd_notify``), implemented directly: no dependency.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a ``AF_UNIX`` datagram socket (a path,
or an abstract name written with a leading ``@``). The agent sends ``READY=1`` once connected
and every subsystem has started, ``RELOADING=1`` (with ``MONOTONIC_USEC``) on SIGHUP,
``STOPPING=1`` on SIGTERM, ``STATUS=...`` lines for ``systemctl status``, and ``WATCHDOG=1``
at half of ``$WATCHDOG_USEC`` when the unit sets ``WatchdogSec=``. Without ``$NOTIFY_SOCKET``
every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["SystemdNotifier"]

_log = logging.getLogger(__name__)
_USEC = 1_000_000


class SystemdNotifier:
    """Sends state changes to systemd (a no-op outside a ``Type=notify`` unit)."""

    def __init__(self, socket_path: str | None = None, *, watchdog_usec: str | None = None) -> None:
        """Use ``socket_path`` (default ``$NOTIFY_SOCKET``) and ``$WATCHDOG_USEC``."""
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | bytes | None = None
        if path:
            self._address = b"\0" + path[1:].encode() if path.startswith("@") else path
        raw = watchdog_usec if watchdog_usec is not None else os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_s: float | None = None
        if raw and raw.isdigit() and int(raw) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(raw) / _USEC

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; return whether it was sent."""
        if self._address is None:
            return False
        data = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(data)
        except OSError as exc:
            _log.warning("sd_notify %s failed: %s", lines[0] if lines else "", exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """``READY=1``: the service is up."""
        return self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        """``RELOADING=1`` (``Type=notify-reload`` needs ``MONOTONIC_USEC`` too)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutting down."""
        return self.notify("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        """A free-form status line for ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: still alive."""
        return self.notify("WATCHDOG=1")
