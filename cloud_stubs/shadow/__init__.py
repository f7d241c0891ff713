"""Pure (sans-I/O) Device Shadow rules for the local IoT Core emulator.

See :mod:`cloud_stubs.shadow._core` for how an I/O shell drives the engine.
"""

from cloud_stubs.shadow._core import (
    ARRAY_NULL_MESSAGE,
    CODES_WITHOUT_TIMESTAMP,
    DELETED_VERSION_RETENTION_SECONDS,
    MAX_CLIENT_TOKEN_BYTES,
    STRICT_GET_DELETE_PAYLOAD,
    VERSION_CHECKED_ON_CREATE,
    ShadowDocument,
    ShadowMessage,
    ShadowOutcome,
    document_from_state,
    handle_delete,
    handle_get,
    handle_request,
    handle_update,
)
from cloud_stubs.shadow._merge import (
    MAX_NESTING_DEPTH,
    MAX_STATE_BYTES,
    JsonObject,
    compute_delta,
    json_equal,
    merge,
    nesting_depth,
    state_size,
)
from cloud_stubs.shadow._topics import (
    ShadowOperation,
    ShadowRequestTopic,
    is_valid_shadow_name,
    is_valid_thing_name,
    parse_shadow_topic,
    shadow_prefix,
    shadow_topic,
)

__all__ = [
    "ARRAY_NULL_MESSAGE",
    "CODES_WITHOUT_TIMESTAMP",
    "DELETED_VERSION_RETENTION_SECONDS",
    "MAX_CLIENT_TOKEN_BYTES",
    "MAX_NESTING_DEPTH",
    "MAX_STATE_BYTES",
    "STRICT_GET_DELETE_PAYLOAD",
    "VERSION_CHECKED_ON_CREATE",
    "JsonObject",
    "ShadowDocument",
    "ShadowMessage",
    "ShadowOperation",
    "ShadowOutcome",
    "ShadowRequestTopic",
    "compute_delta",
    "document_from_state",
    "handle_delete",
    "handle_get",
    "handle_request",
    "handle_update",
    "is_valid_shadow_name",
    "is_valid_thing_name",
    "json_equal",
    "merge",
    "nesting_depth",
    "parse_shadow_topic",
    "shadow_prefix",
    "shadow_topic",
    "state_size",
]
