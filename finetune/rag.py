"""RAG training data: questions answered from a context of numbered passages, or refused when it lacks them.

Each sample (a question, its answer, the passage holding it, and perhaps passages that do not) becomes
a conversation in the very prompt the service sends at inference (`llm.prompt.PromptBuilder.messages`):
the positive passage among k shuffled distractors, with the answer and the number of the passage it
came from as the target. A share of the samples instead gets k + 1 distractors and the refusal sentence
as the target, so the model learns to say it does not know. Distractors are hard negatives from a
`search` function when one is given (a kbqa knowledge base, wired by the CLI), then the sample's own
negative passages, then random passages of the other samples; none may contain the answer or overlap
the positive passage.

Samples come from SQuAD files (DRCD, CMRC) or Multi-Doc-QA records, Multi-Doc-QA-Chinese's own shape
included (one record a line, several questions per document). `build_plain_conversations` writes that
set's plain single-document instruction instead of the service's prompt.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from finetune.conversation import Conversation
from finetune.errors import DatasetError, FinetuneError
from finetune.records import Malformed, NoValidRecord, ReadReport, Skipped, Unparsable, json_records
from finetune.squad import squad_paragraphs
from llm.prompt import PromptBuilder, PromptConfig, language_of
from llm.types import Message


@dataclass(frozen=True)
class Passage:
    """A piece of text the prompt shows as a numbered chunk, with the source and page it cites."""

    text: str
    source: str
    page: int | None = None


@dataclass(frozen=True)
class RagSample:
    """A question, its answer, the passage that holds the answer, and passages that do not."""

    question: str
    answer: str
    positive: Passage
    negatives: tuple[Passage, ...] = ()
    source: str = ""  # where it was read from, "file#index"


@dataclass(frozen=True)
class RagOptions:
    """How RAG records are built."""

    k: int = 4  # distractors beside the positive passage
    refusal_share: float = 0.2  # of the records, those whose context lacks the answer
    seed: int = 42
    cite: bool = True  # end the target with the positive passage's number, as the service prompt asks

    def __post_init__(self) -> None:
        if self.k < 0:
            raise FinetuneError(f"k must be 0 or more distractors, not {self.k}")
        if not 0.0 <= self.refusal_share <= 1.0:
            raise FinetuneError(f"the refusal share must lie in [0, 1], not {self.refusal_share}")


RAG_SUFFIXES = (".json", ".jsonl", "")  # Multi-Doc-QA-Chinese's files are JSON Lines named .json
# Multi-Doc-QA-Chinese's own single-document instruction, for `--plain` records.
PLAIN_PROMPT = (
    "你现在是一个可以根据文档内容进行问答的机器人，以下是用于参考的文档内容：\n\n{doc}\n问题为：{query}\n答："
)
SearchFunction = Callable[[str, int], Sequence[Passage]]  # (question, how many) -> passages, best first


def read_rag_samples(path: Path, strict: bool = False) -> tuple[list[RagSample], ReadReport]:
    """Return the samples of a SQuAD .json file, a file of Multi-Doc-QA records, or a folder of such files.

    Multi-Doc-QA records may be a JSON list or JSON Lines under any suffix (.json, .jsonl or none), as
    Multi-Doc-QA-Chinese ships them; a folder's .json, .jsonl and suffix-less files are read in name order.
    """
    if not path.is_dir():
        return _read_rag_file(path, strict)
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in RAG_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise DatasetError(f"{path}: the folder holds no .json or .jsonl file")
    samples: list[RagSample] = []
    report = ReadReport()
    for file in files:
        found, file_report = _read_rag_file(file, strict)
        samples += found
        report.merge(file_report)
    return samples, report


def _read_rag_file(path: Path, strict: bool) -> tuple[list[RagSample], ReadReport]:
    """Return the samples of one SQuAD or Multi-Doc-QA file."""
    try:
        records = json_records(path.read_text(encoding="utf-8-sig"), lines=True)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read: {error}") from None
    if len(records) == 1 and isinstance(records[0], dict) and "data" in records[0]:
        return read_squad(records[0], str(path), strict)
    return read_multidoc(records, str(path), strict)


def read_squad(data: dict, file: str, strict: bool = False) -> tuple[list[RagSample], ReadReport]:
    """Return one sample per answerable SQuAD question (its paragraph is the positive, titled by article)."""
    samples: list[RagSample] = []
    report = ReadReport()
    index = -1
    try:
        for paragraph in squad_paragraphs(data):
            positive = Passage(paragraph.context, paragraph.title or _name(paragraph.context))
            for qa in paragraph.questions:
                index += 1
                if qa.answers and not qa.impossible:
                    samples.append(RagSample(qa.text, qa.answers[0], positive, (), f"{file}#{index}"))
                    continue
                report.skip(Skipped(file, index, "the question has no answer"), strict)
    except (KeyError, TypeError) as error:
        raise DatasetError(
            f"{file}: not SQuAD format (data[].paragraphs[].context/qas): missing {error}"
        ) from None
    return _checked(samples, report, file)


def read_multidoc(
    records: Iterable[object], file: str, strict: bool = False
) -> tuple[list[RagSample], ReadReport]:
    """Return samples from Multi-Doc-QA records: one per question of a record; a malformed record is skipped.

    A record is Multi-Doc-QA-Chinese's {QA: [{question, answer}], positive_doc: [doc], negative_doc: [doc]}
    or a flat {question, answer, positive_doc, negative_docs}; a doc is text or {text, title}.
    """
    samples: list[RagSample] = []
    report = ReadReport()
    for index, record in enumerate(records):
        try:
            samples += _multidoc_samples(record, f"{file}#{index}")
        except Malformed as error:
            report.skip(Skipped(file, index, str(error)), strict)
    return _checked(samples, report, file)


def build_rag_conversations(
    samples: Sequence[RagSample],
    prompt: PromptConfig,
    options: RagOptions | None = None,
    search: SearchFunction | None = None,
) -> list[Conversation]:
    """Return one conversation per sample: the service's system text and user turn, then the target reply."""
    options = options or RagOptions()
    rng = random.Random(options.seed)
    builder = PromptBuilder(prompt, lambda messages: 0, context_window=0)  # used to render, never to fit
    pool = _pool(samples)
    refusals = set(rng.sample(range(len(samples)), round(options.refusal_share * len(samples))))
    conversations = []
    for index, sample in enumerate(samples):
        refuse = index in refusals
        chunks = _distractors(sample, options.k + refuse, pool, rng, search)
        if refuse:
            target = prompt.refusal(sample.question)
        else:
            place = rng.randrange(len(chunks) + 1)
            chunks.insert(place, sample.positive)
            target = _cited(sample.answer, place + 1, sample.question) if options.cite else sample.answer
        messages = (*builder.messages(sample.question, chunks), Message("assistant", target))
        conversations.append(Conversation(messages, sample.source))
    return conversations


def build_plain_conversations(samples: Sequence[RagSample]) -> list[Conversation]:
    """Return one conversation per sample: the single-document instruction (PLAIN_PROMPT), then the answer."""
    return [
        Conversation(
            (
                Message("user", PLAIN_PROMPT.format(doc=sample.positive.text, query=sample.question)),
                Message("assistant", sample.answer),
            ),
            sample.source,
        )
        for sample in samples
    ]


def _multidoc_samples(record: object, source: str) -> list[RagSample]:
    """Return one Multi-Doc-QA record's samples, one per question; Malformed says what is missing."""
    if isinstance(record, Unparsable):
        raise Malformed(record.reason)
    if not isinstance(record, dict):
        raise Malformed("is not a JSON object")
    if "QA" in record:
        pairs = record["QA"]
        if not isinstance(pairs, list) or not pairs or not all(isinstance(qa, dict) for qa in pairs):
            raise Malformed("'QA' is not a non-empty list of {question, answer} objects")
    else:
        pairs = [record]
    for n, qa in enumerate(pairs):
        for key in ("question", "answer"):
            if not isinstance(qa.get(key), str) or not qa[key].strip():
                where = f"QA item {n}: " if "QA" in record else ""
                raise Malformed(f"{where}missing '{key}' (a non-empty string)")
    if "positive_doc" not in record:
        raise Malformed("missing 'positive_doc'")
    positives = _documents(record["positive_doc"], "positive_doc")
    if not positives:
        raise Malformed("'positive_doc' holds no document")
    # Several positive documents answer together, so they make one passage.
    positive = Passage("\n\n".join(p.text for p in positives), positives[0].source, positives[0].page)
    if len(positives) > 1:
        positive = Passage(positive.text, _name(positive.text))
    key = "negative_doc" if "negative_doc" in record else "negative_docs"
    negatives = tuple(_documents(record.get(key, []), key))
    return [RagSample(qa["question"], qa["answer"], positive, negatives, source) for qa in pairs]


def _documents(value: object, key: str) -> list[Passage]:
    """Return a record's documents: a list of them, or one; Malformed naming the bad one."""
    if not isinstance(value, list):
        return [_document(value, f"'{key}'")]
    return [_document(doc, f"{key} item {n}") for n, doc in enumerate(value)]


def _document(value: object, where: str) -> Passage:
    """Return a document given as text or as {text|content, title|source, page}; Malformed otherwise."""
    if isinstance(value, dict):
        text = value.get("text", value.get("content"))
        source = value.get("title") or value.get("source")
        page = value.get("page") if isinstance(value.get("page"), int) else None
    else:
        text, source, page = value, None, None
    if not isinstance(text, str) or not text.strip():
        raise Malformed(f"{where} is not a document (a string, or an object with 'text')")
    return Passage(text, str(source) if source else _name(text), page)


def _name(text: str) -> str:
    """Return a neutral source name for an untitled passage: it must not tell the positive from the others."""
    return "doc-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def _checked(samples: list[RagSample], report: ReadReport, file: str) -> tuple[list[RagSample], ReadReport]:
    """Return samples and report; DatasetError when there is no valid sample."""
    report.valid = len(samples)
    if not samples:
        first = f"; the first: {report.skipped[0]}" if report.skipped else ""
        raise NoValidRecord(f"{file}: no valid record ({len(report.skipped)} malformed{first})", report)
    return samples, report


def _pool(samples: Sequence[RagSample]) -> list[Passage]:
    """Return every distinct passage of the samples, positives and negatives, in a stable order."""
    passages = {p.text: p for s in samples for p in (s.positive, *s.negatives)}
    return list(passages.values())


def _distractors(
    sample: RagSample, k: int, pool: list[Passage], rng: random.Random, search: SearchFunction | None
) -> list[Passage]:
    """Return up to k shuffled passages that neither contain the answer nor overlap the positive passage."""
    chosen: list[Passage] = []
    seen = {sample.positive.text}

    def offer(candidates: Iterable[Passage]) -> None:
        for passage in candidates:
            if len(chosen) == k:
                return
            text = passage.text
            if text in seen or not text.strip() or sample.answer in text:
                continue
            if text in sample.positive.text or sample.positive.text in text:
                continue  # a chunk of the positive paragraph may answer in other words
            seen.add(text)
            chosen.append(passage)

    if search is not None and k:
        offer(search(sample.question, 2 * k + 4))  # extra, as hits with the answer are dropped
    offer(sample.negatives)
    offer(_random_order(pool, rng))
    rng.shuffle(chosen)
    return chosen


def _random_order(pool: list[Passage], rng: random.Random) -> Iterator[Passage]:
    """Yield random passages of the pool: a few cheap picks, then all of them shuffled if more are needed."""
    for _ in range(min(len(pool), 32)):
        yield pool[rng.randrange(len(pool))]
    yield from rng.sample(pool, len(pool))


def _cited(answer: str, n: int, question: str) -> str:
    """Return the answer with the citation marker of passage n, as the service prompt asks for."""
    return f"{answer}[{n}]" if language_of(question) == "zh" else f"{answer} [{n}]"
