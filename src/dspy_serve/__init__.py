"""dspy-serve: serve any DSPy program as a typed, truly async HTTP API."""

from dspy_serve._version import VERSION as __version__
from dspy_serve.app import create_app, install_error_handlers, router
from dspy_serve.client import Client, RemoteProgram
from dspy_serve.errors import (
    BadOverride,
    ClientCancelled,
    ContextTooLong,
    Forbidden,
    HTTPProblem,
    InvalidInput,
    InvalidProgramOutput,
    ModelNotAllowed,
    Overloaded,
    ProgramNotFound,
    PromptsNotExposed,
    ProxyError,
    RateLimited,
    RequestTimeout,
    ServeError,
    ServiceUnavailable,
    TraceNotExposed,
    Unauthorized,
    UnsupportedMediaType,
    UnsupportedRequest,
    UpstreamError,
    UpstreamRateLimited,
)
from dspy_serve.serving.loader import ArtifactError, TargetError
from dspy_serve.serving.schema import SchemaError
from dspy_serve.settings import ServeSettings, load_settings

__all__ = [
    "ArtifactError",
    "BadOverride",
    "Client",
    "ClientCancelled",
    "ContextTooLong",
    "Forbidden",
    "HTTPProblem",
    "InvalidInput",
    "InvalidProgramOutput",
    "ModelNotAllowed",
    "Overloaded",
    "ProgramNotFound",
    "PromptsNotExposed",
    "ProxyError",
    "RateLimited",
    "RemoteProgram",
    "RequestTimeout",
    "SchemaError",
    "ServeError",
    "ServeSettings",
    "ServiceUnavailable",
    "TargetError",
    "TraceNotExposed",
    "Unauthorized",
    "UnsupportedMediaType",
    "UnsupportedRequest",
    "UpstreamError",
    "UpstreamRateLimited",
    "__version__",
    "create_app",
    "install_error_handlers",
    "load_settings",
    "router",
]
