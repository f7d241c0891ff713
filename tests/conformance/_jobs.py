"""Creating jobs from tests through the stub's jobs control plane."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cloud_stubs import LocalIoTCore


async def create_job(
    cloud: LocalIoTCore, job_id: str, things: Sequence[str], document: dict[str, Any]
) -> None:
    """CreateJob (snapshot) targeting ``things``; its notifications are out on return."""
    await cloud.jobs_control("create", job_id=job_id, things=list(things), document=document)
