"""Feedback tokens: an expiring HMAC signature over (program, call id), returned with a call's
answer, that lets whoever holds it (a browser, without the API key) rate that one call.

Stateless: any worker or replica holding the same secret verifies it, with nothing shared.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from dspy_serve.errors import Unauthorized

__all__ = ["mint_token", "verify_token"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode("ascii"), hashlib.sha256).digest())


def mint_token(secret: str, program: str, call_id: str, ttl: float, *, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl)
    payload = _b64(json.dumps({"p": program, "c": call_id, "e": expires}, separators=(",", ":")).encode())
    return f"{payload}.{_signature(secret, payload)}"


def verify_token(secret: str, token: str, program: str, *, now: float | None = None) -> str:
    """The call id the token lets its holder rate; Unauthorized when it is forged, for another
    program, or expired."""
    payload, dot, signature = token.partition(".")
    if not dot or not hmac.compare_digest(_signature(secret, payload), signature):
        raise Unauthorized("The feedback token is not valid.")
    try:
        claims = json.loads(_unb64(payload))
        call_id, expires, for_program = str(claims["c"]), float(claims["e"]), claims["p"]
    except (ValueError, KeyError, TypeError):
        raise Unauthorized("The feedback token is not valid.") from None
    if for_program != program:
        raise Unauthorized("The feedback token is for another program.")
    if (time.time() if now is None else now) > expires:
        raise Unauthorized("The feedback token has expired: rate the call with the API key instead.")
    return call_id
