"""What `kbqa finetune data-check` finds: per registered dataset, its kind and the report of its records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetune.errors import DatasetError
from finetune.records import NoValidRecord, ReadReport
from finetune.registry import load_stage_data, read_dataset, read_dataset_info, split_names
from finetune.stages import PREFERENCE_STAGES


@dataclass(frozen=True)
class DatasetCheck:
    """One dataset read through: its name, what it holds (conversation, preference or text) and its report."""

    name: str
    kind: str
    report: ReadReport

    def as_dict(self) -> dict:
        """Return the check as JSON-ready data."""
        return {
            "dataset": self.name,
            "kind": self.kind,
            "valid": self.report.valid,
            "skipped": len(self.report.skipped),
            "reasons": dict(self.report.reasons().most_common()),
            "malformed": [str(skipped) for skipped in self.report.skipped],
        }


def check_datasets(
    names: str, dataset_dir: Path, strict: bool = False
) -> tuple[list[DatasetCheck], list[str]]:
    """Return the check of each named dataset as registered, and the message of each that cannot be used
    (unknown, unreadable, or no valid record: that one is checked too, with its report)."""
    registry, found = read_dataset_info(dataset_dir), split_names([names])
    checks, failures = [], []
    for name in found:
        if name not in registry:
            known = ", ".join(sorted(registry)) or "none"
            failures.append(f"no dataset '{name}' in {dataset_dir} (registered: {known})")
            continue
        spec = registry[name]
        kind = "preference" if spec.ranking else "conversation"
        report = _report_of(lambda spec=spec: read_dataset(spec, dataset_dir, strict)[1], failures)
        if report is not None:
            checks.append(DatasetCheck(name, kind, report))
    return checks, failures


def check_stage_data(
    stage: str, names: str, dataset_dir: Path, strict: bool = False
) -> tuple[list[DatasetCheck], list[str]]:
    """Return the check of each named dataset read exactly as `train --stage` reads it, and the failures."""
    kind = "text" if stage == "pt" else "preference" if stage in PREFERENCE_STAGES else "conversation"
    checks, failures = [], []
    for name in split_names([names]):
        report = _report_of(
            lambda name=name: load_stage_data(stage, [name], dataset_dir, strict)[1], failures
        )
        if report is not None:
            checks.append(DatasetCheck(name, kind, report))
    return checks, failures


def _report_of(read: Callable[[], ReadReport], failures: list[str]) -> ReadReport | None:
    """Return the report of `read()`; a failure's message goes to `failures` (with its report when it has
    one: no valid record), and None when there is no report to show."""
    try:
        return read()
    except NoValidRecord as error:
        failures.append(str(error))
        return error.report
    except DatasetError as error:
        failures.append(str(error))
        return None
