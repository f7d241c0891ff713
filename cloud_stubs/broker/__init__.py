"""cloud_stubs/broker package."""
