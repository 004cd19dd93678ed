"""router settings (environment variables, validated at start)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from frugal.common.limits import MAX_HISTORY_MESSAGES
from frugal.common.settings import PORTS, ServiceSettings
from frugal.router.deployments import parse_deployments
from frugal.router.fallback import DEFAULT_FALLBACK_CHAIN, parse_fallback_chain
from frugal.router.scoring import DEFAULT_SCORER, TierMix
from frugal.router.turn_budget import parse_context_windows


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service_name: str = "router"
    grpc_port: int = PORTS["router"][0]
    metrics_port: int = PORTS["router"][1]

    # Providers. No key -> that provider's tiers are served by the offline stand-in (clearly labelled).
    gemini_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("gemini_api_key", "google_api_key")
    )
    anthropic_api_key: SecretStr | None = None
    # Base-URL overrides (emulators, proxies); empty means the SDK's default endpoint.
    gemini_base_url: str | None = None
    anthropic_base_url: str | None = None
    # Several deployments per provider (keys, regions, base URLs), load-balanced: a JSON list, see
    # frugal.router.deployments. Empty: one deployment per provider key above.
    llm_deployments: str = ""
    # Per provider call: time to the first token, and in total. The caller's deadline caps both.
    provider_first_token_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # An attempt that is not the last candidate waits at most this share of the time left for its first
    # token, so a hung deployment leaves time for the next one within the caller's deadline.
    first_token_deadline_share: float = Field(default=0.5, gt=0, le=1)
    # Provider calls per turn at most (deployments x tiers of the fallback chain).
    max_attempts: int = Field(default=4, ge=1, le=10)
    # Deployment health: consecutive failures before a cooldown, its length, and the cooldown after a 429
    # without retry-after. Shared by replicas through Redis.
    breaker_failure_threshold: int = Field(default=3, ge=1, le=100)
    breaker_cooldown_s: float = Field(default=30.0, gt=0, le=3600)
    rate_limit_cooldown_s: float = Field(default=10.0, gt=0, le=3600)
    # Longest a single Redis call (rate limiter, tenant state, breaker) may wait; the caller's deadline
    # caps it further. On timeout the turn goes on without it and says so.
    redis_op_timeout_s: float = Field(default=0.25, gt=0, le=10)
    provider_timeout_s: float = Field(default=60.0, gt=0, le=600)
    # Retries inside the SDK on 429/5xx before our fallback chain takes over (0: fall back at once).
    provider_max_retries: int = Field(default=0, ge=0, le=5)
    # Gemini 2.5 thinking tokens are billed as output: 0 turns thinking off (voice turns want latency),
    # -1 leaves the model's default.
    gemini_thinking_budget: int = Field(default=0, ge=-1, le=32768)
    # "premium>standard>lite,lite>standard": on a provider error or timeout, the next tier of the chain
    # that starts at the failed tier answers. Empty disables fallbacks.
    fallback_chain: str = DEFAULT_FALLBACK_CHAIN
    max_fallbacks: int = Field(default=2, ge=0, le=4)

    # Decision.
    default_scorer: str = DEFAULT_SCORER
    default_mix: str = "60/25/15"
    # Optional file of representative turns (JSONL {"text": ...} or one per line) to calibrate thresholds
    # on, instead of the bundled reference sample.
    reference_sample_path: str | None = None
    scorer_artifact_path: str | None = None
    # Output tokens assumed for cost estimates in decisions.
    expected_output_tokens: int = Field(default=250, ge=1, le=100_000)
    default_max_output_tokens: int = Field(default=512, ge=1, le=64_000)
    max_output_tokens_limit: int = Field(default=4096, ge=1, le=64_000)
    max_turn_chars: int = Field(default=32_000, ge=100, le=1_000_000)
    # The shared cap (frugal.common.limits): the gateway never sends more.
    max_history_messages: int = Field(default=MAX_HISTORY_MESSAGES, ge=0, le=MAX_HISTORY_MESSAGES)
    # Input tokens one turn may send at most (history is trimmed oldest-first to fit this, the chosen
    # model's context window and the tenant's tokens per minute).
    max_turn_input_tokens: int = Field(default=100_000, ge=1000, le=2_000_000)
    # '{"model": tokens}' merged over frugal.router.turn_budget.DEFAULT_CONTEXT_WINDOWS.
    model_context_windows: str = ""
    system_prompt: str = (
        "You are a concise, friendly voice assistant in a live meeting. Answer in plain spoken sentences "
        "(no markdown), briefly unless asked for detail."
    )

    # Limits (per tenant, across replicas, in Redis). Policy values of 0 fall back to these defaults.
    rate_limits_enabled: bool = True
    default_requests_per_minute: int = Field(default=120, ge=1)
    default_tokens_per_minute: int = Field(default=200_000, ge=1)
    # Seconds the tenant policy and budget state are cached in-process.
    tenant_state_ttl_s: float = Field(default=2.0, ge=0, le=300)
    # Redis does not answer and this router never read the tenant's state: "refuse" paid calls (UNAVAILABLE,
    # retryable: the tenant's cap is unknown, spending blind would fail open), "allow" (fail open). A tenant
    # read before keeps its last known state either way; an offline-only deployment (no paid provider) answers.
    tenant_state_unreachable: Literal["refuse", "allow"] = "refuse"

    # Context dependencies. Their time is also capped by the caller's deadline.
    rag_timeout_s: float = Field(default=0.8, gt=0, le=30)
    rag_top_k: int = Field(default=4, ge=1, le=50)
    rag_max_chars: int = Field(default=6000, ge=0, le=200_000)
    vision_timeout_s: float = Field(default=0.3, gt=0, le=30)
    vision_max_analyses: int = Field(default=3, ge=1, le=5)
    # Offline provider: pause between streamed words (0 = as fast as possible).
    offline_word_delay_s: float = Field(default=0.0, ge=0, le=1)

    @field_validator("default_mix")
    @classmethod
    def _mix(cls, value: str) -> str:
        TierMix.parse(value)
        return value

    @field_validator("fallback_chain")
    @classmethod
    def _chain(cls, value: str) -> str:
        parse_fallback_chain(value)
        return value

    @field_validator("llm_deployments")
    @classmethod
    def _deployments(cls, value: str) -> str:
        parse_deployments(value)
        return value

    @field_validator("model_context_windows")
    @classmethod
    def _windows(cls, value: str) -> str:
        parse_context_windows(value)
        return value

    @field_validator("gemini_base_url", "anthropic_base_url", "reference_sample_path", "scorer_artifact_path",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value
