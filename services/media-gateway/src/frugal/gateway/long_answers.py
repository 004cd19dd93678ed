"""Long answers: spoken in short, posted in full to the room chat.

Every spoken character is billed by the TTS provider, and a listener cannot skim or scroll back. When an answer
runs long (typically one the user asked to have in detail), speech stops at the first sentence end after
`spoken_chars`, a fixed notice says where the rest is, and the whole answer goes to the room's text chat
(`lk.chat`, the topic LiveKit's chat components show). Nothing is dropped: the chat has every word, the next
turn's history carries the whole answer (not the spoken part), and when the chat cannot be reached the rest is
spoken after all.

Text streams on as it comes until the budget is reached; only what follows the sentence that crosses it is held,
so the time to the first spoken word does not change.

Switch: `LONG_ANSWER_SPOKEN_CHARS` (0 = off: every answer is spoken whole); `LONG_ANSWER_NOTICE`. Off when
there is no room chat (console); the replay keeps what it would post (`ReplayResult.chat`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# A sentence ends at . ! ? (optionally closed by a quote or bracket) followed by a space or the end.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")
_SPACE = re.compile(r"\s+")

DEFAULT_NOTICE = "The full answer is in the chat."
CHAT_TOPIC = "lk.chat"

PostText = Callable[[str], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class LongAnswerPolicy:
    # 280 characters: about 18 s of speech, past the two sentences an unasked answer is capped at (the router's
    # speech style: ~50 tokens, ~200 characters), so ordinary answers are never cut.
    spoken_chars: int = 280
    notice: str = DEFAULT_NOTICE

    @property
    def min_chat_chars(self) -> int:
        """A rest shorter than this is spoken: the notice would cost about as much as it saves, and cutting a
        last short sentence off helps no listener."""
        return 2 * len(self.notice)

    def __post_init__(self) -> None:
        if self.spoken_chars < 0:
            raise ValueError("spoken_chars must be >= 0 (0 turns long answers to chat off)")
        if self.spoken_chars and not self.notice.strip():
            raise ValueError("a long-answer notice is required when long answers go to the chat")

    @property
    def enabled(self) -> bool:
        return self.spoken_chars > 0


def normalise(text: str) -> str:
    """The comparison form of an utterance: the framework may re-space the text it keeps in the history."""
    return _SPACE.sub(" ", text).strip()


class SpokenCut:
    """Splits one answer's text stream into what is spoken and what only the chat gets."""

    def __init__(self, spoken_chars: int, min_held_chars: int = 1) -> None:
        self._budget = spoken_chars
        self._min_held = max(min_held_chars, 1)
        self._spoken: list[str] = []
        self._spoken_len = 0
        self._held: list[str] = []
        self._closed = False  # the sentence crossing the budget has ended: everything after is held

    def push(self, text: str) -> str:
        """What of `text` to speak now."""
        if self._closed:
            self._held.append(text)
            return ""
        if self._spoken_len + len(text) < self._budget:
            return self._speak(text)
        # The budget ends inside this chunk: speak up to the first sentence end at or past it.
        need = max(self._budget - self._spoken_len, 0)
        m = next((m for m in _SENTENCE_END.finditer(text) if m.end() >= need), None)
        if m is None:
            return self._speak(text)  # the sentence crossing the budget goes on: finish it
        self._closed = True
        self._held.append(text[m.end():])
        return self._speak(text[:m.end()])

    def _speak(self, text: str) -> str:
        self._spoken.append(text)
        self._spoken_len += len(text)
        return text

    @property
    def spoken(self) -> str:
        return "".join(self._spoken)

    @property
    def held(self) -> str:
        return "".join(self._held)

    @property
    def cut(self) -> bool:
        """True when enough was held back to go to the chat only (at least `min_held_chars`, spaces aside)."""
        return len(self.held.strip()) >= self._min_held

    @property
    def full(self) -> str:
        return self.spoken + self.held


class LongAnswers:
    """One per session, shared by its routers (FallbackAdapter): the policy, where the chat goes (set once the
    room is joined) and the full answers behind what was spoken."""

    def __init__(self, policy: LongAnswerPolicy, post: PostText | None = None) -> None:
        self.policy = policy
        self.post = post
        self.full_answers = FullAnswers()

    @property
    def active(self) -> bool:
        return self.policy.enabled and self.post is not None

    def cutter(self) -> SpokenCut | None:
        return SpokenCut(self.policy.spoken_chars, self.policy.min_chat_chars) if self.active else None


class FullAnswers:
    """What the history must say for an answer that was spoken in short: the framework keeps the spoken text
    (what was played), the next turn must see every word the user was given. Bounded: the oldest go first
    (the router's history window is far shorter)."""

    def __init__(self, capacity: int = 64) -> None:
        self._by_spoken: dict[str, str] = {}
        self._capacity = capacity

    def remember(self, spoken: str, full: str) -> None:
        self._by_spoken[normalise(spoken)] = full
        while len(self._by_spoken) > self._capacity:
            del self._by_spoken[next(iter(self._by_spoken))]

    def expand(self, text: str) -> str:
        return self._by_spoken.get(normalise(text), text)

    def __len__(self) -> int:
        return len(self._by_spoken)
