"""The sentence-transformers model run by ONNX Runtime on CPU, exported once and optionally int8-quantised.

sentence-transformers' own `backend="onnx"` goes through optimum-onnx, which needs transformers < 4.58,
so kbqa exports the model itself: the whole sentence-transformers pipeline (transformer, pooling, any
dense layers, normalisation) becomes one ONNX graph from token ids to the sentence vector. At run time
only the tokenizer and onnxruntime are needed; torch is needed once, for the export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.atomic import atomic_write, atomic_write_text
from retrieval.embedders.base import EmbeddingConfig, PromptedEmbedder, intra_op_threads, model_name_of

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

ONNX_DIR_NAME = "kbqa-onnx"
EXPORT_INFO = "export.json"
# Per-channel int8 (since the default runtime became int8): closer to float32 than per-tensor int8.
MODEL_FILES = {
    "none": "model.onnx",
    "int8": "model-int8-per-channel.onnx",
    "int8-mixed": "model-int8-mixed.onnx",
}
# Bumped when quantize_products changes, so int8 files made before are made again. 2: 7-bit weights.
QUANTIZER_VERSION = 2
# The matrix products `int8-mixed` keeps in float32: each layer's feed-forward output (the product after
# GELU). Its input has a long tail that one int8 scale per tensor cuts coarsely; on multilingual-e5-small
# it alone took vectors from cosine 0.9995 of float32 to 0.997, while int8 everywhere else costs 0.0007.
FLOAT32_MATMULS = re.compile(r"layer\.\d+/output/dense/")
OUTPUT_NAME = "sentence_embedding"
ONNX_MISSING = "runtime 'onnx' needs onnx and onnxruntime: pip install 'kbqa[onnx]' (or onnx onnxruntime)"


def user_cache_dir(model_name: str) -> Path:
    """Return the per-user folder for a model's exported ONNX files: `$XDG_CACHE_HOME/kbqa/onnx/<model_name>`."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kbqa" / "onnx" / model_name


def onnx_dir_for(config: EmbeddingConfig) -> Path:
    """Return the folder that holds (or will hold) the exported ONNX model for `config`.

    `onnx_dir` when set; else beside a model in a local directory, so the export follows the model; else
    (a hub id) the user's cache.
    """
    if config.onnx_dir:
        return Path(config.onnx_dir)
    model_dir = Path(config.model)
    if not model_dir.is_dir():
        return user_cache_dir(model_name_of(config.model))
    return model_dir / ONNX_DIR_NAME


def source_fingerprint(model: str) -> str:
    """Return a digest of the model directory's file names, sizes and times ('' for a hub id).

    A changed model (new weights copied over) then gets exported again instead of silently serving the
    old graph; the ONNX folder itself is left out, so exporting does not change the fingerprint.
    """
    model_dir = Path(model)
    if not model_dir.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if path.is_file() and relative.parts[0] != ONNX_DIR_NAME:
            stat = path.stat()
            digest.update(f"{relative.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def ensure_exported(config: EmbeddingConfig, quantize: str) -> Path:
    """Return the ONNX model file for `config` and `quantize`, exporting (and quantising) it first if missing or stale."""
    folder = onnx_dir_for(config)
    target = folder / MODEL_FILES[quantize]
    fingerprint = source_fingerprint(config.model)
    info_path = folder / EXPORT_INFO
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    fp32 = folder / MODEL_FILES["none"]
    if (info.get("model"), info.get("fingerprint")) != (config.model, fingerprint) or not fp32.exists():
        export_onnx(config.model, folder, fingerprint)
        info = json.loads(info_path.read_text(encoding="utf-8"))
    if info.get("quantizer") != QUANTIZER_VERSION:  # int8 files of an older quantizer are made again
        for quantized in ("int8", "int8-mixed"):
            (folder / MODEL_FILES[quantized]).unlink(missing_ok=True)
        atomic_write_text(info_path, json.dumps(info | {"quantizer": QUANTIZER_VERSION}, indent=2) + "\n")
    if not target.exists():
        quantize_int8(fp32, target, mixed=quantize == "int8-mixed")
    return target


def export_onnx(model: str, folder: Path, fingerprint: str) -> None:
    """Export the sentence-transformers model `model` to `folder/model.onnx` with its tokenizer; return nothing."""
    import torch
    from sentence_transformers import SentenceTransformer

    log.info("exporting embedding model to ONNX", extra={"model": model, "folder": str(folder)})
    st = SentenceTransformer(model, device="cpu").eval()
    _check_exportable(st)
    tokenizer = st.tokenizer
    # Two texts of different lengths, so the traced graph sees padding and keeps the attention mask.
    example = tokenizer(
        ["kbqa 导出", "a longer example text, 用来导出模型"], padding=True, return_tensors="pt"
    )
    input_names = [name for name in tokenizer.model_input_names if name in example]
    folder.mkdir(parents=True, exist_ok=True)
    for stale in MODEL_FILES.values():
        (folder / stale).unlink(missing_ok=True)

    def write(path: Path) -> None:
        # The tracer warns about shape checks it freezes; they hold for every batch (mask and tokens agree).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                _sentence_embedding_module(st, input_names),
                tuple(example[name] for name in input_names),
                str(path),
                dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT-like models
                input_names=input_names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in input_names}
                | {OUTPUT_NAME: {0: "batch"}},
                opset_version=17,
            )

    tokenizer.save_pretrained(folder)
    atomic_write(folder / MODEL_FILES["none"], write)
    info = {
        "model": model,
        "fingerprint": fingerprint,
        "inputs": input_names,
        "max_seq_length": st.max_seq_length,
        "dimension": int(st.get_embedding_dimension()),
    }
    atomic_write_text(folder / EXPORT_INFO, json.dumps(info, indent=2) + "\n")


