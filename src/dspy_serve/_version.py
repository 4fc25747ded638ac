"""The installed package's version, looked up once (the one answer for OpenAPI, MCP, images)."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["VERSION"]

try:
    VERSION = version("dspy-serve")
except PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0.0.0"
