"""``ShadowClient``: get / update / delete one classic or named shadow, and its event streams.

Every request goes through a :class:`~device_sdk.RequestChannel` (``clientToken``
correlation, no durable outbox: a stale shadow request is never replayed after a restart).
Rejections map onto the SDK's exception tree::

    …/rejected {"code": 409, ...}  -> VersionConflictError (code 409)
    …/rejected {"code": N, ...}    -> RejectedError (code N, the numeric shadow code)
    no answer in time              -> RequestTimeoutError

A missing shadow is a ``RejectedError`` with ``code == 404`` from :meth:`ShadowClient.get`
and :meth:`ShadowClient.delete`; :meth:`ShadowClient.get_or_none` returns ``None`` instead.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from device_sdk._exceptions import ClosedError, RejectedError, VersionConflictError
from device_sdk._request import RequestChannel
from device_sdk.shadow._model import (
    ShadowDeleteResult,
    ShadowDelta,
    ShadowDocument,
    ShadowDocuments,
    ShadowUpdateResult,
)
from device_sdk.shadow._stream import EventStream
from device_sdk.shadow._topics import ShadowTopics

if TYPE_CHECKING:
    from device_sdk._client import DeviceClient
    from device_sdk._request import Response

__all__ = ["UNSET", "ShadowClient", "Unset"]

NOT_FOUND = 404
CONFLICT = 409


class Unset(enum.Enum):
    """Type of :data:`UNSET`: "leave this section alone" (distinct from ``None`` = ``null``)."""

    UNSET = "UNSET"


UNSET: Final = Unset.UNSET

Section = Mapping[str, Any] | None | Unset
"""A state section for an update: a patch, ``None`` (JSON ``null``: delete the section),
or :data:`UNSET` (not sent)."""


def rejected_error(response: Response) -> RejectedError:
    """The exception for a shadow ``…/rejected`` answer (409 -> VersionConflictError)."""
    body = response.body
    raw = body.get("code")
    code: int | str = raw if isinstance(raw, int) and not isinstance(raw, bool) else str(raw)
    message = str(body.get("message", ""))
    token = body.get("clientToken")
    token = token if isinstance(token, str) else None
    if code == CONFLICT:
        return VersionConflictError(code, message, token)
    return RejectedError(code, message, token)


class ShadowClient:
    """One shadow of the device's thing: classic (``name=None``) or named.

    Use as ``async with ShadowClient(device) as shadow:``::

        doc = await shadow.get_or_none()
        await shadow.update(reported={"temp": 21.5})
        async with shadow.deltas() as deltas:
            async for delta in deltas:
                ...

    Args:
        device: A :class:`~device_sdk.DeviceClient` (entered before this client is used).
        name: Named shadow, or ``None`` for the classic shadow.
        channel: A shared, entered :class:`~device_sdk.RequestChannel`; by default the
            client opens (and closes) its own.
        timeout_s: Request timeout when the client opens its own channel.
    """

    def __init__(
        self,
        device: DeviceClient,
        *,
        name: str | None = None,
        channel: RequestChannel | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._device = device
        self.topics = ShadowTopics(device.thing_name, name)
        self._shared_channel = channel
        self._timeout = timeout_s
        self._stack: contextlib.AsyncExitStack | None = None
        self._channel: RequestChannel | None = channel
        self._log = logging.getLogger(__name__)

    @property
    def name(self) -> str | None:
        """The shadow name (``None``: classic shadow)."""
        return self.topics.shadow_name

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("ShadowClient is already entered")
        stack = contextlib.AsyncExitStack()
        if self._shared_channel is None:
            self._channel = await stack.enter_async_context(
                RequestChannel(self._device, timeout_s=self._timeout)
            )
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)
        self._channel = self._shared_channel

    async def _request(self, topic: str, body: dict[str, Any]) -> Response:
        if self._channel is None:
            raise ClosedError("use 'async with ShadowClient(device)' (or pass an entered channel)")
        response = await self._channel.request(topic, body)
        if not response.accepted:
            raise rejected_error(response)
        return response

    async def get(self) -> ShadowDocument:
        """The whole document (state with delta, metadata, version).

        Raises:
            RejectedError: ``code == 404`` when the shadow does not exist, or another code.
            RequestTimeoutError: No answer in time.
        """
        response = await self._request(self.topics.get, {})
        return ShadowDocument.model_validate(response.body)

    async def get_or_none(self) -> ShadowDocument | None:
        """Like :meth:`get`, but ``None`` when the shadow does not exist."""
        try:
            return await self.get()
        except RejectedError as exc:
            if exc.code == NOT_FOUND:
                return None
            raise

    async def update(
        self,
        *,
        desired: Section = UNSET,
        reported: Section = UNSET,
        version: int | None = None,
    ) -> ShadowUpdateResult:
        """Merge patches into ``desired`` and/or ``reported``.

        In a patch, a ``None`` value deletes that key; a section given as ``None`` deletes
        the whole section; :data:`UNSET` sections are not sent.

        Args:
            desired: Patch of the desired section.
            reported: Patch of the reported section.
            version: Apply only if the document's version is exactly this (optimistic lock).

        Raises:
            VersionConflictError: ``version`` is not the current version (code 409).
            RejectedError: Another rejection (400 bad document, 413 too large, ...).
            RequestTimeoutError: No answer in time (the update may still have been applied).
        """
        state: dict[str, Any] = {}
        if not isinstance(desired, Unset):
            state["desired"] = None if desired is None else dict(desired)
        if not isinstance(reported, Unset):
            state["reported"] = None if reported is None else dict(reported)
        if not state:
            raise ValueError("update needs desired= and/or reported=")
        body: dict[str, Any] = {"state": state}
        if version is not None:
            body["version"] = version
        response = await self._request(self.topics.update, body)
        return ShadowUpdateResult.model_validate(response.body)

    async def delete(self) -> ShadowDeleteResult:
        """Delete the shadow (its version counter carries on).

        Raises:
            RejectedError: ``code == 404`` when the shadow does not exist, or another code.
            RequestTimeoutError: No answer in time.
        """
        response = await self._request(self.topics.delete, {})
        return ShadowDeleteResult.model_validate(response.body)

    def deltas(self, *, max_buffer: int = 100) -> EventStream[ShadowDelta]:
        """``…/update/delta`` events; enter with ``async with``, then ``async for``.

        Malformed payloads are logged and skipped (see ``statistics().malformed``).
        """
        return EventStream(
            self._device,
            self.topics.update_delta,
            ShadowDelta.model_validate_json,
            max_buffer=max_buffer,
            logger=self._log,
        )

    def documents(self, *, max_buffer: int = 100) -> EventStream[ShadowDocuments]:
        """``…/update/documents`` events (previous/current snapshots); ``async with`` first."""
        return EventStream(
            self._device,
            self.topics.update_documents,
            ShadowDocuments.model_validate_json,
            max_buffer=max_buffer,
            logger=self._log,
        )
