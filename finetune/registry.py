"""The dataset registry, compatible with LLaMA-Factory's `dataset_info.json`, and mixing registered datasets.

An entry names a local file or folder (`file_name`) relative to the dataset directory, its `formatting`
(alpaca, sharegpt, or xtuner, which kbqa adds), `ranking`, the `columns` and sharegpt `tags` to read it
with, `split`, `num_samples` and `file_sha1`. Hub entries (`hf_hub_url`, `ms_hub_url`, `om_hub_url`,
`script_url`, `cloud_file_name`) are understood, but kbqa reads local files only: such an entry gives an
error saying to download the data and register its file.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from finetune.conversation import Conversation, Preference
from finetune.errors import DatasetError
from finetune.readers import FORMATS, Columns, Example, Format, Tags, read_file
from finetune.records import READABLE_SUFFIXES, ReadReport, Skipped, load_records

DATASET_INFO = "dataset_info.json"
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
# LLaMA-Factory columns kbqa does not train on: multimodal inputs and KTO labels. Such an entry is read
# (LLaMA-Factory's own dataset_info.json has several) and refused only when its dataset is asked for.
UNSUPPORTED_COLUMNS = ("images", "videos", "audios", "kto_tag")
_COLUMN_KEYS = ("prompt", "query", "response", "history", "messages", "system", "chosen", "rejected", "tools")
_TAG_KEYS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "observation",
    "function_tag": "function",
    "system_tag": "system",
}


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of dataset_info.json: where the data is and how to read it."""

    name: str
    file_name: str | None = None
    formatting: Format = "alpaca"
    ranking: bool = False
    columns: Columns = field(default_factory=Columns)
    tags: Tags = field(default_factory=Tags)
    split: str = "train"
    num_samples: int | None = None
    file_sha1: str | None = None
    hub: dict[str, str] = field(default_factory=dict)  # the entry's hub keys, when it has any
    unsupported: tuple[str, ...] = ()  # columns kbqa does not train on (UNSUPPORTED_COLUMNS)


def read_dataset_info(dataset_dir: Path) -> dict[str, DatasetSpec]:
    """Return the datasets registered in `dataset_dir/dataset_info.json`, by name."""
    path = dataset_dir / DATASET_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file; a dataset directory needs a {DATASET_INFO}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read: {error}") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected a JSON object of datasets by name")
    return {name: parse_spec(name, entry, path) for name, entry in info.items()}


def parse_spec(name: str, entry: object, where: Path | str = DATASET_INFO) -> DatasetSpec:
    """Return one dataset_info.json entry as a DatasetSpec; DatasetError naming the bad key."""
    prefix = f"{where}: dataset '{name}'"
    if not isinstance(entry, dict):
        raise DatasetError(f"{prefix}: expected an object")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATS:
        raise DatasetError(f"{prefix}: unknown formatting '{formatting}'; use one of {', '.join(FORMATS)}")
    columns = _strings(entry.get("columns", {}), f"{prefix}: columns")
    tags = _strings(entry.get("tags", {}), f"{prefix}: tags")
    unsupported = tuple(key for key in UNSUPPORTED_COLUMNS if columns.pop(key, None) is not None)
    unknown = set(columns) - {*_COLUMN_KEYS, "role", "content"}
    unknown |= set(tags) - set(_TAG_KEYS)
    if unknown:
        raise DatasetError(f"{prefix}: unknown column or tag keys: {', '.join(sorted(unknown))}")
    # Older LLaMA-Factory files name the sharegpt role and content keys under `columns`; `tags` wins.
    tag_values = {"role": columns.pop("role", "from"), "content": columns.pop("content", "value")}
    tag_values |= {_TAG_KEYS[key]: value for key, value in tags.items()}
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise DatasetError(f"{prefix}: num_samples must be a positive whole number")
    return DatasetSpec(
        name=name,
        file_name=_optional_string(entry, "file_name", prefix),
        formatting=formatting,
        ranking=bool(entry.get("ranking", False)),
        columns=Columns(**columns),
        tags=Tags(**tag_values),
        split=_optional_string(entry, "split", prefix) or "train",
        num_samples=num_samples,
        file_sha1=_optional_string(entry, "file_sha1", prefix),
        hub={key: str(entry[key]) for key in HUB_KEYS if entry.get(key)},
        unsupported=unsupported,
    )


