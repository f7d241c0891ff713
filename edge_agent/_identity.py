"""The device's identity and endpoint: from files, or by fleet provisioning on first boot.

First boot: ``[identity]`` names certificate and key files that do not exist yet and
``[provisioning]`` names a claim certificate and a template. The agent then runs
:func:`device_sdk.provisioning.provision_by_claim` (the key pair is generated here and only a
CSR leaves the device), stores the certificate and key where ``[identity]`` says, and records
the thing name the template registered in ``<state_dir>/identity.json``. Later boots find the
files and reuse them; the claim is not used again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_sdk import (
    ConnectionOptions,
    DeviceIdentity,
    Endpoint,
    FileCredentials,
)
from edge_agent._errors import IdentityError

if TYPE_CHECKING:
    from edge_agent._config import AgentConfig

__all__ = [
    "IDENTITY_RECORD",
    "connection_options",
    "greengrass_identity",
    "load_endpoint",
    "load_identity",
    "provision",
]

IDENTITY_RECORD = "identity.json"
CN_CACHE = "identity-cn.json"
_log = logging.getLogger(__name__)


def load_endpoint(config: AgentConfig) -> Endpoint:
    """The endpoint from ``endpoint.file`` (read now) or ``endpoint.host``.

    Raises:
        IdentityError: The endpoint file cannot be read.
    """
    ep = config.endpoint
    if ep is None:
        raise IdentityError("no [endpoint] configured (needed in mqtt mode)")
    if ep.file is not None:
        try:
            return Endpoint.from_json_file(ep.file)
        except (OSError, ValueError) as exc:
            raise IdentityError(
                f"endpoint.file = {str(ep.file)!r}: cannot read it: {exc}; fix: point it at an "
                "endpoint.json with host, port and ca_file"
            ) from exc
    assert ep.host is not None  # noqa: S101 - the config validator guarantees one of the two
    return Endpoint(ep.host, ep.port, ep.ca_file, ep.alpn)


def connection_options(config: AgentConfig) -> ConnectionOptions:
    """The MQTT connection options of ``[transport]``."""
    t = config.transport
    return ConnectionOptions(
        keepalive_s=t.keepalive_s,
        ping_timeout_s=min(30.0, t.keepalive_s - 2),
        connect_timeout_s=t.connect_timeout_s,
        ack_timeout_s=max(10.0, t.connect_timeout_s),
        mqtt_version=t.mqtt_version,
    )


def _recorded_thing_name(config: AgentConfig) -> str | None:
    try:
        data = json.loads((config.state_dir / IDENTITY_RECORD).read_text())
    except (OSError, ValueError):
        return None
    name = data.get("thing_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else None


def identity_files_exist(config: AgentConfig) -> bool:
    """Whether ``[identity]``'s certificate and key exist."""
    ident = config.identity
    return ident is not None and ident.cert_file.is_file() and ident.key_file.is_file()


