"""The README and the pages of docs/: every link resolves (files, and `#anchors` against the target's headings
by GitHub's rules), external links are well formed (no network), the settings reference of
docs/configuration.md is what the settings render, and its YAML example is a valid config file."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paths
import pytest

from app import config_docs
from app.settings import load_settings

PAGES = [paths.REPO / "README.md", *sorted((paths.REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250  # issue 30: a newcomer reads it in five minutes; the rest lives in docs/

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) or [text](target "title"); text may hold one level of brackets ([`[n]`](…)).
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """Return the lines of a Markdown text outside fenced code blocks, numbered from 1, inline code removed."""
    found, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            found.append((number, _INLINE_CODE.sub("", line)))
    return found


def links(text: str) -> list[tuple[int, str]]:
    """Return every link target of a Markdown text with the number of the line it starts on (code blocks and
    spans left out); a link's text may run over a line break."""
    paragraphs: list[tuple[int, list[str]]] = []
    last = -1
    for number, line in prose_lines(text):
        if not line.strip():
            continue  # a blank line ends a paragraph: the next line is not its neighbour
        if paragraphs and number == last + 1:
            paragraphs[-1][1].append(line)
        else:
            paragraphs.append((number, [line]))
        last = number
    found = []
    for first, lines in paragraphs:
        paragraph = "\n".join(lines)
        matches = sorted(
            (*_LINK.finditer(paragraph), *_AUTOLINK.finditer(paragraph)), key=lambda m: m.start()
        )
        found += [(first + paragraph.count("\n", 0, match.start()), match.group(1)) for match in matches]
    return found


def slug(heading: str) -> str:
    """Return GitHub's anchor for a heading's text: formatting dropped, lower case, punctuation removed,
    spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Return the anchors of a Markdown text's headings, repeated ones numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not fenced:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken(page: Path) -> list[str]:
    """Return a line for each link of `page` that does not resolve."""
    problems = []
    for number, target in links(page.read_text(encoding="utf-8")):
        where = f"{page.relative_to(paths.REPO)}:{number}: {target}"
        parts = urlsplit(target)
        if parts.scheme in ("http", "https"):
            if (
                not parts.netloc
                or "." not in parts.netloc.split(":")[0]
                and parts.netloc.split(":")[0]
                not in (
                    "localhost",
                    "127.0.0.1",
                )
            ):
                problems.append(f"{where} (not a well-formed URL)")
            continue
        if parts.scheme or parts.netloc:
            problems.append(f"{where} (only http(s) and relative links are checked; use one of those)")
            continue
        file = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not file.exists():
            problems.append(f"{where} (no such file)")
        elif not file.is_relative_to(paths.REPO):
            problems.append(f"{where} (outside the repository)")
        elif parts.fragment:
            if file.suffix != ".md":
                problems.append(f"{where} (an anchor into a file that is not Markdown)")
            elif unquote(parts.fragment) not in anchors(file.read_text(encoding="utf-8")):
                problems.append(f"{where} (no heading with that anchor in {file.relative_to(paths.REPO)})")
    return problems


def test_the_pages_exist_and_the_readme_links_each_of_them() -> None:
    names = {page.name for page in PAGES}
    expected = {"usage.md", "configuration.md", "deploy.md", "finetune.md", "benchmarks.md", "security.md"}
    assert expected <= names, f"missing pages: {expected - names}"
    readme_targets = {urlsplit(target).path for _, target in links(PAGES[0].read_text(encoding="utf-8"))}
    for name in expected | {"architecture.md"}:
        assert f"docs/{name}" in readme_targets, f"the README does not link docs/{name}"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_link_resolves(page: Path) -> None:
    assert broken(page) == []


def test_the_link_check_catches_what_it_should(tmp_path: Path) -> None:
    """The checker itself: GitHub's slugs, code left out, a wrong file, anchor or URL found."""
    assert slug("CPUs with and without AMX (`bench/ingest.py --runtimes all`)") == (
        "cpus-with-and-without-amx-benchingestpy---runtimes-all"
    )
    assert slug("Python, LangChain and MCP") == "python-langchain-and-mcp"
    assert slug("The Python client (`app.client`)") == "the-python-client-appclient"
    assert slug("问答 Q&A") == "问答-qa"
    assert anchors("# A\n## A\n```\n# B\n```\n") == {"a", "a-1"}
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) `[no](#nope)`\n\n```\n[no](missing.md)\n```\n", encoding="utf-8")
    assert links(page.read_text(encoding="utf-8")) == [(3, "#top")]
    assert links("one [link over\ntwo lines](#x) and\n[another](#y)\n\n[a third](#z)\n") == [
        (1, "#x"),
        (3, "#y"),
        (5, "#z"),
    ]
    bad = "[a](#nope) [b](missing.md) [c](https://) [d](ftp://example.org) [e](http://example.org/x)\n"
    targets = [target for _, target in links(bad)]
    assert targets == ["#nope", "missing.md", "https://", "ftp://example.org", "http://example.org/x"]


def test_the_readme_is_short() -> None:
    lines = PAGES[0].read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_setting_has_a_description() -> None:
    assert config_docs.missing_descriptions() == []


def test_the_configuration_page_is_generated_from_the_settings() -> None:
    page = config_docs.PAGE.read_text(encoding="utf-8")
    assert page == config_docs.render_page(page), (
        "docs/configuration.md differs from the settings: run `python -m app.config_docs` and commit it"
    )
    reference = config_docs.render_reference()
    for dotted in ("data_dir", "embedding.runtime", "llm.openai.base_urls", "server.api_keys", "store.dsn"):
        assert f"| `{dotted}` |" in reference
    assert "`KBQA_LLM__OPENAI__BASE_URLS`" in reference and "`KBQA_INGESTION__OCR__DPI`" in reference


def test_the_configuration_example_is_a_valid_config_file(tmp_path: Path) -> None:
    page = config_docs.PAGE.read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", page, flags=re.S)
    assert example, "docs/configuration.md shows no YAML example"
    config = tmp_path / "kbqa.yaml"
    config.write_text(example.group(1), encoding="utf-8")
    settings = load_settings(config)
    assert settings.llm.backend == "openai" and settings.server.port == 8080
