"""The compute ceiling of local ingest: how many chunks per second all-MiniLM-L6-v2 can embed on this
machine at float32, from the matrix-multiply rate the CPU achieves and the FLOPs one chunk needs.

    uv run python bench/rag/roofline.py            # the bench's 400 Cranfield documents
    uv run python bench/rag/roofline.py --quick    # 60 documents

FLOPs per chunk of L word pieces (6 layers, hidden 384, FFN 1536, 12 heads): per layer and token the
QKV (384x1152), output (384x384) and two FFN (384x1536, 1536x384) products, 2*384*(1152+384+2*1536) =
3.54 MFLOP, plus attention QK^T and PV, 2*2*L*384; times 6 layers. Softmax, GELU, LayerNorm and
embedding lookups are not counted: the ceiling is an upper bound.

The GEMM rate is measured with NumPy (OpenBLAS) and onnxruntime (MLAS) on the shapes the encoder runs
(a batch of 8 chunks of the mean length), one thread, and two threads each running its own product (what
the two encoder workers do). On a shared machine wall-clock rates fall with the load, so each figure is
given twice: per second of wall time now, and per CPU-second of the thread that ran it (what one core
gives when it is not shared; `time.thread_time`; the VM reports no steal). The quiet-machine ceiling is
2 cores x the best per-CPU-second rate.

bf16: the CPU has avx512_bf16, but neither runtime here offers a bf16 matrix product (onnxruntime's CPU
provider has no bfloat16 MatMul kernel, checked at run time below; NumPy has no bf16 dtype and its
OpenBLAS exports no sbgemm). Its accuracy is still measured, by emulation: the NumPy forward pass with
every matrix-product operand rounded to bf16 (float32 accumulation, as vdpbf16ps does).
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from _stack import SHARED_DATA  # type: ignore[import-not-found]
from quality import load_cranfield  # type: ignore[import-not-found]

from frugal.encoder.minilm import MiniLMEncoder, limit_blas_threads
from frugal.rag.config import Settings
from frugal.rag.engine import RagEngine
from frugal.rag.extraction import ChunkParams, ExtractionBudget, extract_and_chunk

CRANFIELD = SHARED_DATA / "ir" / "cranfield"
LAYERS, HIDDEN, FFN = 6, 384, 1536
LINEAR_FLOPS_PER_TOKEN = LAYERS * 2 * HIDDEN * (3 * HIDDEN + HIDDEN + 2 * FFN)  # 21.2 MFLOP
ATTENTION_FLOPS_PER_TOKEN_PAIR = LAYERS * 2 * 2 * HIDDEN  # QK^T and PV, per (query, key) pair


def flops(lengths: Sequence[int]) -> float:
    """FLOPs of the matrix products for chunks of these lengths (word pieces, with [CLS] and [SEP])."""
    return float(sum(LINEAR_FLOPS_PER_TOKEN * n + ATTENTION_FLOPS_PER_TOKEN_PAIR * n * n for n in lengths))


def bench_documents(n: int) -> list[tuple[str, str]]:
    data = load_cranfield(CRANFIELD)
    return [(f"cran-{i}", f"{t}\n\n{w}") for i, (t, w) in sorted(data.docs.items())[:n]]


def chunk_texts(docs: Sequence[tuple[str, str]]) -> list[str]:
    """The texts the service embeds for these documents, with its shipped chunking settings."""
    s = Settings()
    params = ChunkParams(markdown=False, target_words=s.chunk_target_words, overlap_words=s.chunk_overlap_words,
                         max_chars=s.max_chunk_chars, max_tokens=s.max_chunk_tokens,
                         max_chunks=s.max_chunks_per_document)
    budget = ExtractionBudget(s.extract_max_inflated_bytes, s.max_pdf_pages, s.extract_cpu_seconds,
                              s.extract_max_text_chars, 0, s.extract_wall_seconds)
    texts: list[str] = []
    for _, text in docs:
        for c in extract_and_chunk(text.encode(), "text/plain", params, budget):
            ctx = RagEngine.chunk_context("", c)
            texts.append(f"{ctx}\n{c.content}" if ctx else c.content)
    return texts


@dataclass(frozen=True)
class Rate:
    wall: float  # GFLOP per second of wall time (aggregate over threads)
    cpu: float  # GFLOP per CPU-second, per thread


def _timed(fn: Callable[[], Any], work: float, seconds: float) -> tuple[float, float]:
    """Repeated runs of `fn`: (wall rate over them all, rate per CPU-second of this thread over them all)."""
    fn()
    runs = 0
    t0, c0 = time.perf_counter(), time.thread_time()
    while runs < 3 or time.perf_counter() - t0 < seconds:
        fn()
        runs += 1
    dt, dc = time.perf_counter() - t0, time.thread_time() - c0
    return runs * work / dt, runs * work / max(dc, 1e-9)


def _concurrent(fns: Sequence[Callable[[], Any]], work: float, seconds: float) -> Rate:
    results: list[tuple[float, float]] = [(0.0, 0.0)] * len(fns)

    def run(i: int) -> None:
        results[i] = _timed(fns[i], work, seconds)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Rate(sum(w for w, _ in results) / 1e9, statistics.mean(c for _, c in results) / 1e9)


def _ort_matmul(m: int, k: int, n: int) -> Callable[[], Any]:
    import onnxruntime as ort  # type: ignore[import-untyped]
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "b")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((m, k), dtype=np.float32)
    return lambda: sess.run(None, {"a": a})


def ort_has_bf16_matmul() -> str:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Cast", ["a"], ["ab"], to=TensorProto.BFLOAT16),
         helper.make_node("MatMul", ["ab", "ab"], ["c"])],
        "bf16", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("c", TensorProto.BFLOAT16, [4, 4])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - reported, not raised
        return f"no ({str(err).split(':')[-1].strip()[:70]})"
    return "yes"


def gemm_rates(mean_length: float, batch: int = 8, seconds: float = 1.0) -> dict[str, dict[int, Rate]]:
    """GFLOP/s of the encoder's four weight products at a batch of `batch` chunks of the mean length,
    weighted by their share of the FLOPs (all four run once per layer)."""
    limit_blas_threads(1)
    m = max(1, round(batch * mean_length))
    shapes = [(m, HIDDEN, 3 * HIDDEN), (m, HIDDEN, HIDDEN), (m, HIDDEN, FFN), (m, FFN, HIDDEN)]
    rng = np.random.default_rng(0)
    out: dict[str, dict[int, Rate]] = {"numpy": {}, "onnxruntime": {}}
    for threads in (1, 2):
        for runtime in out:
            walls: list[float] = []
            cpus: list[float] = []
            total = 0.0
            for mm, k, n in shapes:
                work = 2.0 * mm * k * n
                if runtime == "numpy":
                    fns: list[Callable[[], Any]] = []
                    for _ in range(threads):
                        a = rng.standard_normal((mm, k), dtype=np.float32)
                        b = rng.standard_normal((k, n), dtype=np.float32)
                        fns.append(functools.partial(np.matmul, a, b))
                else:
                    fns = [_ort_matmul(mm, k, n) for _ in range(threads)]
                r = _concurrent(fns, work, seconds / 4)
                # Time-weighted: the four products' combined FLOPs over their combined time.
                walls.append(work / r.wall)
                cpus.append(work / r.cpu)
                total += work
            out[runtime][threads] = Rate(total / sum(walls), total / sum(cpus))
    return out


def _bf16(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Round float32 to the nearest bfloat16 (ties to even), kept in float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def bf16_emulated_cosines(enc: MiniLMEncoder, texts: list[str]) -> np.ndarray[Any, Any]:
    """Cosine of each text's vector with every matrix-product operand in bf16 against the float32 pass."""
    from frugal.encoder import minilm

    ref, _ = enc.encode(texts, batch_size=8)
    real_matmul = np.matmul
    ids = enc.tokenize(texts)
    out = np.zeros_like(ref)
    hidden, heads = enc.hidden, enc.heads
    head_dim = hidden // heads
    scale = np.float32(1.0 / math.sqrt(head_dim))
    for i, seq in enumerate(ids):
        x = enc.word[np.array(seq)] + enc.position[: len(seq)] + enc.token_type0
        x = minilm._layer_norm(x.astype(np.float32), enc.emb_ln_w, enc.emb_ln_b, enc.eps)
        n = len(seq)
        for layer in enc.layers:
            qkv = real_matmul(_bf16(x), _bf16(layer.qkv_w)) + layer.qkv_b
            q, k, v = qkv.reshape(n, 3, heads, head_dim).transpose(1, 2, 0, 3)
            scores = real_matmul(_bf16(q), _bf16(k.transpose(0, 2, 1))) * scale
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = real_matmul(_bf16(probs), _bf16(v)).transpose(1, 0, 2).reshape(n, hidden)
            x = minilm._layer_norm(real_matmul(_bf16(ctx), _bf16(layer.out_w)) + layer.out_b + x,
                                   layer.ln1_w, layer.ln1_b, enc.eps)
            h = minilm._gelu((real_matmul(_bf16(x), _bf16(layer.inter_w)) + layer.inter_b).astype(np.float32))
            x = minilm._layer_norm(real_matmul(_bf16(h), _bf16(layer.ffn_out_w)) + layer.ffn_out_b + x,
                                   layer.ln2_w, layer.ln2_b, enc.eps)
        out[i] = x.mean(axis=0)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    result: np.ndarray[Any, Any] = np.sum(ref * out, axis=1)
    return result


