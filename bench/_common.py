"""What the benchmarks share: where things are, and the plain-text table they print.

A bench script imports it as `bench._common` after putting the repository root first on sys.path in
place of bench/ (where a sibling such as bench/retrieval.py would shadow the `retrieval` package):

    sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [
        p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
    ]
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# DRCD's dev split (README, "Benchmark data"), looked for beside the clone unless --dataset names it.
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "data" / "drcd" / "DRCD_dev.json"


def aligned_table(rows: Sequence[Sequence[str]], left: Container[int] = (0,)) -> str:
    """Return rows (the header first) as an aligned plain-text table: columns in `left` flush left, others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )
