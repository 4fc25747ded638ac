"""dspy-serve: serve any DSPy program as a typed, truly async HTTP API."""

from dspy_serve.app import create_app, install_error_handlers, router
from dspy_serve.client import Client, ProxyError, RemoteProgram
from dspy_serve.errors import (
    BadOverride,
    ClientCancelled,
    ContextTooLong,
    Forbidden,
    InvalidInput,
    ModelNotAllowed,
    Overloaded,
    ProgramNotFound,
    RequestTimeout,
    ServeError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamRateLimited,
)
from dspy_serve.loader import ArtifactError, TargetError
from dspy_serve.schema import SchemaError
from dspy_serve.settings import ServeSettings, load_settings

__all__ = [
    "ArtifactError",
    "BadOverride",
    "Client",
    "ClientCancelled",
    "ContextTooLong",
    "Forbidden",
    "InvalidInput",
    "ModelNotAllowed",
    "Overloaded",
    "ProgramNotFound",
    "ProxyError",
    "RemoteProgram",
    "RequestTimeout",
    "SchemaError",
    "ServeError",
    "ServeSettings",
    "ServiceUnavailable",
    "TargetError",
    "UpstreamError",
    "UpstreamRateLimited",
    "create_app",
    "install_error_handlers",
    "load_settings",
    "router",
]
