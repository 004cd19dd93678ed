"""The price catalog: a data file, input and output prices separate, per-unit prices for media."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from frugal.common.usage import UsageAmounts

TierName = Literal["lite", "standard", "premium"]
TIERS: tuple[TierName, ...] = ("lite", "standard", "premium")
Kind = Literal["llm", "vision", "embedding", "rerank", "stt", "tts"]
# The cost-event attribute that carries an LLM call's prompt-cache writes (UsageAmounts has no field for them).
CACHE_WRITE_ATTR = "cache_write_tokens"


class PriceCatalogError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ModelPrice:
    model: str
    provider: str
    kind: str
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_audio_second: float = 0.0
    per_character: float = 0.0
    per_image: float = 0.0
    per_request: float = 0.0
    # Prompt caching: price of input tokens read from the provider's cache, and of tokens written to it
    # (Anthropic charges cache writes above the input price; Gemini's implicit cache has no write charge).
    # None: the model has no prompt cache, cached tokens cost the input price.
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def cost(self, usage: UsageAmounts, cache_write_tokens: int = 0) -> float:
        """`usage.cached_input_tokens` (a part of input_tokens, the one carrier of cache reads) at the cached
        price; `cache_write_tokens` (another part of input_tokens: what the call wrote to the prompt cache, the
        `cache_write_tokens` attribute of an LLM cost event) at the cache-write price. The one pricing rule: the
        recorder, the router and the session report all price through here."""
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        writes = min(max(cache_write_tokens, 0), usage.input_tokens - cached)
        cached_price = self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        write_price = self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        return (
            (usage.input_tokens - cached - writes) * self.input_per_mtok / 1e6
            + cached * cached_price / 1e6
            + writes * write_price / 1e6
            + usage.output_tokens * self.output_per_mtok / 1e6
            + usage.audio_seconds * self.per_audio_second
            + usage.characters * self.per_character
            + usage.images * self.per_image
            + usage.requests * self.per_request
        )


@dataclass(frozen=True, slots=True)
class PriceCatalog:
    version: str
    models: dict[str, ModelPrice]
    tiers: dict[TierName, str]
    baseline_llm_model: str
    baseline_vision_fps: float

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceCatalog:
        if path is None:
            raw = resources.files("frugal.common").joinpath("data/prices.toml").read_bytes()
            source = "bundled prices.toml"
        else:
            try:
                raw = Path(path).read_bytes()
            except OSError as err:
                raise PriceCatalogError(f"price catalog {path}: {err.strerror}") from err
            source = str(path)
        try:
            data = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise PriceCatalogError(f"price catalog {source}: {err}") from err
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: dict[str, object], source: str = "catalog") -> PriceCatalog:
        try:
            models_raw = data["models"]
            tiers_raw = data["tiers"]
            baseline = data.get("baseline", {})
            assert isinstance(models_raw, dict) and isinstance(tiers_raw, dict) and isinstance(baseline, dict)
            models = {
                name: ModelPrice(model=name, **{k: v for k, v in spec.items()}) for name, spec in models_raw.items()
            }
            tiers: dict[TierName, str] = {t: str(tiers_raw[t]) for t in TIERS}
        except (KeyError, TypeError, AssertionError) as err:
            raise PriceCatalogError(f"price catalog {source}: malformed ({err!r})") from err
        for m in models.values():
            if m.cached_input_per_mtok is not None and float(m.cached_input_per_mtok) < 0:
                raise PriceCatalogError(f"price catalog {source}: {m.model}.cached_input_per_mtok is negative")
            for field in ("input_per_mtok", "output_per_mtok", "per_audio_second", "per_character",
                          "per_image", "per_request", "cached_input_per_mtok", "cache_write_per_mtok"):
                if float(getattr(m, field) or 0.0) < 0:
                    raise PriceCatalogError(f"price catalog {source}: {m.model}.{field} is negative")
        for tier, model in tiers.items():
            if model not in models:
                raise PriceCatalogError(f"price catalog {source}: tier {tier} names unknown model {model}")
        baseline_model = str(baseline.get("llm_model", tiers["premium"]))
        if baseline_model not in models:
            raise PriceCatalogError(f"price catalog {source}: baseline model {baseline_model} unknown")
        return cls(
            version=str(data.get("version", "unversioned")),
            models=models,
            tiers=tiers,
            baseline_llm_model=baseline_model,
            baseline_vision_fps=float(str(baseline.get("vision_fps", 1.0))),
        )

    def price(self, model: str) -> ModelPrice:
        try:
            return self.models[model]
        except KeyError:
            raise PriceCatalogError(f"no price for model {model!r} (catalog {self.version})") from None

    def cost(self, model: str, usage: UsageAmounts, cache_write_tokens: int = 0) -> float:
        return self.price(model).cost(usage, cache_write_tokens)

    def tier_model(self, tier: TierName) -> str:
        return self.tiers[tier]

    def llm_baseline_cost(self, usage: UsageAmounts) -> float:
        """What the same token counts would have cost on the all-premium baseline model."""
        return self.price(self.baseline_llm_model).cost(
            UsageAmounts(input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
                         output_tokens=usage.output_tokens)
        )


_default: PriceCatalog | None = None


def default_catalog(path: str | Path | None = None) -> PriceCatalog:
    """The process-wide catalog (bundled, or PRICE_CATALOG_PATH when given)."""
    global _default
    if path is not None:
        return PriceCatalog.load(path)
    if _default is None:
        _default = PriceCatalog.load()
    return _default
