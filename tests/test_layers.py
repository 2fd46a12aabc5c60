"""The layer picture in the README holds: no module imports a part of flowbot above its own, nor
another part of its own layer, not even lazily inside a function or for type checking; and no two
modules import each other.

The order is read from the README's "How it is built" section (the line starting ``Layers, lowest
first:``), so changing the picture there changes what is checked here, and a new package must be
placed in it."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flowbot"


def layer_order() -> dict[str, int]:
    """Top-level part of flowbot (package or module) -> its rank, lowest first."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^Layers, lowest first: `([^`]+)`", text, re.M)
    assert match, "README.md has no 'Layers, lowest first: `...`' line"
    ranks = {}
    for rank, level in enumerate(match.group(1).split("←")):
        for name in level.split(","):
            name = name.strip().removesuffix("/").removesuffix(".py")
            assert name, f"an empty name in the layer line {match.group(1)!r}"
            ranks[name] = rank
    return ranks


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").is_file()


def exists(name: str) -> bool:
    return is_package(name) or (ROOT / Path(*name.split("."))).with_suffix(".py").is_file()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported flowbot module
    line: int
    typing_only: bool  # inside ``if TYPE_CHECKING:``


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(path: Path) -> list[Import]:
    """Every flowbot module ``path`` imports, wherever the import stands (top level, a function, a
    TYPE_CHECKING block) and also ``importlib.import_module("flowbot....")`` with a literal name."""
    source = module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_lines = _type_checking_lines(tree)
    names: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append((module, node.lineno))
            # ``from flowbot.x import y`` imports the module flowbot.x.y when y is one
            names += [(f"{module}.{alias.name}", node.lineno) for alias in node.names
                      if exists(f"{module}.{alias.name}")]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = ast.unparse(node.func)
            if called in ("importlib.import_module", "import_module", "__import__") and \
                    isinstance(node.args[0].value, str):
                names.append((node.args[0].value, node.lineno))
    found = []
    for name, line in names:
        if name != "flowbot" and not name.startswith("flowbot."):
            continue
        while name and not exists(name):  # an attribute: the module that holds it
            name = name.rpartition(".")[0]
        if name and name != source:
            found.append(Import(source, name, line, line in typing_lines))
    return found


def all_imports() -> list[Import]:
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in imports_of(path)]


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "flowbot"


def test_every_part_of_flowbot_has_a_place_in_the_layer_picture():
    ranks = layer_order()
    parts = {p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}
    assert sorted(parts - set(ranks)) == [], "place these in README's 'Layers, lowest first' line"
    assert sorted(set(ranks) - parts) == [], "README's layer line names parts that do not exist"


def test_no_import_runs_up_the_layers_or_across_one():
    ranks = layer_order()
    top = max(ranks.values()) + 1  # flowbot/__init__.py may name anything (it imports lazily)
    upward = []
    for imp in all_imports():
        here, there = layer_of(imp.source), layer_of(imp.target)
        rank_here = top if here == "flowbot" else ranks[here]
        if there == "flowbot" or there == here:
            continue
        if ranks[there] > rank_here:
            upward.append(f"{imp.source} (line {imp.line}) imports {imp.target}: {here} is below {there}")
        elif ranks[there] == rank_here:
            upward.append(f"{imp.source} (line {imp.line}) imports {imp.target}: {here} and {there} are one layer")
    assert upward == []


def test_no_two_modules_import_each_other():
    """One direction only, counting lazy and type-only imports (a package and its own modules aside)."""
    pairs = {(imp.source, imp.target) for imp in all_imports()}
    both_ways = sorted(f"{a} <-> {b}" for a, b in pairs if (b, a) in pairs and a < b
                       and not b.startswith(a + ".") and not a.startswith(b + "."))
    assert both_ways == []


def test_the_checker_sees_lazy_and_typing_imports():
    """The rules above would pass vacuously if the reader missed imports: it finds those at the top,
    inside functions and under TYPE_CHECKING."""
    assert "flowbot.graph.nodes" in {imp.target for imp in imports_of(PACKAGE / "graph" / "render.py")}
    typed = [imp for imp in imports_of(PACKAGE / "graph" / "render.py") if imp.typing_only]
    assert [imp.target for imp in typed] == ["flowbot.graph.sketch"]
    lazy = [imp for imp in imports_of(PACKAGE / "api.py") if imp.target == "flowbot.integrations.mlflow"]
    assert lazy and not lazy[0].typing_only  # imported inside _open_mlflow
