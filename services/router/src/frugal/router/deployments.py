"""LLM deployments: several per provider (keys, regions, base URLs), load-balanced, and tier availability.

Config is data: `LLM_DEPLOYMENTS` is a JSON list validated at start, e.g.::

    [{"name": "gemini-eu", "provider": "google", "api_key_env": "GEMINI_KEY_EU", "region": "europe-west4",
      "base_url": "https://eu.example/gemini", "weight": 2},
     {"name": "claude-a", "provider": "anthropic", "api_key_env": "ANTHROPIC_KEY_A",
      "models": ["claude-sonnet-4-6"]}]

Keys are never inline: `api_key_env` names the variable holding it. With no list, GEMINI_API_KEY and
ANTHROPIC_API_KEY (and their base URLs) make one deployment each.

A tier whose provider has no deployment is served by the nearest tier that has one (said in the decision),
so a key for one provider answers every tier; only with no deployment at all does the offline stand-in answer.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from frugal.common.pricing import TIERS, PriceCatalog, TierName
from frugal.router.providers.base import LlmProvider

log = logging.getLogger(__name__)

ProviderName = Literal["google", "anthropic"]


class DeploymentSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    provider: ProviderName
    api_key_env: str = Field(default="", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$|^$")
    base_url: str | None = None
    region: str = ""
    weight: int = Field(default=1, ge=1, le=1000)
    # Models this deployment serves; empty: every model of its provider.
    models: tuple[str, ...] = ()
    # Resolved at load time (from api_key_env); never part of the JSON.
    api_key: str = Field(default="", exclude=True, repr=False)

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models


def parse_deployments(raw: str, environ: Mapping[str, str] | None = None) -> tuple[DeploymentSpec, ...]:
    """Raises ValueError naming what is wrong (unknown field, duplicate name, missing key variable)."""
    env = os.environ if environ is None else environ
    if not raw.strip():
        return ()
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"LLM_DEPLOYMENTS is not JSON: {err}") from None
    if not isinstance(items, list):
        raise ValueError("LLM_DEPLOYMENTS must be a JSON list of deployments")
    specs: list[DeploymentSpec] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"LLM_DEPLOYMENTS[{i}] must be an object")
        if "api_key" in item:
            raise ValueError(f"LLM_DEPLOYMENTS[{i}]: put the key in a variable and name it in api_key_env")
        try:
            spec = DeploymentSpec.model_validate(item)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"LLM_DEPLOYMENTS[{i}].{where}: {first['msg']}") from None
        if not spec.api_key_env:
            raise ValueError(f"LLM_DEPLOYMENTS[{i}] ({spec.name}): api_key_env is required")
        key = env.get(spec.api_key_env, "")
        if not key:
            raise ValueError(f"LLM_DEPLOYMENTS[{i}] ({spec.name}): variable {spec.api_key_env} is empty or unset")
        specs.append(spec.model_copy(update={"api_key": key}))
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"LLM_DEPLOYMENTS: duplicate deployment names {sorted(dup)}")
    return tuple(specs)


@dataclass
class Deployment:
    spec: DeploymentSpec
    impl: LlmProvider
    in_flight: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def provider(self) -> str:
        return self.spec.provider


@dataclass(frozen=True, slots=True)
class TierRoute:
    """Which model answers a tier: `tier` itself, or the nearest tier with a deployment (`reason` says why)."""

    requested: TierName
    tier: TierName
    model: str
    provider: str
    offline: bool
    reason: str = ""


@dataclass
class DeploymentPool:
    catalog: PriceCatalog
    deployments: list[Deployment]
    # Per model: how many plans it has been in (the round-robin position).
    _turns: dict[str, itertools.count[int]] = field(default_factory=dict)

    def for_model(self, model: str) -> list[Deployment]:
        provider = self.catalog.price(model).provider
        return [d for d in self.deployments if d.provider == provider and d.spec.serves(model)]

    def has_model(self, model: str) -> bool:
        return bool(self.for_model(model))

    def route_tier(self, tier: TierName) -> TierRoute:
        """The tier's own model when some deployment serves it, else the nearest tier's (ties: the more
        capable one, so an answer is not quietly downgraded); offline only when nothing is deployed."""
        model = self.catalog.tier_model(tier)
        if self.has_model(model):
            return TierRoute(tier, tier, model, self.catalog.price(model).provider, False)
        idx = TIERS.index(tier)
        order = sorted(range(len(TIERS)), key=lambda j: (abs(j - idx), -j))
        for j in order:
            alt = TIERS[j]
            alt_model = self.catalog.tier_model(alt)
            if self.has_model(alt_model):
                provider = self.catalog.price(model).provider
                return TierRoute(tier, alt, alt_model, self.catalog.price(alt_model).provider, False,
                                 f"no {provider} deployment for {tier} ({model}): served by {alt} ({alt_model})")
        return TierRoute(tier, tier, model, "offline", True)

    def balanced(self, model: str, is_open: Callable[[Deployment], bool]) -> list[Deployment]:
        """Deployments serving `model`, best first: closed breakers before open ones, then fewest calls in
        flight per unit of weight, ties rotated turn by turn (round robin)."""
        ds = self.for_model(model)
        if not ds:
            return []
        shift = next(self._turns.setdefault(model, itertools.count())) % len(ds)
        rotated = ds[shift:] + ds[:shift]
        return sorted(rotated, key=lambda d: (is_open(d), d.in_flight / d.spec.weight))

    async def aclose(self) -> None:
        for d in self.deployments:
            try:
                await d.impl.aclose()
            except Exception:
                log.exception("closing deployment %s failed", d.name)


def describe(specs: Sequence[DeploymentSpec]) -> str:
    return ", ".join(f"{s.name} ({s.provider}{', ' + s.region if s.region else ''}, weight {s.weight})"
                     for s in specs) or "none"
