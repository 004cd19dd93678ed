"""gRPC wiring of the router service: Route (decision only) and Respond (the streamed answer)."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sys
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
from frugal.common.cost_events import CostEvent, CostEventProducer, CostKind, baseline_cost, make_event_id
from frugal.common.grpc_server import GrpcApp, service_full_name
from frugal.common.metrics import AI_COST_TOTAL, AI_REQUESTS_TOTAL
from frugal.common.pricing import TIERS, PriceCatalog, PriceCatalogError, TierName, default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.settings import ConfigError
from frugal.common.tenancy import current_identity
from frugal.common.tenant_state import TenantStateCache
from frugal.common.usage import UsageAmounts
from frugal.router import cache_aware
from frugal.router import metrics as m
from frugal.router.config import Settings
from frugal.router.context import RAG, VISION, ContextClients, ContextResult, skipped
from frugal.router.decision import ENUM_TIER, TIER_ENUM, Decider, Decision, TurnText, budget_verdict
from frugal.router.fallback import fallback_sequence, parse_fallback_chain
from frugal.router.limits import TenantRateLimiter
from frugal.router.providers.base import (
    LlmProvider,
    ProviderError,
    ProviderRequest,
    StreamDone,
    TextChunk,
    estimate_tokens,
)
from frugal.router.providers.claude import ClaudeProvider
from frugal.router.providers.gemini import GeminiProvider
from frugal.router.providers.offline import OFFLINE_MODEL, OfflineProvider
from frugal.router.scoring import ScorerError, ScorerSet, TierMix, load_scorers, read_reference_sample

log = logging.getLogger(__name__)

SERVICE_NAME = service_full_name(router_pb2.DESCRIPTOR, "RouterService")
TURN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# Time kept back from the caller's deadline: to emit the cost event and send the final message ourselves.
DEADLINE_RESERVE_S = 0.05
# Below this, a provider attempt is not worth starting.
MIN_ATTEMPT_S = 0.05


class Providers:
    """Tier -> provider implementation: the SDK provider when its key is configured, else offline."""

    def __init__(self, settings: Settings, catalog: PriceCatalog) -> None:
        self.catalog = catalog
        self.offline = OfflineProvider(word_delay_s=settings.offline_word_delay_s)
        self.by_name: dict[str, LlmProvider] = {}
        if settings.gemini_api_key is not None and settings.gemini_api_key.get_secret_value():
            self.by_name["google"] = GeminiProvider(
                settings.gemini_api_key.get_secret_value(), base_url=settings.gemini_base_url,
                timeout_s=settings.provider_timeout_s, max_retries=settings.provider_max_retries,
                thinking_budget=settings.gemini_thinking_budget,
            )
        if settings.anthropic_api_key is not None and settings.anthropic_api_key.get_secret_value():
            self.by_name["anthropic"] = ClaudeProvider(
                settings.anthropic_api_key.get_secret_value(), base_url=settings.anthropic_base_url,
                timeout_s=settings.provider_timeout_s, max_retries=settings.provider_max_retries,
            )

    def for_tier(self, tier: TierName) -> tuple[LlmProvider, str]:
        """(provider, model name to send/record); offline stand-ins record OFFLINE_MODEL."""
        model = self.catalog.tier_model(tier)
        impl = self.by_name.get(self.catalog.price(model).provider)
        if impl is None:
            return self.offline, OFFLINE_MODEL
        return impl, model

    def describe(self, tier: TierName) -> tuple[str, bool]:
        impl, _ = self.for_tier(tier)
        return impl.provider, impl.offline

    async def aclose(self) -> None:
        for p in self.by_name.values():
            try:
                await p.aclose()
            except Exception:
                log.exception("closing provider %s failed", p.provider)


@dataclass
class TurnAccount:
    """What a Respond turn spent, across attempts."""

    cost_usd: float = 0.0
    baseline_usd: float = 0.0
    event_ids: list[str] = field(default_factory=list)
    fallbacks: list[router_pb2.Fallback] = field(default_factory=list)


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
        self.tenant_state = TenantStateCache(redis, ttl_s=settings.tenant_state_ttl_s)
        self.limiter = TenantRateLimiter(redis)
        self.producer = CostEventProducer(redis)
        self.chain = parse_fallback_chain(settings.fallback_chain)
        self.decider = Decider(
            scorers, catalog, TierMix.parse(settings.default_mix), provider_of=providers.describe,
            system_prompt_chars=len(settings.system_prompt), expected_output_tokens=settings.expected_output_tokens,
        )

    async def aclose(self) -> None:
        await self.producer.aclose()
        await self.contexts.aclose()
        await self.providers.aclose()
        await self.redis.aclose()

    async def tenant_policy_and_budget(
        self, tenant: str
    ) -> tuple[billing_pb2.TenantPolicy | None, billing_pb2.BudgetState | None, str]:
        """Cached reads of billing's published state; Redis down -> (None, None, why)."""
        try:
            policy = await self.tenant_state.policy(tenant)
            budget = await self.tenant_state.budget(tenant)
        except (RedisError, OSError) as err:
            log.warning("tenant state unavailable for %s: %s", tenant, err)
            return None, None, f"tenant state unavailable ({type(err).__name__})"
        return policy, budget, ""


