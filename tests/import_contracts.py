"""An import-linter contract type of our own: no module uses a private name of another package.

import-linter's own contracts see modules (`private_modules` forbids importing `pkg._mod` from outside
`pkg`), not the names a module takes from another. This one reads each import the graph holds from its
source line: a name that starts with one underscore (not a dunder), taken with `from module import _name`
or reached as `module._name` through an imported module, is private to the package that holds `module`
(its parent package, subpackages included). Any other importer is a violation. Attribute access on
objects (`pipeline._check()`) cannot be resolved without types and is not checked.

Registered in pyproject.toml's `[tool.importlinter]` as `private_names`; `lint-imports` runs from the
repository root, which it puts on sys.path, so this file imports as `tests.import_contracts` without
being part of any package that ships.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


@dataclass(frozen=True, order=True)
class PrivateUse:
    """A module using another package's private name: where, and which."""

    importer: str
    line_number: int
    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.importer}:{self.line_number} uses {self.module}.{self.name}"


def is_private(name: str) -> bool:
    """Return whether a name is private by Python's convention: one leading underscore, not a dunder."""
    return name.startswith("_") and not name.startswith("__")


def owning_package(module: str) -> str:
    """Return the package whose modules may use `module`'s private names: its parent (itself when top)."""
    return module.rpartition(".")[0] or module


def may_use(importer: str, module: str) -> bool:
    """Return whether `importer` sits inside the package that owns `module`'s private names."""
    package = owning_package(module)
    return importer == package or importer.startswith(package + ".")


def private_uses(importer: str, source: str, modules: set[str]) -> list[PrivateUse]:
    """Return the private names of other packages' modules that a module's source imports or reaches."""
    tree = ast.parse(source)
    package = importer if source_is_package(importer, modules) else owning_package(importer)
    uses: list[PrivateUse] = []
    aliases: dict[str, str] = {}  # a local name bound to one of the graph's modules -> that module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = resolve(node, package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    aliases[alias.asname or alias.name] = submodule
                elif base in modules and is_private(alias.name) and not may_use(importer, base):
                    uses.append(PrivateUse(importer, node.lineno, base, alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:  # `import a.b` binds `a`; `a.b._x` is reached through the dotted chain
                        for depth in range(1, alias.name.count(".") + 2):
                            prefix = ".".join(alias.name.split(".")[:depth])
                            aliases.setdefault(prefix, prefix)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            module = dotted(node.value, aliases)
            if module in modules and not may_use(importer, module):
                uses.append(PrivateUse(importer, node.lineno, module, node.attr))
    return sorted(set(uses))


def source_is_package(module: str, modules: set[str]) -> bool:
    """Return whether a module of the graph is a package (some other module of the graph is under it)."""
    return any(other.startswith(module + ".") for other in modules)


def resolve(node: ast.ImportFrom, package: str) -> str:
    """Return the absolute module a `from … import` statement reads from."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """Return the module a name or dotted chain (`store`, `retrieval.store`) stands for, or None."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        parent = dotted(node.value, aliases)
        return f"{parent}.{node.attr}" if parent else None
    return None


def module_source(module: str, root: Path, is_package: bool) -> str | None:
    """Return the source text of one of the graph's modules under `root`, or None when it has no file."""
    base = root.joinpath(*module.split("."))
    for path in (base / "__init__.py",) if is_package else (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return None


class PrivateNamesContract(Contract):
    """No module of `packages` uses a private name of a module outside its own package.

    Options:
        - packages: the root packages whose modules are checked (as importers and as the imported).
        - ignore: `importer:module.name` uses allowed anyway (optional; say why beside each).
    """

    type_name = "private_names"

    packages = fields.ListField(subfield=fields.StringField())
    ignore = fields.SetField(subfield=fields.StringField(), required=False)

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        """Return the contract's result, with every private use found as metadata."""
        roots = tuple(self.packages)  # type: ignore[arg-type]
        modules = {m for m in graph.modules if m.split(".")[0] in roots}
        allowed = set(self.ignore or ())  # type: ignore[arg-type]
        found: list[PrivateUse] = []
        for module in sorted(modules):
            source = module_source(module, Path.cwd(), source_is_package(module, modules))
            if source is None:
                continue
            for use in private_uses(module, source, modules):
                if f"{use.importer}:{use.module}.{use.name}" not in allowed:
                    found.append(use)
                    output.verbose_print(verbose, str(use))
        return ContractCheck(kept=not found, metadata={"uses": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        """Print each private use: the module and line, and whose private name it is."""
        for use in check.metadata["uses"]:
            output.print_error(f"{use.importer} (line {use.line_number}) uses {use.module}.{use.name}")
            output.new_line()
