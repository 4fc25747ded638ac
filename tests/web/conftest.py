"""Fixtures the playground's browser tests share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.browser import browser
from tests.support.settings import FAKE_KEY


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium for a test module's pages."""
    with browser() as launched:
        yield launched


@pytest.fixture(scope="module")
def provider_env() -> Iterator[None]:
    """The provider's key, for a module-scoped server on the fake LM."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", FAKE_KEY)
        yield
