"""The import graph between sglang's packages: no cycle, and every edge goes down the layer table.

Every module under ``sglang/`` is parsed with ``ast`` (nothing is imported); every import counts,
including those under ``if TYPE_CHECKING:`` and inside functions. A module belongs to a *unit*:
``sglang.srt.<name>`` for what is under ``sglang/srt/`` (a subpackage such as
``sglang.srt.managers``, or a top-level module such as ``sglang.srt.server_args``), else
``sglang.<name>``. ``LAYERS`` lists the units bottom to top (README "Layout"); a unit may import
only units of lower layers. A new package must be placed in the table.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

SGLANG = Path(__file__).resolve().parents[1] / "sglang"

LAYERS: list[tuple[str, set[str]]] = [  # bottom to top
    ("bottom", {"sglang.srt.base_types", "sglang.version", "sglang.srt.env"}),
    ("utils", {"sglang.srt.utils"}),
    ("distributed", {"sglang.srt.distributed"}),
    ("leaves", {"sglang.srt.sampling", "sglang.srt.chat_templates", "sglang.srt.unsupported_flags",
                "sglang.srt.configs", "sglang.srt.mem_cache", "sglang.srt.metrics"}),
    ("server_args", {"sglang.srt.server_args"}),
    ("layers", {"sglang.srt.layers"}),
    ("models", {"sglang.srt.models"}),
    ("model_executor", {"sglang.srt.model_executor"}),
    ("managers", {"sglang.srt.managers"}),
    ("disaggregation", {"sglang.srt.disaggregation"}),
    ("entrypoints", {"sglang.srt.entrypoints"}),
    ("commands", {"sglang", "sglang.srt", "sglang.launch_server", "sglang.bench_serving"}),
    ("tools", {"sglang.tools"}),
    ("test", {"sglang.test"}),
]

# Upward imports that remain in files being rewritten (issue 9: the scheduler/PD seam). Each
# entry must still exist: delete it when the import goes.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SGLANG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:3] if parts[:2] == ["sglang", "srt"] else parts[:2])


def imports_of(path: Path, modules: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every ``sglang`` import anywhere in the file."""
    me = module_name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # ``from pkg import module`` imports that module
                sub = f"{mod}.{a.name}"
                found.append((node.lineno, sub if sub in modules else mod))
    return [(line, m) for line, m in found if m == "sglang" or m.startswith("sglang.")]


@lru_cache(maxsize=1)
def collect_edges() -> dict[tuple[str, str], list[tuple[str, int, str]]]:
    """(from unit, to unit) -> [(file, line, imported module)] over all of ``sglang/``."""
    files = sorted(SGLANG.rglob("*.py"))
    modules = {module_name(p) for p in files}
    edges: dict[tuple[str, str], list[tuple[str, int, str]]] = defaultdict(list)
    for path in files:
        src = unit_of(module_name(path))
        rel = str(path.relative_to(SGLANG.parent))
        for line, target in imports_of(path, modules):
            dst = unit_of(target)
            if dst != src:
                edges[(src, dst)].append((rel, line, target))
    return edges


def find_cycle(edges) -> list[str]:
    """One cycle of the unit graph as [a, b, ..., a], or [] if there is none."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    stack: list[str] = []

    def visit(u: str) -> list[str]:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (cycle := visit(v)):
                return cycle
        stack.pop()
        state[u] = 2
        return []

    for u in sorted(graph):
        if u not in state and (cycle := visit(u)):
            return cycle
    return []


def violations(edges, layers=LAYERS, allowed=frozenset()) -> list[str]:
    """Every import that does not go strictly down the layer table (minus ``allowed``)."""
    level = {u: i for i, (_, units) in enumerate(layers) for u in units}
    bad = []
    for (a, b), sites in sorted(edges.items()):
        for unit in (a, b):
            if unit not in level:
                bad.append(f"{unit} is in no layer of LAYERS: place it")
        if a in level and b in level and level[b] >= level[a]:
            bad += [f"{f}:{line} imports {t} ({a} -> {b}: not downward)"
                    for f, line, t in sites if (f, t) not in allowed]
    return sorted(set(bad))


def without_allowed(edges, allowed):
    kept = {}
    for key, sites in edges.items():
        rest = [s for s in sites if (s[0], s[2]) not in allowed]
        if rest:
            kept[key] = rest
    return kept


def test_no_cycle_between_packages():
    edges = without_allowed(collect_edges(), KNOWN_UPWARD)
    cycle = find_cycle(edges)
    evidence = [f"  {a} -> {b}: {edges[(a, b)][0]}" for a, b in zip(cycle, cycle[1:])]
    assert not cycle, "import cycle between packages:\n" + "\n".join(evidence)


def test_every_import_goes_down_the_layers():
    edges = collect_edges()
    bad = violations(edges, allowed=KNOWN_UPWARD)
    assert not bad, "imports against the layer order (tests/test_import_layers.py LAYERS):\n" + \
        "\n".join(bad)
    seen = {(f, t) for sites in edges.values() for f, _, t in sites}
    assert KNOWN_UPWARD <= seen, f"gone, remove from KNOWN_UPWARD: {KNOWN_UPWARD - seen}"


def test_bottom_layer_imports_only_the_standard_library():
    tree = ast.parse((SGLANG / "srt" / "base_types.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {n.split(".")[0] for n in names} <= set(sys.stdlib_module_names) | {"__future__"}


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The checkers themselves, on a made-up graph: layers -> managers is upward and closes a
    cycle with managers -> layers."""
    edges = {("sglang.srt.managers", "sglang.srt.layers"): [("m.py", 1, "sglang.srt.layers.x")],
             ("sglang.srt.layers", "sglang.srt.managers"): [("l.py", 2, "sglang.srt.managers.y")],
             ("sglang.srt.nowhere", "sglang.srt.base_types"): [("n.py", 3, "sglang.srt.base_types")]}
    assert violations(edges) == [
        "l.py:2 imports sglang.srt.managers.y (sglang.srt.layers -> sglang.srt.managers: "
        "not downward)",
        "sglang.srt.nowhere is in no layer of LAYERS: place it",
    ]
    assert violations(edges, allowed={("l.py", "sglang.srt.managers.y")}) == [
        "sglang.srt.nowhere is in no layer of LAYERS: place it"]
    assert find_cycle(edges) == ["sglang.srt.layers", "sglang.srt.managers", "sglang.srt.layers"]
