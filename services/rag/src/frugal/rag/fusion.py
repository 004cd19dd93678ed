"""Reciprocal rank fusion (Cormack, Clarke & Buettcher 2009): score(d) = sum_i w_i / (k + rank_i(d))."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Fused:
    chunk_id: str
    score: float
    vector_rank: int = 0  # 1-based; 0 = absent from the list
    vector_score: float = 0.0
    lexical_rank: int = 0
    lexical_score: float = 0.0


def rrf(
    vector: list[tuple[str, float]],
    lexical: list[tuple[str, float]],
    *,
    k: float = 60.0,
    vector_weight: float = 1.0,
    lexical_weight: float = 1.0,
) -> list[Fused]:
    """`vector` is (chunk_id, cosine distance) best first; `lexical` is (chunk_id, BM25 score) best first.

    Ties are broken by the best single-list rank, then by chunk id, so results are deterministic.
    """
    fused: dict[str, Fused] = {}
    for rank, (cid, distance) in enumerate(vector, start=1):
        f = fused.setdefault(cid, Fused(cid, 0.0))
        f.vector_rank, f.vector_score = rank, 1.0 - distance
        f.score += vector_weight / (k + rank)
    for rank, (cid, score) in enumerate(lexical, start=1):
        f = fused.setdefault(cid, Fused(cid, 0.0))
        f.lexical_rank, f.lexical_score = rank, score
        f.score += lexical_weight / (k + rank)

    def best_rank(f: Fused) -> int:
        ranks = [r for r in (f.vector_rank, f.lexical_rank) if r > 0]
        return min(ranks) if ranks else 1 << 30

    return sorted(fused.values(), key=lambda f: (-f.score, best_rank(f), f.chunk_id))
