"""Whole-session cost: replays the recorded sessions with each lever off and on, at list prices.

    uv run python bench/session/run.py            # the three sessions
    uv run python bench/session/run.py --quick    # rapid-qa only

Per session it prints the naive baseline and, for each configuration (all levers off, each lever alone, all
on): cost by kind, total per session-minute, savings against the naive baseline (1 - actual/naive), and the
words lost at the VAD edges (each transcript word must lie wholly inside audio that reached the STT).

Real parts: the microphone track is synthesised deterministically (frugal.devkit.sessions), Silero VAD (the
plugin's ONNX model) drives the STT gate; audio goes through livekit-plugins-deepgram to the Deepgram
emulator, which counts the audio seconds it received (what Deepgram bills); speech goes through
livekit-plugins-elevenlabs (behind the TTS cache when on) to the ElevenLabs emulator, which counts the
characters it synthesised; LLM turns are decided by the router's own Decider (its default scorer, learned-v1;
the README's figures were taken with its revision 3), moved by cache-aware routing
when on, and answered through the router's Gemini/Claude providers (official SDKs)
against the emulators, which emulate prompt caching (Anthropic breakpoints, Gemini implicit) and honour
max_tokens; screen frames go through vision-dedup's DedupTracker. Each kind is priced by
frugal.common.session_cost, the same rule billing's GetUsage uses. Long answers (`long_to_chat`) are cut by the
gateway's own SpokenCut with its default settings; the chat post itself happens in the gateway (tested in
services/media-gateway/tests/test_gateway_long_answers.py), here the whole answer goes to the next turn's
history as the gateway puts it there.

Not real: the emulated LLM answers with the session's scripted (long, unsized) reply whatever the
instructions say, so the speech-sizing figures measure the output cap and the sentence guard only, not a
model following the brevity instruction (a real model would also shorten answers below the cap). The LLM
turn flow is the router's (decide, cache-aware choice, style, layout, provider stream, cache pricing),
replayed here in process rather than through the gRPC server.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from frugal.common.history_window import history_window
from frugal.common.pricing import PriceCatalog, default_catalog
from frugal.common.session_cost import CostRow, SessionCost, format_report, list_price, session_cost
from frugal.common.usage import UsageAmounts
from frugal.devkit.emulators.anthropic import AnthropicEmulator, AnthropicRequest
from frugal.devkit.emulators.deepgram import DeepgramEmulator
from frugal.devkit.emulators.elevenlabs import ElevenLabsEmulator
from frugal.devkit.emulators.gemini import GeminiEmulator, GeminiRequest
from frugal.devkit.emulators.prompt_cache import PromptCacheSim
from frugal.devkit.sessions.catalog import SESSIONS, SessionDef
from frugal.devkit.sessions.gate_tuning import FRESH_SEEDS, evaluate, track, variant, words_lost
from frugal.devkit.sessions.media import SpokenTurn, load_or_generate
from frugal.gateway.config import Settings as GatewaySettings
from frugal.gateway.long_answers import LongAnswerPolicy, SpokenCut
from frugal.gateway.stt_gate import SAMPLE_RATE, GateConfig, gate_pcm
from frugal.gateway.tts_cache import CachedTTS, LocalStore, TtsAudioCache
from frugal.router import cache_aware, speech_style
from frugal.router.config import Settings as RouterSettings
from frugal.router.decision import Decider, TurnText
from frugal.router.providers.base import Message, ProviderRequest, StreamDone, TextChunk
from frugal.router.providers.claude import ClaudeProvider
from frugal.router.providers.gemini import GeminiProvider
from frugal.router.scoring import TierMix, load_scorers

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "bench" / "session" / ".media"
KB = ROOT / "demo" / "kb"
LEVERS = ("stt_gate", "speech_style", "tts_cache", "prompt_cache", "long_to_chat")
DEFAULT_MAX_OUTPUT = 512  # the router's default_max_output_tokens
HISTORY_MAX = 12  # the gateway's history_max_messages
VISION_MODEL = "gemini-2.5-flash-lite"
_GATEWAY = GatewaySettings()
LONG_ANSWERS = LongAnswerPolicy(_GATEWAY.long_answer_spoken_chars, _GATEWAY.long_answer_notice)
VISION_USAGE = UsageAmounts(input_tokens=258 + 80, output_tokens=60, images=1, requests=1)


@dataclass(frozen=True)
class Levers:
    stt_gate: bool = False
    speech_style: bool = False
    tts_cache: bool = False
    prompt_cache: bool = False
    long_to_chat: bool = False  # long answers spoken in short, posted whole to the room chat (the gateway's)
    full_brief: bool = False  # not a lever: the variant with a longer tenant brief (see _tenant_brief)
    # Not a lever: the tenant's audio cache as an earlier session of the tenant left it, holding the phrases
    # the agent speaks verbatim every session (the greeting, confirmations, the goodbye; never model answers).
    # Without it the session is the tenant's first: a greeting can only be a hit from the second session on.
    warm_cache: bool = False

    @classmethod
    def all_on(cls, **but: bool) -> Levers:
        return cls(**({n: True for n in LEVERS} | but))

    @property
    def label(self) -> str:
        on = [n for n in LEVERS if getattr(self, n)]
        base = "all on" if len(on) == len(LEVERS) else ("all off" if not on else "+" + ",".join(on))
        if len(on) == len(LEVERS) - 1:
            base = "all on but " + next(n for n in LEVERS if n not in on)
        return base + (" [long brief]" if self.full_brief else "") + (" [warm tenant cache]" if self.warm_cache
                                                                          else "")


@dataclass
class SttResult:
    billed_s: float
    keepalives_sent: int
    keepalives_due: int
    words_lost: int
    words: int
    stream_s: float


@dataclass
class RunResult:
    levers: Levers
    cost: SessionCost
    answer_chars: list[int] = field(default_factory=list)
    tiers: dict[str, int] = field(default_factory=dict)
    stayed_warm: int = 0
    cached_read: int = 0
    input_tokens: int = 0
    stt: SttResult | None = None
    # Per user turn: (question, tier or "fixed", output tokens, characters spoken, LLM $, TTS chars billed).
    turn_log: list[TurnLog] = field(default_factory=list)


@dataclass
class TurnLog:
    question: str
    tier: str
    output_tokens: int = 0
    spoken_chars: int = 0
    llm_usd: float = 0.0
    tts_billed: int = 0
    tts_served: int = 0
    chat_only_chars: int = 0  # posted to the room chat, not spoken (long_to_chat)
    detail: bool = False  # the user asked for detail (the detail cap applies, on any tier)


# ---- STT ---------------------------------------------------------------------------------------------


async def run_stt(pcm: np.ndarray, turns: list[SpokenTurn], gated: bool, gate_cfg: GateConfig) -> SttResult:
    from livekit import rtc
    from livekit.plugins import deepgram

    if gated:
        sequence, gate = gate_pcm(pcm, gate_cfg)
        lost, total = words_lost(turns, gate.stats.spans)
        due = gate.stats.keepalives
    else:
        step = 512
        sequence = [pcm[i:i + step].tobytes() for i in range(0, len(pcm), step)]
        lost, total = 0, sum(len(t.words) for t in turns)
        due = 0
    async with DeepgramEmulator() as emu, aiohttp.ClientSession() as http:
        engine = deepgram.STT(api_key="bench-key", base_url=emu.base_url, http_session=http, model="nova-3",
                              sample_rate=SAMPLE_RATE)
        stream = engine.stream()
        for chunk in sequence:
            if chunk is not None:
                stream.push_frame(rtc.AudioFrame(chunk, SAMPLE_RATE, 1, len(chunk) // 2))
        stream.end_input()

        async def drain() -> None:
            async for _ in stream:
                pass

        await asyncio.wait_for(drain(), timeout=120)
        await stream.aclose()
        await asyncio.sleep(0.05)
        return SttResult(round(emu.billed_audio_seconds, 3), emu.keepalives, due, lost, total, len(pcm) / SAMPLE_RATE)


# ---- LLM ---------------------------------------------------------------------------------------------


def _kb_passages(question: str, k: int = 2, chars: int = 600) -> list[str]:
    terms = {w for w in re.findall(r"[a-z0-9]+", question.lower()) if len(w) > 3}
    docs = sorted(KB.glob("*.md"))
    scored = sorted(docs, key=lambda p: -len(terms & set(re.findall(r"[a-z0-9]+", p.read_text().lower()))))
    return [f"[{i + 1}] {p.stem}: {p.read_text()[:chars]}" for i, p in enumerate(scored[:k])]


def _tenant_brief(full: bool = False) -> str:
    """The tenant's standing instructions: a product brief (the stable part of every prompt). The demo's is two
    knowledge-base pages (~650 tokens); `full` is all four (~1,300 tokens), a size many deployed voice agents
    exceed, and the only one here whose stable prefix passes the providers' 1,024-token caching minimum."""
    pages = sorted(KB.glob("*.md")) if full else [KB / "overview.md", KB / "pricing.md"]
    return "You are the Lumen Desk assistant. Product brief:\n" + "\n".join(p.read_text() for p in pages)


