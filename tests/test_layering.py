"""The layering of docs/design.md, enforced over the import graph (every import statement, those
inside functions included): a module imports only from its own layer or those below it, a
private module (`_name`) only from inside its package, a model only the papers it builds on, and
no test of the library and no benchmark imports a command line."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom; a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, ...]] = [
    ("nerfx.train", "nerfx.sample", "nerfx.eval_fid", "nerfx.info", "nerfx.cli",
     "nerfx.render.__main__", "nerfx.view.__main__", "nerfx.export.__main__"),   # commands
    ("nerfx.trainers", "nerfx.view", "nerfx.export"),   # independent of each other
    ("nerfx.models", "nerfx.fid"),
    ("nerfx.render",),
    ("nerfx.data",),
    ("nerfx.cameras", "nerfx.images", "nerfx.metrics", "nerfx.loop", "nerfx.runs",
     "nerfx.run_format", "nerfx.distributed", "nerfx.profiling", "nerfx.threads"),  # services
    ("nerfx.ops",),
    ("nerfx.ref", "nerfx.kernels", "nerfx.specs", "nerfx._ext", "nerfx._build", "nerfx"),
]
INDEPENDENT = ("nerfx.trainers", "nerfx.view", "nerfx.export")
# Inside nerfx.models: the shared blocks import no paper; a paper imports the shared blocks and
# the papers it builds on.
MODEL_SHARED = ("nerfx.models.layers", "nerfx.models.ema")
BUILDS_ON = {
    "nerfx.models.ddim": ("nerfx.models.ddpm",),
    "nerfx.models.ldm": ("nerfx.models.ddpm", "nerfx.models.ddim", "nerfx.models.unet",
                         "nerfx.models.autoencoder", "nerfx.models.guidance"),
    "nerfx.models.guidance": ("nerfx.models.ddpm", "nerfx.models.ddim"),
    "nerfx.models.autoencoder": ("nerfx.models.unet",),
    "nerfx.models.pipelines": ("nerfx.models.ngp", "nerfx.models.nerf"),
}
COMMANDS = LAYERS[0]
# Tests of the library (not of a command) and the benchmarks.
LIBRARY_TESTS = ("tests/ops", "tests/models", "tests/render", "tests/data", "benches")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "kernels":
        parts = ["nerfx", *parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """The nerfx modules (or names in them) a file imports, absolute."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {n for n in found if n == "nerfx" or n.startswith("nerfx.")}


def import_graph() -> dict[str, set[str]]:
    files = [*ROOT.glob("nerfx/**/*.py"), *ROOT.glob("kernels/**/*.py")]
    return {module_name(f): imports_of(f, module_name(f)) for f in files}


def _match(name: str, prefixes) -> str | None:
    hits = [p for p in prefixes if name == p or name.startswith(p + ".")]
    return max(hits, key=len) if hits else None


def layer_of(name: str) -> tuple[int, str]:
    best = max(((len(p), i, p) for i, layer in enumerate(LAYERS) for p in layer
                if name == p or (name.startswith(p + ".") and p != "nerfx")), default=None)
    assert best is not None, f"{name} is in no layer of docs/design.md"
    return best[1], best[2]


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the rules, as 'importer -> imported: why'."""
    modules = set(graph)
    found = []
    for importer, targets in sorted(graph.items()):
        rank, home = layer_of(importer)
        for target in sorted(targets):
            # `from nerfx.x import name` names a module or a name in one: judge the module.
            module = target if target in modules else target.rpartition(".")[0]
            if module not in modules or module == importer:
                continue
            if target != module and target.rpartition(".")[2].startswith("_"):
                found.append(f"{importer} -> {target}: imports a private name")
            target_rank, target_home = layer_of(module)
            why = None
            if target_rank < rank:
                why = "imports a higher layer"
            elif target_rank == rank and home != target_home and home in INDEPENDENT \
                    and target_home in INDEPENDENT:
                why = "imports a sibling that must stay independent"
            elif any(part.startswith("_") and not part.startswith("__")
                     for part in module.split(".")[2:]) and \
                    _match(importer, (module.rpartition(".")[0],)) is None:
                why = "imports a private module from outside its package"
            elif importer.startswith("nerfx.models.") and module.startswith("nerfx.models."):
                allowed = BUILDS_ON.get(importer, ()) + (() if importer in MODEL_SHARED
                                                         else MODEL_SHARED)
                if module not in allowed and module != "nerfx.models":
                    why = "a model imports a paper it does not build on (BUILDS_ON)"
            if why:
                found.append(f"{importer} -> {module}: {why}")
    return found


def test_the_import_graph_follows_the_layers():
    assert violations(import_graph()) == []


def test_a_planted_violation_is_caught():
    """The check is live: an upward import, a private import and a sibling import each fail."""
    graph = import_graph()
    for importer, target in (("nerfx.runs", "nerfx.models.pipelines"),
                             ("nerfx.models.ddim", "nerfx.models.ddpm._randn"),
                             ("nerfx.runs", "nerfx.ops._dispatch"),
                             ("nerfx.ops.hashgrid", "nerfx.render.occupancy"),
                             ("nerfx.models.vit", "nerfx.models.ddpm")):
        planted = {**graph, importer: graph[importer] | {target}}
        assert any(v.startswith(f"{importer} -> {target}:") for v in violations(planted)), target


def test_every_module_has_a_layer():
    for name in import_graph():
        layer_of(name)


def test_no_library_test_or_benchmark_imports_a_command_line():
    offenders = []
    for folder in LIBRARY_TESTS:
        for path in (ROOT / folder).rglob("*.py"):
            imported = imports_of(path, "tests")
            offenders += [f"{path.relative_to(ROOT)} -> {name}" for name in sorted(imported)
                          if _match(name, COMMANDS)]
    assert offenders == []
