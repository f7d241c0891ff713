"""Device Shadow: request/response client, event streams and a persisted two-way sync.

:class:`ShadowClient` is the thin request layer (``get``/``update``/``delete`` plus
``deltas()``/``documents()`` streams); :class:`ShadowSync` keeps a local copy in step with the
cloud across reconnects and restarts and applies desired changes through a handler or the
:meth:`ShadowSync.changes` stream::

    async with DeviceClient(identity, endpoint) as device:
        async with ShadowSync(device, store_path="shadow.json", handler=apply) as sync:
            await sync.wait_synced()
            ...
"""

from device_sdk.shadow._client import UNSET, ShadowClient, Unset
from device_sdk.shadow._model import (
    ShadowDeleteResult,
    ShadowDelta,
    ShadowDocument,
    ShadowDocuments,
    ShadowMetadata,
    ShadowSnapshot,
    ShadowState,
    ShadowUpdateResult,
)
from device_sdk.shadow._stream import BufferedStream, EventStream, EventStreamStatistics
from device_sdk.shadow._sync import (
    ReportedPatch,
    ShadowChange,
    ShadowHandler,
    ShadowSync,
    ShadowSyncStatistics,
)
from device_sdk.shadow._topics import ShadowTopics, shadow_topics

__all__ = [
    "UNSET",
    "BufferedStream",
    "EventStream",
    "EventStreamStatistics",
    "ReportedPatch",
    "ShadowChange",
    "ShadowClient",
    "ShadowDeleteResult",
    "ShadowDelta",
    "ShadowDocument",
    "ShadowDocuments",
    "ShadowHandler",
    "ShadowMetadata",
    "ShadowSnapshot",
    "ShadowState",
    "ShadowSync",
    "ShadowSyncStatistics",
    "ShadowTopics",
    "ShadowUpdateResult",
    "Unset",
    "shadow_topics",
]
