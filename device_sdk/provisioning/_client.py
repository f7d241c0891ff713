"""``provision_by_claim``: turn a shared claim certificate into the device's own identity.

The async shell around :func:`~device_sdk.provisioning._flow.provisioning_flow`: it connects
with the claim identity (under a unique client id, since many devices share one claim),
runs the two requests through a :class:`~device_sdk.RequestChannel` without correlation
tokens (provisioning answers carry none, §1.2), disconnects, and writes the permanent
certificate and key atomically with mode 0600. The caller then reconnects with
:meth:`ProvisionedIdentity.identity`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from certs import (
    CertsError,
    KeyType,
    create_csr,
    generate_private_key,
    private_key_to_pem,
    write_file_atomic,
    write_private_key,
)
from device_sdk._client import DeviceClient
from device_sdk._exceptions import ProvisioningError
from device_sdk._identity import DeviceIdentity, Endpoint
from device_sdk._request import RequestChannel
from device_sdk.provisioning._flow import FlowResult, provisioning_flow
from device_sdk.provisioning._model import ProvisioningMethod
from device_sdk.transport._base import ConnectionOptions, Transport
from device_sdk.transport._factory import TransportKind

__all__ = ["CERT_FILE_NAME", "KEY_FILE_NAME", "ProvisionedIdentity", "provision_by_claim"]

_log = logging.getLogger(__name__)

#: File names used inside ``out_dir``.
CERT_FILE_NAME = "cert.pem"
KEY_FILE_NAME = "key.pem"
_FILE_MODE = 0o600
_CLIENT_ID_PREFIX_MAX = 64


@dataclasses.dataclass(frozen=True, slots=True)
class ProvisionedIdentity:
    """The permanent identity fleet provisioning produced.

    Attributes:
        thing_name: The thing the template registered (``None`` if it registers none).
        cert_file: The new certificate (PEM, mode 0600).
        key_file: Its private key (PEM, mode 0600).
        certificate_id: The certificate's id (SHA-256 fingerprint, 64 hex digits).
        device_configuration: The template's ``DeviceConfiguration`` (string to string).
        ca_file: The CA bundle of the endpoint used, handed on to :meth:`identity`.
    """

    thing_name: str | None
    cert_file: Path
    key_file: Path
    certificate_id: str
    device_configuration: dict[str, str]
    ca_file: Path | None = None

    def identity(
        self, *, thing_name: str | None = None, client_id: str | None = None
    ) -> DeviceIdentity:
        """The :class:`~device_sdk.DeviceIdentity` to reconnect with (client id = thing name).

        Raises:
            ValueError: The template registered no thing and no ``thing_name`` was given.
        """
        name = thing_name or self.thing_name
        if name is None:
            raise ValueError("the provisioning template registered no thing: pass thing_name=")
        return DeviceIdentity.from_files(
            self.cert_file, self.key_file, self.ca_file, thing_name=name, client_id=client_id
        )


def _target_files(
    out_dir: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
) -> tuple[Path, Path]:
    if out_dir is not None:
        if cert_file is not None or key_file is not None:
            raise ValueError("give either out_dir or cert_file and key_file, not both")
        base = Path(out_dir)
        return base / CERT_FILE_NAME, base / KEY_FILE_NAME
    if cert_file is None or key_file is None:
        raise ValueError("give out_dir, or both cert_file and key_file")
    return Path(cert_file), Path(key_file)


def _claim_client_id(claim: DeviceIdentity) -> str:
    """A fresh client id per attempt: devices sharing a claim must not take each other over."""
    prefix = claim.thing_name.encode()[:_CLIENT_ID_PREFIX_MAX].decode(errors="ignore")
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def _make_csr(key_type: KeyType, common_name: str) -> tuple[bytes, bytes]:
    key = generate_private_key(key_type)
    return private_key_to_pem(key), create_csr(key, common_name)


def _write(result: FlowResult, key_pem: bytes, cert: Path, key: Path, *, overwrite: bool) -> None:
    for parent in {cert.parent, key.parent}:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The key first: a certificate on disk always has its key next to it.
    write_private_key(key, key_pem, overwrite=overwrite)
    write_file_atomic(cert, result.certificate_pem.encode(), mode=_FILE_MODE)


async def provision_by_claim(
    claim: DeviceIdentity,
    endpoint: Endpoint,
    *,
    template_name: str,
    parameters: Mapping[str, str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
    method: ProvisioningMethod | Literal["csr", "keys"] = ProvisioningMethod.CSR,
    key_type: KeyType = KeyType.EC,
    common_name: str = "iot-device",
    overwrite: bool = False,
    transport: TransportKind | Transport = "auto",
    options: ConnectionOptions | None = None,
    timeout_s: float = 30.0,
    logger: logging.Logger | None = None,
) -> ProvisionedIdentity:
    """Provision this device by claim and store its permanent certificate and key.

    Connects with ``claim`` under a unique client id (``<claim name>-<16 hex>``, unless
    ``options.client_id`` is set), gets a certificate, registers the thing with
    ``template_name`` and writes the files. Then reconnect with
    ``DeviceClient(result.identity(), endpoint)``.

    Args:
        claim: The claim identity (may only use the fleet-provisioning topics).
        endpoint: The IoT Core endpoint.
        template_name: The provisioning template.
        parameters: Template parameters (strings), e.g. ``{"SerialNumber": "0042"}``.
        out_dir: Directory for ``cert.pem`` and ``key.pem`` (created with mode 0700).
        cert_file: Certificate path (with ``key_file``, instead of ``out_dir``).
        key_file: Private-key path.
        method: ``"csr"`` (default: the key is generated here with
            :func:`certs.generate_private_key` and never sent) or ``"keys"`` (the service
            generates the key: CreateKeysAndCertificate).
        key_type: Key algorithm for the ``csr`` method.
        common_name: Subject CN of the CSR (IoT Core does not use it for the thing name).
        overwrite: Replace existing certificate/key files (otherwise refuse up front).
        transport: ``"auto"``, ``"crt"``, ``"paho"`` or a ready :class:`Transport`.
        options: Connection options for the claim connection.
        timeout_s: Time to wait for each answer.
        logger: Logger (defaults to this module's).

    Raises:
        ProvisioningRejectedError: The service rejected a step (``status_code``,
            ``error_code``, ``error_message``); a :class:`~device_sdk.ProvisioningError`.
        ProvisioningError: The target files exist, an answer was malformed, or they could
            not be written.
        RequestTimeoutError: No answer within ``timeout_s``.
        ConnectError: The claim identity could not connect (``AuthorizationError`` if refused).
        ValueError: Bad arguments (paths, template name).
    """
    log = logger or _log
    cert_path, key_path = _target_files(out_dir, cert_file, key_file)
    if not overwrite:
        existing = [str(p) for p in (cert_path, key_path) if p.exists()]
        if existing:
            raise ProvisioningError(
                f"refusing to overwrite {', '.join(existing)} (pass overwrite=True)"
            )
    how = ProvisioningMethod(method)
    key_pem: bytes | None = None
    csr_pem: bytes | None = None
    if how is ProvisioningMethod.CSR:
        try:
            key_pem, csr_pem = await asyncio.to_thread(_make_csr, key_type, common_name)
        except CertsError as exc:
            raise ProvisioningError(f"cannot create the CSR: {exc}") from exc
    flow = provisioning_flow(template_name, parameters or {}, csr_pem=csr_pem)
    opts = options or ConnectionOptions()
    if opts.client_id is None:
        opts = dataclasses.replace(opts, client_id=_claim_client_id(claim))
    device = DeviceClient(claim, endpoint, transport=transport, options=opts, logger=logger)
    async with device, RequestChannel(device, timeout_s=timeout_s) as channel:
        step = next(flow)
        while True:
            log.debug("provisioning: %s on %s", step.operation, step.topic)
            answer = await channel.request(step.topic, step.body, correlate=False)
            try:
                step = flow.send(answer)
            except StopIteration as done:
                result: FlowResult = done.value
                break
    if key_pem is None:
        if result.private_key_pem is None:  # pragma: no cover - the model requires it
            raise ProvisioningError("CreateKeysAndCertificate returned no private key")
        key_pem = result.private_key_pem.encode()
    try:
        await asyncio.to_thread(_write, result, key_pem, cert_path, key_path, overwrite=overwrite)
    except (CertsError, OSError) as exc:
        raise ProvisioningError(f"cannot store the new identity: {exc}") from exc
    log.info(
        "provisioned thing %s with certificate %s…",
        result.thing_name,
        result.certificate_id[:12],
    )
    return ProvisionedIdentity(
        thing_name=result.thing_name,
        cert_file=cert_path,
        key_file=key_path,
        certificate_id=result.certificate_id,
        device_configuration=result.device_configuration,
        ca_file=endpoint.ca_file,
    )
