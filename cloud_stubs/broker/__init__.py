"""Broker backends of the local IoT Core: mosquitto (with the stub's C plugin) or embedded amqtt.

Both enforce the same policies (:mod:`cloud_stubs._policy`) against the same registry snapshot
(:mod:`cloud_stubs._snapshot`) and publish the same presence events.
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING, Literal, Protocol

from cloud_stubs._errors import BrokerError

if TYPE_CHECKING:
    from cloud_stubs._paths import StatePaths

__all__ = ["Broker", "BrokerKind", "create_broker", "resolve_broker_kind"]

_log = logging.getLogger(__name__)

BrokerKind = Literal["auto", "mosquitto", "embedded"]


class Broker(Protocol):
    """What the stub needs from a broker backend."""

    name: str

    @property
    def host(self) -> str:
        """Address the listener is bound to."""
        ...

    @property
    def port(self) -> int:
        """Port the TLS listener is bound to (the real one when 0 was asked)."""
        ...

    async def start(self) -> None:
        """Start listening; return when clients can connect."""

    async def stop(self) -> None:
        """Stop and release everything (no orphan processes)."""

    async def reload(self) -> None:
        """Re-read the registry snapshot and policies now."""


def _mosquitto_usable() -> tuple[bool, str]:
    if shutil.which("mosquitto") is None and shutil.which("/usr/sbin/mosquitto") is None:
        return False, "mosquitto is not installed"
    from cloud_stubs.broker._plugin_build import plugin_available  # noqa: PLC0415

    if not plugin_available():
        return False, "the mosquitto plugin cannot be built (need gcc, mosquitto-dev, libssl-dev)"
    return True, ""


def resolve_broker_kind(kind: BrokerKind) -> Literal["mosquitto", "embedded"]:
    """Turn ``auto`` into a concrete backend; raise :class:`BrokerError` if one is unusable."""
    if kind == "embedded":
        return "embedded"
    ok, why = _mosquitto_usable()
    if kind == "mosquitto":
        if not ok:
            raise BrokerError(
                f"--broker mosquitto: {why}; install with "
                "'apt-get install mosquitto mosquitto-dev libmosquitto-dev libssl-dev gcc' "
                "or use --broker embedded"
            )
        return "mosquitto"
    if ok:
        return "mosquitto"
    _log.warning(
        "%s: using the embedded pure-Python broker, which is meant for small runs "
        "(a few hundred devices)",
        why,
    )
    return "embedded"


def create_broker(
    kind: BrokerKind, paths: StatePaths, *, host: str = "127.0.0.1", port: int = 0
) -> Broker:
    """Create (not start) the broker backend ``kind`` for a state directory."""
    concrete = resolve_broker_kind(kind)
    if concrete == "mosquitto":
        from cloud_stubs.broker._mosquitto import MosquittoBroker  # noqa: PLC0415

        return MosquittoBroker(paths, host=host, port=port)
    from cloud_stubs.broker._embedded import EmbeddedBroker  # noqa: PLC0415

    return EmbeddedBroker(paths, host=host, port=port)
