"""The layers of ``shared/`` hold: each package imports only the layers to its right
(adapters -> services -> contracts, config -> domain), no module imports an SDK
outside the adapters, and no modules import each other in a circle.

Every import counts: at the top, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"

# What each layer may import of ours (its own package included).
ALLOWED: dict[str, frozenset[str]] = {
    "domain": frozenset({"domain"}),
    "contracts": frozenset({"contracts", "domain"}),
    "config": frozenset({"config", "domain"}),
    "services": frozenset({"services", "contracts", "config", "domain"}),
    "adapters": frozenset({"adapters", "services.ports", "contracts", "config", "domain"}),
}
# Libraries that talk to the cloud, the network or pixels: adapters only.
SDKS = frozenset(
    {
        "google",
        "PIL",
        "gspread",
        "requests",
        "httpx",
        "httpx2",
        "urllib3",
        "certifi",
        "flask",
        "werkzeug",
        "functions_framework",
        "cloudevents",
    }
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted
    path: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> list[Import]:
    """Every import in the file (nested and TYPE_CHECKING ones too), each named by
    the module it reaches: ``from a.b import c`` reaches ``a.b.c`` when that is a
    module of ours, else ``a.b``."""
    source = module_name(path, root)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(source, alias.name, path, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if candidate in modules else base
                found.append(Import(source, target, path, node.lineno))
    return found


def layer_of(module: str, root: Path) -> str | None:
    """``shared.services.ports`` -> ``services``; None for the top package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == root.name else None


def scan(root: Path) -> tuple[list[Import], set[str]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(path, root) for path in files}
    edges = [edge for path in files for edge in imports_of(path, root, modules)]
    return edges, modules


def layer_violations(root: Path) -> list[str]:
    """One line per import that reaches a layer it may not, or an SDK outside the adapters."""
    edges, _ = scan(root)
    problems = []
    for edge in edges:
        layer = layer_of(edge.source, root)
        if layer is None:
            continue
        top = edge.target.split(".")[0]
        if top == root.name:
            rest = edge.target.split(".")[1:]
            allowed = ALLOWED.get(layer, frozenset())
            reached = ".".join(rest)
            ok = bool(rest) and any(
                reached == name or reached.startswith(name + ".") for name in allowed
            )
            if not ok:
                problems.append(
                    f"{edge.where(root)}: {edge.source} ({layer}) imports {edge.target}, "
                    f"which {layer} may not (it may import {', '.join(sorted(allowed))})"
                )
        elif top in SDKS and layer != "adapters":
            problems.append(
                f"{edge.where(root)}: {edge.source} ({layer}) imports {edge.target}: "
                "SDKs, the network and Pillow belong in adapters"
            )
    return problems


def cycles(root: Path) -> list[str]:
    """Modules of ours that import each other in a circle, one line per circle with
    the imports (file and line) that close it."""
    edges, modules = scan(root)
    graph: dict[str, dict[str, Import]] = {module: {} for module in modules}
    for edge in edges:
        if edge.target in modules and edge.target != edge.source:
            graph[edge.source].setdefault(edge.target, edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    found = []
    for component in components:
        members = set(component)
        links = [
            f"{edge.where(root)} ({source} -> {target})"
            for source in component
            for target, edge in sorted(graph[source].items())
            if target in members
        ]
        found.append(f"circle among {', '.join(component)}: " + "; ".join(links))
    return found


def test_every_layer_imports_only_the_layers_to_its_right() -> None:
    problems = layer_violations(SHARED)
    assert not problems, "\n".join(problems)


def test_no_modules_import_each_other_in_a_circle() -> None:
    found = cycles(SHARED)
    assert not found, "\n".join(found)


def test_every_module_of_shared_lives_in_a_layer() -> None:
    loose = [
        str(path.relative_to(SHARED)) for path in SHARED.glob("*.py") if path.name != "__init__.py"
    ]
    assert not loose, f"modules outside a layer package: {loose}"
    packages = {path.name for path in SHARED.iterdir() if (path / "__init__.py").exists()}
    assert packages == set(ALLOWED)


def test_each_layer_says_what_belongs_there_and_what_it_may_import() -> None:
    for layer in ALLOWED:
        doc = ast.get_docstring(ast.parse((SHARED / layer / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), (
            f"shared/{layer}/__init__.py has no docstring on imports"
        )


# ---------------------------------------------------------------- the checks can fail


def _plant(root: Path, files: dict[str, str]) -> Path:
    tree = root / "shared"
    for layer in ALLOWED:
        (tree / layer).mkdir(parents=True, exist_ok=True)
        (tree / layer / "__init__.py").write_text('"""May import: see the test."""\n')
    (tree / "__init__.py").write_text("")
    for name, text in files.items():
        (tree / name).write_text(text)
    return tree


def test_a_domain_module_importing_a_service_is_named_with_its_file_and_line(
    tmp_path: Path,
) -> None:
    tree = _plant(
        tmp_path,
        {
            "domain/job.py": "from __future__ import annotations\n\n"
            "from shared.services.ports import JobStore\n",
            "services/ports.py": "",
        },
    )
    (problem,) = layer_violations(tree)
    assert problem.startswith("shared/domain/job.py:3: shared.domain.job (domain) imports ")
    assert "shared.services.ports" in problem


@pytest.mark.parametrize(
    ("importer", "text"),
    [
        ("services/intake.py", "from shared.adapters import firestore_store\n"),
        ("adapters/sheets.py", "from shared.services.intake import Intake\n"),
        ("contracts/links.py", "from shared.config.settings import Settings\n"),
        ("domain/job.py", "def f() -> None:\n    from google.cloud import firestore\n"),
    ],
)
def test_each_kind_of_upward_import_is_refused(tmp_path: Path, importer: str, text: str) -> None:
    tree = _plant(
        tmp_path,
        {
            importer: text,
            "adapters/firestore_store.py": "",
            "services/intake.py": "" if importer != "services/intake.py" else text,
            "config/settings.py": "",
        },
    )
    problems = layer_violations(tree)
    assert len(problems) == 1
    assert problems[0].startswith(f"shared/{importer}:")


def test_a_circle_through_a_type_checking_import_is_found(tmp_path: Path) -> None:
    tree = _plant(
        tmp_path,
        {
            "domain/anchors.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
            "    from shared.domain.job import Job\n",
            "domain/job.py": "from shared.domain.anchors import parse_anchor\n",
        },
    )
    (found,) = cycles(tree)
    assert "shared.domain.anchors, shared.domain.job" in found
    assert "shared/domain/anchors.py:4" in found
    assert "shared/domain/job.py:1" in found
