"""``ServeSettings`` / ``load_settings``: defaults, the four sources and their precedence
(CLI > environment > .env > TOML > defaults), strictness about unknown keys, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from dspy_serve.settings import ENV_PREFIX, ServeSettings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No DSPY_SERVE_* variable and no .env from the developer's machine leaks in."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults -------------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = ServeSettings()

    assert settings.programs == []
    assert settings.artifacts == []
    assert settings.signatures == []
    assert settings.allow_models == []
    assert settings.model is None
    assert settings.adapter == "auto"
    assert settings.temperature is None
    assert settings.max_tokens_limit == 4096
    assert settings.lm_retries == 3
    assert settings.cache is False
    assert settings.allow_pickle is False
    assert settings.artifact_optional is False
    assert settings.timeout == 60.0
    assert settings.max_in_flight == 256
    assert settings.max_queue == 512
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.log_level == "info"


# --- environment ----------------------------------------------------------------------------------


def test_env_var_with_prefix_sets_a_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_SERVE_MODEL", "openai/gpt-4o-mini")
    monkeypatch.setenv("DSPY_SERVE_PORT", "9001")
    monkeypatch.setenv("DSPY_SERVE_ALLOW_PICKLE", "true")

    settings = ServeSettings()

    assert settings.model == "openai/gpt-4o-mini"
    assert settings.port == 9001
    assert settings.allow_pickle is True


def test_env_var_without_prefix_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9001")

    assert ServeSettings().port == 8000


def test_env_list_as_comma_separated_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_SERVE_PROGRAMS", "qa=app.py:qa, rag=app.py:rag")

    assert ServeSettings().programs == ["qa=app.py:qa", "rag=app.py:rag"]


def test_env_list_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_SERVE_ALLOW_MODELS", '["openai/gpt-4o-mini", "openai/gpt-4o"]')

    assert ServeSettings().allow_models == ["openai/gpt-4o-mini", "openai/gpt-4o"]


def test_env_signatures_are_split_on_semicolons_not_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_SERVE_SIGNATURES", "rag=context, question -> answer; qa=question -> answer: int")

    assert ServeSettings().signatures == ["rag=context, question -> answer", "qa=question -> answer: int"]


def test_empty_env_var_unsets_an_optional_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_SERVE_MODEL", "")

    assert ServeSettings().model is None


def test_empty_env_var_gives_an_empty_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_SERVE_ALLOW_MODELS", "")

    assert ServeSettings().allow_models == []


# --- .env -----------------------------------------------------------------------------------------


def test_dotenv_file_in_the_working_directory_sets_a_field(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text("DSPY_SERVE_PORT=9100\n", encoding="utf-8")

    assert ServeSettings().port == 9100


def test_unknown_prefixed_key_in_dotenv_is_an_error(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text("DSPY_SERVE_PROT=9100\n", encoding="utf-8")

    with pytest.raises(ValidationError, match=r"(?i)prot\s+Extra inputs are not permitted"):
        ServeSettings()


def test_provider_credentials_in_dotenv_are_not_settings_errors(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text(
        "OPENAI_API_KEY=sk-test-not-a-setting\nDSPY_SERVE_PORT=9100\n", encoding="utf-8"
    )

    assert ServeSettings().port == 9100


# --- TOML and precedence --------------------------------------------------------------------------


def test_toml_file_sets_fields(clean_environment: Path) -> None:
    config = write_toml(
        clean_environment / "serve.toml",
        'model = "openai/gpt-4o-mini"\nallow_models = ["a", "b"]\ntimeout = 5\n',
    )

    settings = load_settings(config)

    assert type(settings) is ServeSettings
    assert settings.model == "openai/gpt-4o-mini"
    assert settings.allow_models == ["a", "b"]
    assert settings.timeout == 5.0


def test_missing_toml_file_is_an_error(clean_environment: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.toml"):
        load_settings(clean_environment / "nope.toml")


def test_unknown_key_in_toml_is_an_error(clean_environment: Path) -> None:
    config = write_toml(clean_environment / "serve.toml", "timout = 5\n")

    with pytest.raises(ValidationError, match="timout"):
        load_settings(config)


def test_invalid_value_in_toml_is_an_error(clean_environment: Path) -> None:
    config = write_toml(clean_environment / "serve.toml", "temperature = 3\n")

    with pytest.raises(ValidationError, match="temperature"):
        load_settings(config)


def test_precedence_is_cli_then_env_then_dotenv_then_toml(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_toml(
        clean_environment / "serve.toml",
        'model = "toml/model"\nport = 9001\ntimeout = 11\nhost = "0.0.0.0"\n',
    )
    (clean_environment / ".env").write_text(
        "DSPY_SERVE_MODEL=dotenv/model\nDSPY_SERVE_PORT=9002\nDSPY_SERVE_TIMEOUT=12\n", encoding="utf-8"
    )
    monkeypatch.setenv("DSPY_SERVE_MODEL", "env/model")
    monkeypatch.setenv("DSPY_SERVE_PORT", "9003")

    settings = load_settings(config, model="cli/model")

    assert settings.model == "cli/model"  # CLI beats env, .env and TOML
    assert settings.port == 9003  # env beats .env and TOML
    assert settings.timeout == 12.0  # .env beats TOML
    assert settings.host == "0.0.0.0"  # TOML beats the default
    assert settings.title == "dspy-serve"  # nothing set: the default


def test_cli_overrides_apply_without_a_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_SERVE_PORT", "9003")

    assert load_settings(None, port=9004).port == 9004


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 3),
        ("temperature", -0.1),
        ("timeout", 0),
        ("max_in_flight", 0),
        ("port", 70000),
        ("lm_retries", 11),
        ("adapter", "xml"),
        ("log_level", "trace"),
    ],
)
def test_out_of_range_value_is_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        ServeSettings(**{field: value})  # type: ignore[arg-type]


def test_out_of_range_env_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_SERVE_TEMPERATURE", "3")

    with pytest.raises(ValidationError, match="temperature"):
        ServeSettings()


def test_max_tokens_cannot_exceed_max_tokens_limit() -> None:
    with pytest.raises(ValidationError, match="max_tokens cannot exceed max_tokens_limit"):
        ServeSettings(max_tokens=200, max_tokens_limit=100)


def test_unknown_keyword_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timout"):
        ServeSettings(timout=5)  # type: ignore[call-arg]


def test_settings_are_frozen() -> None:
    settings = ServeSettings()

    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_settings_loaded_from_toml_are_frozen(clean_environment: Path) -> None:
    settings = load_settings(write_toml(clean_environment / "serve.toml", "port = 9001\n"))

    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


# --- derived values -------------------------------------------------------------------------------


def test_connection_pool_defaults_to_max_in_flight() -> None:
    assert ServeSettings(max_in_flight=32).connection_pool_size == 32


def test_connection_pool_uses_lm_connections_when_set() -> None:
    assert ServeSettings(max_in_flight=32, lm_connections=8).connection_pool_size == 8


def test_sync_threads_default_to_max_in_flight() -> None:
    assert ServeSettings(max_in_flight=32).sync_thread_count == 32


def test_sync_threads_use_sync_workers_when_set() -> None:
    assert ServeSettings(max_in_flight=32, sync_workers=4).sync_thread_count == 4


def test_to_data_keeps_what_differs_and_secrets_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_SERVE_API_KEYS", "ops:s3cret-key")
    settings = ServeSettings(programs=["qa.py:qa"], timeout=9)
    assert settings.to_data(secrets=False) == {"programs": ["qa.py:qa"], "timeout": 9.0}
    data = settings.to_data(secrets=True)
    assert data["api_keys"] == ["ops:s3cret-key"]
    assert ServeSettings.model_validate(data) == settings, "another process rebuilds the same settings"
