"""The one settings object, declared once.

Every setting is a field here. Its environment variable (``DSPY_SERVE_<NAME>``), its ``.env``
entry, its TOML key and its CLI flag are all derived from the field, so the four can never
drift apart. Precedence, highest first: CLI flags, environment, ``.env``, the TOML config
file, defaults. Unknown keys in ``.env`` or TOML are errors, not silently ignored.
"""

from __future__ import annotations

import ast
import difflib
import ipaddress
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["ServeSettings", "load_settings", "setting_sections", "unknown_setting"]

ENV_PREFIX = "DSPY_SERVE_"


class ServeSettings(BaseSettings):
    """How a dspy-serve process serves its programs. Immutable once built."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
        env_parse_none_str="",
        # .env also holds provider credentials (OPENAI_API_KEY, ...): only our prefix is ours,
        # and an unknown DSPY_SERVE_ key there is still an error.
        dotenv_filtering="match_prefix",
    )

    # --- programs ---------------------------------------------------------------------------------
    programs: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Programs to serve: 'path/file.py:NAME' or 'pkg.module:NAME', optionally 'alias=TARGET'.",
        json_schema_extra={"cli": "positional"},
    )
    artifacts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Optimized state saved with program.save(): 'PATH' for a single program, or "
        "'NAME=PATH' per program. A .json file; .pkl or a save_program directory need --allow-pickle.",
        json_schema_extra={"cli": "--artifact"},
    )
    signatures: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Declare a program's interface when it cannot be derived: "
        "'NAME=question -> answer: int'.",
        json_schema_extra={"cli": "--signature"},
    )
    chat_replies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Which str output answers an OpenAI chat client (/v1), per program: 'NAME=FIELD'. "
        "Unset: the program's last str output other than reasoning.",
        json_schema_extra={"cli": "--chat-reply"},
    )
    artifact_optional: bool = Field(
        default=False,
        description="Serve the unoptimized program when an artifact is missing, instead of failing.",
    )
    allow_pickle: bool = Field(
        default=False, description="Allow .pkl artifacts and save_program directories (they can run code)."
    )

    # --- language model ---------------------------------------------------------------------------
    model: str | None = Field(
        default=None,
        description="Default LM for every program, e.g. 'openai/gpt-4o-mini', or 'local' for the "
        "embedded model (offline, no key). Unset: the LM a program file configures as it is imported "
        "(dspy.configure(lm=...)), else the embedded local model. Credentials come from the provider's "
        "usual environment variables (OPENAI_API_KEY, ...).",
    )
    api_base: str | None = Field(
        default=None, description="Base URL of the LM provider (OpenAI-compatible servers)."
    )
    allow_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models a caller may pick per request (options.model). Nothing else is ever forwarded.",
        json_schema_extra={"cli": "--allow-model"},
    )
    adapter: Literal["auto", "chat", "json"] = Field(
        default="auto",
        description="DSPy adapter: 'auto' is JSON for the embedded model, DSPy's default otherwise.",
    )
    local_runtime: Literal["auto", "xllamacpp", "llama-cpp"] = Field(
        default="auto",
        description="What runs the embedded model: 'xllamacpp' (the prebuilt wheel), 'llama-cpp' "
        "(llama-cpp-python built from source), or 'auto': xllamacpp where the CPU has AVX2, FMA, F16C "
        "and BMI2 (read from /proc/cpuinfo on Linux), llama-cpp-python otherwise.",
    )
    temperature: float | None = Field(default=None, ge=0, le=2, description="Default sampling temperature.")
    max_tokens: int | None = Field(
        default=None, gt=0, description="Default maximum output tokens per LM call."
    )
    max_tokens_limit: int = Field(
        default=4096, gt=0, description="The largest max_tokens a caller may ask for per request."
    )
    lm_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Retries of a transient LM failure, always within the request's deadline.",
    )
    lm_connections: int | None = Field(
        default=None, gt=0, description="LM connection pool size. Unset: sized from max_in_flight."
    )
    check_lm: bool = Field(
        default=False,
        description="At startup, make one tiny call to each configured model; if one fails, the "
        "command stops with the reason (exit 3) instead of serving.",
    )

    # --- DSPy LM cache ----------------------------------------------------------------------------
    cache: bool = Field(
        default=False,
        description="DSPy's own LM cache (single LM requests inside a program run). Off by default: a "
        "server's callers expect a fresh answer, and a cached answer at temperature > 0 repeats one sample "
        "forever. To answer whole repeated calls without running the program, see response_cache.",
    )
    cache_memory_entries: int = Field(
        default=10_000, ge=0, description="In-memory cache entries (when cache is on)."
    )
    cache_dir: Path | None = Field(
        default=None, description="On-disk cache directory (when cache is on). Unset: memory only."
    )

    # --- response cache and coalescing -----------------------------------------------------------
    response_cache: str = Field(
        default="off",
        description="Answer repeated deterministic calls without running the program (not DSPy's LM "
        "cache above): 'off', 'memory' (this process, an LRU) or 'redis://host:port/db' (shared by "
        "workers and replicas). Keyed by program, version, inputs, model and options; 'Cache-Control: "
        "no-cache' bypasses it, 'no-store' keeps an answer out; 'X-Cache: hit|miss' tells which.",
    )
    response_cache_entries: int = Field(
        default=10_000, gt=0, description="Most answers the in-memory response cache keeps (least recent go)."
    )
    response_cache_ttl: float = Field(
        default=3600.0, gt=0, description="Seconds a response-cache answer is kept."
    )
    response_cache_any_temperature: bool = Field(
        default=False,
        description="Reuse answers (cache and coalescing) at any temperature. Off: only calls whose "
        "effective temperature is 0 are reused, since a cached sample would otherwise repeat forever.",
    )
    response_cache_timeout: float = Field(
        default=0.5,
        gt=0,
        description="Seconds one response-cache Redis call may take; when Redis is down or slower, the "
        "call runs uncached (a miss), never fails.",
    )
    coalesce_requests: bool = Field(
        default=True,
        description="Identical deterministic calls in flight at once run the program once; every caller "
        "gets the answer, the LM is charged to the first (the others report no usage).",
    )

    # --- limits -----------------------------------------------------------------------------------
    timeout: float = Field(default=60.0, gt=0, description="Per-request deadline in seconds (504 past it).")
    max_in_flight: int = Field(
        default=256, gt=0, description="Program calls running at once, across all programs of this process."
    )
    max_queue: int = Field(
        default=512,
        ge=0,
        description="Calls waiting for a slot; beyond it requests get 503 with Retry-After.",
    )
    sync_workers: int | None = Field(
        default=None, gt=0, description="Threads for sync-only programs. Unset: max_in_flight."
    )
    batch_max_items: int = Field(default=64, gt=0, description="Most inputs one /batch request may carry.")
    batch_concurrency: int = Field(default=16, gt=0, description="Items of one batch request run at once.")
    stream_heartbeat: float = Field(
        default=15.0, gt=0, description="Seconds of silence after which a stream sends a keep-alive comment."
    )
    rate_limit: str | None = Field(
        default=None,
        description="Requests per key (per client address without keys), e.g. '60/minute'. Unset: none.",
    )
    token_rate_limit: str | None = Field(
        default=None, description="LM tokens per key (or client address), e.g. '100000/hour'. Unset: none."
    )
    rate_limit_storage: str = Field(
        default="memory://",
        description="Where limits are counted: 'memory://' (this process) or 'redis://host:port' "
        "(shared by workers and replicas).",
    )
    rate_limit_storage_timeout: float = Field(
        default=1.0,
        gt=0,
        description="Seconds one rate-limit storage call may take (within the request's deadline); "
        "when the storage is down or slower, calls are refused with 503 and Retry-After.",
    )
    max_body_bytes: int = Field(default=1_000_000, gt=0, description="Largest request body (413 beyond).")
    max_input_chars: int = Field(
        default=100_000, gt=0, description="Longest string any input field may hold (422 beyond)."
    )

    # --- security ---------------------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys, '[name:]key' each; setting any turns authentication on. Callers send "
        "'Authorization: Bearer KEY' or 'X-API-Key: KEY'.",
        json_schema_extra={"cli": "env-only"},  # never a flag: flags show up in `ps`
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File of API keys, one per line: '[name:]key [programs=a,b] [models=m1,m2] "
        "[prompts=yes|no]'; programs/models restrict what that key may call, prompts= whether it may see "
        "prompts (with --expose-prompts; by default only keys without restrictions may).",
    )
    protect_docs: bool = Field(
        default=False, description="Require an API key for /metrics, /docs and /openapi.json too."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS ('*' for any). None by default: browsers get no CORS access.",
        json_schema_extra={"cli": "--cors-origin"},
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Proxies (IPs or networks, '*' for any) whose X-Forwarded-For and X-Forwarded-Proto "
        "are believed. None by default: the client address is the connection's, so a caller cannot "
        "choose its rate-limit identity.",
        json_schema_extra={"cli": "--forwarded-allow-ip"},
    )

    # --- HTTP server ------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    shutdown_grace: float = Field(
        default=20.0,
        ge=0,
        description="Seconds in-flight requests get to finish on SIGTERM before cancellation.",
    )
    max_header_bytes: int = Field(
        default=32_768,
        ge=1024,
        description="Largest request line plus headers, in bytes (431 and the connection closed beyond).",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection has to send its whole request line and headers, from opening "
        "or after a keep-alive pause (408 and closed beyond): idle and slow-header clients are not held.",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request body may pause between bytes (408 and closed beyond).",
    )
    keep_alive_timeout: float = Field(
        default=5.0, gt=0, description="Seconds an idle keep-alive connection is kept open."
    )
    max_connections: int | None = Field(
        default=2048,
        gt=0,
        description="Open connections (and requests) of this process beyond which new requests get 503 "
        "at once. Set it empty in the environment or .env (DSPY_SERVE_MAX_CONNECTIONS=) for no limit.",
    )
    title: str = Field(default="dspy-serve", description="Title of the OpenAPI document.")

    # --- playground and inspection ----------------------------------------------------------------
    playground: bool = Field(
        default=True,
        description="The web pages at / and /playground/NAME to try, inspect and batch-run each program in a "
        "browser (static pages calling the API with the caller's own key). Off: those pages are 404 and / "
        "is a plain index.",
    )
    expose_trace: bool = Field(
        default=False,
        description="Let callers ask for a call's trace (`options.trace`): each predictor that ran, in "
        "order, with its inputs and outputs. On: every caller that may call a program may see its traces "
        "(they hold the program's intermediate steps, never prompts or raw LM responses). Off: asking is a "
        "403.",
    )
    expose_prompts: bool = Field(
        default=False,
        description="Let callers ask for a call's prompts (`options.prompts`): the messages sent to the LM "
        "and its raw responses, per LM call, in order (never a key or a header). They show the program's "
        "instructions and demos: on, every caller may see them except API keys restricted to some programs "
        "or models, which need `prompts=yes` on their key line. Off: asking is a 403.",
    )
    # --- development ------------------------------------------------------------------------------
    reload: bool = Field(
        default=False,
        description="Development: restart the server when a program file (*.py beside it) or an "
        "artifact changes.",
    )

    # --- scaling ----------------------------------------------------------------------------------
    workers: int = Field(
        default=1,
        ge=1,
        description="Worker processes on the one port. Metrics aggregate across them; share rate "
        "limits with rate_limit_storage=redis://...",
    )
    engine: Literal["uvicorn", "ray"] = Field(
        default="uvicorn",
        description="'uvicorn': this machine (one process, or --workers). 'ray': replicas of a Ray Serve "
        "deployment (needs dspy-serve[ray]).",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster to deploy to ('auto', 'host:6379', 'ray://...'). Unset: start a local "
        "Ray instance for this command.",
    )
    replicas: int = Field(default=1, ge=1, description="Ray Serve replicas (the minimum when autoscaling).")
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        description="Autoscale between replicas and this many on ongoing requests. Unset: fixed replicas.",
    )
    target_ongoing_requests: float | None = Field(
        default=None,
        gt=0,
        description="Autoscaling target of requests per replica. Unset: half of max_in_flight.",
    )
    replica_cpus: float = Field(
        default=1.0, ge=0, description="CPUs Ray reserves for each replica (LM-bound programs need little)."
    )
    # --- performance tuning -----------------------------------------------------------------------
    gc_threshold: int = Field(
        default=50_000,
        ge=0,
        description="Allocations between two young garbage collections once serving (Python's default: "
        "700, which walks every in-flight request's objects again and again: ~20% of the CPU at c=128). "
        "0 leaves Python's setting.",
    )

    # --- data loop (store, capture, feedback) ---------------------------------------------------
    data_dir: Path = Field(
        default=Path(".dspy-serve"),
        description="Directory of the default store (store.db, SQLite) and other local data.",
    )
    store: str | None = Field(
        default=None,
        description="The store's database: 'sqlite:///path.db' or 'postgresql://user:pass@host/db' "
        "(several workers, replicas or machines). Unset: SQLite at data_dir/store.db. Its schema is "
        "migrated on start (or by `dspy-serve store migrate`).",
    )
    capture: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Capture calls into the store (off by default): '--capture' alone for every program, "
        "'--capture NAME' for one (repeatable; '*' is every program). Enables POST /NAME/feedback.",
        json_schema_extra={"flag_value": "*"},
    )
    capture_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of calls captured, decided once per call from a hash of its call id (the "
        "same on every worker). Uncaptured calls still take feedback for a while (capture_recent).",
    )
    capture_trace: bool = Field(
        default=False,
        description="Also keep each captured call's per-predictor trace (each predictor's inputs and "
        "outputs): what `dspy-serve optimize --optimizer harvest` builds demos from.",
    )
    capture_exclude: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Fields never stored, 'NAME.FIELD' ('*.FIELD' for every program); dropped from "
        "inputs, outputs, corrections and traces.",
        json_schema_extra={"cli": "--capture-exclude"},
    )
    capture_redact: str | None = Field(
        default=None,
        description="A redaction hook run on every row before it is stored, 'module:function' (or "
        "'path/file.py:function'): it takes the row (a dict) and returns it changed, or None to drop it.",
    )
    capture_max_age_days: float | None = Field(
        default=30.0, gt=0, description="Captured calls older than this are deleted. Unset: kept."
    )
    capture_max_rows: int | None = Field(
        default=1_000_000,
        gt=0,
        description="Most captured calls kept; the oldest beyond are deleted. Unset: no limit.",
    )
    capture_prune_interval: float = Field(
        default=300.0, gt=0, description="Seconds between two retention passes (one runs at start)."
    )
    capture_queue: int = Field(
        default=10_000,
        gt=0,
        description="Captured calls waiting to be written; beyond, new ones are dropped and counted "
        '(dspy_serve_capture_rows_total{result="dropped"}), never slowing a request.',
    )
    capture_recent: int = Field(
        default=2_000,
        ge=0,
        description="Recent calls of captured programs held in memory for an hour (sampled or not), so "
        "feedback on one that is not written yet, or was not sampled, still stores it. Each holds its "
        "inputs and outputs: size it to your calls.",
    )
    store_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds one write of captured calls may take; a slower or failed write drops its "
        "rows (counted), it is never retried.",
    )
    feedback_token_secret: SecretStr | None = Field(
        default=None,
        description="Secret that signs feedback tokens: each answer naming its call in X-Call-Id then "
        "carries 'X-Feedback-Token', which lets a browser rate that one call without the API key, until it "
        "expires.",
        json_schema_extra={"cli": "env-only"},
    )
    feedback_token_ttl: float = Field(
        default=3600.0, gt=0, description="Seconds a feedback token stays valid."
    )

    # --- durable jobs -----------------------------------------------------------------------------
    jobs: bool = Field(
        default=False,
        description="Durable async jobs in the store: POST /NAME/jobs, GET /jobs/ID, GET /jobs/ID/results, "
        "DELETE /jobs/ID (off by default). Each worker process runs queued items in the background.",
    )
    job_concurrency: int = Field(
        default=8,
        gt=0,
        description="Job items one worker process runs at once: a budget of their own, so jobs never take "
        "the capacity interactive calls need (keep it below max_in_flight).",
    )
    job_max_items: int = Field(default=100_000, gt=0, description="Most items one job may carry.")
    job_max_body_bytes: int = Field(
        default=50_000_000,
        gt=0,
        description="Largest body of POST /NAME/jobs (413 beyond); max_body_bytes is every other route's.",
    )
    job_retention: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="Seconds a finished or cancelled job and its results are kept, then removed.",
    )
    job_lease: float = Field(
        default=60.0,
        gt=0,
        description="Seconds an item claimed by a worker stays its own without a renewal (renewed every "
        "third of it while it runs): a worker that died leaves its items to be claimed again after this.",
    )
    job_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Secret that signs job webhooks (HMAC-SHA256 of the body, 'X-DSPy-Serve-Signature: "
        "sha256=HEX'). A job may name a webhook only when it is set.",
        json_schema_extra={"cli": "env-only"},
    )
    job_webhook_retries: int = Field(
        default=5,
        ge=0,
        description="Retries of a failed webhook delivery, with exponential backoff from 1 s.",
    )

    # --- program versions (rollouts) --------------------------------------------------------------
    candidates: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="A candidate version of a program, next to its stable one (--artifact): "
        "'NAME=PATH' or 'NAME@VERSION=PATH'; the version's name is the file's stem unless given. It "
        "serves nothing until a split or a shadow sends it calls.",
        json_schema_extra={"cli": "--candidate"},
    )
    splits: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Weighted split: 'NAME=PERCENT' sends that share of callers to the candidate, "
        "sticky per caller (--sticky).",
        json_schema_extra={"cli": "--split"},
    )
    sticky: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="What keeps a caller on one side of a split, per program: 'NAME=key' (the API key, "
        "else the client address; the default), 'NAME=header:HEADER' or 'NAME=input:FIELD'.",
        json_schema_extra={"cli": "--sticky"},
    )
    shadows: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Shadow runs: 'NAME=RATE' (0..1) also runs the candidate on that share of calls; its "
        "answers are recorded (with --capture), never returned, and its cost is counted apart.",
        json_schema_extra={"cli": "--shadow"},
    )
    shadow_max_in_flight: int = Field(
        default=16,
        gt=0,
        description="Most shadow runs at once; beyond it (or when the server is at capacity) a shadow run "
        "is skipped and counted, never queued: it must not delay callers.",
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Admin API keys ('[name:]key' each), separate from callers' keys: setting any turns "
        "the admin API (/admin/programs/...) on. Never a flag.",
        json_schema_extra={"cli": "env-only"},
    )
    admin_keys_file: Path | None = Field(
        default=None, description="File of admin API keys, one '[name:]key' per line."
    )
    artifact_dir: Path | None = Field(
        default=None,
        description="The one directory the admin API may load versions from (POST /admin/programs/NAME/"
        "versions); unset: it loads none.",
    )
    rollout_sync_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between two reads of the shared rollouts (the store) with the admin API on: "
        "how soon every worker and replica follows a change made through another.",
    )
    auto_rollback: bool = Field(
        default=True,
        description="Roll a candidate back on its own when the comparison says it is worse (needs "
        "--capture and the admin API).",
    )
    auto_promote: bool = Field(
        default=False, description="Promote a candidate on its own when the comparison says it is better."
    )
    rollout_check_interval: float = Field(
        default=60.0, gt=0, description="Seconds between two checks of the automatic rollout policy."
    )
    compare_min_sample: int = Field(
        default=30,
        gt=0,
        description="Calls with feedback (or labelled shadow pairs) each version needs before a verdict.",
    )

    # --- logging and tracing ----------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="'auto': JSON lines, or plain text when attached to a terminal."
    )
    otel: bool = Field(
        default=False,
        description="OpenTelemetry traces: a server span per request and a span per program call "
        "(needs dspy-serve[otel]; export with your TracerProvider or opentelemetry-instrument).",
    )
    mlflow_autolog: bool = Field(
        default=False,
        description="Trace every call to MLflow (mlflow.dspy.autolog(), set up at startup; needs mlflow).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator(
        "programs",
        "artifacts",
        "allow_models",
        "signatures",
        "api_keys",
        "cors_origins",
        "chat_replies",
        "forwarded_allow_ips",
        "capture",
        "capture_exclude",
        "candidates",
        "splits",
        "sticky",
        "shadows",
        "admin_keys",
        mode="before",
    )
    @classmethod
    def _split_lists(cls, value: Any, info: ValidationInfo) -> Any:
        # Environment variables carry lists as JSON, or as "a,b" (signatures, which hold
        # commas themselves, as "a;b"). An empty variable is an empty list.
        if value is None:
            return []
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            separator = ";" if info.field_name == "signatures" else ","
            return [item.strip() for item in value.split(separator) if item.strip()]
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for proxy in value:
            if proxy != "*":
                try:
                    ipaddress.ip_network(proxy, strict=False)
                except ValueError:
                    raise ValueError(f"{proxy!r} is not an IP address or network (or '*')") from None
        return value

    @field_validator("response_cache")
    @classmethod
    def _check_response_cache(cls, value: str) -> str:
        if value not in ("off", "memory") and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{value!r}: use 'off', 'memory' or a Redis URL ('redis://host:port/db')")
        return value

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str | None) -> str | None:
        backends = ("sqlite:", "sqlite+aiosqlite:", "postgresql:", "postgres:", "postgresql+asyncpg:")
        if value is not None and not value.startswith(backends):
            raise ValueError(f"{value!r}: use 'sqlite:///path.db' or 'postgresql://user@host/db'")
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> ServeSettings:
        if self.max_tokens is not None and self.max_tokens > self.max_tokens_limit:
            raise ValueError("max_tokens cannot exceed max_tokens_limit")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError("max_replicas cannot be below replicas")
        for limit in (self.rate_limit, self.token_rate_limit):
            if limit is not None:
                _check_rate(limit)
        return self

    def to_data(self, *, secrets: bool) -> dict[str, Any]:
        """The settings as plain JSON data for another process (a worker, a replica): only what
        differs from the defaults. Without ``secrets``, API keys are left out and the receiving
        process takes them from its own environment."""
        data = self.model_dump(
            mode="json",
            exclude_defaults=True,
            exclude={"api_keys", "admin_keys", "feedback_token_secret", "job_webhook_secret"},
        )
        if secrets and self.api_keys:
            data["api_keys"] = [key.get_secret_value() for key in self.api_keys]
        if secrets and self.admin_keys:
            data["admin_keys"] = [key.get_secret_value() for key in self.admin_keys]
        if secrets and self.feedback_token_secret is not None:
            data["feedback_token_secret"] = self.feedback_token_secret.get_secret_value()
        if secrets and self.job_webhook_secret is not None:
            data["job_webhook_secret"] = self.job_webhook_secret.get_secret_value()
        return data

    @property
    def connection_pool_size(self) -> int:
        """Never let the LM pool be the hidden cap: at least one connection per running call."""
        return self.lm_connections or max(self.max_in_flight, 1)

    @property
    def sync_thread_count(self) -> int:
        return self.sync_workers or self.max_in_flight


def _check_rate(limit: str) -> None:
    from limits import parse_many

    try:
        parse_many(limit)
    except ValueError:
        raise ValueError(f"{limit!r} is not a rate such as '60/minute' or '1000/hour'") from None


def setting_sections() -> dict[str, list[str]]:
    """The fields under each ``# --- section ---`` comment of this file, in source order: the
    groups of ``run --help`` and of docs/settings.md, declared once, where the fields are."""
    source = Path(__file__).read_text(encoding="utf-8")
    settings_class = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == "ServeSettings"
    )
    lines = source.splitlines()
    grouped: dict[str, list[str]] = {}
    current, previous_end = "general", settings_class.lineno
    for node in settings_class.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            for line in lines[previous_end : node.lineno - 1]:
                if line.strip().startswith("# ---"):
                    current = line.strip(" #-")
            if node.target.id in ServeSettings.model_fields:
                grouped.setdefault(current, []).append(node.target.id)
        previous_end = node.end_lineno or node.lineno
    return grouped


def unknown_setting(key: str, config_file: Path | None) -> str:
    """Say where an unknown key was written and which setting was likely meant: a typo in a file
    is otherwise a bare "extra inputs are not permitted" naming neither."""
    names = list(ServeSettings.model_fields)
    close = difflib.get_close_matches(key.lower(), names, n=1)
    if config_file is not None and key in _toml_keys(config_file):
        hint = f"; did you mean {close[0]!r}?" if close else f" (settings: {', '.join(names)})"
        return f"{config_file}: unknown setting {key!r}{hint}"
    env_file = Path(str(ServeSettings.model_config.get("env_file") or ".env"))
    written = ENV_PREFIX + key.upper()
    if env_file.is_file() and written in {name.upper() for name in dotenv_values(env_file)}:
        hint = f"; did you mean {ENV_PREFIX + close[0].upper()!r}?" if close else ""
        return f"{env_file}: unknown setting {written!r}{hint}"
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown setting {key!r}{hint}"


def _toml_keys(path: Path) -> set[str]:
    try:
        with path.open("rb") as handle:
            return set(tomllib.load(handle))
    except (OSError, tomllib.TOMLDecodeError):
        return set()


def load_settings(config_file: Path | None = None, **overrides: Any) -> ServeSettings:
    """Build the settings once: ``overrides`` (CLI flags) win over env, ``.env`` and the TOML file."""
    if config_file is None:
        return ServeSettings(**overrides)
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")

    class _FromFile(ServeSettings):
        model_config = SettingsConfigDict(toml_file=config_file)

    settings = _FromFile(**overrides)
    # Keep which fields were given: "configured but empty" differs from "not configured" (API keys).
    return ServeSettings.model_construct(_fields_set=settings.model_fields_set, **settings.model_dump())