def quantize_int8(source: Path, target: Path, mixed: bool = False) -> None:
    """Write a dynamically int8-quantised copy of the ONNX model `source` to `target`; return nothing.

    `mixed` leaves the feed-forward output products (`FLOAT32_MATMULS`) in float32.
    """
    log.info("quantising ONNX embedding model to int8", extra={"model": str(source), "mixed": mixed})
    nodes = mixed_int8_nodes(source) if mixed else None
    atomic_write(target, lambda path: quantize_products(source, path, nodes))


def quantize_products(model: Any, path: Path, nodes: list[str] | None = None) -> None:
    """Write `model` (a ModelProto or a file) to `path` with its float MatMuls (only `nodes` if given) in dynamic int8.

    Per-channel weight scales (the vectors stay within cosine 0.997 of float32; per-tensor: 0.98 on
    e5-small); activations get one scale per run. Weights in 7 bits (reduce_range): without VNNI the
    u8 x s8 kernel adds two products in 16 bits, and 2 x 255 x 127 saturates where 2 x 255 x 63 does not
    (on an AMD EPYC, Zen 3, 8-bit weights turned a sum of 64 into 1.006); with no sum saturating, the
    integer products are exact, the same on every CPU. Returns nothing.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The com.microsoft ops have no ONNX shape inference: their outputs are float32.
    quantize_dynamic(
        model,
        path,
        per_channel=True,
        reduce_range=True,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def mixed_int8_nodes(source: Path) -> list[str]:
    """Return the names of the MatMul nodes of `source` that `int8-mixed` quantises (all but FLOAT32_MATMULS)."""
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and not FLOAT32_MATMULS.search(n.name)]


def session_options() -> Any:
    """Return ONNX Runtime session options: one thread per core this process may use (`intra_op_threads`).

    ONNX Runtime ignores OMP_NUM_THREADS and otherwise starts a thread per core of the machine, which on
    a loaded machine (or beside another process that was told to use one thread) competes for the cores.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads()
    options.inter_op_num_threads = 1
    return options


class OnnxEmbedder(PromptedEmbedder):
    """A sentence-transformers model run by ONNX Runtime; same identity and vectors as the torch runtime."""

    # The manifest checks backend and model name: a knowledge base built with torch opens with ONNX.
    backend = "sentence-transformers"

    def __init__(self, config: EmbeddingConfig, quantize: str = "none") -> None:
        try:
            import onnx  # noqa: F401  (exporting and quantising need it, running does not)
            import onnxruntime as ort
        except ImportError as error:
            raise ImportError(ONNX_MISSING) from error
        from transformers import AutoTokenizer

        self.config = config
        self.model = config.model
        self.model_name = model_name_of(config.model)
        model_file = ensure_exported(config, quantize)
        info = json.loads((model_file.parent / EXPORT_INFO).read_text(encoding="utf-8"))
        self.dimension = int(info["dimension"])
        self._inputs: list[str] = info["inputs"]
        self._max_length: int | None = config.max_seq_length or info["max_seq_length"]
        self._tokenizer = AutoTokenizer.from_pretrained(model_file.parent)
        self._session = ort.InferenceSession(
            str(model_file), session_options(), providers=["CPUExecutionProvider"]
        )
        self._set_prompts(config, self.model_name)

    def _encode(self, texts: list[str], prompt: str) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Longest first, as sentence-transformers does, so each batch pads little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            encoded = self._tokenizer(
                [prompt + texts[i] for i in batch],
                padding=True,
                truncation=self._max_length is not None,
                max_length=self._max_length,
                return_tensors="np",
            )
            feed = {name: encoded[name].astype(np.int64) for name in self._inputs}
            vectors[batch] = self._session.run([OUTPUT_NAME], feed)[0]
        # The graph normalises when the model has a Normalize module; this covers models without one.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def _sentence_embedding_module(st: SentenceTransformer, input_names: list[str]) -> Any:
    """Return a torch module mapping positional token tensors to the sentence vector, for torch.onnx.export."""
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.st(dict(zip(input_names, tensors, strict=True)))[OUTPUT_NAME]

    return SentenceEmbedding()


def _check_exportable(st: SentenceTransformer) -> None:
    # A pooling that leaves the prompt out needs the prompt's length at run time, which the graph lacks.
    for module in st:
        if getattr(module, "include_prompt", True) is False:
            raise ValueError("runtime 'onnx' does not support models whose pooling excludes the prompt")
