"""Layout of the OTA parts (firmware store, signing key, deployments) of a state directory.

They live next to the rest of the stub's state::

    DIR/
      signing/signing.key, signing.pub   code-signing key (ECDSA P-256, key 0600), first use
      firmware/firmware.sqlite           manifests, download counters, armed faults (SQLite, WAL)
      firmware/<id>/image.bin            uploaded images
      firmware/<id>/manifest.json        their manifests (also in SQLite)
      firmware/url.secret                HMAC key of the time-limited download URLs (0600)
      firmware/server.json               scheme, host, port, URL lifetime of the file server
      deployments.sqlite                 deployments and their batches
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud_stubs._paths import StatePaths

__all__ = ["OtaPaths"]


@dataclass(frozen=True)
class OtaPaths:
    """OTA paths inside a state directory (see the module docstring)."""

    state: StatePaths

    @classmethod
    def of(cls, state: StatePaths) -> OtaPaths:
        """The OTA layout of a state directory."""
        return cls(state)

    @property
    def signing_dir(self) -> Path:
        """Directory of the code-signing key."""
        return self.state.root / "signing"

    @property
    def signing_key(self) -> Path:
        """The code-signing private key (PEM, 0600)."""
        return self.signing_dir / "signing.key"

    @property
    def signing_pub(self) -> Path:
        """The code-signing public key (PEM SubjectPublicKeyInfo) devices trust."""
        return self.signing_dir / "signing.pub"

    @property
    def firmware_dir(self) -> Path:
        """Root of the firmware store."""
        return self.state.root / "firmware"

    @property
    def firmware_db(self) -> Path:
        """The firmware store's SQLite database."""
        return self.firmware_dir / "firmware.sqlite"

    def image_dir(self, firmware_id: str) -> Path:
        """Directory of one firmware image and its manifest."""
        return self.firmware_dir / firmware_id

    def image_file(self, firmware_id: str) -> Path:
        """The stored image of a firmware."""
        return self.image_dir(firmware_id) / "image.bin"

    @property
    def url_secret(self) -> Path:
        """HMAC key of the presigned download URLs (32 random bytes, 0600)."""
        return self.firmware_dir / "url.secret"

    @property
    def server_file(self) -> Path:
        """``server.json``: where the file server listens (rewritten on every start)."""
        return self.firmware_dir / "server.json"

    @property
    def deployments_db(self) -> Path:
        """The deployments database."""
        return self.state.root / "deployments.sqlite"
