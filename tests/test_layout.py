"""The package's layout: each layer is a sub-package, and imports point down the layer order, never up.

The import graph is read from the sources (ast), so the test needs none of the heavy dependencies: every import
counts, at module level or inside a function, except those under `if TYPE_CHECKING:` (annotations only).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "speckv_hf"
SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / PACKAGE

# Bottom to top: a module may import from its own layer or any layer below it, never from one above.
LAYERS: tuple[str, ...] = (
    "__about__",  # the version string, stamped into records and printed by the CLI; imports nothing
    "compression",  # a fact about the target (dtype or quantization); stats records it, so it sits below core
    "core",  # signals, costs, stats, validation: what every decision reads and every call records
    "predictor",  # a trained model of acceptance: policies run it, training fits it
    "policies",  # how many tokens to draft, from signals, costs and predictors
    "decoding",  # runs a policy inside generation: the generator, the hook, both loops, caches, verification
    "demo",  # the embedded pair and prompts: data that the harness loads
    "bench",  # measures decoding on pairs and prompts
    "training",  # profiles with the harness' pairs and prompts, then fits predictors from the records
    "paper",  # the SpecKV paper's data and tables, read by the CLI
    "cli",  # the command line, over everything
    "__main__",  # `python -m speckv_hf`: the command line
    "__init__",  # the public API: every public name, loaded lazily
)

# Arrows that point up today and wait for a redesign, as (importing module, imported module): none.
ALLOWED_UPWARD: frozenset[tuple[str, str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree, skipping the bodies of `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _exists(module: str) -> bool:
    path = SRC.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """`{module: {speckv_hf modules it imports}}` for every module of the package."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            # `from .bench import harness` imports the submodule `bench.harness`, not only the package.
            submodules = {f"{source}.{alias.name}" for alias in node.names if _exists(f"{source}.{alias.name}")}
            targets |= submodules or {source}
        graph[module] = targets - {module}
    return graph


def layer_of(module: str) -> str:
    """The layer a module belongs to: its sub-package, or its own name for a module at the package's top."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


GRAPH = import_graph()


def test_every_module_has_a_layer():
    unplaced = sorted({layer_of(module) for module in GRAPH} - set(LAYERS))
    assert not unplaced, f"add {unplaced} to LAYERS, with the reason for its place"


def test_no_import_points_up_the_layers():
    rank = {layer: index for index, layer in enumerate(LAYERS)}
    upward = sorted(
        (module, target)
        for module, targets in GRAPH.items()
        for target in targets
        if rank[layer_of(target)] > rank[layer_of(module)] and (module, target) not in ALLOWED_UPWARD
    )
    assert not upward, "imports pointing up the layers (move the code to the right layer): " + ", ".join(
        f"{module} -> {target}" for module, target in upward
    )


def test_no_import_cycle_between_subpackages():
    edges: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        for target in targets:
            if layer_of(target) != layer_of(module):
                edges.setdefault(layer_of(module), set()).add(layer_of(target))

    def path_back(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for following in sorted(edges.get(node, ())):
            if following == start:
                return (*seen, following)
            if following not in seen:
                found = path_back(start, following, (*seen, following))
                if found:
                    return found
        return None

    cycles = [cycle for layer in sorted(edges) if (cycle := path_back(layer, layer, (layer,)))]
    assert not cycles, f"import cycles between sub-packages: {cycles}"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan): each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for following in sorted(edges.get(node, ())):
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(components)


def test_no_import_cycle_between_modules_of_a_subpackage():
    # What counts is the graph above: every import, at module level or inside a function (a function-level import
    # hides a cycle from Python, not from a reader), except those under `if TYPE_CHECKING:`. A sub-package's
    # `__init__` is its own node, so `from . import x` in it is an edge like any other.
    edges = {
        module: {target for target in targets if layer_of(target) == layer_of(module)}
        for module, targets in GRAPH.items()
        if layer_of(module) not in ("__init__", "__main__", "__about__")
    }
    cycles = _cycles(edges)
    assert not cycles, "import cycles inside a sub-package (move what both need to a module below them): " + (
        "; ".join(" <-> ".join(component) for component in cycles)
    )


def test_the_flat_modules_moved_without_shims():
    # The top of the package holds only the public API, the version and `python -m speckv_hf`.
    top = sorted(path.name for path in ROOT.glob("*.py"))
    assert top == ["__about__.py", "__init__.py", "__main__.py"]
    assert not (ROOT / "demo" / "recipe.py").exists()  # the demo pair's recipe lives in scripts/, outside the wheel


# Private names of transformers and huggingface_hub, and the only modules that may spell them: a new release that
# renames one breaks one small function there, not every caller.
PRIVATE_REACHES: dict[str, frozenset[str]] = {
    "_prefix_allowed_tokens_fn": frozenset({"decoding/_transformers.py"}),
    "_eos_token_tensor": frozenset({"decoding/_transformers.py"}),
    "_pad_token_tensor": frozenset({"decoding/_transformers.py"}),
    "_supports_default_dynamic_cache": frozenset({"decoding/_transformers.py"}),
    "_assisted_decoding": frozenset({"decoding/_transformers.py"}),
    # The documented hook replaces this method of GenerationMixin (and puts it back): that is its job.
    "_get_candidate_generator": frozenset({"decoding/_transformers.py", "decoding/hook.py"}),
    "_hub_mixin_config": frozenset({"predictor/_hub.py"}),
    # Writes to a cache layer's key/value tensors (the one rollback edit).
    ".keys =": frozenset({"decoding/_transformers.py"}),
    ".values =": frozenset({"decoding/_transformers.py"}),
}


def _code_without_docs(path: Path) -> str:
    """A module's code as ast reads it: comments and docstrings (which may name a private thing) dropped."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            body.pop(0)
    return ast.unparse(tree)


def test_private_names_are_reached_from_one_module():
    sources = {path.relative_to(ROOT).as_posix(): _code_without_docs(path) for path in ROOT.rglob("*.py")}
    strays = sorted(
        f"{name} in {module}"
        for name, allowed in PRIVATE_REACHES.items()
        for module, text in sources.items()
        if name in text and module not in allowed
    )
    assert not strays, f"private names outside their module (add a function there instead): {strays}"


# Modules whose `__all__` still lists names they import: each waits on code another change rewrites (kv_cache itself;
# bench/pairs.py imports the three from detection).
ALL_REEXPORTS_ALLOWED: dict[str, frozenset[str]] = {
    "speckv_hf.compression.detection": frozenset({"COMPRESSIONS", "check_runs_on", "quantization_config"}),
    "speckv_hf.decoding.kv_cache": frozenset({"cache_kwarg"}),
}


def _defined_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level other than by importing them."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)}
    return names


def test_all_lists_only_what_a_module_defines():
    # A module's `__all__` says what it owns; a name it imports is imported from its owner instead. The package's
    # `__init__`, the public API, is the exception: it gathers names from every layer.
    borrowed = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        if module == PACKAGE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        exported = next(
            (
                [element.value for element in node.value.elts]
                for node in tree.body
                if isinstance(node, ast.Assign)
                and any(isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets)
            ),
            [],
        )
        names = set(exported) - _defined_names(tree) - ALL_REEXPORTS_ALLOWED.get(module, frozenset())
        if names:
            borrowed[module] = sorted(names)
    assert not borrowed, f"__all__ lists names the module imports (import them from their owner): {borrowed}"
