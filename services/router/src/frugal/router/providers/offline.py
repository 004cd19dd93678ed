"""The offline stand-in used when no API key is configured for a tier's provider.

It is not a language model and never pretends to be one: every answer starts by saying so, every chunk
and cost event carries `offline`, and usage is an estimate flagged as such. What it can do is useful for a
demo on a machine without keys: quote the knowledge-base passages that best match the question (by word
overlap) and the latest description of the user's screen.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from frugal.common.usage import UsageAmounts
from frugal.router.providers.base import ProviderRequest, StreamDone, StreamEvent, TextChunk, estimate_tokens

OFFLINE_MODEL = "offline-llm"
NOTICE = "Offline mode: no language model is connected, so this reply was put together from your context."

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_STOP = frozenset(
    "a an the and or but if of to in on at for from by with about as is are was were be been being do does did "
    "what which who whom whose when where why how can could should would will shall may might must i you he "
    "she it we they me my your our their this that these those there here please tell me us any some".split()
)


def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def compose_answer(request: ProviderRequest, *, max_sentences: int = 3) -> str:
    question = request.question or (request.messages[-1].text if request.messages else "")
    q_terms = _terms(question)
    parts = [NOTICE]
    scored: list[tuple[int, int, str, str]] = []
    order = 0
    for passage in request.passages:
        for sentence in _SENTENCE.split(passage.content.strip()):
            sentence = " ".join(sentence.split())
            if len(sentence) < 8:
                continue
            overlap = len(q_terms & _terms(sentence))
            if overlap:
                scored.append((-overlap, order, sentence, passage.title))
            order += 1
    if scored:
        scored.sort()
        picked = sorted(scored[:max_sentences], key=lambda s: s[1])
        titles = list(dict.fromkeys(t for _, _, _, t in picked if t))
        source = f" (from {', '.join(titles)})" if titles else ""
        parts.append(f"Here is what your knowledge base says{source}: " + " ".join(s for _, _, s, _ in picked))
    elif request.passages:
        first = " ".join(request.passages[0].content.split())[:300]
        parts.append(f"The closest knowledge-base passage I have is: {first}")
    if request.screen_notes:
        parts.append(f"On your screen: {request.screen_notes[0]}")
    if len(parts) == 1:
        shown = " ".join(question.split())[:160]
        parts.append(
            f"I found nothing in the knowledge base or on screen about \"{shown}\", and I cannot answer it "
            "without a model. Configure an API key for a real answer."
        )
    return " ".join(parts)


class OfflineProvider:
    provider = "offline"
    offline = True

    def __init__(self, *, word_delay_s: float = 0.0, words_per_chunk: int = 3) -> None:
        self._delay = word_delay_s
        self._words = max(1, words_per_chunk)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        answer = compose_answer(request)
        if len(answer) > request.max_output_tokens * 4:
            answer = answer[: request.max_output_tokens * 4].rsplit(" ", 1)[0] + "..."
        words = answer.split(" ")
        for i in range(0, len(words), self._words):
            piece = " ".join(words[i : i + self._words])
            yield TextChunk(piece if i == 0 else " " + piece)
            await asyncio.sleep(self._delay)  # also yields to the loop between chunks
        usage = UsageAmounts(
            input_tokens=estimate_tokens(request.prompt_text), output_tokens=estimate_tokens(answer), requests=1,
            estimated=True,
        )
        yield StreamDone(usage, "offline")

    async def aclose(self) -> None:
        return None
