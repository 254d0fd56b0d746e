"""The package's structure holds (see tests/structure.py, which prints it): no import circle, no module importing
one of a higher layer, modules of about 300 lines at most, and importing the package's front door loads nothing."""
import subprocess
import sys
from pathlib import Path

import structure

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 320


def test_no_import_circle_and_no_arrow_up_a_layer() -> None:
    edges = structure.graph(ROOT)
    assert structure.circles(edges) == []
    assert structure.upward_arrows(edges) == []


def test_the_layers_are_seen_at_work() -> None:
    """The checks above are not vacuous: lower layers are imported by higher ones, and a made-up arrow up is seen."""
    edges = structure.graph(ROOT)
    assert "strhub.models.checkpoint" in edges["strhub.app.read"]
    assert structure.upward_arrows({"strhub.models.registry": {"strhub.app.common"}}) == [
        "strhub.models.registry -> strhub.app.common"]
    assert structure.circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_module_is_much_over_300_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in structure.modules(ROOT).items()}
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}


def test_the_front_door_imports_nothing_heavy() -> None:
    code = "import sys, strhub; assert strhub.__all__; print(sorted(m for m in ('torch', 'hydra') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout.strip() == "[]"
