"""What the benchmarks share: where things are, and the plain-text table they print.

A bench script runs as `python bench/NAME.py`, so bench/ leads sys.path and it imports this module as
`_common`; no bench module is named like a package or module it imports (`search.py`, not `retrieval.py`).
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# DRCD's dev split (docs/benchmarks.md, "Benchmark data"), looked for beside the clone unless --dataset names it.
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "data" / "drcd" / "DRCD_dev.json"
# ChatGLM3-6B's network in transformers' GlmConfig terms (its config.json: 28 layers, multi-query attention
# with 2 groups, untied output layer; see llm/chatglm3.py). The rotary settings, on half of each head, are
# named differently across transformers versions, so each bench adds them its own way.
CHATGLM3_6B: dict[str, Any] = {
    "vocab_size": 65024,
    "hidden_size": 4096,
    "intermediate_size": 13696,
    "num_hidden_layers": 28,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "attention_bias": True,
    "tie_word_embeddings": False,
}


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