def dataset_files(spec: DatasetSpec, dataset_dir: Path) -> list[Path]:
    """Return the local files of a dataset (its file, or the readable files of its folder), checked."""
    if spec.unsupported:
        raise DatasetError(
            f"dataset '{spec.name}': the '{spec.unsupported[0]}' column is not supported (kbqa trains text "
            "chat data)"
        )
    if spec.file_name is None:
        if spec.hub:
            key, url = next(iter(spec.hub.items()))
            raise DatasetError(
                f"dataset '{spec.name}' is on a hub ({key}: {url}), which kbqa cannot reach: it reads local "
                f"files only. Download the data into {dataset_dir} and register it with file_name"
            )
        raise DatasetError(f"dataset '{spec.name}' has no file_name")
    if spec.split != "train":
        raise DatasetError(
            f"dataset '{spec.name}': split '{spec.split}' — a local file has only the 'train' split; "
            "register each split as its own dataset"
        )
    path = dataset_dir / spec.file_name
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in READABLE_SUFFIXES)
        if not files:
            raise DatasetError(f"dataset '{spec.name}': {path} holds no .json, .jsonl or .csv file")
        return files
    if not path.is_file():
        raise DatasetError(f"dataset '{spec.name}': {path}: no such file")
    if spec.file_sha1 and (actual := file_sha1(path)) != spec.file_sha1.lower():
        raise DatasetError(
            f"dataset '{spec.name}': {path} has SHA-1 {actual}, but {DATASET_INFO} says {spec.file_sha1}; "
            "the file changed since it was registered"
        )
    return [path]


def file_sha1(path: Path) -> str:
    """Return the hexadecimal SHA-1 of a file's bytes."""
    digest = hashlib.sha1()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_dataset(
    spec: DatasetSpec, dataset_dir: Path, strict: bool = False
) -> tuple[list[Example], ReadReport]:
    """Return every example of a registered dataset (conversations or preferences) and its report."""
    examples: list[Example] = []
    report = ReadReport()
    for path in dataset_files(spec, dataset_dir):
        found, file_report = read_file(
            path, spec.formatting, ranking=spec.ranking, columns=spec.columns, tags=spec.tags, strict=strict
        )
        examples += found
        report.merge(file_report)
    return examples, report


def load_dataset(
    names: Sequence[str],
    dataset_dir: Path,
    strict: bool = False,
    max_samples: int | None = None,
    seed: int = 42,
) -> tuple[list[Conversation], ReadReport]:
    """Return the conversations of the named datasets, concatenated in order, and one report for all.

    Each name may hold several, comma-separated ("a,b"). Per dataset, `num_samples` draws that many
    records (seeded; repeating the data when it asks for more), then `max_samples` keeps the first ones.
    """
    conversations, report = _load_examples(names, dataset_dir, strict, max_samples, seed, ranking=False)
    return [example for example in conversations if isinstance(example, Conversation)], report


def load_preferences(
    names: Sequence[str],
    dataset_dir: Path,
    strict: bool = False,
    max_samples: int | None = None,
    seed: int = 42,
) -> tuple[list[Preference], ReadReport]:
    """Return the preference pairs of the named datasets (each registered with `ranking: true`)."""
    preferences, report = _load_examples(names, dataset_dir, strict, max_samples, seed, ranking=True)
    return [example for example in preferences if isinstance(example, Preference)], report


