"""Layout of a stub state directory.

Everything the local IoT Core keeps lives under one directory, so state survives restarts and
two stubs with different directories never interfere::

    DIR/
      ca/ca.pem, ca/ca.key              the stub's root CA (device and server certs chain to it)
      server/server.pem, server.key     TLS server certificate (SAN localhost, 127.0.0.1)
      service/service.pem, service.key  privileged identity the stub's own services connect with
      things/<thing>/cert.pem, key.pem  device identities issued by `thing create`
      claims/<name>/cert.pem, key.pem   fleet-provisioning claim identities
      registry.sqlite                   things, certificates, groups (SQLite, WAL)
      broker/registry.tsv               registry snapshot read by the brokers (rewritten atomically)
      broker/policies.tsv               policy statements read by the brokers
      broker/mosquitto.conf, *.log      generated mosquitto configuration and log
      endpoint.json                     written by `cloud-stubs up` when the broker is ready
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SERVICE_CLIENT_PREFIX", "StatePaths"]

#: Client ids of the stub's own privileged service connections start with this prefix.
SERVICE_CLIENT_PREFIX = "cloud-stubs-service"


@dataclass(frozen=True)
class StatePaths:
    """Paths inside a state directory (see the module docstring)."""

    root: Path

    @classmethod
    def at(cls, root: os.PathLike[str] | str) -> StatePaths:
        """Return the layout rooted at ``root`` (made absolute, not created)."""
        return cls(Path(root).expanduser().resolve())

    @property
    def ca_cert(self) -> Path:
        """The root CA certificate (PEM)."""
        return self.root / "ca" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The root CA private key (PEM, mode 0600)."""
        return self.root / "ca" / "ca.key"

    @property
    def server_cert(self) -> Path:
        """The broker's TLS server certificate."""
        return self.root / "server" / "server.pem"

    @property
    def server_key(self) -> Path:
        """The broker's TLS server key."""
        return self.root / "server" / "server.key"

    @property
    def service_cert(self) -> Path:
        """Certificate of the privileged identity used by the stub's services."""
        return self.root / "service" / "service.pem"

    @property
    def service_key(self) -> Path:
        """Key of the privileged identity used by the stub's services."""
        return self.root / "service" / "service.key"

    @property
    def registry_db(self) -> Path:
        """The SQLite registry database."""
        return self.root / "registry.sqlite"

    @property
    def broker_dir(self) -> Path:
        """Directory of broker configuration and snapshots."""
        return self.root / "broker"

    @property
    def registry_snapshot(self) -> Path:
        """Tab-separated registry snapshot the brokers read (see cloud_stubs._snapshot)."""
        return self.broker_dir / "registry.tsv"

    @property
    def policy_file(self) -> Path:
        """Tab-separated policy statements the brokers read (see cloud_stubs._policy)."""
        return self.broker_dir / "policies.tsv"

    @property
    def endpoint_file(self) -> Path:
        """``endpoint.json``: host, port, ca_file, broker; present while ``up`` runs."""
        return self.root / "endpoint.json"

    def thing_dir(self, thing_name: str) -> Path:
        """Directory holding a thing's certificate and key."""
        return self.root / "things" / thing_name

    def claim_dir(self, name: str) -> Path:
        """Directory holding a claim certificate and key."""
        return self.root / "claims" / name
