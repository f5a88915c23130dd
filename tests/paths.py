"""Where the tests find the repository's files, wherever a test module sits below tests/."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"
SAMPLE_DOCS = REPO / "examples" / "docs"
