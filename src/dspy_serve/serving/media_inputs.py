"""What a caller may send as a ``dspy.Image``, ``dspy.File`` or ``dspy.Audio`` input.

The media travel inside the request: a base64 ``data:`` URL (or raw base64 for audio), or, for
an image, an ``http(s)://`` or ``gs://`` URL handed to the LM provider. The server never reads
a local path or a ``file://`` URL, and never downloads a URL for a caller: DSPy's ``download``
and ``verify`` switches are refused like any unknown key, and so is a ``file_id`` that is a URL
(which LiteLLM would download to inline it) (issue #22). Everything else a provider
would refuse only when the call is made (a broken data URL, bytes that are not base64) is
refused here, at validation, as a 422 with the field's path, before any LM call.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

import dspy
from pydantic import BaseModel, ConfigDict, ValidatorFunctionWrapHandler, WrapValidator, create_model
from pydantic_core import PydanticCustomError

__all__ = ["MEDIA_TYPES", "media_input"]

MEDIA_TYPES: tuple[type[dspy.Type], ...] = (dspy.Image, dspy.File, dspy.Audio)

# data:<type>/<subtype>[;param=value]*;base64,<payload>
_DATA_URL = re.compile(
    r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?:;[\w.+-]+=[^;,]*)*;base64,(?P<payload>.*)", re.DOTALL
)
_REMOTE_IMAGE_SCHEMES = ("http", "https", "gs")  # fetched by the LM provider, never by the server

_EXPECTED: dict[type[dspy.Type], str] = {
    dspy.Image: "an image is {'url': an http(s) or gs URL, or a base64 data URL}; local paths are not read",
    dspy.File: "a file is {'file_data': a base64 data URL, 'file_id', 'filename'}; local paths are not read",
    dspy.Audio: "audio is {'data': base64, 'audio_format': 'wav', 'mp3', ...}",
}


def media_input(cls: type[dspy.Type]) -> Any:
    """The annotation an input of DSPy media type ``cls`` validates with."""
    return Annotated[cls, WrapValidator(_checked(cls))]


def _checked(cls: type[dspy.Type]) -> Any:
    shape = _shape(cls)

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, dict):
            shape.model_validate(value)  # unknown keys (download, verify, ...) by their own path
        try:
            media = handler(value)
        except (TypeError, ValueError) as exc:  # DSPy's own constructor refused it (its message
            raise _invalid(_EXPECTED[cls]) from exc  # may quote the input: ours never does)
        _check_source(media)
        return media

    return validate


def _shape(cls: type[dspy.Type]) -> type[BaseModel]:
    """A model of ``cls``'s fields that forbids any other key, for the field path of a stray one."""
    fields: dict[str, Any] = {name: (Any, None) for name in cls.model_fields}
    return create_model(f"{cls.__name__}Keys", __config__=ConfigDict(extra="forbid"), **fields)


def _check_source(media: Any) -> None:
    if isinstance(media, dspy.Image):
        if urlsplit(media.url).scheme.lower() in _REMOTE_IMAGE_SCHEMES:
            return
        _check_data_url(media.url, "an image", "image/")
    elif isinstance(media, dspy.File):
        if media.file_data is not None:
            _check_data_url(media.file_data, "file_data", "")
        if media.file_id is not None and _looks_like_url(media.file_id):
            # LiteLLM downloads a file_id that is a URL, in this process, to inline it.
            raise _invalid("file_id must be a provider's file id, not a URL")
    elif isinstance(media, dspy.Audio) and not _is_base64(media.data):
        raise _invalid("audio data must be base64")


def _check_data_url(value: str, what: str, media_type: str) -> None:
    match = _DATA_URL.fullmatch(value)
    if match is None:
        raise _invalid(f"{what} must be a base64 data URL (data:<type>;base64,<data>)")
    if not match["type"].lower().startswith(media_type):
        raise _invalid(f"{what} must be a data URL of type {media_type}*")
    if not _is_base64(match["payload"]):
        raise _invalid(f"the data of {what} is not valid base64")


def _looks_like_url(value: str) -> bool:
    return "://" in value or value.lower().startswith("www.")


def _is_base64(payload: str) -> bool:
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(payload)


def _invalid(message: str) -> PydanticCustomError:
    # The message never holds the input: it may be megabytes, or a path the caller probes with.
    return PydanticCustomError("invalid_media", message)
