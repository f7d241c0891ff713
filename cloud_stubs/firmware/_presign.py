r"""Time-limited download URLs, in the manner of S3 presigned URLs.

A URL is ``<base>/firmware/<id>?[thing=<thing>&]expires=<epoch s>&sig=<hex>`` where
``sig = HMAC-SHA256(secret, "GET\\n/firmware/<id>\\n<thing>\\n<expires>")`` (``thing`` empty
when absent). The secret is 32 random bytes per state directory (``DIR/firmware/url.secret``,
0600), so URLs survive restarts of the stub until they expire. ``thing`` only labels the
download counters; the URL is as good in any device's hands, like a presigned S3 URL.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode

from certs import CertsError, write_private_key
from cloud_stubs.firmware._paths import OtaPaths

__all__ = [
    "DEFAULT_URL_TTL_S",
    "Presigner",
    "UrlVerdict",
    "ensure_url_secret",
    "firmware_path",
]

#: Lifetime of a rendered URL unless configured (presignedUrlConfig.expiresInSec's default).
DEFAULT_URL_TTL_S: Final = 3600


def firmware_path(firmware_id: str) -> str:
    """The URL path a firmware is served under."""
    return f"/firmware/{firmware_id}"


def ensure_url_secret(paths: OtaPaths) -> bytes:
    """The URL-signing secret of a state directory, created (0600) on first use."""
    path = paths.url_secret
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(CertsError):  # created concurrently: read theirs
            write_private_key(path, secrets.token_hex(32).encode() + b"\n")
    return bytes.fromhex(path.read_text().strip())


class UrlVerdict(enum.Enum):
    """Outcome of checking a presigned URL's query."""

    OK = "ok"
    MISSING = "missing"  # no expires/sig: not a presigned URL
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Presigner:
    """Makes and checks presigned URLs (pure; the secret and base URL are given).

    Attributes:
        base_url: ``scheme://host:port`` of the file server.
        secret: The HMAC key.
        ttl_s: Lifetime of the URLs :meth:`url` makes.
    """

    base_url: str
    secret: bytes
    ttl_s: int = DEFAULT_URL_TTL_S

    def _sig(self, path: str, thing: str, expires: int) -> str:
        msg = f"GET\n{path}\n{thing}\n{expires}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def url(self, firmware_id: str, now: float, *, thing: str | None = None) -> str:
        """A URL for ``firmware_id`` that expires ``ttl_s`` seconds after ``now``."""
        path = firmware_path(firmware_id)
        expires = int(now) + self.ttl_s
        query: dict[str, str] = {}
        if thing:
            query["thing"] = thing
        query["expires"] = str(expires)
        query["sig"] = self._sig(path, thing or "", expires)
        return f"{self.base_url}{path}?{urlencode(query)}"

    def check(self, path: str, query: dict[str, str], now: float) -> UrlVerdict:
        """Check the signature, then the expiry, of a request for ``path``."""
        raw_expires, sig = query.get("expires"), query.get("sig")
        if raw_expires is None or sig is None:
            return UrlVerdict.MISSING
        try:
            expires = int(raw_expires)
        except ValueError:
            return UrlVerdict.BAD_SIGNATURE
        want = self._sig(path, query.get("thing", ""), expires)
        if not hmac.compare_digest(want, sig.lower()):
            return UrlVerdict.BAD_SIGNATURE
        if now > expires:
            return UrlVerdict.EXPIRED
        return UrlVerdict.OK
