"""A real browser for page tests: Playwright driving Debian's chromium, offline.

Playwright's own browser download cannot reach the internet here, so the system ``chromium``
is launched through ``executable_path``. Nothing but the server under test is reachable: a dead
proxy for everything, and a route that aborts any request to another origin.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: CI must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return binary


@contextmanager
def browser() -> Iterator[Any]:
    """One offline chromium (a Playwright ``Browser``), closed on exit."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", "--proxy-server=127.0.0.1:9"]
        )
        try:
            yield launched
        finally:
            launched.close()


def offline_page(browser: Any, base_url: str, **context: Any) -> Any:
    """A page in a fresh context (its own storage) that can reach ``base_url`` and nothing else."""
    page = browser.new_context(**context).new_page()
    page.route(
        "**/*",
        lambda route: route.continue_() if route.request.url.startswith(base_url) else route.abort(),
    )
    return page