@dataclass(frozen=True)
class Roofline:
    chunks: int
    mean_tokens: float
    gflop_per_chunk: float
    rates: dict[str, dict[int, Rate]]

    @property
    def best_cpu_rate(self) -> float:
        """The best GEMM GFLOP per CPU-second of one core, whichever runtime and thread count."""
        return max(r.cpu for by in self.rates.values() for r in by.values())

    @property
    def quiet_ceiling(self) -> float:
        """Chunks/s on both cores of a quiet machine, at the best measured GEMM rate, nothing else running."""
        return 2 * self.best_cpu_rate / self.gflop_per_chunk

    @property
    def now_ceiling(self) -> float:
        """Chunks/s at the two-thread wall-clock GEMM rate measured now (the machine as shared)."""
        return max(by[2].wall for by in self.rates.values()) / self.gflop_per_chunk

    def lines(self, target: float = 50.0) -> list[str]:
        out = [f"  {self.chunks} chunks, {self.mean_tokens:.0f} word pieces each on average (shipped chunking: "
               f"{Settings().chunk_target_words} words, <= {Settings().max_chunk_tokens} word pieces): "
               f"{self.gflop_per_chunk:.2f} GFLOP of matrix products per chunk"]
        for runtime, by in self.rates.items():
            for threads, r in by.items():
                out.append(f"  fp32 GEMM {runtime:<11} {threads} thread(s): {r.wall:6.1f} GFLOP/s wall now, "
                           f"{r.cpu:6.1f} GFLOP per CPU-second per thread")
        need = target * self.gflop_per_chunk / 2
        out.append(f"  CEILING fp32, 2 cores, quiet machine: 2 x {self.best_cpu_rate:.1f} / {self.gflop_per_chunk:.2f} "
                   f"= {self.quiet_ceiling:.1f} chunks/s (matrix products only, nothing else running)")
        out.append("  ceiling at this run's 2-thread wall GEMM rate (machine as shared now): "
                   f"{self.now_ceiling:.1f} chunks/s")
        verdict = ("within" if need <= self.best_cpu_rate else "BEYOND")
        out.append(f"  {target:.0f} chunks/s needs {target:.0f} x {self.gflop_per_chunk:.2f} / 2 = {need:.1f} GFLOP/s "
                   f"per core: {verdict} the measured fp32 GEMM rate of {self.best_cpu_rate:.1f}")
        return out


def roofline(texts: list[str], enc: MiniLMEncoder, seconds: float = 1.0) -> Roofline:
    lengths = [len(ids) for ids in enc.tokenize(texts)]
    mean = statistics.mean(lengths)
    return Roofline(len(texts), mean, flops(lengths) / len(lengths) / 1e9, gemm_rates(mean, seconds=seconds))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 documents")
    args = ap.parse_args(argv)
    if not (CRANFIELD / "cran.all.1400").is_file():
        print(f"SKIP: Cranfield data not found at {CRANFIELD}")
        return 0
    texts = chunk_texts(bench_documents(60 if args.quick else 400))
    enc = MiniLMEncoder(runtime="numpy")
    for line in roofline(texts, enc).lines():
        print(line)
    print(f"  bf16 matrix product in onnxruntime's CPU provider: {ort_has_bf16_matmul()}")
    cos = bf16_emulated_cosines(enc, texts[:48])
    print(f"  bf16 (emulated) vs fp32 over {len(cos)} chunks: min cosine {cos.min():.6f}, median "
          f"{float(np.median(cos)):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
