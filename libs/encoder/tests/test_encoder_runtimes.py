"""The two runtimes of the shared MiniLM encoder (NumPy forward pass, onnxruntime on a graph built from the
same weights) give the same vectors, and tokenising is length-capped without changing the result."""

from __future__ import annotations

import numpy as np
import pytest

from frugal.encoder.minilm import (
    MAX_SEQ_LENGTH,
    TOKENIZE_CHARS,
    TOKENIZE_CHARS_MAX,
    MiniLMEncoder,
    load_encoder,
    load_token_embeddings,
    token_offsets,
)

TEXTS = [
    "Wing lift and drag were measured in the wind tunnel.",
    "x",
    "The boundary layer on a flat plate becomes turbulent at high Reynolds numbers; " * 12,
    "\u98de\u673a\u673a\u7ffc\u7684\u5347\u529b\u548c\u963b\u529b",
    '{"id":1,"sku":"frobnicator","price":3.5,"tags":["alpha","beta"]}' * 3,
]


@pytest.fixture(scope="module")
def encoders() -> tuple[MiniLMEncoder, MiniLMEncoder]:
    return MiniLMEncoder(runtime="numpy"), MiniLMEncoder(runtime="onnx")


def test_onnxruntime_matches_the_numpy_pass(encoders: tuple[MiniLMEncoder, MiniLMEncoder]) -> None:
    ref, tokens_ref = encoders[0].encode(TEXTS, batch_size=2)
    got, tokens_got = encoders[1].encode(TEXTS, batch_size=2)
    assert tokens_ref == tokens_got
    cos = np.sum(ref * got, axis=1)
    assert float(cos.min()) >= 0.9999, cos
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_a_token_budget_runs_long_texts_alone_and_changes_no_vector(
    encoders: tuple[MiniLMEncoder, MiniLMEncoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = encoders[1]
    texts = TEXTS * 3
    lengths = [len(ids) for ids in enc.tokenize(texts)]
    ref, counts_ref = enc.encode_counted(texts, batch_size=8)
    shapes: list[tuple[int, int]] = []
    forward = enc._forward

    def counting(batch: list[list[int]]) -> np.ndarray:  # type: ignore[type-arg]
        shapes.append((len(batch), max(len(x) for x in batch)))
        return forward(batch)

    monkeypatch.setattr(enc, "_forward", counting)
    got, counts = enc.encode_counted(texts, batch_size=8, batch_tokens=64)
    assert counts == counts_ref == lengths
    assert float(np.sum(ref * got, axis=1).min()) >= 0.9999
    # Every forward pass within the budget, unless one text alone is longer; those run one by one.
    assert all(n * longest <= 64 or n == 1 for n, longest in shapes)
    assert sum(n for n, _ in shapes) == len(texts)
    long_texts = sum(1 for n in lengths if n > 64)
    assert sum(1 for n, longest in shapes if n == 1 and longest > 64) == long_texts > 0
    # Short texts still share a pass.
    assert any(n > 1 for n, _ in shapes)


def test_per_text_token_counts_add_up(encoders: tuple[MiniLMEncoder, MiniLMEncoder]) -> None:
    vectors, counts = encoders[1].encode_counted(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert counts == [len(ids) for ids in encoders[1].tokenize(TEXTS)]
    assert max(counts) <= MAX_SEQ_LENGTH


def test_length_cap_before_tokenising_keeps_the_truncated_ids(encoders: tuple[MiniLMEncoder, MiniLMEncoder]) -> None:
    enc = encoders[0]
    long_english = "Supersonic flow over a wedge produces an oblique shock wave attached to its tip. " * 30000
    no_spaces = "ab+cd/" * 400_000  # 2.4 MB of base64-like text
    long_words = ("pneumonoultramicroscopicsilicovolcanoconiosis" * 3 + " ") * 2000
    for text in (long_english, no_spaces, long_words):
        assert len(text) > TOKENIZE_CHARS
        full = enc.tokenizer.encode(text[:TOKENIZE_CHARS_MAX]).ids  # its own truncation, on the longest prefix
        assert enc.tokenize([text])[0] == full


def test_token_offsets_cover_the_text_without_special_tokens() -> None:
    offs = token_offsets(["lift and drag"])[0]
    assert offs[0] == (0, 4) and offs[-1] == (9, 13)


def test_load_encoder_is_cached_per_runtime() -> None:
    assert load_encoder(runtime="numpy") is load_encoder(runtime="numpy")
    assert load_encoder(runtime="onnx").runtime == "onnx"


def test_token_embeddings_alone_are_the_encoders_table_and_tokenizer(
    encoders: tuple[MiniLMEncoder, MiniLMEncoder],
) -> None:
    numpy_enc, _ = encoders
    light = load_token_embeddings()
    assert light.word.dtype == np.float32
    assert np.array_equal(light.word, numpy_enc.word)
    long_text = "Why is the sky blue? " * 200  # beyond MAX_SEQ_LENGTH: truncation must match too
    for text in ("Hi there!", "Prove there are infinitely many primes.", long_text):
        assert light.tokenizer.encode(text).ids == numpy_enc.tokenizer.encode(text).ids
