"""Firmware for OTA: a signed image store and the HTTP(S) server devices download from.

::

    from cloud_stubs.firmware import FirmwareServer, FirmwareStore

    with FirmwareStore(paths) as store:                       # DIR/firmware/
        fw = store.upload(Path("image.bin"), version="1.4.0", device_type="robot-pi")
    async with FirmwareServer(paths, port=0) as server:       # HTTPS, stub CA
        url = server.url(fw.firmware_id, thing="robot-1")    # presigned, expires
        server.add_fault("drop_after:4096")                   # next request is cut
        print(server.totals(fw.firmware_id).status_206)

The ``ota/1`` job document (:func:`build_ota_document`) keeps the URL as an
``${aws:iot:s3-presigned-url:…}`` placeholder; the jobs service renders it on every delivery
with :class:`DocumentRenderer`. Contract and knobs: ``docs/ota_cloud.md``.
"""

from cloud_stubs.firmware._document import (
    OTA_SCHEMA,
    PRESIGNED_URL_PLACEHOLDER,
    DocumentRenderer,
    OtaJobDocument,
    OtaPolicy,
    artifact_placeholder,
    build_ota_document,
    render_document,
)
from cloud_stubs.firmware._errors import FirmwareError, FirmwareNotFoundError
from cloud_stubs.firmware._faults import FaultKind, FaultPlan, FaultRule, FaultSpec, plan_faults
from cloud_stubs.firmware._http import ByteRange, RangeNotSatisfiableError, parse_range
from cloud_stubs.firmware._paths import OtaPaths
from cloud_stubs.firmware._presign import DEFAULT_URL_TTL_S, Presigner, UrlVerdict
from cloud_stubs.firmware._server import FirmwareServer
from cloud_stubs.firmware._signing import SIG_ALG, ensure_signing_key, public_key_pem
from cloud_stubs.firmware._store import DownloadCounters, FirmwareManifest, FirmwareStore

__all__ = [
    "DEFAULT_URL_TTL_S",
    "OTA_SCHEMA",
    "PRESIGNED_URL_PLACEHOLDER",
    "SIG_ALG",
    "ByteRange",
    "DocumentRenderer",
    "DownloadCounters",
    "FaultKind",
    "FaultPlan",
    "FaultRule",
    "FaultSpec",
    "FirmwareError",
    "FirmwareManifest",
    "FirmwareNotFoundError",
    "FirmwareServer",
    "FirmwareStore",
    "OtaJobDocument",
    "OtaPaths",
    "OtaPolicy",
    "Presigner",
    "RangeNotSatisfiableError",
    "UrlVerdict",
    "artifact_placeholder",
    "build_ota_document",
    "ensure_signing_key",
    "parse_range",
    "plan_faults",
    "public_key_pem",
    "render_document",
]
