"""gRPC wiring of the router service: Route (decision only) and Respond (the streamed answer).

Respond, in order: validate; tenant state and budget; turn size and rate limits; context (rag, vision,
concurrently); decision and tier availability; then the attempts (deployments along the fallback chain,
skipping those cooling down) until one answers. Every wait is bounded by the caller's deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from frugal.api.billing.v1 import billing_pb2
from frugal.api.common.v1 import common_pb2
from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.common.cost_events import CostEventProducer, CostKind, baseline_cost
from frugal.common.cost_recorder import CostRecorder, CostRecordingUnavailable
from frugal.common.grpc_server import GrpcApp, service_full_name
from frugal.common.metrics import AI_REQUESTS_TOTAL
from frugal.common.pricing import TIERS, PriceCatalog, PriceCatalogError, TierName, default_catalog
from frugal.common.redis_client import aclose_cost_redis, create_cost_redis, create_redis
from frugal.common.service import StartupError
from frugal.common.tenancy import current_identity
from frugal.common.tenant_state import TenantStateCache
from frugal.common.usage import UsageAmounts
from frugal.router import cache_aware
from frugal.router import metrics as m
from frugal.router.bounded import DEADLINE_RESERVE_S, EMIT_WAIT_S, BoundedProducer, RedisWatch, TurnClock
from frugal.router.cascade import (
    CASCADE_HOLD_SECONDS,
    CASCADE_TURNS,
    AnswerScorer,
    CascadeOutcome,
    CheapCall,
    load_answer_scorer,
    run_cascade,
)
from frugal.router.config import Settings
from frugal.router.context import RAG, VISION, ContextClients, ContextResult, skipped
from frugal.router.decision import (
    ENUM_TIER,
    TIER_ENUM,
    BudgetVerdict,
    Decider,
    Decision,
    TurnScore,
    TurnText,
    budget_verdict,
)
from frugal.router.deployments import Deployment, DeploymentPool, DeploymentSpec, describe, parse_deployments
from frugal.router.fallback import fallback_sequence, parse_fallback_chain
from frugal.router.health import DeploymentHealth, HealthConfig
from frugal.router.limits import TenantRateLimiter
from frugal.router.prompt import system_prompt
from frugal.router.providers.base import (
    NOT_PROCESSED,
    LlmProvider,
    Message,
    ProviderError,
    ProviderRequest,
    StreamDone,
    TextChunk,
    ToolCallChunk,
    ToolCallOut,
    ToolSpec,
    UsageReport,
    estimate_tokens,
    merge_partial,
)
from frugal.router.providers.claude import ClaudeProvider
from frugal.router.providers.gemini import GeminiProvider
from frugal.router.providers.offline import OFFLINE_MODEL, OfflineProvider
from frugal.router.scoring import ScorerError, ScorerSet, TierMix, load_scorers, read_reference_sample
from frugal.router.serving import ServingStatus
from frugal.router.turn_budget import (
    Trimmed,
    TurnBudget,
    TurnTooLarge,
    fit_history,
    input_budget,
    message_tokens,
    parse_context_windows,
)

log = logging.getLogger(__name__)

SERVICE_NAME = service_full_name(router_pb2.DESCRIPTOR, "RouterService")
TURN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TOOL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
MAX_TOOLS = 64
# Below this, a provider attempt is not worth starting.
MIN_ATTEMPT_S = 0.05


def _default_specs(settings: Settings) -> list[DeploymentSpec]:
    specs: list[DeploymentSpec] = []
    if settings.gemini_api_key is not None and settings.gemini_api_key.get_secret_value():
        specs.append(DeploymentSpec(name="google-default", provider="google", base_url=settings.gemini_base_url,
                                    api_key=settings.gemini_api_key.get_secret_value()))
    if settings.anthropic_api_key is not None and settings.anthropic_api_key.get_secret_value():
        specs.append(DeploymentSpec(name="anthropic-default", provider="anthropic",
                                    base_url=settings.anthropic_base_url,
                                    api_key=settings.anthropic_api_key.get_secret_value()))
    return specs


def _provider_impl(spec: DeploymentSpec, settings: Settings) -> LlmProvider:
    if spec.provider == "google":
        return GeminiProvider(spec.api_key, base_url=spec.base_url, timeout_s=settings.provider_timeout_s,
                              max_retries=settings.provider_max_retries,
                              thinking_budget=settings.gemini_thinking_budget)
    return ClaudeProvider(spec.api_key, base_url=spec.base_url, timeout_s=settings.provider_timeout_s,
                          max_retries=settings.provider_max_retries)


class Providers:
    """The deployments (SDK clients) and which model answers each tier; offline only with none at all."""

    def __init__(self, settings: Settings, catalog: PriceCatalog) -> None:
        self.catalog = catalog
        self.offline = OfflineProvider(word_delay_s=settings.offline_word_delay_s)
        specs = list(parse_deployments(settings.llm_deployments)) or _default_specs(settings)
        self.pool = DeploymentPool(catalog, [Deployment(s, _provider_impl(s, settings)) for s in specs])
        self.specs = specs

    def describe(self, tier: TierName) -> tuple[str, bool]:
        route = self.pool.route_tier(tier)
        return route.provider, route.offline

    async def aclose(self) -> None:
        await self.pool.aclose()


@dataclass
class TurnAccount:
    """What a Respond turn spent, across attempts."""

    cost_usd: float = 0.0
    baseline_usd: float = 0.0
    event_ids: list[str] = field(default_factory=list)
    fallbacks: list[router_pb2.Fallback] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider call to try: a tier's model on one deployment (None: the offline stand-in)."""

    tier: TierName
    model: str
    deployment: Deployment | None

    @property
    def label(self) -> str:
        return f"{self.tier} ({self.model}{' @ ' + self.deployment.name if self.deployment else ''})"


