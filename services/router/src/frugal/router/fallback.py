"""The fallback chain: which tier answers when the chosen tier's provider fails or times out."""

from __future__ import annotations

from frugal.common.pricing import TIERS, TierName


def parse_fallback_chain(text: str) -> dict[TierName, TierName]:
    """"premium>standard>lite,lite>standard" -> {premium: standard, standard: lite, lite: standard}.

    Each chain lists tiers in the order they are tried; a tier may have one successor only."""
    nxt: dict[TierName, TierName] = {}
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
            tiers.append(n)
        for a, b in zip(tiers, tiers[1:], strict=False):
            if a == b:
                raise ValueError(f"fallback chain {chain!r}: {a} falls back to itself")
            if a in nxt and nxt[a] != b:
                raise ValueError(f"fallback chain: {a} has two successors ({nxt[a]} and {b})")
            nxt[a] = b
    return nxt


def fallback_sequence(start: TierName, chain: dict[TierName, TierName], max_fallbacks: int) -> list[TierName]:
    """Tiers to try, starting with `start`: follows the chain without revisiting a tier."""
    seq: list[TierName] = [start]
    while len(seq) <= max_fallbacks:
        nxt = chain.get(seq[-1])
        if nxt is None or nxt in seq:
            break
        seq.append(nxt)
    return seq
