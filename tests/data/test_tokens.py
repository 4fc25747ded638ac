"""Feedback tokens: stateless, expiring, bound to one program's call, unforgeable without the secret."""

from __future__ import annotations

import pytest

from dspy_serve.data.tokens import mint_token, verify_token
from dspy_serve.errors import Unauthorized


def test_a_token_names_its_call_until_it_expires() -> None:
    token = mint_token("s", "qa", "call-1", ttl=60, now=1000)
    assert verify_token("s", token, "qa", now=1059) == "call-1"
    with pytest.raises(Unauthorized, match="expired"):
        verify_token("s", token, "qa", now=1061)


def test_a_token_is_for_one_program_and_one_secret() -> None:
    token = mint_token("s", "qa", "call-1", ttl=60)
    with pytest.raises(Unauthorized, match="another program"):
        verify_token("s", token, "kitchen")
    with pytest.raises(Unauthorized, match="not valid"):
        verify_token("other", token, "qa")


@pytest.mark.parametrize("token", ["", "abc", "abc.def", "e30.x"])
def test_garbage_is_not_a_token(token: str) -> None:
    with pytest.raises(Unauthorized):
        verify_token("s", token, "qa")


def test_a_changed_payload_breaks_the_signature() -> None:
    _, _, signature = mint_token("s", "qa", "call-1", ttl=60).partition(".")
    other, _, _ = mint_token("s", "qa", "call-2", ttl=60).partition(".")
    with pytest.raises(Unauthorized, match="not valid"):
        verify_token("s", f"{other}.{signature}", "qa")
