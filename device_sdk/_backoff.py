"""The written reconnect policy: full-jitter exponential backoff with stop conditions.

Pure code (no awaits, no clock reads): the client's reconnect loop asks it for a delay and
whether to retry. Jitter is mandatory for fleets: thousands of devices dropped by the same
broker restart must not come back in lock step.
"""

from __future__ import annotations

import dataclasses
import random

from device_sdk._exceptions import AuthorizationError, ConnectError, ConnectionLostError

__all__ = ["ReconnectPolicy"]

_MAX_EXPONENT = 60


@dataclasses.dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Full-jitter exponential backoff: ``uniform(0, min(cap_s, base_s * 2**attempt))``.

    Attributes:
        base_s: Backoff of the first retry before jitter.
        cap_s: Upper bound of the backoff window.
        min_interval_s: Minimum time between two CONNECT attempts of one client id (IoT Core
            accepts one CONNECT per second per client id).
        reset_after_s: A connection that stayed up this long resets the attempt counter, so a
            broker that accepts and then immediately drops us does not cause a tight loop.
        max_attempts: Give up after this many consecutive failed attempts (``None``: never).
    """

    base_s: float = 1.0
    cap_s: float = 120.0
    min_interval_s: float = 1.0
    reset_after_s: float = 30.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError("need 0 < base_s <= cap_s")
        if self.min_interval_s < 0:
            raise ValueError("min_interval_s must not be negative")

    def window(self, attempt: int) -> float:
        """Upper bound of the jitter window for the 0-based ``attempt``."""
        return min(self.cap_s, self.base_s * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds before retry ``attempt`` (0-based); never less than ``min_interval_s``."""
        draw = (rng or random).uniform(0.0, self.window(attempt))
        return max(self.min_interval_s, draw)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether to try again after ``error`` on the 0-based ``attempt``.

        Authorization failures never retry: the same certificate will be refused again.
        Only connection-level errors are retryable.
        """
        if isinstance(error, AuthorizationError):
            return False
        if self.max_attempts is not None and attempt + 1 >= self.max_attempts:
            return False
        return isinstance(error, ConnectError | ConnectionLostError)
