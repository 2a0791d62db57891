"""A contract harness standing in for SD-WebUI's ``modules`` package (see ../README.md)."""
