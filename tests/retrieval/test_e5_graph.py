"""The bundled encoder's hand-written ONNX graph: per-token int8 products and runs without padding."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from retrieval.embedders.e5_graph import GraphBuilder, per_token_int8_matmul

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnx and onnxruntime are not installed",
)


def run_product(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Return x @ matrix.T as the per-token int8 subgraph computes it in ONNX Runtime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = GraphBuilder()
    out = per_token_int8_matmul(g, "x", "w", matrix)
    model = g.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "tokens", matrix.shape[1]])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, "tokens", matrix.shape[0]])],
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x[None].astype(np.float32)})[0][0]


def test_each_token_keeps_its_own_scale_beside_a_token_with_a_long_tail() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(0, 0.05, (48, 256)).astype(np.float32)
    x = rng.normal(0, 0.5, (6, 256)).astype(np.float32)
    x[2, 7] = 300.0  # one token's outlier, as after GELU: one scale for the tensor would flatten the rest
    x[4] *= 1e-3  # a quiet token
    got = run_product(x, matrix)
    exact = x @ matrix.T
    relative = np.linalg.norm(got - exact, axis=1) / np.linalg.norm(exact, axis=1)
    others = np.delete(relative, 2)
    assert others.max() < 0.02, relative  # int8 rounding only, as if the outlier were not there
    assert relative[2] < 0.05, relative  # its own products: the outlier sets a coarse scale for its row
    # One scale for the whole tensor, for contrast: the quiet token's products are lost entirely.
    scale = np.abs(x).max() / 127
    per_tensor = np.round(x / scale) * scale @ matrix.T
    assert np.linalg.norm(per_tensor[4] - exact[4]) / np.linalg.norm(exact[4]) > 0.5


def test_a_zero_token_gives_zero_products() -> None:
    matrix = np.ones((4, 32), dtype=np.float32)
    x = np.zeros((3, 32), dtype=np.float32)
    x[1] = 1.0
    got = run_product(x, matrix)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[[0, 2]], 0.0)
    np.testing.assert_allclose(got[1], 32.0, rtol=0.01)


def test_dynamic_int8_products_do_not_saturate(tmp_path) -> None:
    """Large activations times large weights: without VNNI, 8-bit weights overflowed the kernel's 16-bit pair sums."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from retrieval.embedders.onnx_runtime import quantize_products

    inner, columns = 64, 8
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "product",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "tokens", inner])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "tokens", columns])],
        [numpy_helper.from_array(np.ones((inner, columns), np.float32), "w")],
    )
    quantize_products(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "q.onnx"
    )
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    x = np.stack([np.ones(inner), -np.ones(inner), np.full(inner, 0.5)]).astype(np.float32)[None]
    np.testing.assert_allclose(session.run(None, {"x": x})[0][0], x[0] @ np.ones((inner, columns)), rtol=0.02)