def _tenant_and_session() -> tuple[str, str, str]:
    ident = current_identity()
    if ident is None or ident.tenant_id is None or ident.session_id is None:
        raise RuntimeError("no request identity (the tenancy interceptor did not run)")
    return ident.tenant_id, ident.session_id, ident.request_id


ROLE_NAMES = {router_pb2.ROLE_USER: "user", router_pb2.ROLE_ASSISTANT: "assistant", router_pb2.ROLE_SYSTEM: "system"}


def _history(turn: router_pb2.TurnInput) -> list[tuple[str, str]]:
    return [(ROLE_NAMES.get(msg.role, "user"), msg.content) for msg in turn.history if msg.content.strip()]


async def _abort(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")


class RouterServiceServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, core: RouterCore) -> None:
        self.core = core

    async def _validate_turn(self, turn: router_pb2.TurnInput, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        s = self.core.settings
        if not turn.text.strip():
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "turn.text is empty")
        if len(turn.text) > s.max_turn_chars:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"turn.text has {len(turn.text)} characters; the limit is {s.max_turn_chars}")
        if len(turn.history) > s.max_history_messages:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"turn.history has {len(turn.history)} messages; the limit is {s.max_history_messages} "
                         "(send the most recent ones)")
        if turn.rag_context_chars < 0 or turn.vision_context_chars < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "context sizes must not be negative")

    # ------------------------------------------------------------------------------------------- Route
    async def Route(self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._validate_turn(request.turn, context)
        tenant, _, _ = _tenant_and_session()
        policy, budget, _ = await self.core.tenant_policy_and_budget(tenant)
        turn = TurnText(request.turn.text, _history(request.turn), request.turn.rag_context_chars,
                        request.turn.vision_context_chars)
        try:
            decision = self.core.decider.decide(turn, scorer_name=request.scorer, policy=policy, budget=budget)
        except ScorerError as err:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        return router_pb2.RouteResponse(decision=decision.to_proto())

    # ----------------------------------------------------------------------------------------- Respond
    async def Respond(
        self, request: router_pb2.RespondRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[router_pb2.RespondResponse]:
        core, s = self.core, self.core.settings
        started = time.perf_counter()
        await self._validate_turn(request.turn, context)
        if request.max_output_tokens < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "max_output_tokens must not be negative")
        if request.turn_id and not TURN_ID_RE.fullmatch(request.turn_id):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "turn_id must be 1-128 of [A-Za-z0-9._:-], starting with a letter or digit")
        if request.scorer and request.scorer not in core.decider.scorers.names:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"unknown scorer {request.scorer!r}; available: {', '.join(core.decider.scorers.names)}")
        tenant, session, request_id = _tenant_and_session()
        turn_id = request.turn_id or uuid.uuid4().hex
        max_out = min(request.max_output_tokens or s.default_max_output_tokens, s.max_output_tokens_limit)
        history = _history(request.turn)

        policy, budget, _ = await core.tenant_policy_and_budget(tenant)
        verdict = budget_verdict(policy, budget)
        if verdict.status == "exhausted":
            m.LIMIT_REJECTIONS.labels(tenant=tenant, limit="budget").inc()
            m.ROUTER_REQUESTS.labels(tenant=tenant, tier="", model="", outcome="budget_exhausted").inc()
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"monthly budget exhausted for tenant {tenant}: {verdict.detail}")

        # Rate limits: count the request and reserve its estimated tokens, atomically across replicas.
        reserved = 0
        if s.rate_limits_enabled:
            rpm = (policy.requests_per_minute if policy is not None and policy.requests_per_minute > 0
                   else s.default_requests_per_minute)
            tpm = (policy.tokens_per_minute if policy is not None and policy.tokens_per_minute > 0
                   else s.default_tokens_per_minute)
            prompt_chars = len(s.system_prompt) + len(request.turn.text) + sum(len(t) for _, t in history)
            reserved = math.ceil(prompt_chars / 4) + min(max_out, s.expected_output_tokens)
            limit = await core.limiter.check(tenant, requests_per_minute=rpm, tokens_per_minute=tpm,
                                             estimated_tokens=reserved)
            if not limit.allowed:
                m.ROUTER_REQUESTS.labels(tenant=tenant, tier="", model="", outcome="rate_limited").inc()
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

        # Context, concurrently, each bounded by its own timeout and by the caller's deadline.
        rag_task, vision_task = self._context_tasks(request, policy, context)
        rag_ctx, vision_ctx = await asyncio.gather(rag_task, vision_task)
        contexts = [rag_ctx, vision_ctx]

        turn = TurnText(request.turn.text, history, rag_ctx.chars, vision_ctx.chars)
        decision = core.decider.decide(turn, scorer_name=request.scorer, policy=policy, budget=budget,
                                       max_output_tokens=max_out)
        levers, decision = cache_aware.TurnLevers.begin(  # frugal.router.cache_aware: stay on a warm cache
            core.catalog, decision, tenant=tenant, session=session, question=request.turn.text,
            prompt_chars=len(s.system_prompt) + len(request.turn.text) + sum(len(t) for _, t in history)
            + rag_ctx.chars + vision_ctx.chars, max_out=max_out, provider_of=core.providers.describe,
            max_tier=ENUM_TIER.get(policy.max_tier) if policy is not None else None,
            pinned=policy is not None and policy.pinned_tier in ENUM_TIER)
        provider_info = common_pb2.ProviderInfo(provider=decision.provider,
                                                model=OFFLINE_MODEL if decision.offline else decision.model,
                                                offline=decision.offline)
        yield router_pb2.RespondResponse(
            started=router_pb2.RespondStarted(decision=decision.to_proto(), context=[c.to_proto() for c in contexts]),
            provider=provider_info,
        )

        system = self._system_prompt(policy, history, rag_ctx, vision_ctx)
        messages = [(r, t) for r, t in history if r != "system"] + [("user", request.turn.text)]
        system, messages, max_out = levers.shape(system, messages, decision.tier, max_out,  # speech size, layout
                                                 offline=decision.offline)
        account = TurnAccount()
        tiers = fallback_sequence(decision.tier, core.chain, s.max_fallbacks)
        first_token_at: float | None = None
        failures: list[str] = []
        for attempt, tier in enumerate(tiers):
            provider, model = core.providers.for_tier(tier)
            info = common_pb2.ProviderInfo(provider=provider.provider, model=model, offline=provider.offline)
            left = context.time_remaining()
            budget_s = s.provider_timeout_s if left is None else min(s.provider_timeout_s, left - DEADLINE_RESERVE_S)
            if budget_s < MIN_ATTEMPT_S:
                failures.append(f"{tier}: no time left before the caller's deadline")
                m.ROUTER_REQUESTS.labels(tenant=tenant, tier=tier, model=model, outcome="deadline_exceeded").inc()
                await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                             "the caller's deadline leaves no time for a provider call"
                             + (f" (after: {'; '.join(failures[:-1])})" if len(failures) > 1 else ""))
            preq = ProviderRequest(
                model=model, system=system, messages=messages, max_output_tokens=max_out,
                question=request.turn.text, passages=rag_ctx.passages, screen_notes=vision_ctx.notes,
                timeout_s=budget_s,
            )
            call = _Call(tenant, tier, model, provider)
            try:
                async for text in levers.speak(self._stream_call(call, preq, budget_s), call):
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                        m.FIRST_TOKEN_SECONDS.labels(tier=tier, model=model).observe(first_token_at - started)
                    yield router_pb2.RespondResponse(delta=router_pb2.TextDelta(text=text), provider=info)
            except ProviderError as err:
                await self._account(call, account, attempt, turn_id, session, request_id, decision, outcome=err.kind)
                AI_REQUESTS_TOTAL.labels(service="router", kind="llm", provider=provider.provider, model=model,
                                         outcome=err.kind).inc()
                failures.append(f"{tier} ({model}): {err}")
                if call.emitted:
                    m.ROUTER_REQUESTS.labels(tenant=tenant, tier=tier, model=model, outcome="provider_error").inc()
                    await _abort(context, grpc.StatusCode.UNAVAILABLE,
                                 f"{model} failed after streaming {len(call.emitted)} characters: {err}")
                if not err.fallback_ok:
                    m.ROUTER_REQUESTS.labels(tenant=tenant, tier=tier, model=model, outcome="provider_error").inc()
                    await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"{model} rejected the request: {err}")
                nxt = tiers[attempt + 1] if attempt + 1 < len(tiers) else None
                if nxt is not None:
                    _, nxt_model = core.providers.for_tier(nxt)
                    account.fallbacks.append(router_pb2.Fallback(from_model=model, to_model=nxt_model,
                                                                 reason=str(err)[:500]))
                    m.FALLBACKS.labels(from_tier=tier, to_tier=nxt, reason=err.kind).inc()
                    log.warning("provider %s failed (%s); falling back to %s", model, err, nxt_model)
                continue
            except (asyncio.CancelledError, GeneratorExit):
                # The caller went away (or its deadline passed) mid-call: the partial call is still billed.
                await asyncio.shield(self._account(call, account, attempt, turn_id, session, request_id, decision,
                                                   outcome="cancelled"))
                m.ROUTER_REQUESTS.labels(tenant=tenant, tier=tier, model=model, outcome="cancelled").inc()
                raise
            # Success.
            await self._account(call, account, attempt, turn_id, session, request_id, decision, outcome="ok")
            levers.finished(tier, provider.provider)
            AI_REQUESTS_TOTAL.labels(service="router", kind="llm", provider=provider.provider, model=model,
                                     outcome="ok").inc()
            assert call.usage is not None
            if reserved:
                await core.limiter.settle(tenant, call.usage.input_tokens + call.usage.output_tokens - reserved)
            total = time.perf_counter() - started
            m.TOTAL_SECONDS.labels(tier=tier, model=model).observe(total)
            m.ROUTER_REQUESTS.labels(tenant=tenant, tier=tier, model=model,
                                     outcome="fallback_ok" if attempt else "ok").inc()
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
                ),
                provider=info,
            )
            return
        m.ROUTER_REQUESTS.labels(tenant=tenant, tier=decision.tier, model=decision.model,
                                 outcome="provider_error").inc()
        left = context.time_remaining()
        code = (grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left < MIN_ATTEMPT_S + DEADLINE_RESERVE_S
                else grpc.StatusCode.UNAVAILABLE)
        await _abort(context, code, "every provider of the fallback chain failed: " + "; ".join(failures))

    def _context_tasks(
        self, request: router_pb2.RespondRequest, policy: billing_pb2.TenantPolicy | None,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> tuple[asyncio.Future[ContextResult], asyncio.Future[ContextResult]]:
        core, s = self.core, self.core.settings
        left = context.time_remaining()
        # Context may use at most half of what is left of the caller's deadline.
        cap = None if left is None else max(left / 2, 0.001)

        def bounded(t: float) -> float:
            return t if cap is None else min(t, cap)

        async def done(r: ContextResult) -> ContextResult:
            return r

        if request.skip_rag:
            rag = done(skipped(RAG, "skip_rag requested by the caller"))
        elif policy is not None and not policy.knowledge_base_enabled:
            rag = done(skipped(RAG, "knowledge base disabled in the tenant policy"))
        else:
            rag = core.contexts.rag(request.turn.text, top_k=s.rag_top_k, timeout_s=bounded(s.rag_timeout_s),
                                    max_chars=s.rag_max_chars)
        if request.skip_vision:
            vision = done(skipped(VISION, "skip_vision requested by the caller"))
        else:
            vision = core.contexts.vision(limit=s.vision_max_analyses, timeout_s=bounded(s.vision_timeout_s))
        return asyncio.ensure_future(rag), asyncio.ensure_future(vision)

    def _system_prompt(
        self, policy: billing_pb2.TenantPolicy | None, history: Sequence[tuple[str, str]],
        rag: ContextResult, vision: ContextResult,
    ) -> str:
        parts = [self.core.settings.system_prompt]
        if policy is not None and policy.instructions.strip():
            parts.append(policy.instructions.strip())
        parts.extend(t for r, t in history if r == "system")
        if rag.passages:
            lines = ["Knowledge base passages (use them when relevant; say when they do not cover the question):"]
            for i, p in enumerate(rag.passages, 1):
                lines.append(f"[{i}] {p.title}: {p.content}" if p.title else f"[{i}] {p.content}")
            parts.append("\n".join(lines))
        if vision.notes:
            lines = ["What the user's shared screen showed recently (newest first):"]
            for note, age in zip(vision.notes, vision.ages_s, strict=False):
                lines.append(f"- {f'{age:.0f}s ago: ' if age is not None else ''}{note}")
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    async def _stream_call(self, call: _Call, preq: ProviderRequest, budget_s: float) -> AsyncIterator[str]:
        """Yields text; enforces the first-token and total timeouts; sets call.usage at the end."""
        s = self.core.settings
        loop = asyncio.get_running_loop()
        start = loop.time()
        total_deadline = start + budget_s
        first_deadline = min(total_deadline, start + s.provider_first_token_timeout_s)
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
                    what = "the whole answer" if call.emitted else "the first token"
                    raise ProviderError("timeout", f"no {what} within {limit - start:.2f}s") from None
                if isinstance(event, TextChunk):
                    if event.text:
                        call.emitted += event.text
                        yield event.text
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
        """One cost event per provider call, whatever its outcome."""
        core = self.core
        usage = call.usage
        if usage is None:
            # Failed or cut short: what went out is an estimate; nothing reported means nothing billed.
            usage = (UsageAmounts(input_tokens=0, output_tokens=estimate_tokens(call.emitted), requests=1,
                                  estimated=True) if call.emitted else UsageAmounts(requests=1))
            call.usage = usage
        offline = call.provider.offline
        # An offline stand-in is priced as the model the router chose for the turn, on its estimated usage:
        # a labelled list-price estimate (offline, usage.estimated, `priced_as`), never real spend. Billing
        # keeps such events out of budgets; cost and baseline stay comparable, so savings stay meaningful.
        priced_as = core.catalog.tier_model(call.tier) if offline and call.tier in TIERS else call.model
        try:
            cost = cache_aware.call_cost(core.catalog, priced_as, usage, call.done)
        except PriceCatalogError:
            log.error("no price for %s; cost recorded as 0", priced_as)
            cost = 0.0
        event_id = make_event_id("router", call.tenant, turn_id, str(attempt))
        event = CostEvent(
            event_id=event_id, tenant_id=call.tenant, session_id=session, request_id=request_id, service="router",
            kind=CostKind.LLM, provider=call.provider.provider, model=call.model, tier=call.tier, usage=usage,
            cost_usd=cost, offline=offline,
            attributes={"turn_id": turn_id, "attempt": str(attempt), "outcome": outcome, "scorer": decision.scorer,
                        "routed_tier": decision.tier, "priced_as": priced_as, **cache_aware.call_attributes(call.done)},
        )
        await core.producer.emit(event)
        account.cost_usd += cost
        # The same rule billing applies to the ledger (offline: no baseline, so no fake savings).
        account.baseline_usd += baseline_cost(event, core.catalog)
        account.event_ids.append(event_id)
        AI_COST_TOTAL.labels(service="router", kind="llm", provider=call.provider.provider, model=call.model,
                             tier=call.tier, offline=str(offline).lower()).inc(cost)
        m.COST_USD.labels(tenant=call.tenant, tier=call.tier, model=call.model, offline=str(offline).lower()).inc(cost)
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
    done: StreamDone | None = None  # the provider's final event (finish reason, prompt-cache tokens)


def _startup_error(message: str) -> NoReturn:
    print(f"router: {message}", file=sys.stderr)
    log.error("router cannot start: %s", message)
    raise ConfigError(2)


async def build_app(settings: Settings) -> GrpcApp:
    """Refuses to start (exit status 2, one line on stderr) on a corrupt scorer artifact, an unknown default
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
    for tier in TIERS:
        impl, model = providers.for_tier(tier)
        log.info("tier %s -> %s via %s%s", tier, model, impl.provider, " (OFFLINE: no API key)" if impl.offline else "")
    core = RouterCore(
        settings, catalog=catalog, scorers=scorers, redis=create_redis(settings.redis_url), providers=providers,
        contexts=ContextClients(settings.rag_addr, settings.vision_addr, max_message_bytes=settings.max_message_bytes),
    )
    app = GrpcApp(settings, services=[SERVICE_NAME])
    router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServiceServicer(core), app.server)
    app.on_shutdown(core.aclose)
    return app
