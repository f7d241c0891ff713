"""cloud_stubs package."""
