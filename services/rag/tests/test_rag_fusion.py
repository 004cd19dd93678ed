"""Reciprocal rank fusion on its own: scores add over the two lists, and ties are broken by the best single-list
rank, then by chunk id, so the same two lists always give the same order."""

from __future__ import annotations

import pytest

from frugal.rag.fusion import rrf


def test_a_chunk_in_both_lists_outranks_chunks_in_one() -> None:
    fused = rrf([("both", 0.1), ("vec", 0.2)], [("lex", 9.0), ("both", 5.0)])
    assert [f.chunk_id for f in fused] == ["both", "lex", "vec"]
    top = fused[0]
    assert top.score == pytest.approx(1 / 61 + 1 / 62)
    assert (top.vector_rank, top.lexical_rank) == (1, 2)
    assert top.vector_score == pytest.approx(0.9) and top.lexical_score == 5.0


def test_equal_scores_are_ordered_by_best_single_list_rank_then_chunk_id() -> None:
    # Vector weight 2: rank 62 there scores 2/122, exactly rank 1 in the lexical list (1/61).
    vector = [(f"v{i:02d}", 0.5) for i in range(1, 62)] + [("a-deep-vector-hit", 0.5)]
    fused = rrf(vector, [("z-top-lexical-hit", 3.0)], vector_weight=2.0)
    tied = [f for f in fused if f.chunk_id in ("a-deep-vector-hit", "z-top-lexical-hit")]
    assert tied[0].score == tied[1].score
    # By id alone "a-..." would come first; its best rank is 62 against 1.
    assert [f.chunk_id for f in tied] == ["z-top-lexical-hit", "a-deep-vector-hit"]
    # Same score and same best rank: chunk id decides, whatever order the lists came in.
    for lists in (([("m", 0.1)], [("k", 1.0)]), ([("k", 0.1)], [("m", 1.0)])):
        assert [f.chunk_id for f in rrf(*lists)] == ["k", "m"]
