"""The labels of a wrapped livekit STT/TTS engine: a wrapper (gate, cache, spend guard) reports the model and
provider of what it wraps, so metrics, cost labels and logs name the real engine."""

from __future__ import annotations

from typing import Protocol


class _Labelled(Protocol):
    @property
    def model(self) -> str: ...

    @property
    def provider(self) -> str: ...


class ReportsInnerEngine:
    inner: _Labelled  # each wrapper narrows it to its engine type

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def provider(self) -> str:
        return self.inner.provider
