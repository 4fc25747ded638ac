"""The completion webhook: the job's status document POSTed to the URL the job named, signed
with HMAC-SHA256 (``X-DSPy-Serve-Signature: sha256=HEX`` over the exact body bytes, with
``job_webhook_secret``), retried with exponential backoff (1 s, 2 s, 4 s, ...) up to
``job_webhook_retries`` times on a connection error or a status other than 2xx."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

import httpx

from dspy_serve.jobs.documents import status_of
from dspy_serve.settings import ServeSettings

__all__ = ["SIGNATURE_HEADER", "deliver", "sign"]

logger = logging.getLogger("dspy_serve")

SIGNATURE_HEADER = "X-DSPy-Serve-Signature"
_TIMEOUT = 10.0


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def deliver(settings: ServeSettings, job: dict[str, Any], *, first_delay: float = 1.0) -> bool:
    """POST the finished job's status to its webhook; True once a 2xx answered."""
    url, secret = job["webhook"], settings.job_webhook_secret
    if not url or secret is None:
        return False
    body = json.dumps(status_of(job), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret.get_secret_value(), body)}
    delay = first_delay
    async with httpx.AsyncClient(timeout=_TIMEOUT, follow_redirects=False) as client:
        for attempt in range(settings.job_webhook_retries + 1):
            try:
                answer = await client.post(url, content=body, headers=headers)
                if 200 <= answer.status_code < 300:
                    return True
                why = f"status {answer.status_code}"
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            if attempt < settings.job_webhook_retries:
                logger.info("jobs: webhook of job %s failed (%s); retrying in %g s", job["id"], why, delay)
                await asyncio.sleep(delay)
                delay *= 2
    logger.warning("jobs: webhook of job %s not delivered", job["id"])
    return False
