"""The all-MiniLM-L6-v2 forward pass as an ONNX graph, built at run time from the same safetensors
weights the NumPy pass reads (no exported model file, no download), run by onnxruntime on the CPU.

The graph is the NumPy pass op for op (embeddings + LayerNorm, 6 post-LayerNorm layers with fused QKV,
GELU(erf), masked mean pooling); onnxruntime then fuses what it can (attention, GELU, skip-LayerNorm).
Vectors match the NumPy pass to cosine >= 0.9999 (tested). Inputs: input_ids int64 (n, L), attention
bias float32 (n, 1, 1, L) (0 for tokens, float32 min for padding), mask float32 (n, L, 1); output:
the mean-pooled hidden state (n, 384), not yet normalised.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from frugal.encoder.minilm import MiniLMEncoder

OPSET = 17  # LayerNormalization


def build_model_bytes(enc: MiniLMEncoder) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    hidden, heads = enc.hidden, enc.heads
    head_dim = hidden // heads
    inits: list[Any] = []
    nodes: list[Any] = []
    counter = [0]

    def const(name: str, value: np.ndarray[Any, Any]) -> str:
        # (np.ascontiguousarray would turn a 0-d scalar into shape (1,))
        inits.append(numpy_helper.from_array(np.array(value, order="C", copy=True), name))
        return name

    def node(op: str, inputs: list[str], **attrs: Any) -> str:
        counter[0] += 1
        out = f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def layer_norm(x: str, w: np.ndarray[Any, Any], b: np.ndarray[Any, Any], tag: str) -> str:
        return node("LayerNormalization", [x, const(f"{tag}_w", w), const(f"{tag}_b", b)],
                    axis=-1, epsilon=enc.eps)

    word = const("word", enc.word)
    x = node("Gather", [word, "input_ids"])
    # Positions 0..L-1: the first L rows of the position table (L from the input's shape).
    shape = node("Shape", ["input_ids"])
    length = node("Gather", [shape, const("one_idx", np.array([1], dtype=np.int64))])
    pos = node("Slice", [const("position", enc.position), const("zero_idx", np.array([0], dtype=np.int64)), length])
    x = node("Add", [x, pos])
    x = node("Add", [x, const("token_type0", enc.token_type0)])
    x = layer_norm(x, enc.emb_ln_w, enc.emb_ln_b, "emb_ln")
    split_shape = const("split_shape", np.array([0, 0, 3, heads, head_dim], dtype=np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
    inv_sqrt2 = const("inv_sqrt2", np.array(1.0 / math.sqrt(2.0), dtype=np.float32))
    one = const("one_f", np.array(1.0, dtype=np.float32))
    half = const("half_f", np.array(0.5, dtype=np.float32))
    idx = [const(f"idx{i}", np.array(i, dtype=np.int64)) for i in range(3)]
    for i, layer in enumerate(enc.layers):
        p = f"l{i}_"
        qkv = node("Add", [node("MatMul", [x, const(p + "qkv_w", layer.qkv_w)]), const(p + "qkv_b", layer.qkv_b)])
        qkv = node("Transpose", [node("Reshape", [qkv, split_shape])], perm=[2, 0, 3, 1, 4])
        q, k, v = (node("Gather", [qkv, idx[j]], axis=0) for j in range(3))
        scores = node("MatMul", [q, node("Transpose", [k], perm=[0, 1, 3, 2])])
        scores = node("Add", [node("Mul", [scores, scale]), "attn_bias"])
        probs = node("Softmax", [scores], axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape])
        attn = node("Add", [node("MatMul", [ctx, const(p + "out_w", layer.out_w)]), const(p + "out_b", layer.out_b)])
        x = layer_norm(node("Add", [attn, x]), layer.ln1_w, layer.ln1_b, p + "ln1")
        h = node("Add", [node("MatMul", [x, const(p + "inter_w", layer.inter_w)]),
                         const(p + "inter_b", layer.inter_b)])
        gelu = node("Mul", [node("Mul", [h, half]), node("Add", [node("Erf", [node("Mul", [h, inv_sqrt2])]), one])])
        f = node("Add", [node("MatMul", [gelu, const(p + "ffn_w", layer.ffn_out_w)]),
                         const(p + "ffn_b", layer.ffn_out_b)])
        x = layer_norm(node("Add", [f, x]), layer.ln2_w, layer.ln2_b, p + "ln2")
    axes = const("axis1", np.array([1], dtype=np.int64))
    summed = node("ReduceSum", [node("Mul", [x, "mask"]), axes], keepdims=0)
    count = node("Max", [node("ReduceSum", ["mask", axes], keepdims=0), const("eps_count", np.array(1e-9, np.float32))])
    nodes.append(helper.make_node("Div", [summed, count], ["pooled"]))
    graph = helper.make_graph(
        nodes, "all-minilm-l6-v2",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "L"]),
            helper.make_tensor_value_info("attn_bias", TensorProto.FLOAT, ["n", 1, 1, "L"]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", "L", 1]),
        ],
        outputs=[helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["n", hidden])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="frugal-encoder")
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


class OnnxForward:
    """One onnxruntime session (thread-safe: `run` may be called from several threads at once, each run
    using `intra_op_threads` threads)."""

    def __init__(self, enc: MiniLMEncoder, *, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, intra_op_threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads burn a core while idle: wrong on a small shared machine.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(build_model_bytes(enc), opts, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: np.ndarray[Any, Any], mask: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :].astype(np.float32)
        out = self._session.run(["pooled"], {"input_ids": input_ids, "attn_bias": bias,
                                             "mask": mask[:, :, None].astype(np.float32)})
        result: np.ndarray[Any, Any] = out[0]
        return result
