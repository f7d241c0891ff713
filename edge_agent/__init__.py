"""edge_agent: the device daemon built on device_sdk (not implemented yet; see the issue tracker)."""
