"""The PostgreSQL fixture skips without PostgreSQL on a developer's machine, and fails under CI."""

from __future__ import annotations

import pytest

from tests.support import postgres_server


def test_without_postgresql_the_fixture_skips_here_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_server, "postgres_binaries", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with (
        pytest.raises(pytest.skip.Exception, match="PostgreSQL is not installed"),
        postgres_server.postgres_server(),
    ):
        pass
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must install it"), postgres_server.postgres_server():
        pass


def test_the_server_answers_on_loopback_from_its_temporary_directory(
    postgres: postgres_server.PostgresServer,
) -> None:
    import asyncio

    import asyncpg

    async def data_directory() -> str:
        connection = await asyncpg.connect(host="127.0.0.1", port=postgres.port, user="postgres")
        try:
            return str(await connection.fetchval("SELECT current_setting('data_directory')"))
        finally:
            await connection.close()

    assert asyncio.run(data_directory()).startswith(str(postgres.directory))
