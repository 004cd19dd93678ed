"""The fallback chain: which tiers answer, in order, when the chosen tier's provider fails or times out.

"premium>standard>lite,standard>lite>premium,lite>standard>premium": each chain lists, for the tier it
starts with, the tiers tried after it. A tier without a chain of its own follows the rest of the first
chain it appears in ("premium>standard>lite" alone gives standard the sequence standard, lite).

The default crosses providers (Gemini tiers end on Claude, Claude on Gemini), so one provider's outage
does not fail the turns it normally serves while the other is up.
"""

from __future__ import annotations

from frugal.common.pricing import TIERS, TierName

DEFAULT_FALLBACK_CHAIN = "premium>standard>lite,standard>lite>premium,lite>standard>premium"
FallbackChains = dict[TierName, tuple[TierName, ...]]


def parse_fallback_chain(text: str) -> FallbackChains:
    """-> {start tier: (tiers to try after it, in order)}; raises ValueError on a malformed chain."""
    own: dict[TierName, tuple[TierName, ...]] = {}
    derived: dict[TierName, tuple[TierName, ...]] = {}
    for chain in (c.strip() for c in text.split(",")):
        if not chain:
            continue
        names = [n.strip() for n in chain.split(">")]
        if len(names) < 2:
            raise ValueError(f"fallback chain {chain!r}: needs at least two tiers, e.g. premium>standard")
        tiers: list[TierName] = []
        for n in names:
            if n not in TIERS:
                raise ValueError(f"fallback chain {chain!r}: unknown tier {n!r} (use {', '.join(TIERS)})")
            if n in tiers:
                raise ValueError(f"fallback chain {chain!r}: {n} appears twice")
            tiers.append(n)
        if tiers[0] in own:
            raise ValueError(f"fallback chain: two chains start at {tiers[0]}")
        own[tiers[0]] = tuple(tiers[1:])
        for i, t in enumerate(tiers[1:-1], start=1):
            derived.setdefault(t, tuple(tiers[i + 1:]))
    return {**derived, **own}


def fallback_sequence(start: TierName, chain: FallbackChains, max_fallbacks: int) -> list[TierName]:
    """Tiers to try, starting with `start`, at most 1 + max_fallbacks of them."""
    seq: list[TierName] = [start]
    for t in chain.get(start, ()):
        if len(seq) > max_fallbacks:
            break
        if t not in seq:
            seq.append(t)
    return seq