class RouterCore:
    def __init__(
        self,
        settings: Settings,
        *,
        catalog: PriceCatalog,
        scorers: ScorerSet,
        redis: aioredis.Redis,
        providers: Providers,
        contexts: ContextClients,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.providers = providers
        self.redis = redis
        self.contexts = contexts
        # Billing publishes tenant state on the cost-events Redis (persistent, noeviction); caches and rate
        # limits stay on REDIS_URL.
        self.cost_redis = create_cost_redis(settings, redis)
        self.tenant_state = TenantStateCache(self.cost_redis, ttl_s=settings.tenant_state_ttl_s)
        self.limiter = TenantRateLimiter(redis)
        self.producer = BoundedProducer(CostEventProducer.from_settings(settings, self.cost_redis))
        self.recorder = CostRecorder(self.producer, catalog, service="router")
        self.redis_watch = RedisWatch()
        self.health = DeploymentHealth(redis, HealthConfig(
            failure_threshold=settings.breaker_failure_threshold, cooldown_s=settings.breaker_cooldown_s,
            rate_limit_cooldown_s=settings.rate_limit_cooldown_s))
        self.chain = parse_fallback_chain(settings.fallback_chain)
        self.windows = parse_context_windows(settings.model_context_windows)
        # The cascade's answer scorer (learned-v1 artifact); None when learned-v1 is not loaded.
        self.answer_scorer: AnswerScorer | None = load_answer_scorer(scorers)
        self.decider = Decider(
            scorers, catalog, TierMix.parse(settings.default_mix), provider_of=providers.describe,
            system_prompt_chars=len(settings.system_prompt), expected_output_tokens=settings.expected_output_tokens,
        )

    async def aclose(self) -> None:
        await self.producer.aclose()
        await aclose_cost_redis(self.cost_redis, self.redis)
        await self.contexts.aclose()
        await self.providers.aclose()
        await self.redis.aclose()

    async def tenant_policy_and_budget(
        self, tenant: str, clock: TurnClock
    ) -> tuple[billing_pb2.TenantPolicy | None, billing_pb2.BudgetState | None]:
        """Cached reads of billing's published state, bounded by the caller's deadline; Redis down or silent
        -> (None, None), said in the turn's notes."""
        timeout = clock.redis_timeout()
        try:
            async with asyncio.timeout(timeout):
                policy, budget = await asyncio.gather(self.tenant_state.policy(tenant),
                                                      self.tenant_state.budget(tenant))
        except (TimeoutError, RedisError, OSError) as err:
            why = f"no answer within {timeout:.2f}s" if isinstance(err, TimeoutError) else type(err).__name__
            known = self.tenant_state.last_known(tenant)
            if known is not None:
                # Never "unpublished" (uncapped) because Redis is down: the last known state decides, and the
                # verdict refuses a capped tenant once that state is too old to trust.
                clock.fail_open("tenant_state", f"tenant state unavailable ({why}): last known state used")
                return known
            clock.tenant_state_unread = True
            clock.fail_open("tenant_state", f"tenant state unavailable ({why}): default policy, budget unknown")
            return None, None
        return policy, budget

    def with_availability(self, decision: Decision) -> Decision:
        """The decision's tier mapped to the nearest tier that has a deployment (said in override_reason)."""
        route = self.providers.pool.route_tier(decision.tier)
        if route.tier == decision.tier:
            return decision
        est = self.catalog.cost(route.model, UsageAmounts(input_tokens=decision.estimated_input_tokens,
                                                          output_tokens=decision.estimated_output_tokens))
        # No cascade then: it exists to spare the routed (premium) tier, which this deployment does not have.
        return dataclasses.replace(decision, tier=route.tier, model=route.model, provider=route.provider,
                                   offline=False, estimated_cost_usd=est, cascade=False,
                                   override_reasons=(*decision.override_reasons, route.reason))

    def plan(self, tier: TierName) -> tuple[list[Candidate], list[Candidate]]:
        """Calls to try in order (tiers of the fallback chain x their deployments, balanced), and the
        deployments skipped because they are cooling down."""
        s = self.settings
        pool = self.providers.pool
        candidates: list[Candidate] = []
        cooling: list[Candidate] = []
        seen_models: set[str] = set()
        now = time.time()
        for t in fallback_sequence(tier, self.chain, s.max_fallbacks):
            route = pool.route_tier(t)
            if route.offline:
                return [Candidate(t, OFFLINE_MODEL, None)], []
            if route.model in seen_models:
                continue
            seen_models.add(route.model)
            for d in pool.balanced(route.model, lambda d: self.health.is_open(d.name, now)):
                if self.health.is_open(d.name, now):
                    cooling.append(Candidate(route.tier, route.model, d))
                elif len(candidates) < s.max_attempts:
                    candidates.append(Candidate(route.tier, route.model, d))
        return candidates, cooling


def _tenant_and_session() -> tuple[str, str, str]:
    ident = current_identity()
    if ident is None or ident.tenant_id is None or ident.session_id is None:
        raise RuntimeError("no request identity (the tenancy interceptor did not run)")
    return ident.tenant_id, ident.session_id, ident.request_id


def _conversation(turn: router_pb2.TurnInput) -> tuple[list[Message], list[str]]:
    """History (and the turn's own text) as provider-neutral messages, plus the history's system texts.
    Unknown roles (a newer gateway) count as the user's."""
    messages: list[Message] = []
    system: list[str] = []
    names: dict[str, str] = {}
    for msg in turn.history:
        if msg.role == router_pb2.ROLE_SYSTEM:
            system.append(msg.content)
        elif msg.role == router_pb2.ROLE_ASSISTANT:
            calls = tuple(ToolCallOut(c.id, c.name, c.arguments_json or "{}") for c in msg.tool_calls)
            names.update({c.id: c.name for c in calls})
            if msg.content.strip() or calls:
                messages.append(Message("assistant", msg.content, tool_calls=calls))
        elif msg.role == router_pb2.ROLE_TOOL:
            messages.append(Message("tool", msg.content, tool_call_id=msg.tool_call_id,
                                    tool_name=names.get(msg.tool_call_id, ""), tool_error=msg.tool_error))
        elif msg.content.strip():
            messages.append(Message("user", msg.content))
    if turn.text.strip():
        messages.append(Message("user", turn.text))
    return messages, system


def _decision_text(turn: router_pb2.TurnInput) -> str:
    """What the decision scores: the turn's text, or (a reply to tool results) the last user message."""
    if turn.text.strip():
        return turn.text
    for msg in reversed(turn.history):
        if msg.role == router_pb2.ROLE_USER and msg.content.strip():
            return msg.content
    return "(tool results)"


def _history_pairs(messages: Sequence[Message]) -> list[tuple[str, str]]:
    return [(msg.role, msg.text) for msg in messages[:-1]] if messages else []


def _tools(request: router_pb2.RespondRequest) -> tuple[list[ToolSpec], str]:
    """-> (tools, error message or "")."""
    tools: list[ToolSpec] = []
    if len(request.tools) > MAX_TOOLS:
        return [], f"{len(request.tools)} tools; the limit is {MAX_TOOLS}"
    for t in request.tools:
        if not TOOL_NAME_RE.fullmatch(t.name):
            return [], f"tool name {t.name!r} must match {TOOL_NAME_RE.pattern}"
        try:
            params = json.loads(t.parameters_json) if t.parameters_json.strip() else {"type": "object",
                                                                                       "properties": {}}
        except json.JSONDecodeError as err:
            return [], f"tool {t.name}: parameters_json is not JSON ({err})"
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            return [], f"tool {t.name}: parameters_json must be a JSON Schema object ({{\"type\": \"object\", ...}})"
        params.setdefault("type", "object")
        tools.append(ToolSpec(t.name, t.description, params))
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        return [], "tool names must be unique"
    return tools, ""


async def _let_calls_start() -> None:
    """Two turns of the event loop: in the first the context tasks reach their stub calls, in the second
    grpc.aio's own call tasks send the requests (measured: after one turn nothing has been sent). CPU work after
    this overlaps the fetches instead of delaying them."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")


class RouterServiceServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, core: RouterCore) -> None:
        self.core = core

    async def _validate_turn(self, turn: router_pb2.TurnInput, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        s = self.core.settings
        answers_tools = bool(turn.history) and turn.history[-1].role == router_pb2.ROLE_TOOL
        if not turn.text.strip() and not answers_tools:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "turn.text is empty (it may be empty only when the history ends with tool results)")
        if len(turn.text) > s.max_turn_chars:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"turn.text has {len(turn.text)} characters; the limit is {s.max_turn_chars}")
        if len(turn.history) > s.max_history_messages:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"turn.history has {len(turn.history)} messages; the limit is {s.max_history_messages} "
                         "(frugal.common.limits.MAX_HISTORY_MESSAGES; send the most recent ones)")
        for i, msg in enumerate(turn.history):
            if msg.role == router_pb2.ROLE_TOOL and not msg.tool_call_id:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                             f"turn.history[{i}]: a ROLE_TOOL message needs tool_call_id")
            for c in msg.tool_calls:
                if not c.id or not TOOL_NAME_RE.fullmatch(c.name):
                    await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                 f"turn.history[{i}]: a tool call needs an id and a valid name")
        if turn.rag_context_chars < 0 or turn.vision_context_chars < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "context sizes must not be negative")

    def _decide(self, turn: router_pb2.TurnInput, messages: Sequence[Message], rag_chars: int, vision_chars: int,
                scorer: str, policy: billing_pb2.TenantPolicy | None, budget: billing_pb2.BudgetState | None,
                max_output_tokens: int | None = None, scored: TurnScore | None = None) -> Decision:
        # With an early score, the text and history it was computed from (not rebuilt and compared again).
        text = (TurnText(_decision_text(turn), _history_pairs(messages), rag_chars, vision_chars) if scored is None
                else TurnText(scored.text, scored.history, rag_chars, vision_chars))
        decision = self.core.decider.decide(text, scorer_name=scorer, policy=policy, budget=budget,
                                            max_output_tokens=max_output_tokens, scored=scored)
        return self.core.with_availability(decision)

    # ------------------------------------------------------------------------------------------- Route
    async def Route(self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._validate_turn(request.turn, context)
        tenant, _, _ = _tenant_and_session()
        clock = TurnClock(context, self.core.settings.redis_op_timeout_s, self.core.redis_watch)
        policy, budget = await self.core.tenant_policy_and_budget(tenant, clock)
        messages, _ = _conversation(request.turn)
        try:
            decision = self._decide(request.turn, messages, request.turn.rag_context_chars,
                                    request.turn.vision_context_chars, request.scorer, policy, budget)
        except ScorerError as err:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        return router_pb2.RouteResponse(decision=decision.to_proto())

    # ----------------------------------------------------------------------------------------- Respond
    async def Respond(
        self, request: router_pb2.RespondRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[router_pb2.RespondResponse]:
        core, s = self.core, self.core.settings
        started = time.perf_counter()
        clock = TurnClock(context, s.redis_op_timeout_s, core.redis_watch)
        await self._validate_turn(request.turn, context)
        if request.max_output_tokens < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "max_output_tokens must not be negative")
        if request.turn_id and not TURN_ID_RE.fullmatch(request.turn_id):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "turn_id must be 1-128 of [A-Za-z0-9._:-], starting with a letter or digit")
        if request.scorer and request.scorer not in core.decider.scorers.names:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"unknown scorer {request.scorer!r}; available: {', '.join(core.decider.scorers.names)}")
        tools, tools_error = _tools(request)
        if tools_error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, tools_error)
        tenant, session, request_id = _tenant_and_session()
        turn_id = request.turn_id or uuid.uuid4().hex
        max_out = min(request.max_output_tokens or s.default_max_output_tokens, s.max_output_tokens_limit)
        messages, history_system = _conversation(request.turn)

        admitted = await self._admit(request, context, clock, tenant, messages, history_system, tools, max_out)
        policy, budget, messages, reserved, tpm = admitted

        # Context, concurrently, each bounded by its own timeout and by the caller's deadline; the turn is scored
        # (the decision's CPU) while the fetches are out.
        rag_task, vision_task, fetching = self._context_tasks(request, policy, context)
        scored: TurnScore | None = None
        if fetching:
            try:
                await _let_calls_start()
                scored = core.decider.score(_decision_text(request.turn), _history_pairs(messages),
                                            scorer_name=request.scorer)
            except BaseException:
                # The caller went away (or scoring failed) before the gather below owns the fetches.
                rag_task.cancel()
                vision_task.cancel()
                raise
        rag_ctx, vision_ctx = await asyncio.gather(rag_task, vision_task)
        contexts = [rag_ctx, vision_ctx]

        decision = self._decide(request.turn, messages, rag_ctx.chars, vision_ctx.chars, request.scorer, policy,
                                budget, max_output_tokens=max_out, scored=scored)
        # frugal.router.cache_aware first: a session with a warm prompt cache may stay on its tier; then the
        # cascade (below) only if the turn is still the learned router's unsure one and not pinned.
        pinned = policy is not None and policy.pinned_tier in ENUM_TIER
        routed = decision.tier
        levers, decision = cache_aware.TurnLevers.begin(
            core.catalog, decision, tenant=tenant, session=session, question=_decision_text(request.turn),
            prompt_chars=len(s.system_prompt) + sum(len(x.text) for x in messages) + rag_ctx.chars
            + vision_ctx.chars, max_out=max_out, provider_of=core.providers.describe,
            max_tier=ENUM_TIER.get(policy.max_tier) if policy is not None else None, pinned=pinned)
        if decision.tier != routed:
            decision = dataclasses.replace(core.with_availability(decision), cascade=False)
        if pinned:
            decision = dataclasses.replace(decision, cascade=False)
        provider_info = common_pb2.ProviderInfo(provider=decision.provider,
                                                model=OFFLINE_MODEL if decision.offline else decision.model,
                                                offline=decision.offline)
        yield router_pb2.RespondResponse(
            started=router_pb2.RespondStarted(decision=decision.to_proto(), context=[c.to_proto() for c in contexts]),
            provider=provider_info,
        )

        system = system_prompt(s.system_prompt, tenant_instructions=policy.instructions if policy else "",
                               history_system=history_system, reply_instructions=request.instructions,
                               passages=rag_ctx.passages, screen_notes=vision_ctx.notes,
                               screen_ages_s=vision_ctx.ages_s)
        # Speech sizing and the cache layout (the turn's untrusted blocks move to the user's message, framed
        # and escaped as they were; tool messages are left as they are).
        system, messages, max_out = levers.shape(system, messages, decision.tier, max_out,
                                                 offline=decision.offline, has_tools=bool(tools))
        account = TurnAccount()
        await self._refresh_health(clock)
        start_tier: TierName = decision.tier
        # Tokens the cascade's cheap attempts used: settled with the turn's rate-limit reservation.
        cascade_tokens = 0
        # --- cascade hook (frugal.router.cascade): learned-v1's unsure turns -------------------------------
        # Not with tools: a tool call cannot be held and scored (it would be sent or lost).
        if decision.cascade and core.answer_scorer is not None and not tools:
            cheap = self._cheap_calls(request, system, messages, max_out, tpm, rag_ctx, vision_ctx, clock)
            if cheap is not None:
                calls, hold_s = cheap
                outcome = await self._cascade(calls, hold_s, request, decision, clock, account, tenant=tenant,
                                              session=session, request_id=request_id, turn_id=turn_id)
                cascade_tokens = sum(a.usage.input_tokens + a.usage.output_tokens
                                     for a in outcome.attempts if a.usage is not None)
                if outcome.kept:
                    ans = outcome.answer
                    assert ans.usage is not None
                    info = common_pb2.ProviderInfo(provider=ans.provider, model=ans.model, offline=ans.offline)
                    first = time.perf_counter()
                    yield router_pb2.RespondResponse(delta=router_pb2.TextDelta(text=ans.text), provider=info)
                    await self._settle(tenant, reserved, cascade_tokens, clock)
                    levers.finished(ans.tier, ans.provider)
                    total = time.perf_counter() - started
                    m.TOTAL_SECONDS.labels(tier=ans.tier, model=ans.model).observe(total)
                    m.ROUTER_REQUESTS.labels(tenant=tenant, tier=ans.tier, model=ans.model, outcome="ok").inc()
                    yield router_pb2.RespondResponse(completed=router_pb2.RespondCompleted(
                        provider=info, tier=TIER_ENUM[ans.tier], usage=ans.usage.to_proto(),  # type: ignore[arg-type]
                        cost_usd=account.cost_usd, baseline_cost_usd=account.baseline_usd,
                        first_token_latency_ms=(first - started) * 1000, total_latency_ms=total * 1000,
                        fallbacks=account.fallbacks, context=[c.to_proto() for c in contexts],
                        cost_event_ids=account.event_ids, decision=decision.to_proto(), degraded=clock.degraded),
                        provider=info)
                    return
                # Escalated: the normal attempts from premium (its cooldowns, breaker and fallbacks).
                start_tier = "premium"
        # --- end cascade hook ----------------------------------------------------------------------------------
        candidates, cooling = self.core.plan(start_tier)
        for skip in cooling:
            assert skip.deployment is not None
            d = skip.deployment
            more = max(0.0, core.health.open_until(d.name) - time.time())
            account.fallbacks.append(router_pb2.Fallback(
                from_model=skip.model, to_model=candidates[0].model if candidates else "",
                reason=f"skipped {d.name}: cooling down for {more:.1f}s more "
                       f"({core.health.reason(d.name) or 'failures reported by another replica'})"))
            m.DEPLOYMENT_SKIPS.labels(deployment=d.name).inc()
        if not candidates:
            wait = min((core.health.open_until(c.deployment.name) - time.time() for c in cooling
                        if c.deployment is not None), default=1.0)
            context.set_trailing_metadata((("retry-after", str(max(1, int(wait + 0.999)))),))
            m.ROUTER_REQUESTS.labels(tenant=tenant, tier=decision.tier, model=decision.model,
                                     outcome="provider_error").inc()
            await _abort(context, grpc.StatusCode.UNAVAILABLE,
                         "every deployment for this turn is cooling down after failures: "
                         + "; ".join(f.reason for f in account.fallbacks))
        first_token_at: float | None = None
        failures: list[str] = []
        for attempt, cand in enumerate(candidates):
            tier, model = cand.tier, cand.model
            provider = cand.deployment.impl if cand.deployment is not None else core.providers.offline
            info = common_pb2.ProviderInfo(provider=provider.provider, model=model, offline=provider.offline)
            left = clock.left()
            budget_s = s.provider_timeout_s if left is None else min(s.provider_timeout_s, left - DEADLINE_RESERVE_S)
            if budget_s < MIN_ATTEMPT_S:
                failures.append(f"{cand.label}: no time left before the caller's deadline")
                m.ROUTER_REQUESTS.labels(tenant=tenant, tier=tier, model=model, outcome="deadline_exceeded").inc()
                await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                             "the caller's deadline leaves no time for a provider call"
                             + (f" (after: {'; '.join(failures[:-1])})" if len(failures) > 1 else ""))
            # A non-last attempt may not spend the whole deadline waiting for its first token.
            last = attempt == len(candidates) - 1
            first_token_s = s.provider_first_token_timeout_s
            if left is not None and not last:
                first_token_s = min(first_token_s, max(MIN_ATTEMPT_S, budget_s * s.first_token_deadline_share))
            attempt_messages, note = self._fit_model(messages, system, model, max_out, tpm, tools)
            if note and note not in clock.degraded:
                clock.degraded.append(note)
            preq = ProviderRequest(
                model=model, system=system, messages=attempt_messages, max_output_tokens=max_out,
                question=_decision_text(request.turn), passages=rag_ctx.passages, screen_notes=vision_ctx.notes,
                tools=tools, timeout_s=budget_s,
            )
            call = _Call(tenant, tier, model, provider)
            if cand.deployment is not None:
                cand.deployment.in_flight += 1
                m.DEPLOYMENT_CALLS.labels(deployment=cand.deployment.name).inc()
            token = EMIT_WAIT_S.set(None if left is None else max(0.001, budget_s))
            try:
                async for item in levers.speak(self._stream_call(call, preq, budget_s, first_token_s), call):
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                        m.FIRST_TOKEN_SECONDS.labels(tier=tier, model=model).observe(first_token_at - started)
                    if isinstance(item, ToolCallOut):
                        out = router_pb2.ToolCall(id=item.id, name=item.name, arguments_json=item.arguments_json)
                        yield router_pb2.RespondResponse(tool_call=out, provider=info)
                    else:
                        yield router_pb2.RespondResponse(delta=router_pb2.TextDelta(text=item), provider=info)
            except ProviderError as err:
                call.usage = merge_partial(call.reported, call.emitted)
                EMIT_WAIT_S.set(self._emit_wait(clock))
                await self._account(call, account, attempt, turn_id, session, request_id, decision, outcome=err.kind)
                AI_REQUESTS_TOTAL.labels(service="router", kind="llm", provider=provider.provider, model=model,
                                         outcome=err.kind).inc()
                failures.append(f"{cand.label}: {err}")
                if cand.deployment is not None:
                    store = await core.health.failure(cand.deployment.name, err, timeout_s=clock.redis_timeout())
                    if store:
                        clock.fail_open("breaker_store", store)
                if call.emitted:
                    m.ROUTER_REQUESTS.labels(tenant=tenant, tier=tier, model=model, outcome="provider_error").inc()
                    await _abort(context, grpc.StatusCode.UNAVAILABLE,
                                 f"{model} failed after streaming {len(call.emitted)} characters: {err}")
                if not err.fallback_ok:
                    m.ROUTER_REQUESTS.labels(tenant=tenant, tier=tier, model=model, outcome="provider_error").inc()
                    await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"{model} rejected the request: {err}")
                nxt = candidates[attempt + 1] if attempt + 1 < len(candidates) else None
                if nxt is not None:
                    where = f" @ {cand.deployment.name}" if cand.deployment is not None else ""
                    account.fallbacks.append(router_pb2.Fallback(from_model=model, to_model=nxt.model,
                                                                 reason=f"{err}{where}"[:500]))
                    m.FALLBACKS.labels(from_tier=tier, to_tier=nxt.tier, reason=err.kind).inc()
                    log.warning("%s failed (%s); falling back to %s", cand.label, err, nxt.label)
                continue
            except (asyncio.CancelledError, GeneratorExit):
                # The caller went away (or its deadline passed) mid-call: the partial call is still billed,
                # with the usage the provider had already reported.
                call.usage = merge_partial(call.reported, call.emitted)
                await asyncio.shield(self._account(call, account, attempt, turn_id, session, request_id, decision,
                                                   outcome="cancelled"))
                m.ROUTER_REQUESTS.labels(tenant=tenant, tier=tier, model=model, outcome="cancelled").inc()
                raise
            finally:
                EMIT_WAIT_S.reset(token)
                if cand.deployment is not None:
                    cand.deployment.in_flight -= 1
            # Success.
            EMIT_WAIT_S.set(self._emit_wait(clock))
            await self._account(call, account, attempt, turn_id, session, request_id, decision, outcome="ok")
            levers.finished(tier, provider.provider)
            AI_REQUESTS_TOTAL.labels(service="router", kind="llm", provider=provider.provider, model=model,
                                     outcome="ok").inc()
            assert call.usage is not None
            if cand.deployment is not None:
                await core.health.success(cand.deployment.name, timeout_s=clock.redis_timeout())
            await self._settle(tenant, reserved, call.usage.input_tokens + call.usage.output_tokens + cascade_tokens,
                               clock)
            if core.producer.pending_writes:
                clock.degraded.append("cost events: Redis slow, the write goes on in the background")
            total = time.perf_counter() - started
            m.TOTAL_SECONDS.labels(tier=tier, model=model).observe(total)
            m.ROUTER_REQUESTS.labels(tenant=tenant, tier=tier, model=model,
                                     outcome="fallback_ok" if attempt or cooling else "ok").inc()
            yield router_pb2.RespondResponse(
                completed=router_pb2.RespondCompleted(
                    provider=info,
                    tier=TIER_ENUM[tier],  # type: ignore[arg-type]
                    usage=call.usage.to_proto(),
                    cost_usd=account.cost_usd,
                    baseline_cost_usd=account.baseline_usd,
                    first_token_latency_ms=((first_token_at or time.perf_counter()) - started) * 1000,
                    total_latency_ms=total * 1000,
                    fallbacks=account.fallbacks,
                    context=[c.to_proto() for c in contexts],
                    cost_event_ids=account.event_ids,
                    decision=decision.to_proto(),
                    degraded=clock.degraded,
                ),
                provider=info,
            )
            return
        m.ROUTER_REQUESTS.labels(tenant=tenant, tier=decision.tier, model=decision.model,
                                 outcome="provider_error").inc()
        left = clock.left()
        code = (grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left < MIN_ATTEMPT_S + DEADLINE_RESERVE_S
                else grpc.StatusCode.UNAVAILABLE)
        await _abort(context, code, "every provider of the fallback chain failed: " + "; ".join(failures))

    async def _admit(
        self, request: router_pb2.RespondRequest, context: grpc.aio.ServicerContext[Any, Any], clock: TurnClock,
        tenant: str, messages: list[Message], history_system: list[str], tools: Sequence[ToolSpec], max_out: int,
    ) -> tuple[billing_pb2.TenantPolicy | None, billing_pb2.BudgetState | None, list[Message], int, int]:
        """Budget, turn size and rate limits; aborts the RPC when the turn may not run. Returns the tenant's
        policy and budget state, the (trimmed) messages, the tokens reserved, and the tokens-per-minute limit."""
        core, s = self.core, self.core.settings
        policy, budget = await core.tenant_policy_and_budget(tenant, clock)
        verdict = budget_verdict(policy, budget)
        if (clock.tenant_state_unread and s.tenant_state_unreachable == "refuse"
                and not core.providers.pool.route_tier("lite").offline):
            verdict = BudgetVerdict("unknown", "billing's tenant state cannot be read (Redis does not answer) and "
                                               "this router holds no earlier copy: the tenant's cap is unknown, paid "
                                               "calls refused until it can be read (TENANT_STATE_UNREACHABLE=allow "
                                               "fails open instead)")
        if verdict.refuses:  # exhausted, suspended: RESOURCE_EXHAUSTED; unknown state of a capped tenant: UNAVAILABLE
            m.LIMIT_REJECTIONS.labels(tenant=tenant, limit="budget").inc()
            m.ROUTER_REQUESTS.labels(tenant=tenant, tier="", model="", outcome=f"budget_{verdict.status}").inc()
            code = grpc.StatusCode.UNAVAILABLE if verdict.retryable else grpc.StatusCode.RESOURCE_EXHAUSTED
            await _abort(context, code, f"budget {verdict.status} for tenant {tenant}: {verdict.detail}")
        try:
            core.recorder.check_can_spend()  # no paid call that could not be billed durably
        except CostRecordingUnavailable as err:
            m.ROUTER_REQUESTS.labels(tenant=tenant, tier="", model="", outcome="cost_recording_unavailable").inc()
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(err))
        rpm = (policy.requests_per_minute if policy is not None and policy.requests_per_minute > 0
               else s.default_requests_per_minute)
        tpm = (policy.tokens_per_minute if policy is not None and policy.tokens_per_minute > 0
               else s.default_tokens_per_minute)

        # Turn size, before anything is reserved: history trimmed oldest-first to the per-turn cap and the
        # tenant's window (the chosen model's window is applied per attempt, below).
        base_system = system_prompt(s.system_prompt, tenant_instructions=policy.instructions if policy else "",
                                    history_system=history_system, reply_instructions=request.instructions)
        turn_budget = input_budget("", windows={"": 1 << 40}, max_output_tokens=max_out,
                                   per_turn_cap=s.max_turn_input_tokens,
                                   tenant_tokens_per_minute=tpm if s.rate_limits_enabled else None,
                                   reserved_output_tokens=min(max_out, s.expected_output_tokens))
        try:
            trimmed = self._trim(messages, estimate_tokens(base_system), turn_budget, tools)
        except TurnTooLarge as err:
            m.ROUTER_REQUESTS.labels(tenant=tenant, tier="", model="", outcome="too_large").inc()
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        if trimmed.dropped:
            messages = trimmed.messages
            m.HISTORY_TRIMMED.inc(trimmed.dropped)
            clock.degraded.append(trimmed.note(turn_budget))

        # Rate limits: count the request and reserve its estimated tokens, atomically across replicas.
        reserved = 0
        if s.rate_limits_enabled:
            reserved = trimmed.tokens + min(max_out, s.expected_output_tokens)
            limit = await core.limiter.check(tenant, requests_per_minute=rpm, tokens_per_minute=tpm,
                                             estimated_tokens=reserved, timeout_s=clock.redis_timeout())
            if not limit.allowed:
                m.ROUTER_REQUESTS.labels(tenant=tenant, tier="", model="", outcome="rate_limited").inc()
                if limit.limit == "too_large":
                    await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"this turn needs about {reserved} tokens, more than tenant {tenant}'s whole "
                                 f"window of {tpm} tokens per minute")
                context.set_trailing_metadata((
                    ("retry-after", limit.retry_after_header),
                    ("x-ratelimit-limit", f"{rpm} requests/min; {tpm} tokens/min"),
                    ("x-ratelimit-exceeded", limit.limit),
                ))
                what = f"{rpm} requests per minute" if limit.limit == "requests" else f"{tpm} tokens per minute"
                await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"rate limit exceeded for tenant {tenant}: {what}; retry after "
                             f"{limit.retry_after_header}s")
            if limit.error is not None:
                reserved = 0
                clock.fail_open("rate_limiter", f"rate limiter unavailable ({limit.error}): request allowed")

        return policy, budget, messages, reserved, tpm

    @staticmethod
    def _emit_wait(clock: TurnClock) -> float | None:
        """A cost-event write holds the turn at most like any other Redis call; past that it goes on in the
        background (and buffers if Redis fails), so the event is not lost and the turn is not late."""
        return None if clock.left() is None else clock.redis_timeout()

    def _trim(self, messages: list[Message], system_tokens: int, budget: TurnBudget,
              tools: Sequence[ToolSpec]) -> Trimmed:
        """History before the current turn trimmed to `budget`; the turn itself (and tool results it answers
        with) is part of the fixed cost."""
        tail = 1 if messages and messages[-1].role == "user" else 0
        history, current = messages[: len(messages) - tail], messages[len(messages) - tail:]
        fixed = system_tokens + sum(message_tokens(x) for x in current) + sum(
            estimate_tokens(t.description) + estimate_tokens(json.dumps(t.parameters)) for t in tools)
        trimmed = fit_history(history, fixed_tokens=fixed, budget=budget)
        return dataclasses.replace(trimmed, messages=[*trimmed.messages, *current])

    def _fit_model(self, messages: list[Message], system: str, model: str, max_out: int, tpm: int,
                   tools: Sequence[ToolSpec]) -> tuple[list[Message], str]:
        """Messages trimmed to `model`'s context window (with the system prompt and its context)."""
        s = self.core.settings
        budget = input_budget(model, windows=self.core.windows, max_output_tokens=max_out,
                              per_turn_cap=s.max_turn_input_tokens,
                              tenant_tokens_per_minute=tpm if s.rate_limits_enabled else None,
                              reserved_output_tokens=min(max_out, s.expected_output_tokens))
        try:
            trimmed = self._trim(messages, estimate_tokens(system), budget, tools)
        except TurnTooLarge:
            # The context made it too large for this model: send the turn without history; the provider
            # refuses if even that does not fit, and the fallback chain goes on.
            return [x for x in messages[-1:]], f"{model}: turn too large for its window; history dropped"
        if trimmed.dropped:
            m.HISTORY_TRIMMED.inc(trimmed.dropped)
            return trimmed.messages, trimmed.note(budget)
        return messages, ""

    async def _refresh_health(self, clock: TurnClock) -> None:
        """Reads the shared breaker state before the turn's attempts are planned (bounded; fail open)."""
        core = self.core
        names = [d.name for d in core.providers.pool.deployments]
        store = await core.health.refresh(names, timeout_s=clock.redis_timeout())
        if store:
            clock.fail_open("breaker_store", store)

    async def _settle(self, tenant: str, reserved: int, used: int, clock: TurnClock) -> None:
        """The rate-limit reservation corrected to the tokens the turn's calls used."""
        if not reserved:
            return
        note = await self.core.limiter.settle(tenant, used - reserved, timeout_s=clock.redis_timeout())
        if note:
            clock.fail_open("rate_limiter", note)

    def _cheap_calls(
        self, request: router_pb2.RespondRequest, system: str, messages: list[Message], max_out: int, tpm: int,
        rag_ctx: ContextResult, vision_ctx: ContextResult, clock: TurnClock,
    ) -> tuple[list[CheapCall], float] | None:
        """The cascade's lite and standard calls (the first healthy deployment of each tier, or the offline
        stand-in) and how long they may take; None (no cascade) when the two cheap tiers are not two distinct
        models available now, or when too little of the caller's deadline is left to hold and escalate."""
        core, s = self.core, self.core.settings
        left = clock.left()
        # At most half of what is left: premium must still have time if the cascade escalates.
        hold_s = s.provider_timeout_s if left is None else min(s.provider_timeout_s, (left - DEADLINE_RESERVE_S) / 2)
        if hold_s < MIN_ATTEMPT_S:
            return None
        calls: list[CheapCall] = []
        cheap: tuple[TierName, TierName] = ("lite", "standard")
        for tier in cheap:
            planned, _ = core.plan(tier)
            if not planned or planned[0].tier != tier:
                return None
            cand = planned[0]
            provider = cand.deployment.impl if cand.deployment is not None else core.providers.offline
            fitted, note = self._fit_model(messages, system, cand.model, max_out, tpm, ())
            if note and note not in clock.degraded:
                clock.degraded.append(note)
            calls.append(CheapCall(tier=tier, model=cand.model, provider=provider, deployment=cand.deployment,
                                   request=ProviderRequest(
                model=cand.model, system=system, messages=fitted, max_output_tokens=max_out,
                question=_decision_text(request.turn), passages=rag_ctx.passages, screen_notes=vision_ctx.notes,
                timeout_s=hold_s)))
        if calls[0].model == calls[1].model and not calls[0].provider.offline:
            return None
        return calls, hold_s

    async def _cascade(
        self, calls: list[CheapCall], hold_s: float, request: router_pb2.RespondRequest, decision: Decision,
        clock: TurnClock, account: TurnAccount, *, tenant: str, session: str, request_id: str, turn_id: str,
    ) -> CascadeOutcome:
        """Runs the cascade's cheap attempts (each billed with its own cost event, also when the caller leaves
        during the hold), books them on the turn's account and reports them to the deployments' breakers."""
        core = self.core
        for c in calls:
            if c.deployment is not None:
                c.deployment.in_flight += 1
                m.DEPLOYMENT_CALLS.labels(deployment=c.deployment.name).inc()
        token = EMIT_WAIT_S.set(self._emit_wait(clock))
        try:
            outcome = await run_cascade(
                calls=calls, catalog=core.catalog, recorder=core.recorder, scorer=core.answer_scorer,  # type: ignore[arg-type]
                question=_decision_text(request.turn), p_lite=decision.p_lite or 0.5,
                p_standard=decision.p_standard or 0.5, budget_s=hold_s, tenant=tenant, session=session,
                request_id=request_id, turn_id=turn_id, scorer_name=decision.scorer, routed_tier=decision.tier,
                answer_keep=decision.answer_keep)
        finally:
            EMIT_WAIT_S.reset(token)
            for c in calls:
                if c.deployment is not None:
                    c.deployment.in_flight -= 1
        CASCADE_TURNS.labels(outcome="kept" if outcome.kept else "escalated").inc()
        CASCADE_HOLD_SECONDS.observe(outcome.hold_seconds)
        for c, a in zip(calls, outcome.attempts, strict=True):
            account.cost_usd += a.cost_usd
            account.baseline_usd += a.baseline_usd
            account.event_ids.append(a.event_id)
            offline = str(a.offline).lower()
            AI_REQUESTS_TOTAL.labels(service="router", kind="llm", provider=a.provider, model=a.model,
                                     outcome=a.failure.kind if a.failure else "ok").inc()
            m.COST_USD.labels(tenant=tenant, tier=a.tier, model=a.model, offline=offline).inc(a.cost_usd)
            if c.deployment is None:
                continue
            if a.failure is not None:
                store = await core.health.failure(c.deployment.name, a.failure, timeout_s=clock.redis_timeout())
                if store:
                    clock.fail_open("breaker_store", store)
            else:
                await core.health.success(c.deployment.name, timeout_s=clock.redis_timeout())
        if core.producer.pending_writes:
            clock.degraded.append("cost events: Redis slow, the write goes on in the background")
        return outcome

    def _context_tasks(
        self, request: router_pb2.RespondRequest, policy: billing_pb2.TenantPolicy | None,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> tuple[asyncio.Future[ContextResult], asyncio.Future[ContextResult], bool]:
        """The rag and vision fetches as tasks, and whether either calls out (False: both skipped)."""
        core, s = self.core, self.core.settings
        left = context.time_remaining()
        # Context may use at most half of what is left of the caller's deadline.
        cap = None if left is None else max(left / 2, 0.001)

        def bounded(t: float) -> float:
            return t if cap is None else min(t, cap)

        async def done(r: ContextResult) -> ContextResult:
            return r

        query = _decision_text(request.turn)
        fetching = False
        if request.skip_rag:
            rag = done(skipped(RAG, "skip_rag requested by the caller"))
        elif policy is not None and not policy.knowledge_base_enabled:
            rag = done(skipped(RAG, "knowledge base disabled in the tenant policy"))
        else:
            rag = core.contexts.rag(query, top_k=s.rag_top_k, timeout_s=bounded(s.rag_timeout_s),
                                    max_chars=s.rag_max_chars)
            fetching = True
        if request.skip_vision:
            vision = done(skipped(VISION, "skip_vision requested by the caller"))
        else:
            vision = core.contexts.vision(limit=s.vision_max_analyses, timeout_s=bounded(s.vision_timeout_s))
            fetching = True
        return asyncio.ensure_future(rag), asyncio.ensure_future(vision), fetching

    async def _stream_call(self, call: _Call, preq: ProviderRequest, budget_s: float,
                           first_token_s: float) -> AsyncIterator[str | ToolCallOut]:
        """Yields text and complete tool calls; enforces the first-token and total timeouts; keeps the usage the
        provider reports as it goes (call.reported) and sets call.usage at the end. Anything the provider
        raises comes out as a ProviderError (an unexpected exception is a provider failure like any other)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        total_deadline = start + budget_s
        first_deadline = min(total_deadline, start + first_token_s)
        gen = call.provider.stream(preq)
        try:
            while True:
                limit = total_deadline if call.emitted else first_deadline
                try:
                    async with asyncio.timeout_at(limit):
                        event = await anext(gen)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    what = "complete answer" if call.emitted else "first token"
                    raise ProviderError("interrupted" if call.emitted else "timeout",
                                        f"no {what} within {limit - start:.2f}s") from None
                except ProviderError:
                    raise
                except Exception as err:
                    log.exception("provider %s raised an unexpected error", call.provider.provider)
                    raise ProviderError("interrupted" if call.emitted else "unknown",
                                        f"{type(err).__name__}: {str(err)[:300]}") from err
                if isinstance(event, TextChunk):
                    if event.text:
                        call.emitted += event.text
                        yield event.text
                elif isinstance(event, ToolCallChunk):
                    call.emitted += event.call.arguments_json
                    yield event.call
                elif isinstance(event, UsageReport):
                    call.reported = event.usage
                elif isinstance(event, StreamDone):
                    call.usage = event.usage
                    call.done = event
        finally:
            await gen.aclose()
        if call.usage is None:
            raise ProviderError("interrupted" if call.emitted else "unknown", "stream ended without completion")

    async def _account(
        self, call: _Call, account: TurnAccount, attempt: int, turn_id: str, session: str, request_id: str,
        decision: Decision, *, outcome: str,
    ) -> None:
        """One cost event per provider call attempt, whatever its outcome (frugal.common.cost_recorder: its own
        event id per attempt, so a reused turn_id never hides a call; the one offline rule; an interrupted
        call is billed on the usage reported so far, else on our estimate of the prompt it sent)."""
        core = self.core
        att = core.recorder.attempt(
            tenant_id=call.tenant, kind=CostKind.LLM, provider=call.provider.provider, model=call.model,
            key=(turn_id, str(attempt)), session_id=session, request_id=request_id, tier=call.tier,
            offline=call.provider.offline,
            # An offline stand-in is priced as the model of the tier it stands in for.
            priced_as=core.catalog.tier_model(call.tier) if call.tier in TIERS else call.model,
            estimate=UsageAmounts(input_tokens=decision.estimated_input_tokens,
                                  output_tokens=estimate_tokens(call.emitted), requests=1),
            attributes={"turn_id": turn_id, "attempt": str(attempt), "scorer": decision.scorer,
                        "routed_tier": decision.tier, **cache_aware.call_attributes(call.done)},
        )
        if call.usage is not None:
            att.report(call.usage)
        elif outcome in NOT_PROCESSED:
            att.report(UsageAmounts(requests=1))  # refused before any work: nothing to bill
        event = await att.finish(outcome)
        call.usage = event.usage
        account.cost_usd += event.cost_usd
        # The same rule billing applies to the ledger (offline: no baseline, so no fake savings).
        account.baseline_usd += baseline_cost(event, core.catalog)
        account.event_ids.append(event.event_id)
        offline = str(event.offline).lower()
        m.COST_USD.labels(tenant=call.tenant, tier=call.tier, model=call.model, offline=offline).inc(event.cost_usd)
        usage = event.usage
        est = str(usage.estimated).lower()
        m.TOKENS.labels(model=call.model, direction="input", estimated=est).inc(usage.input_tokens)
        m.TOKENS.labels(model=call.model, direction="output", estimated=est).inc(usage.output_tokens)



@dataclass
class _Call:
    tenant: str
    tier: TierName
    model: str
    provider: LlmProvider
    emitted: str = ""
    usage: UsageAmounts | None = None
    # The latest usage the provider reported during the stream (billed if the call is cut short).
    reported: UsageAmounts | None = None
    done: StreamDone | None = None  # the provider's final event (finish reason, prompt-cache writes)


def _startup_error(message: str) -> NoReturn:
    raise StartupError(message)  # one line and exit 1 through frugal.common.service (the one start-up path)


async def build_app(settings: Settings) -> GrpcApp:
    """Refuses to start (StartupError: one line on stderr, exit 1) on a corrupt scorer artifact, an unknown default
    scorer, a bad reference sample or price catalog."""
    try:
        catalog = default_catalog(settings.price_catalog_path)
    except PriceCatalogError as err:
        _startup_error(str(err))
    try:
        reference = read_reference_sample(settings.reference_sample_path) if settings.reference_sample_path else None
        scorers = load_scorers(settings.scorer_artifact_path, default=settings.default_scorer,
                               reference_texts=reference, reference_name=str(settings.reference_sample_path))
    except ScorerError as err:
        _startup_error(str(err))
    providers = Providers(settings, catalog)
    for spec in providers.specs:
        for model in spec.models or [mm for mm, p in catalog.models.items() if p.provider == spec.provider
                                     and p.kind == "llm"]:
            if model not in catalog.models:
                _startup_error(f"LLM_DEPLOYMENTS: deployment {spec.name} serves {model!r}, which the price "
                               "catalog does not list")
    log.info("LLM deployments: %s", describe(providers.specs))
    for tier in TIERS:
        route = providers.pool.route_tier(tier)
        log.info("tier %s -> %s via %s%s", tier, route.model, route.provider,
                 " (OFFLINE: no API key)" if route.offline else (f" ({route.reason})" if route.reason else ""))
    core = RouterCore(
        settings, catalog=catalog, scorers=scorers, redis=create_redis(settings.redis_url), providers=providers,
        contexts=ContextClients(settings.rag_addr, settings.vision_addr, max_message_bytes=settings.max_message_bytes),
    )
    app = GrpcApp(settings, services=[SERVICE_NAME])
    router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServiceServicer(core), app.server)
    app.on_shutdown(core.aclose)
    # RouterService's own health status: NOT_SERVING while every deployment cools down (frugal.router.serving).
    status = ServingStatus(app.health, SERVICE_NAME, providers.pool, core.health,
                           interval_s=core.health.config.refresh_interval_s,
                           redis_timeout_s=settings.redis_op_timeout_s)
    app.on_started(status.start)
    app.on_shutdown(status.aclose)  # hooks run in reverse: the status stops before the core closes
    return app
