"""The README's quick start, read as a newcomer follows it: every command it shows exists and takes the
arguments it is given (make targets, apt packages, the venv, `kbqa` subcommands and options, curl routes),
and every command of the command tables (the README's main commands, docs/usage.md's full table) is a real
`kbqa` command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import paths
import pytest
import typer

from app.cli import app as cli
from app.server import create_app
from app.settings import load_settings

README = (paths.REPO / "README.md").read_text(encoding="utf-8")
USAGE = (paths.REPO / "docs" / "usage.md").read_text(encoding="utf-8")
MAKEFILE = (paths.REPO / "Makefile").read_text(encoding="utf-8")
CI = (paths.REPO / ".ci" / "run").read_text(encoding="utf-8")


def section(title: str, page: str = README) -> str:
    """Return the `## title` section of `page` (the README by default), up to the next `## ` heading."""
    start = page.index(f"\n## {title}\n")
    end = page.find("\n## ", start + 1)
    return page[start : end if end > 0 else None]


def commands(text: str) -> list[list[str]]:
    """Return the commands of the ```bash blocks of `text`, split into words, one per line and `&&` part."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                found.append(words[:cut])
                words = words[cut + 1 :]
    return found


QUICK_START = commands(section("Quick start"))
VENV = re.search(r"^VENV := (\S+)$", MAKEFILE, flags=re.M).group(1)


def resolve(words: list[str]) -> tuple[Any, list[str]]:
    """Return the `kbqa` command (a click command, as typer builds it) that `words` name (after `kbqa`) and
    the words left for it."""
    command = typer.main.get_command(cli)
    while words and hasattr(command, "commands") and words[0] in command.commands:
        command, words = command.commands[words[0]], words[1:]
    return command, words


def test_the_quick_start_shows_commands_and_says_which_apt_line_is_for_root() -> None:
    assert len(QUICK_START) >= 6, QUICK_START
    installs = [words for words in QUICK_START if "install" in words]
    assert {words[0] for words in installs} == {"apt-get", "sudo"}, "one line for root, one for sudo"
    text = section("Quick start")
    assert "As root" in text and "with `sudo`" in text
    assert "Ctrl-C" in text and f"source {VENV}/bin/activate" in text


@pytest.mark.parametrize("words", QUICK_START, ids=[" ".join(words)[:60] for words in QUICK_START])
def test_each_quick_start_command_exists(words: list[str], tmp_path: Path) -> None:
    if words[0] == "sudo":
        words = words[1:]
    program, *args = words
    if program == "make":
        for target in args:
            assert re.search(rf"^{re.escape(target)}:", MAKEFILE, flags=re.M), f"no make target {target}"
    elif program == "apt-get":
        if args[0] == "update":
            return
        assert args[0] == "install", words
        packages = {word for word in args[1:] if not word.startswith("-")}
        ci_packages = set(re.findall(r"--no-install-recommends ([\w\- ]+?);", CI))
        ci_packages = {package for line in ci_packages for package in line.split()}
        assert packages == ci_packages, f"the README installs {packages}, .ci/run {ci_packages}"
    elif program == "source":
        assert args == [f"{VENV}/bin/activate"], f"the Makefile's venv is {VENV}"
    elif program == f"{VENV}/bin/kbqa":
        command, rest = resolve(args)
        assert not hasattr(command, "commands"), f"{args}: not a kbqa command"
        command.make_context(command.name, rest)  # every argument and option parses, nothing runs
    elif program == "curl":
        url = next(word for word in args if "localhost" in word or "127.0.0.1" in word)
        path = "/" + url.split("/", 1)[1]
        method = "POST" if "-d" in args else "GET"
        schema = create_app(load_settings(data_dir=tmp_path / "data")).openapi()
        served = [
            template
            for template, operations in schema["paths"].items()
            if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method.lower() in operations
        ]
        assert served, f"{method} {path} is not a route of kbqa serve"
        assert url.startswith("localhost:8000/"), "make run serves on port 8000"
    else:
        pytest.fail(f"a new kind of command in the quick start, which this test cannot check yet: {words}")


@pytest.mark.parametrize(("page", "rows"), [(README, 8), (USAGE, 15)], ids=["README.md", "docs/usage.md"])
def test_each_command_of_the_command_table_exists(page: str, rows: int) -> None:
    table = [line for line in section("Command line", page).splitlines() if line.startswith("| `kbqa")]
    assert len(table) >= rows, table
    root_options = {name for param in typer.main.get_command(cli).params for name in param.opts}
    global_options = r"(`kbqa )((?:\[?--[\w-]+(?: [A-Z]+)?\]? )+)"  # kbqa --server URL [--api-key KEY] ask
    for row in table:
        cell = row.split(" | ")[0]
        for _, options in re.findall(global_options, cell):
            for option in re.findall(r"--[\w-]+", options):
                assert option in root_options, f"{option}: no such kbqa option"
        cell = re.sub(global_options, r"\1", cell)
        for shown in re.findall(r"`((?:kbqa )?[a-z][\w-]*(?: [a-z][\w-]*)?)", cell):
            command, rest = resolve(shown.removeprefix("kbqa ").split())
            assert rest == [], f"{shown}: no such kbqa command"


def test_each_command_of_the_first_conversation_exists() -> None:
    """The `$ kbqa …` lines of the README's first conversation parse as the command line takes them."""
    shown = [
        shlex.split(line[2:], comments=True)
        for block in re.findall(r"```console\n(.*?)```", section("A first conversation"), flags=re.S)
        for line in block.splitlines()
        if line.startswith("$ kbqa ")
    ]
    assert len(shown) >= 2, shown
    for words in shown:
        command, rest = resolve(words[1:])
        assert not hasattr(command, "commands"), f"{words}: not a kbqa command"
        command.make_context(command.name, rest)  # every argument and option parses, nothing runs