def _reply_for(session: SessionDef, text: str) -> str:
    for t in session.turns:
        if text.startswith(t.text):
            return t.reply
    return "I am not sure."


class Llm:
    def __init__(self, session: SessionDef, catalog: PriceCatalog, *, full_brief: bool = False) -> None:
        self.session = session
        self.catalog = catalog
        settings = RouterSettings()
        self.base_system = settings.system_prompt + "\n\n" + _tenant_brief(full_brief)
        self.decider = Decider(load_scorers(), catalog, TierMix.parse(settings.default_mix),
                               provider_of=lambda t: (catalog.price(catalog.tier_model(t)).provider, False),
                               system_prompt_chars=len(settings.system_prompt),
                               expected_output_tokens=settings.expected_output_tokens)

    def reset_caches(self) -> None:
        """Fresh provider caches for a new run, on the session's media clock (so TTLs expire as they would
        between turns minutes apart, though the replay runs faster than real time)."""
        self.gemini_emu.prompt_cache = PromptCacheSim(ttl_s=180.0, clock=self.clock)
        self.claude_emu.prompt_cache = PromptCacheSim(ttl_s=300.0, clock=self.clock)

    def clock(self) -> float:
        return self.now

    async def __aenter__(self) -> Llm:
        self.now = 0.0
        self.gemini_emu = await GeminiEmulator(responder=self._gemini_reply).start()
        self.claude_emu = await AnthropicEmulator(responder=self._claude_reply).start()
        self.gemini = GeminiProvider("bench-key", base_url=self.gemini_emu.base_url)
        self.claude = ClaudeProvider("bench-key", base_url=self.claude_emu.base_url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gemini.aclose()
        await self.claude.aclose()
        await self.gemini_emu.aclose()
        await self.claude_emu.aclose()

    def _gemini_reply(self, req: GeminiRequest) -> str:
        return _reply_for(self.session, req.last_user_text)

    def _claude_reply(self, req: AnthropicRequest) -> str:
        return _reply_for(self.session, req.last_user_text)

    async def turn(self, question: str, history: list[tuple[str, str]], screen_notes: list[str], levers: Levers,
                   warm: cache_aware.WarmCaches, result: RunResult) -> tuple[str, str, CostRow]:
        """(what is spoken, the whole answer the user is given, its cost row)."""
        passages = _kb_passages(question)
        context = ["Knowledge base passages (use them when relevant):\n" + "\n".join(passages)]
        if screen_notes:
            context.append("What the user's shared screen showed recently (newest first):\n"
                           + "\n".join(f"- {n}" for n in screen_notes))
        hist = history_window(history, HISTORY_MAX, stable=levers.prompt_cache)
        decision = self.decider.decide(TurnText(question, hist, sum(map(len, passages)),
                                                sum(map(len, screen_notes))), max_output_tokens=DEFAULT_MAX_OUTPUT)
        tier: str = decision.tier
        style = speech_style.style_for(tier, question, DEFAULT_MAX_OUTPUT, speech_style.SpeechStyleSettings(
            style_enabled=levers.speech_style))
        system = speech_style.with_instructions(self.base_system, style)
        system, messages = cache_aware.layout(
            system, context, [*(Message(r, t) for r, t in hist if r in ("user", "assistant")),  # type: ignore[arg-type]
                              Message("user", question)], enabled=levers.prompt_cache)
        prompt_tokens = cache_aware.estimate_prompt_tokens(system, messages)
        max_out = style.max_output_tokens if style else DEFAULT_MAX_OUTPUT
        if levers.prompt_cache:
            choice = warm.choose("org_lumen", self.session.name, tier, prompt_tokens, max_out // 2)
            if choice.tier != tier:
                result.stayed_warm += 1
            tier = choice.tier
        result.tiers[tier] = result.tiers.get(tier, 0) + 1
        model = self.catalog.tier_model(tier)  # type: ignore[arg-type]
        provider = self.claude if self.catalog.price(model).provider == "anthropic" else self.gemini
        preq = ProviderRequest(model=model, system=system, messages=messages, max_output_tokens=max_out,
                               question=question)
        guard = speech_style.SentenceGuard.for_cap(max_out)
        spoken = ""
        done: StreamDone | None = None
        cache_ctx = _PromptCache(levers.prompt_cache)
        with cache_ctx:
            async for ev in provider.stream(preq):
                if isinstance(ev, TextChunk):
                    spoken += guard.push(ev.text) if style else ev.text
                elif isinstance(ev, StreamDone):
                    done = ev
        assert done is not None
        if style:
            spoken += guard.finish(done.finish_reason)
        if levers.prompt_cache:
            warm.record("org_lumen", self.session.name, tier, self.catalog.price(model).provider,
                        cache_aware.stable_prefix_tokens(system, messages))
        result.cached_read += done.cache_read_tokens
        result.input_tokens += done.usage.input_tokens
        row = CostRow(kind="llm", model=model, tier=tier, usage=done.usage,
                      attributes={"cache_read_tokens": str(done.cache_read_tokens),
                                  "cache_write_tokens": str(done.cache_write_tokens)})
        full = spoken.strip()
        if levers.long_to_chat:  # the gateway's cut, with its defaults (frugal.gateway.long_answers)
            cut = SpokenCut(LONG_ANSWERS.spoken_chars, LONG_ANSWERS.min_chat_chars)
            cut.push(full)
            if cut.cut:
                return f"{cut.spoken} {LONG_ANSWERS.notice}", full, row
        return full, full, row


class _PromptCache:
    """Turns the providers' cache_control breakpoints on or off for one call (the lever's switch)."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        self._saved = cache_aware.settings
        value = cache_aware.CacheSettings(prompt_cache_enabled=self.on)
        cache_aware.settings = lambda: value

    def __exit__(self, *exc: object) -> None:
        cache_aware.settings = self._saved


# ---- TTS ---------------------------------------------------------------------------------------------

_SENT = re.compile(r"(?<=[.!?])\s+")


async def run_tts(utterances: list[tuple[str, bool]], cached: bool, store: LocalStore,
                  chat_only: Sequence[int] = ()) -> tuple[list[CostRow], list[tuple[int, int]]]:
    """Speaks each utterance sentence by sentence (how the session feeds a non-streaming TTS); returns cost
    rows (billed characters from the emulator's own count, per sentence) and, per utterance, the characters
    billed and those served from the cache. `chat_only`: per utterance, the characters of a long answer that
    went to the room chat unspoken (on the answer's row, as the gateway records them)."""
    from livekit.plugins import elevenlabs

    rows: list[CostRow] = []
    async with ElevenLabsEmulator() as emu, aiohttp.ClientSession() as http:
        inner = elevenlabs.TTS(api_key="bench-key", base_url=emu.base_url, http_session=http,
                               encoding="pcm_24000", model="eleven_flash_v2_5")
        hits: list[tuple[str, int]] = []
        engine = CachedTTS(inner, TtsAudioCache(store), tenant_id="org_lumen", voice="default",
                           on_hit=lambda text, n: hits.append((text, n))) if cached else inner
        for text, is_answer in utterances:
            for sentence in [s for s in _SENT.split(text) if s.strip()]:
                before_chars, before_hits = emu.billed_characters, len(hits)
                async with engine.synthesize(sentence) as stream:
                    async for _ in stream:
                        pass
                billed = emu.billed_characters - before_chars
                attrs = {"utterance": "answer" if is_answer else "fixed"}
                if len(hits) > before_hits:
                    attrs |= {"tts_cache": "hit", "served_characters": str(len(sentence))}
                rows.append(CostRow(kind="tts", model="eleven_flash_v2_5",
                                    usage=UsageAmounts(characters=billed, requests=1 if billed else 0),
                                    attributes=attrs))
        per_utterance: list[tuple[int, int]] = []
        it = iter(rows)
        for text, _ in utterances:
            mine = [next(it) for s in _SENT.split(text) if s.strip()]
            per_utterance.append((sum(r.usage.characters for r in mine),
                                  sum(int(r.attributes.get("served_characters", "0")) for r in mine)))
        # The naive rule sizes answers per utterance, not per sentence: fold each answer's sentences.
        return _fold_answers(rows, utterances, chat_only), per_utterance


def _fold_answers(rows: list[CostRow], utterances: list[tuple[str, bool]], chat_only: Sequence[int]) -> list[CostRow]:
    out: list[CostRow] = []
    it = iter(rows)
    unspoken = iter(chat_only)
    for text, is_answer in utterances:
        rest = next(unspoken, 0)
        n = len([s for s in _SENT.split(text) if s.strip()])
        mine = [next(it) for _ in range(n)]
        if not is_answer:
            out.extend(mine)
            continue
        billed = sum(r.usage.characters for r in mine)
        served = sum(int(r.attributes.get("served_characters", "0")) for r in mine)
        attrs = {"utterance": "answer"}
        if rest:
            attrs["chat_only_characters"] = str(rest)
        if served:
            attrs |= {"tts_cache": "hit", "served_characters": str(served + billed)}
        out.append(CostRow(kind="tts", model="eleven_flash_v2_5",
                           usage=UsageAmounts(characters=billed, requests=1 if billed else 0), attributes=attrs))
    return out


# ---- vision ------------------------------------------------------------------------------------------


def run_vision(session: SessionDef, turns: list[SpokenTurn]) -> tuple[list[CostRow], list[tuple[float, str]]]:
    """The gateway's throttle (2 fps while the user speaks, 0.5 fps otherwise) into vision-dedup's tracker;
    each kept frame is one vision call. Returns its rows and (time, note) per kept frame."""
    if session.screen is None:
        return [], []
    from frugal.devkit.demo.synth import slide_frames
    from frugal.vision.dedup import DedupConfig, DedupTracker
    from frugal.vision.frames import thumbnail_from_luma

    start, end = session.screen
    tracker = DedupTracker(DedupConfig())
    rows: list[CostRow] = []
    notes: list[tuple[float, str]] = []
    changes = tuple(c - start for c in session.slide_changes)
    last_sent = -1e9
    for i, rgb in enumerate(slide_frames(end - start, 2.0, changes=changes, scroll_at=changes[0] + 5)):
        t = start + i / 2.0
        speaking = any(tu.at <= t <= tu.end for tu in turns)
        if not speaking and t - last_sent < 2.0:
            continue
        last_sent = t
        y = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.uint8)
        d = tracker.decide(thumbnail_from_luma(y), t * 1000.0, user_speaking=speaking)
        if d.kept:
            rows.append(CostRow(kind="vision", model=VISION_MODEL, usage=VISION_USAGE))
            notes.append((t, f"slide {sum(1 for c in session.slide_changes if t >= c) + 1} at {t:.0f}s"))
    return rows, notes


# ---- a session ---------------------------------------------------------------------------------------


async def run_session(session: SessionDef, configs: list[Levers], catalog: PriceCatalog,
                      gate_cfg: GateConfig) -> list[RunResult]:
    pcm, turns = load_or_generate(session, CACHE_DIR)
    stt = {False: await run_stt(pcm, turns, False, gate_cfg), True: await run_stt(pcm, turns, True, gate_cfg)}
    vision_rows, screen_notes = run_vision(session, turns)
    screen_s = (session.screen[1] - session.screen[0]) if session.screen else None
    results: list[RunResult] = []
    for levers in configs:
        async with Llm(session, catalog, full_brief=levers.full_brief) as llm:
            res = RunResult(levers, cost=session_cost([], catalog))
            llm.reset_caches()
            warm = cache_aware.WarmCaches(catalog, enabled=levers.prompt_cache, clock=llm.clock)
            rows: list[CostRow] = []
            history: list[tuple[str, str]] = [("assistant", session.greeting)]
            utterances: list[tuple[str, bool]] = [(session.greeting, False)]
            for t in session.turns:
                llm.now = t.at
                log = TurnLog(t.text, "fixed")
                if t.fixed:
                    reply = t.reply
                else:
                    notes = [n for at, n in reversed(screen_notes) if at <= t.at][:5]
                    reply, given, row = await llm.turn(t.text, history, notes, levers, warm, res)
                    rows.append(row)
                    res.answer_chars.append(len(reply))
                    log = TurnLog(t.text, row.tier or "?", row.usage.output_tokens, len(reply),
                                  list_price(row, catalog), detail=speech_style.wants_detail(t.text),
                                  chat_only_chars=len(given) - len(reply) + len(LONG_ANSWERS.notice) + 1
                                  if given != reply else 0)
                    # Retrieval for the turn: one query embedding (the router asks rag for no rerank).
                    rows.append(CostRow(kind="embedding", model="voyage-3.5-lite",
                                        usage=UsageAmounts(input_tokens=max(len(t.text) // 4, 1), requests=1)))
                res.turn_log.append(log)
                history += [("user", t.text), ("assistant", reply if t.fixed else given)]
                utterances.append((reply, not t.fixed))
            store = LocalStore(64 << 20)
            if levers.tts_cache and levers.warm_cache:  # what an earlier session synthesised (billed to it)
                await run_tts([(u, False) for u, fixed in _fixed_phrases(session)], True, store)
            tts_rows, per_utterance = await run_tts(utterances, levers.tts_cache, store,
                                                    [0] + [log.chat_only_chars for log in res.turn_log])
            rows += tts_rows
            for log, (billed, served) in zip(res.turn_log, per_utterance[1:], strict=True):
                log.tts_billed, log.tts_served = billed, served
            s = stt[levers.stt_gate]
            rows.append(CostRow(kind="stt", model="nova-3", usage=UsageAmounts(audio_seconds=s.billed_s, requests=1),
                                attributes={"stream_seconds": str(s.stream_s)}))
            rows += vision_rows
            res.cost = session_cost(rows, catalog, session_seconds=session.seconds, screen_share_seconds=screen_s)
            res.stt = s
            results.append(res)
    return results


def _fixed_phrases(session: SessionDef) -> list[tuple[str, bool]]:
    """The phrases the agent says verbatim in every session: its greeting and its fixed replies."""
    return [(session.greeting, True)] + [(t.reply, True) for t in session.turns if t.fixed]


def _print_session(session: SessionDef, results: list[RunResult], show_turns: bool = False) -> bool:
    """The naive baseline is the all-off run's (the naive agent's own unsized answers, every second streamed,
    repriced all premium without caching, 1 vision call per second of share): one baseline per session, so every
    configuration is compared with the same figure. `GetUsage` applies the same rule row by row; its figure for
    a run with sized answers (floor of NaiveRule.answer_characters per answer) is printed in the by-kind table."""
    naive = results[0].cost
    print(f"\n=== {session.name}: {session.title} ({session.seconds / 60:.1f} min, "
          f"{len(session.turns)} user turns, screen {'yes' if session.screen else 'no'})")
    kinds = ("stt", "tts", "llm", "vision", "embedding")
    head = f"{'config':<44}" + "".join(f"{k:>10}" for k in kinds) + f"{'total $':>10}{'$/min':>9}{'savings':>9}" \
        f"{'ratio':>7}{'lost':>6}{'chars/ans':>10}"
    print(head)
    naive_chars = sum(results[0].answer_chars) / max(len(results[0].answer_chars), 1)
    print(f"{'naive baseline':<44}" + "".join(f"{naive.kinds[k].naive_usd:>10.4f}" for k in kinds)
          + f"{naive.naive_usd:>10.4f}{naive.naive_per_minute:>9.4f}{'':>9}{'1.00':>7}{'0':>6}{naive_chars:>10.0f}")
    ok = True
    for r in results:
        c = r.cost
        assert r.stt is not None
        mean_chars = sum(r.answer_chars) / len(r.answer_chars) if r.answer_chars else 0.0
        ratio = c.cost_usd / naive.naive_usd
        print(f"{r.levers.label:<44}" + "".join(f"{c.kinds[k].cost_usd:>10.4f}" for k in kinds)
              + f"{c.cost_usd:>10.4f}{c.cost_per_minute:>9.4f}{1 - ratio:>9.1%}{ratio:>7.2f}"
              f"{r.stt.words_lost if r.levers.stt_gate else 0:>6}{mean_chars:>10.0f}")
    on_ = next(r for r in results if r.levers.label == "all on")
    print("  savings by kind, all on vs naive: " + ", ".join(
        f"{k} {1 - on_.cost.kinds[k].cost_usd / naive.kinds[k].naive_usd:.1%}"
        for k in kinds if naive.kinds[k].naive_usd > 0))
    on = next(r for r in results if r.levers.label == "all on")
    assert on.stt is not None and results[0].stt is not None
    print(f"  STT: {on.stt.stream_s:.0f} s of microphone audio; billed {results[0].stt.billed_s:.1f} s ungated "
          f"vs {on.stt.billed_s:.1f} s gated (emulator count); KeepAlives: {on.stt.keepalives_due} due on the "
          f"media clock (every {GateConfig().keepalive_interval_s:.0f} s of gated silence), "
          f"{on.stt.keepalives_sent} sent by the plugin in this faster-than-real-time replay; "
          f"words lost at VAD edges {on.stt.words_lost}/{on.stt.words}")
    print(f"  LLM (all on): tiers {dict(sorted(on.tiers.items()))}, stayed on a warm tier {on.stayed_warm}x, "
          f"cached input {on.cached_read}/{on.input_tokens} tokens; all off: tiers "
          f"{dict(sorted(results[0].tiers.items()))}")
    print("  all on, by kind (naive here = GetUsage's row rule on this run):\n    "
          + format_report(on.cost).replace("\n", "\n    "))
    if show_turns:
        _print_turns(on, catalog_tts_price(on))
    ratio = on.cost.cost_usd / naive.naive_usd
    if ratio > 0.25 or on.stt.words_lost:
        ok = False
    print(f"  target (all on <= 25% of naive, no word lost), the tenant's first session (cold audio cache): "
          f"{'MET' if ok else 'MISSED'} ({ratio:.1%} of naive, {on.stt.words_lost} words lost)")
    warm = next((r for r in results if r.levers.label == "all on [warm tenant cache]"), None)
    if warm is not None:
        wratio = warm.cost.cost_usd / naive.naive_usd
        print(f"  target, a later session of the tenant (greeting and fixed phrases cached, answers cold): "
              f"{'MET' if wratio <= 0.25 and not on.stt.words_lost else 'MISSED'} ({wratio:.1%} of naive)")
    spoken_whole = [r for r in results if r.levers.label.startswith("all on but long_to_chat")
                    and not r.levers.full_brief]
    if spoken_whole:
        chat = sum(t.chat_only_chars for t in on.turn_log)
        print("  long answers spoken whole instead (all on but long_to_chat): " + ", ".join(
            f"{r.cost.cost_usd / naive.naive_usd:.1%}{' later session' if r.levers.warm_cache else ''}"
            for r in spoken_whole) + f"; with it, {chat} characters went to the room chat only, "
            f"{sum(1 for t in on.turn_log if t.chat_only_chars)} answer(s)")
    return ok


def catalog_tts_price(r: RunResult) -> float:
    tts = r.cost.kinds["tts"]
    chars = tts.units.get("characters", 0.0)
    return tts.cost_usd / chars if chars else 0.0


def _print_turns(r: RunResult, per_char: float) -> None:
    """Where the money goes, turn by turn (all on): tier, output tokens, characters spoken, LLM and TTS $."""
    print(f"  per turn (all on): {'tier':<9}{'out tok':>8}{'spoken':>8}{'tts paid':>9}{'cached':>8}"
          f"{'llm $':>9}{'tts $':>9}  question")
    for t in r.turn_log:
        print(f"  {'':<19}{t.tier:<9}{t.output_tokens:>8}{t.spoken_chars:>8}{t.tts_billed:>9}{t.tts_served:>8}"
              f"{t.llm_usd:>9.4f}{t.tts_billed * per_char:>9.4f}  {t.question[:48]}")
    by_tier: dict[str, list[int]] = {}
    for t in r.turn_log:
        if t.tier != "fixed":
            by_tier.setdefault(f"{t.tier} (asked for detail)" if t.detail else t.tier, []).append(t.spoken_chars)
    print("  characters per answer by tier: " + ", ".join(
        f"{k} {sum(v) / len(v):.0f} (n={len(v)})" for k, v in sorted(by_tier.items())))


def heldout_gate(names: list[str], gate_cfg: GateConfig, fresh: tuple[int, ...]) -> None:
    """The gate's settings were chosen on generated tuning sessions (bench/session/gate_tuning.py, seeds
    disjoint from these): words lost on the recorded sessions (above, through the plugin) and on fresh seeds,
    beside the previous Silero-only 1.0/1.2 s gate and the trivial no-pre/post-roll one."""
    import dataclasses


    previous = GateConfig(energy_onset_db=None, pre_roll_s=1.0, post_roll_s=1.2)
    bare = dataclasses.replace(gate_cfg, pre_roll_s=0.0, post_roll_s=0.0)
    tracks = [track(variant(SESSIONS[n], k), CACHE_DIR) for k in fresh for n in names]
    for label, cfg in (("shipped", gate_cfg), ("previous (Silero only, 1.0/1.2 s)", previous),
                       ("no pre/post-roll", bare)):
        rows = evaluate(tracks, cfg)
        lost, words = sum(r[1] for r in rows), sum(r[2] for r in rows)
        fwd, secs = sum(r[3] for r in rows), sum(r[4] for r in rows)
        print(f"  fresh seeds (offsets {fresh[0]}..{fresh[-1]}), {label}: words lost {lost}/{words}, forwarded "
              f"{fwd:.0f}/{secs:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="rapid-qa only, all off / all on")
    p.add_argument("--session", choices=sorted(SESSIONS), action="append")
    p.add_argument("--turns", action="store_true", help="print the all-on run turn by turn")
    args = p.parse_args(argv)
    names = args.session or (["rapid-qa"] if args.quick else list(SESSIONS))
    configs = [Levers()]
    if not args.quick:
        configs += [Levers(**{n: True}) for n in LEVERS]
    configs.append(Levers.all_on())
    configs.append(Levers.all_on(warm_cache=True))
    # The bill without the newest lever, so its share is visible (long answers spoken whole).
    configs += [Levers.all_on(long_to_chat=False), Levers.all_on(long_to_chat=False, warm_cache=True)]
    # Prompt caching only pays once the stable prefix passes 1,024 tokens: the same session with a longer brief.
    configs += [Levers.all_on(prompt_cache=False, full_brief=True), Levers.all_on(full_brief=True)]
    catalog = default_catalog()
    gate_cfg = GateConfig()
    print(f"price catalog {catalog.version}; naive answer {session_cost([], catalog).rule.answer_characters} chars; "
          f"gate pre-roll {gate_cfg.pre_roll_s} s, post-roll {gate_cfg.post_roll_s} s, level criterion "
          f"{gate_cfg.energy_onset_db} dB, release {gate_cfg.release_threshold}")
    t0 = time.perf_counter()
    all_ok = True
    for name in names:
        session = SESSIONS[name]
        results = asyncio.run(run_session(session, configs, catalog, gate_cfg))
        all_ok &= _print_session(session, results, args.turns)
    print("\nSTT gate on fresh seeds (its settings were tuned on other seeds: bench/session/gate_tuning.py)")
    heldout_gate(names, gate_cfg, FRESH_SEEDS[:1] if args.quick else FRESH_SEEDS[:4])
    print(f"\n{'all targets met' if all_ok else 'some targets missed'} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
