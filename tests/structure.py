"""The module structure of the `strhub` package, read from its source with `ast`: modules, the import arrows between
them (imports inside functions included), circles, and the layer of each module. Run it to print the figures:

    python tests/structure.py [REPO_ROOT]
"""
import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

# Lower layers never import higher ones; a module may import its own layer.
LAYERS = [
    ("foundation", ["strhub.keys", "strhub.host", "strhub.tokenizer", "strhub.config", "strhub.hub"]),
    ("data", ["strhub.data"]),
    ("models", ["strhub.models"]),
    ("library", ["strhub.deploy", "strhub.training", "strhub.evaluation"]),
    ("tools", ["strhub.tools"]),
    ("application", ["strhub.app", "strhub"]),
]


def modules(root: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package under `root`."""
    found = {}
    for path in sorted((root / "strhub").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The package modules that module `name` imports (a `from package import module` counts the module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in names:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def graph(root: Path) -> Dict[str, Set[str]]:
    found = modules(root)
    known = set(found)
    edges = {name: imports(name, path, known) for name, path in found.items()}
    # `import strhub.a.b` also runs the package `strhub.a`: that is no arrow of the importer's making
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in edges.items()}


def circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in edges:
        if node not in index:
            visit(node)
    return found


def layer(name: str) -> int:
    """The layer of a module: that of the longest matching prefix."""
    best, best_length = len(LAYERS) - 1, -1
    for number, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = number, len(prefix)
    return best


def upward_arrows(edges: Dict[str, Set[str]]) -> List[str]:
    return sorted(f"{source} -> {target}" for source, targets in edges.items() for target in targets
                  if layer(target) > layer(source))


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    edges = graph(root)
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules(root).items()}
    largest = max(sizes, key=sizes.get)
    top_level = sorted(name for name in sizes if name.count(".") == 1 and not (root / name.replace(".", "/")).is_dir())
    print(f"modules: {len(sizes)}, lines: {sum(sizes.values())}, import arrows: {sum(map(len, edges.values()))}")
    print(f"loose modules at the top of strhub/: {len(top_level)} ({', '.join(top_level)})")
    print(f"largest module: {largest} ({sizes[largest]} lines); over 300 lines: "
          f"{', '.join(f'{n} ({s})' for n, s in sorted(sizes.items()) if s > 300) or 'none'}")
    print(f"circles: {circles(edges) or 'none'}")
    print(f"arrows up a layer: {upward_arrows(edges) or 'none'}")


if __name__ == "__main__":
    main()
