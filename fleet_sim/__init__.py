"""fleet_sim: the fleet simulator built on device_sdk (not implemented yet; see the issue tracker)."""
