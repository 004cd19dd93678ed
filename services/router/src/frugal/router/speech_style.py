"""Answers sized for speech: every spoken character is billed by the TTS provider (and every output token by
the LLM), and a listener cannot skim. Per tier: an instruction that keeps spoken answers to a sentence or two
unless the user asks for detail, and an output-token cap; when the cap cuts an answer, the unfinished last
sentence is dropped instead of being spoken half-way (`SentenceGuard`).

Detail requests ("step by step", "in detail", "walk me through", ...) get the detail cap: asked-for length is
quality, not waste.

Switch: `SPEECH_STYLE_ENABLED` (on by default); caps `SPEECH_CAP_LITE`, `SPEECH_CAP_STANDARD`,
`SPEECH_CAP_PREMIUM`, `SPEECH_CAP_DETAIL` (output tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from frugal.common.settings import env_cached

_DETAIL = re.compile(
    r"\b(in detail|detailed|step[- ]by[- ]step|walk me through|elaborate|explain (?:how|why|in)|all the steps|"
    r"full (?:list|comparison|explanation)|thoroughly|reason (?:it )?(?:out|through)|compare)\b",
    re.IGNORECASE,
)
# A sentence ends at . ! ? (optionally closed by a quote or bracket) followed by a space or the end.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")

BASE_INSTRUCTIONS = (
    "Your answer is spoken aloud by a voice assistant. Answer in plain spoken sentences, no markdown, lists, "
    "tables, links or emoji."
)
# One speech length for every tier: how long a listener wants an answer to be does not depend on which model
# gives it (the tier is about how hard the question is). Premium only adds: reason silently.
SPEECH_LENGTH = ("Answer in one or two short sentences, about 30 words at most, the direct answer first. If more "
                 "could help, offer it in a few words instead of giving it unasked.")
TIER_INSTRUCTIONS = {
    "lite": SPEECH_LENGTH,
    "standard": SPEECH_LENGTH,
    "premium": SPEECH_LENGTH + " Reason silently and say only the conclusion unless the user asks for the steps.",
}
DETAIL_INSTRUCTIONS = "The user asked for detail: answer fully, in spoken sentences, as briefly as that allows."


class SpeechStyleSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="SPEECH_")

    style_enabled: bool = True
    # About 20-25 tokens make a spoken sentence: 50 tokens (~200 characters, ~35 words, ~13 s of speech) hold
    # the two short sentences the instructions ask for, on every tier (see SPEECH_LENGTH).
    cap_lite: int = Field(default=50, ge=16, le=4096)
    cap_standard: int = Field(default=50, ge=16, le=4096)
    cap_premium: int = Field(default=50, ge=16, le=4096)
    cap_detail: int = Field(default=320, ge=16, le=8192)


_settings = env_cached(SpeechStyleSettings)


def settings() -> SpeechStyleSettings:
    return _settings()  # per turn: built again only when its environment variables change


@dataclass(frozen=True, slots=True)
class SpeechStyle:
    instructions: str
    max_output_tokens: int
    detail: bool


def wants_detail(question: str) -> bool:
    return bool(_DETAIL.search(question))


def style_for(tier: str, question: str, requested_max_tokens: int,
              config: SpeechStyleSettings | None = None) -> SpeechStyle | None:
    """The spoken-answer style of a turn on `tier`, or None when the lever is off. The cap never exceeds
    what the caller asked for."""
    cfg = config or settings()
    if not cfg.style_enabled:
        return None
    detail = wants_detail(question)
    cap = cfg.cap_detail if detail else {"lite": cfg.cap_lite, "standard": cfg.cap_standard,
                                         "premium": cfg.cap_premium}.get(tier, cfg.cap_standard)
    text = BASE_INSTRUCTIONS + " " + (DETAIL_INSTRUCTIONS if detail else TIER_INSTRUCTIONS.get(tier, ""))
    return SpeechStyle(instructions=text.strip(), max_output_tokens=min(cap, requested_max_tokens), detail=detail)


def with_instructions(system: str, style: SpeechStyle | None) -> str:
    """The system prompt with the style appended (appended: the stable prefix before it stays cacheable)."""
    if style is None:
        return system
    return f"{system}\n\n{style.instructions}" if system else style.instructions


class SentenceGuard:
    """Streams text on; near the output cap it holds the unfinished sentence back, and at the end drops it when
    the cap cut it (not when the model finished on its own). `free_chars`: text up to this many characters
    streams as it comes (an answer well under the cap never waits for a sentence end)."""

    # Text further than this from the cap streams freely: about one long spoken sentence.
    MARGIN_CHARS = 120

    def __init__(self, free_chars: int = 0) -> None:
        self._held = ""
        self._free = max(free_chars, 0)
        self.released_chars = 0

    @classmethod
    def for_cap(cls, max_output_tokens: int, chars_per_token: int = 4) -> SentenceGuard:
        return cls(max_output_tokens * chars_per_token - cls.MARGIN_CHARS)

    def push(self, text: str) -> str:
        if not self._held and self.released_chars + len(text) <= self._free:
            self.released_chars += len(text)
            return text
        self._held += text
        last = None
        for m in _SENTENCE_END.finditer(self._held):
            last = m
        if last is None:
            return ""
        cut = last.end()
        out, self._held = self._held[:cut], self._held[cut:]
        self.released_chars += len(out)
        return out

    def finish(self, finish_reason: str) -> str:
        """What is left to speak: the held tail, unless the cap cut it mid-sentence."""
        tail, self._held = self._held, ""
        if finish_reason.lower() in ("max_tokens", "length", "max_output_tokens") and self.released_chars:
            return ""
        self.released_chars += len(tail)
        return tail
