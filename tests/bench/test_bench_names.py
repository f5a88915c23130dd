"""A benchmark runs as `python bench/NAME.py`, with bench/ first on sys.path: no name there may shadow another."""

from __future__ import annotations

import sys
from importlib.metadata import packages_distributions

import paths

PACKAGES = {"app", "finetune", "llm", "ingestion", "retrieval", "tests"}


def test_no_bench_module_is_named_like_a_package_it_could_shadow() -> None:
    installed = set(packages_distributions())
    names = {path.stem for path in (paths.REPO / "bench").glob("*.py")}
    assert names, "no benchmark found"
    assert names & PACKAGES == set()
    assert names & set(sys.stdlib_module_names) == set()
    assert names & installed == set()