def load_identity(config: AgentConfig) -> DeviceIdentity:
    """The device identity from ``[identity]`` (thing name: configured, provisioned, or CN).

    Raises:
        IdentityError: The files are missing (and not provisioned yet) or unreadable.
    """
    ident = config.identity
    if ident is None:
        raise IdentityError("no [identity] configured")
    if not identity_files_exist(config):
        hint = (
            "run 'edge-agent provision' or start the agent to provision by claim"
            if config.provisioning is not None
            else "copy the device certificate and key there, or configure [provisioning]"
        )
        raise IdentityError(
            f"identity.cert_file = {str(ident.cert_file)!r} / identity.key_file = "
            f"{str(ident.key_file)!r}: not found; fix: {hint}"
        )
    ca = config.endpoint.ca_file if config.endpoint is not None else None
    name = ident.thing_name or _recorded_thing_name(config)
    digest = None
    if name is None:
        digest = _file_digest(ident.cert_file)
        name = _cached_common_name(config, digest)
    try:
        identity = DeviceIdentity.from_files(ident.cert_file, ident.key_file, ca, thing_name=name)
    except (OSError, ValueError) as exc:
        raise IdentityError(
            f"identity.cert_file = {str(ident.cert_file)!r}: unusable certificate: {exc}; "
            "fix: set identity.thing_name or use a certificate whose subject CN is the thing name"
        ) from exc
    if name is None and digest is not None:
        _cache_common_name(config, digest, identity.thing_name)
    return identity


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _cached_common_name(config: AgentConfig, digest: str | None) -> str | None:
    """The CN read from this very certificate at an earlier start (parsing needs X.509 code)."""
    if digest is None:
        return None
    try:
        data = json.loads((config.state_dir / CN_CACHE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("cert_sha256") != digest:
        return None
    name = data.get("thing_name")
    return name if isinstance(name, str) and name else None


def _cache_common_name(config: AgentConfig, digest: str, thing_name: str) -> None:
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = config.state_dir / (CN_CACHE + ".tmp")
        tmp.write_text(json.dumps({"cert_sha256": digest, "thing_name": thing_name}) + "\n")
        tmp.replace(config.state_dir / CN_CACHE)
    except OSError as exc:
        _log.debug("cannot cache the certificate's CN: %s", exc)


def greengrass_identity(config: AgentConfig) -> DeviceIdentity:
    """A stand-in identity for Greengrass mode, where the nucleus holds the certificate.

    The thing name is ``transport.thing_name``, else ``$AWS_IOT_THING_NAME`` (which the
    nucleus sets for every component).

    Raises:
        IdentityError: Neither is set.
    """
    name = config.transport.thing_name or os.environ.get("AWS_IOT_THING_NAME")
    if not name:
        raise IdentityError(
            'transport.mode = "greengrass": no thing name; fix: run as a Greengrass component '
            "(it sets AWS_IOT_THING_NAME) or set transport.thing_name"
        )
    nowhere = Path(os.devnull)
    return DeviceIdentity(FileCredentials(nowhere, nowhere), name, name)


async def provision(config: AgentConfig, *, force: bool = False) -> DeviceIdentity:
    """Provision by claim if the identity files are missing (or ``force``); return the identity.

    Raises:
        IdentityError: ``[provisioning]`` is not configured, or the claim files are missing.
        DeviceSdkError: Provisioning failed (``ProvisioningError``, ``RequestTimeoutError``,
            ``AuthorizationError`` for a refused claim).
    """
    if identity_files_exist(config) and not force:
        return load_identity(config)
    prov, ident = config.provisioning, config.identity
    if prov is None or ident is None:
        return load_identity(config)  # raises with the fix
    for key, path in (
        ("claim_cert_file", prov.claim_cert_file),
        ("claim_key_file", prov.claim_key_file),
    ):
        if not path.is_file():
            raise IdentityError(
                f"provisioning.{key} = {str(path)!r}: not found; fix: install the claim "
                "certificate and key shipped with the device image"
            )
    from device_sdk.provisioning import provision_by_claim  # noqa: PLC0415 - first boot only

    endpoint = load_endpoint(config)
    claim = DeviceIdentity.from_files(prov.claim_cert_file, prov.claim_key_file, endpoint.ca_file)
    _log.info("provisioning by claim with template %s", prov.template_name)
    result = await provision_by_claim(
        claim,
        endpoint,
        template_name=prov.template_name,
        parameters=prov.parameters,
        cert_file=ident.cert_file,
        key_file=ident.key_file,
        overwrite=force,
        transport=config.transport.kind,
        options=dataclasses.replace(connection_options(config), client_id=None),
        timeout_s=prov.timeout_s,
    )
    record: dict[str, Any] = {
        "thing_name": ident.thing_name or result.thing_name,
        "certificate_id": result.certificate_id,
        "device_configuration": result.device_configuration,
    }
    config.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = config.state_dir / (IDENTITY_RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(config.state_dir / IDENTITY_RECORD)
    _log.info("provisioned as thing %s", record["thing_name"])
    return load_identity(config)
