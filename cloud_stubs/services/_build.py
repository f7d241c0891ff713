"""Assemble the stub's services for a state directory."""

from __future__ import annotations

from certs import CertificateAuthority
from cloud_stubs._paths import StatePaths
from cloud_stubs.commands._service import CommandsService
from cloud_stubs.jobs._service import JobsService
from cloud_stubs.provisioning._service import ProvisioningService
from cloud_stubs.services._runtime import Service
from cloud_stubs.shadow._service import ShadowService

__all__ = ["build_services"]


def build_services(paths: StatePaths, ca: CertificateAuthority) -> list[Service]:
    """Every service the local IoT Core runs, in dispatch order."""
    return [
        ShadowService(paths),
        JobsService(paths),
        ProvisioningService(paths, ca),
        CommandsService(paths),
    ]
