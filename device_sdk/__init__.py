"""device_sdk package."""