def _load_examples(
    names: Sequence[str], dataset_dir: Path, strict: bool, max_samples: int | None, seed: int, ranking: bool
) -> tuple[list[Example], ReadReport]:
    """Return the examples of the named datasets, each registered with `ranking` as asked, and one report."""
    registry = read_dataset_info(dataset_dir)
    examples: list[Example] = []
    report = ReadReport()
    for name in split_names(names):
        spec = _spec(registry, name, dataset_dir)
        if spec.ranking and not ranking:
            raise DatasetError(
                f"dataset '{name}' holds preference data (ranking: true); supervised fine-tuning needs "
                "conversations"
            )
        if ranking and not spec.ranking:
            raise DatasetError(
                f"dataset '{name}' holds conversations; dpo, orpo and rm train on preference data "
                "(ranking: true, with chosen and rejected replies)"
            )
        read, dataset_report = read_dataset(spec, dataset_dir, strict)
        if spec.num_samples is not None:
            read = sample(read, spec.num_samples, seed)
        wanted = Preference if ranking else Conversation
        examples += [example for example in read[:max_samples] if isinstance(example, wanted)]
        report.merge(dataset_report)
    return examples, report


def load_texts(
    names: Sequence[str], dataset_dir: Path, strict: bool = False, max_samples: int | None = None
) -> tuple[list[str], ReadReport]:
    """Return the plain texts of the named datasets for pre-training: each record's prompt column only."""
    registry = read_dataset_info(dataset_dir)
    texts: list[str] = []
    report = ReadReport()
    for name in split_names(names):
        spec = _spec(registry, name, dataset_dir)
        found = []
        for path in dataset_files(spec, dataset_dir):
            for index, record in enumerate(load_records(path)):
                text = record.get(spec.columns.prompt) if isinstance(record, dict) else None
                if isinstance(text, str) and text.strip():
                    found.append(text)
                    continue
                report.skip(
                    Skipped(str(path), index, f"missing text (column '{spec.columns.prompt}')"), strict
                )
        texts += found[:max_samples]
        report.valid += len(found)
    if not texts:
        raise DatasetError(f"no text to pre-train on in {', '.join(split_names(names))}")
    return texts, report


def load_stage_data(
    stage: str,
    names: Sequence[str],
    dataset_dir: Path,
    strict: bool = False,
    max_samples: int | None = None,
    seed: int = 42,
) -> tuple[list[Example | str], ReadReport]:
    """Return what `stage` trains on from the named datasets (texts for pt, preference pairs for dpo, orpo and
    rm, conversations otherwise) and one report for all."""
    from finetune.stages import PREFERENCE_STAGES

    if stage == "pt":
        return load_texts(names, dataset_dir, strict, max_samples)  # type: ignore[return-value]
    if stage in PREFERENCE_STAGES:
        return load_preferences(names, dataset_dir, strict, max_samples, seed)  # type: ignore[return-value]
    return load_dataset(names, dataset_dir, strict, max_samples, seed)  # type: ignore[return-value]


def _spec(registry: dict[str, DatasetSpec], name: str, dataset_dir: Path) -> DatasetSpec:
    """Return a registered dataset's entry; DatasetError naming the registered ones."""
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        raise DatasetError(f"no dataset '{name}' in {dataset_dir / DATASET_INFO} (registered: {known})")
    return registry[name]


def split_names(names: Sequence[str]) -> list[str]:
    """Return dataset names from options that may each hold several, comma-separated; DatasetError if none."""
    found = [name.strip() for option in names for name in option.split(",") if name.strip()]
    if not found:
        raise DatasetError("no dataset named; give one or more registered names, e.g. --dataset a,b")
    return found


def sample(examples: list[Example], count: int, seed: int) -> list[Example]:
    """Return `count` examples drawn without replacement (seeded), whole copies first when `count` is larger."""
    whole, rest = divmod(count, len(examples))
    return examples * whole + random.Random(seed).sample(examples, rest)


def _strings(value: object, where: str) -> dict[str, str]:
    """Return a JSON object of strings as a dict; DatasetError otherwise."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DatasetError(f"{where}: expected an object of strings")
    return dict(value)


def _optional_string(entry: dict, key: str, prefix: str) -> str | None:
    """Return the string at `key`, or None; DatasetError when it is another kind of value."""
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise DatasetError(f"{prefix}: {key} must be a string")
    return value
