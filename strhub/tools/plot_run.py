"""Draw a training run's curves: the losses, the learning rates, and the validation accuracy and 1 - NED against
the step, from the run's CSV logs (`<run>/csv/version_<N>/metrics.csv`, one per start), into `<run>/curves.png`.
The starts of a resumed run are joined: where a later start repeats steps (those after the checkpoint it resumed
from), its values replace the earlier ones, and a dashed line marks where it started. train.py draws them when
training ends.

    python -m strhub.tools.plot_run outputs/vl4str/2024-05-01_12-00-00
"""
import argparse
import csv
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from strhub.evaluation.figures import curves_figure, save_png
from strhub.tools.common import HelpFormatter

Columns = Dict[str, List[Tuple[int, float]]]
PLOTTED = re.compile(r"^(loss|val_loss|val_accuracy|val_NED|lr-.*)$")


def metric_files(run_dir: Path) -> List[Path]:
    """The run's metrics.csv files in the order of its starts."""
    versions = [path for path in (run_dir / "csv").glob("version_*/metrics.csv")
                if re.fullmatch(r"version_\d+", path.parent.name)]
    if not versions:
        raise FileNotFoundError(f"{run_dir}: no CSV logs (expected csv/version_<N>/metrics.csv)")
    return sorted(versions, key=lambda path: int(path.parent.name.split("_")[1]))


def read_metrics(path: Path) -> Columns:
    """The plotted metrics of one metrics.csv: name → (step, value), for the rows that hold a value."""
    columns: Columns = {}
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{path}: not a Lightning CSV log (no 'step' column)")
        for line, row in enumerate(reader, start=2):
            try:
                step = int(row["step"])
                values = {name: float(value) for name, value in row.items()
                          if name and PLOTTED.match(name) and value not in ("", None)}
            except ValueError as err:
                raise ValueError(f"{path}, line {line}: {err}") from None
            for name, value in values.items():
                if math.isfinite(value):
                    columns.setdefault(name, []).append((step, value))
    return columns


def join_starts(parts: Sequence[Columns]) -> Tuple[Columns, List[int]]:
    """The metrics of successive starts joined, each start's steps replacing the earlier starts' values from its
    first step on, and the steps at which the later starts began."""
    joined: Columns = {}
    starts = []
    for index, part in enumerate(parts):
        first = min((step for points in part.values() for step, _ in points), default=None)
        if first is None:
            continue
        if index and joined:
            starts.append(first)
        for name in set(joined) | set(part):
            kept = [(step, value) for step, value in joined.get(name, []) if step < first]
            joined[name] = kept + part.get(name, [])
    return {name: points for name, points in joined.items() if points}, starts


def plot_run(run_dir: Path, out: Optional[Path] = None) -> Path:
    """Writes the run's curves to `out` (default `<run>/curves.png`) and returns its path."""
    run_dir = Path(run_dir)
    columns, starts = join_starts([read_metrics(path) for path in metric_files(run_dir)])
    if not columns:
        raise ValueError(f"{run_dir}: its CSV logs hold no loss, learning rate or validation metric yet")
    out = run_dir / "curves.png" if out is None else out
    save_png(curves_figure(f"{run_dir.parent.name}/{run_dir.name}", columns, starts), out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run folder of train.py (holding csv/version_<N>/)")
    parser.add_argument("--out", type=Path, default=None, help="the PNG to write (default: RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        print(plot_run(args.run_dir, args.out))
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
