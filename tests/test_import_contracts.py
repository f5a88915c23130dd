"""The import contracts: the private-names contract type finds what it should, and lint-imports runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import paths
from import_contracts import private_uses

MODULES = {"pa", "pa.store", "pa._impl", "pa.sub", "pa.sub.x", "pb", "pb.user"}


def uses(importer: str, source: str) -> list[str]:
    return [str(use) for use in private_uses(importer, textwrap.dedent(source), MODULES)]


def test_a_private_name_taken_from_another_package_is_found() -> None:
    assert uses("pb.user", "from pa.store import _record, public\n") == ["pb.user:1 uses pa.store._record"]
    assert uses("pb.user", "from pa import _helper\n") == ["pb.user:1 uses pa._helper"]


def test_a_private_name_reached_through_an_imported_module_is_found() -> None:
    source = """\
        import pa.store
        from pa import store as s
        import pa.store as st

        pa.store._record()
        s._record()
        st._row
        s.public()
    """
    assert uses("pb.user", source) == [
        "pb.user:5 uses pa.store._record",
        "pb.user:6 uses pa.store._record",
        "pb.user:7 uses pa.store._row",
    ]


def test_inside_the_owning_package_private_names_are_allowed() -> None:
    # The owning package of pa.store's names is pa, subpackages included; relative imports resolve.
    assert uses("pa.sub.x", "from pa.store import _record\nfrom ..store import _row\n") == []
    assert uses("pa", "from .store import _record\n") == []
    # Dunders are not private, and a private module is the private_modules contract's business.
    assert uses("pb.user", "from pa.store import __version__\nfrom pa import _impl\n") == []


def test_a_private_name_of_a_subpackage_is_private_to_that_subpackage() -> None:
    assert uses("pa.store", "from pa.sub.x import _helper\n") == ["pa.store:1 uses pa.sub.x._helper"]
    assert uses("pa.sub", "from pa.sub.x import _helper\n") == []


def test_lint_imports_breaks_the_contract_on_a_private_use(tmp_path: Path) -> None:
    # A two-package project with one private import across them, checked by the installed lint-imports
    # with this repository's contract type (its root on PYTHONPATH, as `make test` has it from the cwd).
    for package, files in {
        "pa": {"__init__.py": "", "store.py": "def _record():\n    return 1\n"},
        "pb": {"__init__.py": "", "user.py": "from pa.store import _record\n"},
    }.items():
        (tmp_path / package).mkdir()
        for name, text in files.items():
            (tmp_path / package / name).write_text(text)
    (tmp_path / ".importlinter").write_text(
        textwrap.dedent("""\
            [importlinter]
            root_packages =
                pa
                pb
            contract_types =
                private_names: tests.import_contracts.PrivateNamesContract

            [importlinter:contract:names]
            name = private names
            type = private_names
            packages =
                pa
                pb
        """)
    )
    lint_imports = Path(sys.executable).with_name("lint-imports")
    environment = os.environ | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{paths.REPO}"}
    run = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "pb.user (line 1) uses pa.store._record" in run.stdout
    (tmp_path / "pb" / "user.py").write_text("from pa import store\n\nstore.public = 1\n")
    run = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_architecture_table_says_what_the_layers_contract_enforces() -> None:
    # docs/architecture.md's "may import" column, package by package, against the layers of pyproject.toml.
    config = tomllib.loads((paths.REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [contract["layers"] for contract in config["contracts"] if contract["type"] == "layers"]
    levels = [[name.strip() for name in layer.split("|")] for layer in layers]
    below = {
        name: {lower for layer in levels[n + 1 :] for lower in layer}
        for n, level in enumerate(levels)
        for name in level
    }
    table = (paths.REPO / "docs" / "architecture.md").read_text()
    documented = {}
    for package in below:
        (row,) = re.findall(rf"^\| \[`{package}/`\]\(\.\./{package}\) \|.*\| (.*) \|$", table, re.MULTILINE)
        documented[package] = set(re.findall(r"`(\w+)`", row))
    assert documented == below
    assert set(below) == set(config["root_packages"])
